"""CTranslate2 conversion and decoding against transformers: tiny models trained through the CLI, CPU, float32."""

import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
from conftest import ENGLISH, GERMAN, TINY

ctranslate2 = pytest.importorskip("ctranslate2")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nmtq.cli import main  # noqa: E402
from nmtq.ct2 import (  # noqa: E402
    Ct2Translator,
    convert_to_ctranslate2,
)
from nmtq.ct2_int8 import int8_saturates_here, int8_width, student_int8_bits  # noqa: E402
from nmtq.evaluation import evaluate_model, evaluate_translator, perplexity, translate  # noqa: E402
from nmtq.files import CT2_INFO  # noqa: E402
from nmtq.models import load_model  # noqa: E402
from nmtq.tokenizer import load_tokenizer  # noqa: E402

# unseen sentences too: some translations end on </s>, others run into the length limit
SOURCES = [*GERMAN, "der Hund ist alt", "die Frau schläft", "das Kind liest ein Buch"]
MAX_NEW_TOKENS = 12


def train(tmp_path_factory, model_type: str) -> Path:
    """200 steps on the twelve pairs: enough for clear argmaxes, so float32 rounding cannot flip a greedy choice."""
    root = tmp_path_factory.mktemp(model_type)
    data = root / "pairs.tsv"
    data.write_text("".join(f"{de}\t{en}\n" for de, en in zip(GERMAN, ENGLISH)), encoding="utf-8")
    out = root / "model"
    assert main(["train", "--data", f"tsv:{data}", "--output_dir", str(out), *TINY, "--model_type", model_type,
                 "--max_steps", "200", "--save_strategy", "no"]) == 0
    return out


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    return train(tmp_path_factory, "marian")


def greedy(model_dir: Path, sources=SOURCES) -> list[str]:
    return translate(load_model(model_dir), load_tokenizer(model_dir), sources, num_beams=1,
                     max_new_tokens=MAX_NEW_TOKENS, progress=False)


def leftovers(out: Path) -> list[str]:
    """Temporary siblings of ``out`` that a conversion left behind."""
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_float32_greedy_and_perplexity_equal_transformers(marian, tmp_path):
    model, tokenizer = load_model(marian), load_tokenizer(marian)
    # the case CTranslate2's own Marian converter gets wrong: it starts the decoder from zeros, not from <pad>
    assert model.get_input_embeddings().weight[model.config.decoder_start_token_id].abs().sum() > 0
    out = convert_to_ctranslate2(marian, tmp_path / "ct2", quantization="float32")
    translator = Ct2Translator(out, compute_type="float32")
    expected = greedy(marian)
    lengths = [len(ids) for ids in tokenizer(text_target=expected, add_special_tokens=False)["input_ids"]]
    assert min(lengths) < MAX_NEW_TOKENS - 1 == max(lengths)  # both ways of ending are covered
    assert translator.translate(SOURCES, num_beams=1, max_new_tokens=MAX_NEW_TOKENS) == expected
    assert translator.translate(SOURCES, num_beams=1, max_new_tokens=1) == [""] * len(SOURCES)
    assert translator.perplexity(GERMAN, ENGLISH) == pytest.approx(
        perplexity(model, tokenizer, GERMAN, ENGLISH, progress=False), rel=1e-5)


def test_bart_converts_exactly_too(tmp_path_factory, tmp_path):
    bart = train(tmp_path_factory, "bart")
    translator = Ct2Translator(convert_to_ctranslate2(bart, tmp_path / "ct2", "float32"), compute_type="float32")
    assert translator.translate(SOURCES, num_beams=1, max_new_tokens=MAX_NEW_TOKENS) == greedy(bart)


def rolled_vocabulary(model_dir: Path, out: Path) -> Path:
    """The same model with every id moved up by one: ``<pad>``, last in nmtq's layout, becomes id 0."""
    from transformers import MarianTokenizer

    model = load_model(model_dir)
    size = model.config.vocab_size
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(model.get_input_embeddings().weight.roll(1, 0))  # tied: all of them
        model.final_logits_bias.copy_(model.final_logits_bias.roll(1, 1))
    for config in (model.config, model.generation_config):
        for key in ("pad_token_id", "eos_token_id", "decoder_start_token_id", "forced_eos_token_id"):
            setattr(config, key, (getattr(config, key) + 1) % size)
    model.save_pretrained(out)
    vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
    (out / "vocab.json").write_text(json.dumps({t: (i + 1) % size for t, i in vocab.items()}), encoding="utf-8")
    MarianTokenizer(str(model_dir / "source.spm"), str(model_dir / "target.spm"), str(out / "vocab.json"),
                    source_lang="de", target_lang="en").save_pretrained(out)
    return out


def test_pad_need_not_be_last(marian, tmp_path):
    rolled = rolled_vocabulary(marian, tmp_path / "rolled")
    assert load_tokenizer(rolled).pad_token_id == 0
    expected = greedy(marian)
    assert greedy(rolled) == expected  # the same model, numbered differently
    translator = Ct2Translator(convert_to_ctranslate2(rolled, tmp_path / "ct2", "float32"), compute_type="float32")
    assert translator.translate(SOURCES, num_beams=1, max_new_tokens=MAX_NEW_TOKENS) == expected


def test_int8_folder_is_complete_and_evaluates_like_evaluate_model(marian, tmp_path):
    out = convert_to_ctranslate2(marian, tmp_path / "ct2")  # int8
    assert {"model.bin", "config.json", "shared_vocabulary.json", CT2_INFO, "source.spm", "target.spm",
            "vocab.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / CT2_INFO).read_text())["quantization"] == "int8"
    float32 = convert_to_ctranslate2(marian, tmp_path / "ct2-float32", "float32")
    assert (out / "model.bin").stat().st_size < 0.7 * (float32 / "model.bin").stat().st_size  # int8 weights
    shutil.copytree(out, tmp_path / "moved")  # self-contained: nothing points back at the model folder
    translator = Ct2Translator(tmp_path / "moved")
    metrics = evaluate_translator(translator, GERMAN, ENGLISH, num_beams=2, max_new_tokens=MAX_NEW_TOKENS,
                                  output_dir=tmp_path / "eval")
    reference = evaluate_model(load_model(marian), load_tokenizer(marian), GERMAN, ENGLISH, num_beams=2,
                               max_new_tokens=MAX_NEW_TOKENS, progress=False)
    assert set(reference) | {"engine", "compute_type", "use_vmap"} == set(metrics)
    assert metrics["engine"] == "ctranslate2" and metrics["compute_type"] == "int8" and not metrics["use_vmap"]
    assert len((tmp_path / "eval" / "hypotheses.txt").read_text().splitlines()) == len(GERMAN)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["bleu"] == metrics["bleu"]


def test_a_model_folder_is_converted_on_the_fly(marian):
    translator = Ct2Translator(marian, compute_type="float32")
    assert translator.translate(SOURCES, num_beams=1, max_new_tokens=MAX_NEW_TOKENS) == greedy(marian)


def test_an_nmtq_export_folder_converts_exactly(marian, tmp_path):
    from test_distill import distill_argv

    from nmtq.export import export_model
    from nmtq.exported import load_exported

    student, export = tmp_path / "student", tmp_path / "export"
    assert main(distill_argv(marian.parent / "pairs.tsv", marian, student, "--student_decoder_layers", "1",
                             "--method", "qd", "--max_steps", "2", "--save_strategy", "no")) == 0
    export_model(student, export)
    model, tokenizer = load_exported(export)
    expected = translate(model, tokenizer, SOURCES, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    translator = Ct2Translator(convert_to_ctranslate2(export, tmp_path / "ct2", "float32"), compute_type="float32")
    assert translator.translate(SOURCES, num_beams=1, max_new_tokens=MAX_NEW_TOKENS) == expected


def test_a_failed_conversion_leaves_nothing_and_keeps_the_earlier_one(marian, tmp_path, monkeypatch):
    out = convert_to_ctranslate2(marian, tmp_path / "ct2", "float32")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ctranslate2.specs.ModelSpec, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_to_ctranslate2(marian, out, "int8", force=True)
    with pytest.raises(OSError, match="No space left"):
        convert_to_ctranslate2(marian, tmp_path / "new", "int8")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "new").exists() and leftovers(out) == [] and leftovers(tmp_path / "new") == []


def lstm_dir(model_dir: Path, out: Path) -> Path:
    from nmtq.lstm import LstmForConditionalGeneration, LstmSeq2SeqConfig

    tokenizer = load_tokenizer(model_dir)
    config = LstmSeq2SeqConfig(vocab_size=len(tokenizer), d_model=8, hidden_size=8)
    LstmForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def old_spelling(model_dir: Path) -> Path:
    """The folder as nmtq wrote an LSTM student before issue #16: model_type nmtq-lstm."""
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "nmtq-lstm"}))
    return model_dir


def fsmt_dir(out: Path) -> Path:
    from nmtq.models import Architecture, build_model

    args = Architecture(model_type="fsmt", d_model=16, encoder_layers=1, decoder_layers=1, attention_heads=2,
                        ffn_dim=32, max_position_embeddings=32)
    build_model(args, vocab_size=10, pad_token_id=9, eos_token_id=0).save_pretrained(out)
    return out


def wider_embeddings(model_dir: Path, out: Path) -> Path:
    model = load_model(model_dir)
    model.resize_token_embeddings(model.config.vocab_size + 1)
    model.save_pretrained(out)
    load_tokenizer(model_dir).save_pretrained(out)
    return out


@pytest.mark.parametrize("make, message", [
    (lambda marian, tmp: tmp / "missing", "does not exist"),
    (lambda marian, tmp: lstm_dir(marian, tmp / "lstm"), "LSTM student, which CTranslate2 cannot run"),
    (lambda marian, tmp: old_spelling(lstm_dir(marian, tmp / "lstm")), "LSTM student, which CTranslate2 cannot run"),
    (lambda marian, tmp: fsmt_dir(tmp / "fsmt"),
     "'fsmt' model; nmtq converts ('marian', 'bart', 'mbart', 'm2m_100', 't5', 'mt5') to CTranslate2 (its "
     "Transformers converter has no FSMT mapping)"),
    (lambda marian, tmp: wider_embeddings(marian, tmp / "wide"), "do not number the model's"),
], ids=["missing", "lstm", "lstm-old-spelling", "fsmt", "vocabulary"])
def test_models_it_cannot_convert(make, message, marian, tmp_path):
    out = tmp_path / "ct2"
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_to_ctranslate2(make(marian, tmp_path), out)
    assert not out.exists() and leftovers(out) == []


def test_bad_arguments_fail_before_anything_is_written(marian, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="quantization='int4'"):
        convert_to_ctranslate2(marian, tmp_path / "ct2", "int4")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="pass force=True"):
        convert_to_ctranslate2(marian, tmp_path / "taken")
    with pytest.raises(ValueError, match="would replace the model folder"):
        convert_to_ctranslate2(marian, marian.parent, force=True)
    assert sorted(os.listdir(tmp_path)) == ["taken"] and (marian / "model.safetensors").is_file()
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if not installed
    with pytest.raises(ValueError, match=r"pip install 'nmtq\[ct2\]'"):
        convert_to_ctranslate2(marian, tmp_path / "ct2")


def test_export_and_evaluate_through_the_cli(marian, tmp_path, capsys):
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(f"{de}\t{en}\n" for de, en in zip(GERMAN, ENGLISH)), encoding="utf-8")
    out = tmp_path / "ct2"
    assert main(["export", str(marian), str(out), "--ctranslate2", "float32"]) == 0
    assert (out / "model.bin").is_file() and "CTranslate2 model (float32)" in capsys.readouterr().out
    assert main(["export", str(marian), str(out), "--ctranslate2"]) == 2  # exists: --force to replace it
    assert main(["export", str(marian), str(out), "--ctranslate2", "--force"]) == 0
    common = ["--data", f"tsv:{data}", "--num-beams", "1", "--max-new-tokens", str(MAX_NEW_TOKENS)]
    assert main(["evaluate", str(out), *common, "--engine", "ctranslate2", "--compute-type", "float32",
                 "--output-dir", str(tmp_path / "e2")]) == 0
    assert main(["evaluate", str(marian), *common, "--output-dir", str(tmp_path / "e1")]) == 0
    ct2, hf = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("e2", "e1"))
    assert ct2["engine"] == "ctranslate2" and ct2["num_sentences"] == hf["num_sentences"] == 12
    assert (tmp_path / "e2" / "hypotheses.txt").is_file()


def read_model_bin(path: Path) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` (its binary layout, version 6), aliases left out."""
    dtypes = (np.float32, np.int8, np.int16, np.int32, np.float16)
    data, offset = path.read_bytes(), 0

    def take(fmt: str):
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string() -> str:
        nonlocal offset
        size = take("H")
        offset += size
        return data[offset - size:offset - 1].decode()

    assert take("I") == 6
    string(), take("I")  # spec name, revision
    variables = {}
    for _ in range(take("I")):
        name, rank = string(), take("B")
        shape = [take("I") for _ in range(rank)]
        dtype, size = dtypes[take("B")], take("I")
        variables[name] = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize, offset).reshape(shape)
        offset += size
    return variables


@pytest.fixture(scope="module")
def absmax4(marian, tmp_path_factory) -> Path:
    """A student distilled with 4-bit absmax codes per output row: CTranslate2 int8 can hold them exactly."""
    from test_distill import distill_argv

    student = tmp_path_factory.mktemp("absmax4") / "student"
    assert main(distill_argv(marian.parent / "pairs.tsv", marian, student, "--student_decoder_layers", "1",
                             "--method", "qd", "--bits", "4", "--bucket_size", "row", "--scaling", "absmax",
                             "--max_steps", "2", "--save_strategy", "no")) == 0
    return student


def test_int8_holds_the_students_own_codes(absmax4, marian, tmp_path):
    from nmtq.quant.functional import encode_tensor

    assert student_int8_bits(absmax4) == 4 and student_int8_bits(marian) is None
    out = convert_to_ctranslate2(absmax4, tmp_path / "ct2")
    assert json.loads((out / CT2_INFO).read_text())["int8_bits"] == 4
    variables = read_model_bin(out / "model.bin")
    codes = {name: v for name, v in variables.items() if v.dtype == np.int8 and v.ndim == 2}  # not flags
    # the tied embeddings, and the Linear layers of one encoder layer (q, k, v fused: 4) and one decoder layer (7)
    assert len(codes) == 1 + 4 + 7
    assert all(np.abs(v).max() == 7 for v in codes.values())  # 4-bit absmax: -7..7, each row's largest on 7
    weights = load_model(absmax4).state_dict()
    for ct2_name, name in (("encoder/layer_0/ffn/linear_0", "model.encoder.layers.0.fc1.weight"),
                           ("decoder/embeddings", "model.shared.weight")):
        q = encode_tensor(weights[name], 4, "row", "absmax")
        assert np.array_equal(variables[f"{ct2_name}/weight"], (q.codes.long() - 7).reshape(q.shape).numpy())
        np.testing.assert_array_equal(variables[f"{ct2_name}/weight_scale"], (7 / q.ranges.reshape(-1)).numpy())
    # CTranslate2's own rounding (8 bits) of the same weights: other codes, which the student never trained with
    eight = read_model_bin(convert_to_ctranslate2(absmax4, tmp_path / "ct2-8", int8_bits=8) / "model.bin")
    assert all(np.abs(eight[name]).max() == 127 for name in codes)
    assert (out / "model.bin").stat().st_size == (tmp_path / "ct2-8" / "model.bin").stat().st_size


def test_int8_scores_what_the_student_computes_with_rounded_inputs(absmax4, tmp_path):
    """CTranslate2 int8 rounds each input row of its matrix products to 8-bit absmax codes, as nmtq's
    ``activation_bits=8`` does: with the student's codes stored exactly, the two log-likelihoods agree."""
    from nmtq.quant import Quantizer

    model, tokenizer = load_model(absmax4).eval(), load_tokenizer(absmax4)
    translator = Ct2Translator(absmax4, compute_type="int8")
    full = perplexity(model, tokenizer, GERMAN, ENGLISH, progress=False)
    quantizer = Quantizer(model, bits=4, bucket_size="row", scaling="absmax", activation_bits=8)
    rounded = perplexity(model, tokenizer, GERMAN, ENGLISH, progress=False)
    quantizer.remove()
    ct2 = translator.perplexity(GERMAN, ENGLISH)
    assert ct2 == pytest.approx(rounded, rel=1e-4)
    assert abs(ct2 / full - 1) > 5 * abs(ct2 / rounded - 1)  # far nearer the rounded inputs than the exact ones
    # 8-bit codes re-round the student's 4-bit ones onto 127 levels: other weights in model.bin, so the perplexity
    # moves (by 4e-4 to 1e-3 of it, depending on the CPU's int8 kernels: compared on the codes, not the scores)
    stored = {bits: read_model_bin(convert_to_ctranslate2(absmax4, tmp_path / f"ct2-{bits}", int8_bits=bits)
                                   / "model.bin") for bits in (4, 8)}
    codes = {bits: [v for v in stored[bits].values() if v.dtype == np.int8 and v.ndim == 2] for bits in stored}
    assert max(np.abs(v).max() for v in codes[4]) == 7 and max(np.abs(v).max() for v in codes[8]) == 127
    eight = Ct2Translator(tmp_path / "ct2-8", compute_type="int8")
    assert eight.perplexity(GERMAN, ENGLISH) != ct2


def test_int8_bits_of_an_export_folder_and_through_the_cli(absmax4, marian, tmp_path, capsys):
    from nmtq.export import export_model

    export_model(absmax4, tmp_path / "export")
    assert student_int8_bits(tmp_path / "export") == 4
    from_export = convert_to_ctranslate2(tmp_path / "export", tmp_path / "from-export") / "model.bin"
    from_run = convert_to_ctranslate2(absmax4, tmp_path / "from-run") / "model.bin"
    assert from_export.read_bytes() == from_run.read_bytes()
    assert main(["export", str(marian), str(tmp_path / "ct2"), "--ctranslate2", "--int8-bits", "7"]) == 0
    assert "CTranslate2 model (int8, 7-bit codes for " in capsys.readouterr().out
    assert max(np.abs(v).max() for v in read_model_bin(tmp_path / "ct2" / "model.bin").values()
               if v.dtype == np.int8 and v.ndim == 2) == 63
    assert main(["export", str(absmax4), str(tmp_path / "packed"), "--int8-bits", "7"]) == 2
    assert "add --ctranslate2" in capsys.readouterr().err and not (tmp_path / "packed").exists()


@pytest.mark.parametrize("quantization, bits, message", [
    ("float32", 7, "the bits are those of int8 codes"),
    ("int8", 9, "pass 2 to 8"),
    ("int8_float32", 1, "pass 2 to 8"),
])
def test_bad_int8_bits_fail_before_anything_is_written(marian, tmp_path, quantization, bits, message):
    with pytest.raises(ValueError, match=message):
        convert_to_ctranslate2(marian, tmp_path / "ct2", quantization, int8_bits=bits)
    assert list(tmp_path.iterdir()) == []


def test_batches_decoded_at_once_give_the_same_output(marian, tmp_path, capsys):
    threads = torch.get_num_threads()
    translator = Ct2Translator(marian, compute_type="float32", inter_threads=2)
    assert translator.translator.num_translators == 2
    assert torch.get_num_threads() == threads  # CTranslate2 set it to its 1 intra thread; torch keeps its own
    assert translator.translate(SOURCES, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, batch_size=2) == greedy(marian)
    with pytest.raises(ValueError, match="inter_threads=0, intra_threads=None: pass positive numbers"):
        Ct2Translator(marian, inter_threads=0)
    common = ["evaluate", str(marian), "--data", f"tsv:{marian.parent / 'pairs.tsv'}", "--inter-threads", "2",
              "--max-new-tokens", str(MAX_NEW_TOKENS), "--output-dir", str(tmp_path / "eval")]
    assert main(common) == 2 and "is for engine='ctranslate2'" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()
    assert main([*common, "--engine", "ctranslate2", "--num-beams", "1"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["engine"] == "ctranslate2"


@pytest.mark.parametrize("vendor, flags, saturates", [
    ("AuthenticAMD", "fpu sse2 avx avx2 fma", True),  # Zen 1-3: oneDNN, pairs summed in 16 bits
    ("AuthenticAMD", "avx2 avx512f avx512_vnni", False),  # Zen 4: VNNI sums in 32 bits
    ("GenuineIntel", "avx2 fma", False),  # CTranslate2 takes MKL on Intel's CPUs
    ("AuthenticAMD", "sse2 sse4_2", False),  # no AVX2: not that kernel
])
def test_which_cpus_saturate_8_bit_codes(vendor, flags, saturates, monkeypatch):
    monkeypatch.delenv("CT2_USE_MKL", raising=False)
    cpuinfo = f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n\nprocessor\t: 1\nvendor_id\t: {vendor}\n"
    assert int8_saturates_here(cpuinfo) is saturates
    monkeypatch.setenv("CT2_USE_MKL", "1")
    assert int8_saturates_here(cpuinfo) is False


@pytest.mark.parametrize("int8_bits, own, target, bits, warns", [
    (None, None, "vnni", 8, False),  # a full-precision model: CTranslate2's own 8 bits where they are exact
    (None, None, "avx2", 7, False),  # ... and the widest exact codes where pairs of products are summed in 16 bits
    (None, 4, "avx2", 4, False),  # the student's own codes wherever they are exact
    (None, 8, "vnni", 8, False),
    (None, 8, "avx2", 7, True),  # its 8-bit codes would saturate there: rounded again, with a warning
    (8, None, "avx2", 8, True),  # asked for: kept, with a warning
    (6, 4, "vnni", 6, False),
])
def test_the_int8_width_suits_the_target_cpu(int8_bits, own, target, bits, warns, caplog):
    assert int8_width(int8_bits, own, target) == bits
    assert any("saturate" in r.getMessage() for r in caplog.records) is warns


def test_export_writes_the_widest_exact_codes_for_the_target_cpu(marian, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("nmtq.ct2_int8.int8_saturates_here", lambda: True)  # an x86 CPU without VNNI, not Intel's

    def widest(out: Path) -> int:
        return max(np.abs(v).max() for v in read_model_bin(out / "model.bin").values()
                   if v.dtype == np.int8 and v.ndim == 2)

    assert main(["export", str(marian), str(tmp_path / "here"), "--ctranslate2"]) == 0
    assert "7-bit codes for avx2 CPUs" in capsys.readouterr().out and widest(tmp_path / "here") == 63
    assert json.loads((tmp_path / "here" / CT2_INFO).read_text())["int8_target_cpu"] == "avx2"
    assert main(["export", str(marian), str(tmp_path / "vnni"), "--ctranslate2", "--target_cpu", "vnni"]) == 0
    assert "8-bit codes for vnni CPUs" in capsys.readouterr().out and widest(tmp_path / "vnni") == 127
    assert main(["export", str(marian), str(tmp_path / "eight"), "--ctranslate2", "--int8-bits", "8"]) == 0
    assert "can saturate" in capsys.readouterr().out  # asked for, on a CPU that can saturate them: a warning


def test_a_translator_warns_where_this_cpu_can_saturate_the_codes(marian, tmp_path, caplog, monkeypatch):
    out = convert_to_ctranslate2(marian, tmp_path / "vnni", target_cpu="vnni")
    monkeypatch.setattr("nmtq.ct2_int8.int8_saturates_here", lambda: False)
    Ct2Translator(out)
    assert not any("saturate" in r.getMessage() for r in caplog.records)  # made for this kind of CPU
    monkeypatch.setattr("nmtq.ct2_int8.int8_saturates_here", lambda: True)
    Ct2Translator(out)
    assert any("--target-cpu here" in r.getMessage() for r in caplog.records)
    caplog.clear()
    Ct2Translator(convert_to_ctranslate2(marian, tmp_path / "avx2", target_cpu="avx2"))
    assert not any("saturate" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("argv, message", [
    (["--ctranslate2", "--target-cpu", "arm"], "pass one of ('here', 'vnni', 'avx2')"),
    (["--ctranslate2", "float32", "--target-cpu", "avx2"], "for int8 codes"),
    (["--target-cpu", "avx2"], "add --ctranslate2"),
])
def test_bad_target_cpus_fail_before_anything_is_written(marian, tmp_path, capsys, argv, message):
    assert main(["export", str(marian), str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_a_bart_teacher_with_a_byte_level_tokenizer_and_a_forced_first_token_converts(tmp_path_factory, tmp_path):
    # facebook/bart-large's layout (tests/families.py): tokenizer.json and merges, forced <s> after the start token
    from families import cached_family

    spec = cached_family(tmp_path_factory, "bart")
    model, tokenizer = load_model(spec.directory), load_tokenizer(spec.directory)
    assert model.generation_config.forced_bos_token_id == 0
    out = convert_to_ctranslate2(spec.directory, tmp_path / "ct2", "float32")
    assert (out / "tokenizer.json").is_file()  # the translator needs the tokenizer's own files
    sources = [de for de, _ in spec.pairs[:8]]
    translator = Ct2Translator(out, compute_type="float32")
    expected = translate(model, tokenizer, sources, num_beams=1, max_new_tokens=6, progress=False)
    assert translator.translate(sources, num_beams=1, max_new_tokens=6) == expected
    results = translator.translator.translate_batch(translator._source_tokens(sources[:1]), beam_size=1,
                                                    max_decoding_length=3, target_prefix=[["<s>"]])
    assert results[0].hypotheses[0][0] == "<s>"  # the forced token comes first, as in generate


@pytest.mark.parametrize("name", ["mbart50", "m2m100", "nllb", "t5"])
def test_multilingual_and_t5_teachers_convert_and_decode_as_transformers_does(name, tmp_path_factory, tmp_path):
    # the replicas of tests/families.py: their language codes, forced target code and padded vocabularies
    from families import cached_family

    spec = cached_family(tmp_path_factory, name)
    model, tokenizer = load_model(spec.directory), load_tokenizer(spec.directory)
    translator = Ct2Translator(convert_to_ctranslate2(spec.directory, tmp_path / "ct2", "float32"),
                               compute_type="float32")
    assert translator.forced_bos_token == (None if spec.forced_bos_token_id is None
                                           else tokenizer.convert_ids_to_tokens(spec.forced_bos_token_id))
    sources = [de for de, _ in spec.pairs[:6]]
    prefix = None if translator.forced_bos_token is None else [[translator.forced_bos_token]] * len(sources)
    results = translator.translator.translate_batch(translator._source_tokens(sources), beam_size=1,
                                                    max_decoding_length=5, target_prefix=prefix)
    for source, result in zip(sources, results):
        with torch.no_grad():
            generated = model.generate(**tokenizer([source], return_tensors="pt"), num_beams=1, max_new_tokens=6)
        # the step-by-step ids after the decoder start, before transformers forces </s> at its last step
        assert tokenizer.convert_tokens_to_ids(result.hypotheses[0]) == generated[0, 1:6].tolist()
    assert translator.translate(sources, num_beams=1, max_new_tokens=6) == \
        translate(model, tokenizer, sources, num_beams=1, max_new_tokens=6, progress=False)
    int8 = Ct2Translator(convert_to_ctranslate2(spec.directory, tmp_path / "int8", "int8"), compute_type="int8")
    assert len(int8.translate(sources, num_beams=2, max_new_tokens=6)) == len(sources)


def test_a_t5_students_prefix_reaches_ctranslate2_evaluation(tmp_path_factory, tmp_path, capsys):
    from families import cached_family, pairs_file

    from nmtq.evaluation import evaluate_directory

    spec = cached_family(tmp_path_factory, "t5")
    model, tokenizer = load_model(spec.directory), load_tokenizer(spec.directory)
    model.config.task_specific_params = {"translation_de_to_en": {"prefix": "translate German to English: "}}
    model.save_pretrained(tmp_path / "t5")
    tokenizer.save_pretrained(tmp_path / "t5")
    ct2_dir = convert_to_ctranslate2(tmp_path / "t5", tmp_path / "ct2", "float32")
    assert json.loads((ct2_dir / "nmtq_ct2.json").read_text())["prefixes"] == {
        "translation_de_to_en": "translate German to English: "}
    data = pairs_file(tmp_path / "pairs.tsv", spec.pairs[:8])
    settings = dict(num_beams=1, max_new_tokens=6, progress=False)
    evaluate_directory(tmp_path / "t5", data, output_dir=tmp_path / "hf", **settings)
    evaluate_directory(ct2_dir, data, output_dir=tmp_path / "c", engine="ctranslate2",
                       compute_type="float32", **settings)
    hypotheses = [(tmp_path / out / "hypotheses.txt").read_text() for out in ("hf", "c")]
    assert hypotheses[0] == hypotheses[1]
    unprefixed = translate(model, tokenizer, [de for de, _ in spec.pairs[:8]], num_beams=1, max_new_tokens=6,
                           progress=False)
    assert hypotheses[0] != "".join(f"{h}\n" for h in unprefixed)  # the prefix changed the translations
    assert main(["evaluate", str(ct2_dir), "--data", data, "--engine", "ctranslate2",
                 "--source-lang-code", "deu_Latn"]) == 2
    assert "keeps the language codes it was converted with" in capsys.readouterr().err
