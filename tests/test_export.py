"""Quantized codes on disk and Hub-ready exports: exact round trips (packed and Huffman-coded codes, points,
pruning masks), a plain transformers copy, a model card the Hub parses, honest sizes, and clear errors."""

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ENGLISH, GERMAN
from test_distill import distill_argv

from nmtq.cli import main
from nmtq.codes import HEADER_KEY
from nmtq.exported import export_config, export_size, load_exported
from nmtq.models import load_model

# ---------------------------------------------------------------------------------------------- Hub-ready exports
STUDENTS = {  # quantized distillation; learned points (dq); quantized distillation with half the weights pruned
    "qd": ["--method", "qd", "--bits", "3", "--max_steps", "2"],
    "dq": ["--method", "dq", "--alternate_every", "1", "--bits", "2", "--max_steps", "2"],
    "pruned": ["--method", "qd", "--sparsity", "0.5", "--prune_every", "1", "--prune_end_step", "1",
               "--max_steps", "2"],
    "lstm": ["--method", "qd", "--student_type", "lstm", "--student_d_model", "16", "--student_hidden_size", "16",
             "--max_steps", "2"],
}


@pytest.fixture(params=list(STUDENTS))
def kind(request):
    return request.param


def outputs(model, tokenizer):
    """Logits on a fixed batch and beam-search translations: what must not change across an export."""
    batch = tokenizer(GERMAN[:3], text_target=ENGLISH[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        return logits, model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      num_beams=2, max_new_tokens=6)


def stored(path):
    """The tensors of an export's file and its decoding header (the JSON document of HEADER_KEY)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, json.loads(bytes(tensors[HEADER_KEY].tolist()))["tensors"]


def test_an_export_loads_into_exactly_the_quantized_student(kind, distilled, tmp_path):
    from nmtq.models import not_stored
    from nmtq.tokenizer import load_tokenizer

    student_dir, out = distilled(kind), tmp_path / "export"
    assert main(["export", str(student_dir), str(out)]) == 0
    model, tokenizer = load_exported(out)
    student = load_model(student_dir).eval()  # its weights are the decoded codes it was scored with
    with torch.no_grad():  # from_pretrained leaves them at odd alignments in the file's buffer, where CPU LSTM
        for p in student.parameters():  # kernels round differently (by 1e-9): put them in fresh memory, as in
            p.data = p.data.clone()  # training and as load_exported does
    for ours, theirs in zip(outputs(model, tokenizer), outputs(student, load_tokenizer(student_dir))):
        assert torch.equal(ours, theirs)
    tensors, header = stored(out / "model.safetensors")
    assert set(header) == set(export_config(out)["bits"]) and not (out / "quantization_config.json").exists()
    for name, info in header.items():  # packed codes of the kept weights, ranges, points (dq), packed mask (pruned)
        numel, kept, bits = math.prod(info["shape"]), info["stored_codes"], info["bits"]
        assert tensors[f"{name}.codes"].dtype == torch.uint8
        assert tensors[f"{name}.codes"].numel() == -(-kept * bits // 8) and f"{name}.ranges" in tensors
        assert (f"{name}.points" in tensors) == (kind == "dq")
        assert (f"{name}.mask" in tensors) == (kind == "pruned") and (kept < numel) == (kind == "pruned")
        if kind == "pruned":
            assert tensors[f"{name}.mask"].numel() == -(-numel // 8) and kept == pytest.approx(numel / 2, abs=1)
    # every tensor save_pretrained stores, at its own dtype, once: tied ones under one name
    # an empty placeholder under the largest quantized weight's name, so that plain transformers refuses the folder
    placeholders = {k for k in tensors if k in header or k == HEADER_KEY}
    largest = max(header, key=lambda name: math.prod(header[name]["shape"]))
    assert placeholders == {largest, HEADER_KEY} and tensors[largest].numel() == 0
    plain = {k for k in tensors if k.rsplit(".", 1)[0] not in header and k not in placeholders}
    weights, groups = student.state_dict(keep_vars=True), {}
    for name, tensor in weights.items():
        groups.setdefault(id(tensor), set()).add(name)
    for names in groups.values():
        assert len(names & (plain | set(header))) == (0 if names <= not_stored(student) else 1), names
    assert all(tensors[k].dtype == weights[k].dtype and torch.equal(tensors[k], weights[k]) for k in plain)
    size = export_size(out)
    # the tensors are the size accounting, up to rounding each packed stream (codes, mask) to whole bytes
    assert size.accounted_bytes == json.loads((student_dir / "test" / "metrics.json").read_text())["bytes"]
    assert 0 <= size.data_bytes - size.accounted_bytes <= 2 * len(header)
    assert size.file_bytes == (out / "model.safetensors").stat().st_size
    assert not list(tmp_path.glob(".export*"))  # the temporary folder was renamed into place


def test_huffman_coded_export_round_trips(kind, distilled, tmp_path):
    student_dir, packed, coded = distilled(kind), tmp_path / "packed", tmp_path / "huffman"
    assert main(["export", str(student_dir), str(packed)]) == 0
    assert main(["export", str(student_dir), str(coded), "--huffman"]) == 0
    tensors, header = stored(coded / "model.safetensors")
    assert any(k.endswith(".huffman_stream") for k in tensors) and not any(k.endswith(".codes") for k in tensors)
    for ours, theirs in zip(outputs(*load_exported(packed)), outputs(*load_exported(coded))):
        assert torch.equal(ours, theirs)
    size = export_size(coded)
    assert size.storage == "huffman"
    assert size.accounted_bytes == json.loads((student_dir / "test" / "metrics.json").read_text())["huffman_bytes"]
    # streams and masks round up to whole bytes; the table holds 2**bits lengths, the accounting one per symbol
    assert 0 <= size.data_bytes - size.accounted_bytes <= 2 * len(header)


@pytest.mark.parametrize("kind", ["qd", "dq", "pruned"])
def test_plain_transformers_refuses_a_packed_export_instead_of_loading_garbage(kind, distilled, tmp_path):
    # transformers skips an unknown quant_method with a warning and would initialise the packed weights at random
    out = tmp_path / "export"
    assert main(["export", str(distilled(kind)), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "nmtq"
    script = ("import sys\nfrom transformers import AutoModelForSeq2SeqLM\n"
              "try:\n    AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1])\n"
              "except Exception as err:\n    print(type(err).__name__, 'nmtq' in sys.modules)\n    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert (result.returncode, result.stdout.split()) == (3, ["RuntimeError", "False"]), result.stderr[-2000:]
    assert "Unknown quantization type, got nmtq" in result.stderr and HEADER_KEY in result.stderr
    model, _ = load_exported(out)  # nmtq still loads it, without the quantization_config it does not need
    assert not hasattr(model.config, "quantization_config")


def test_dequantized_checkpoint_loads_with_transformers_alone(distilled, tmp_path, capsys):
    student_dir, out = distilled("qd"), tmp_path / "export"
    assert main(["export", str(student_dir), str(out), "--dequantize"]) == 0
    model, tokenizer = load_exported(out)
    batch = tokenizer(GERMAN[:3], text_target=ENGLISH[:3], return_tensors="pt", padding=True)
    from safetensors.torch import load_file, save_file

    save_file(dict(batch), str(tmp_path / "batch.safetensors"))
    script = (
        "import sys, torch\n"
        "from safetensors.torch import load_file, save_file\n"
        "from transformers import AutoModelForSeq2SeqLM\n"
        f"model = AutoModelForSeq2SeqLM.from_pretrained({str(out / 'dequantized')!r}).eval()\n"
        f"batch = load_file({str(tmp_path / 'batch.safetensors')!r})\n"
        "with torch.no_grad():\n"
        f"    save_file({{'logits': model(**batch).logits}}, {str(tmp_path / 'logits.safetensors')!r})\n"
        "assert 'nmtq' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    with torch.no_grad():
        assert torch.equal(load_file(str(tmp_path / "logits.safetensors"))["logits"], model(**batch).logits)
    assert "without nmtq" in (out / "README.md").read_text()
    lstm = tmp_path / "lstm"
    assert main(["export", str(distilled("lstm")), str(lstm), "--dequantize"]) == 0
    assert "only after `import nmtq.lstm`" in capsys.readouterr().out
    assert "only after `import nmtq.lstm`" in (lstm / "README.md").read_text()
    assert load_model(lstm / "dequantized").config.model_type == "nmtq_lstm"


def test_model_card_metadata_parses_with_huggingface_hub(distilled, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import metadata_load

    student_dir, out = distilled("pruned"), tmp_path / "export"
    assert main(["export", str(student_dir), str(out), "--teacher", "opus-mt-de-en", "--dataset", "bible"]) == 0
    metrics = json.loads((student_dir / "test" / "metrics.json").read_text())
    card = ModelCard((out / "README.md").read_text(encoding="utf-8"))
    assert card.data.library_name == "nmtq" and card.data.language == ["de", "en"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {k: round(metrics[k], 2) for k in ("bleu", "chrf", "perplexity")}
    assert card.data.eval_results[0].dataset_name == "bible"
    meta = metadata_load(out / "README.md")
    assert "translation" in meta["tags"] and meta["model-index"][0]["results"][0]["task"]["type"] == "translation"
    assert f"{metrics['bytes']:,} bytes" in card.text and "opus-mt-de-en" in card.text
    assert f"| method | {metrics['method']}" in card.text
    # without --teacher the card describes a local teacher by its architecture and size, never by its path
    again = tmp_path / "again"
    assert main(["export", str(student_dir), str(again)]) == 0
    text = (again / "README.md").read_text()
    assert metrics["teacher"] not in text
    assert "| teacher | a marian model trained locally (" in text and metrics["teacher_card"] in text


def test_file_size_is_within_two_percent_of_the_accounting(corpus, small_teacher, tmp_path):
    student = tmp_path / "wide"  # 1.8M weights: the header (key names, metadata) is small beside the codes
    assert main(distill_argv(corpus, small_teacher, student, "--method", "qd", "--student_d_model", "256",
                             "--student_ffn_dim", "1024", "--student_decoder_layers", "1", "--max_steps", "1",
                             "--save_strategy", "no", "--bucket_size", "256")) == 0
    metrics = json.loads((student / "test" / "metrics.json").read_text())
    for flag, accounted in (([], metrics["bytes"]), (["--huffman"], metrics["huffman_bytes"])):
        out = tmp_path / f"export{''.join(flag)}"
        assert main(["export", str(student), str(out), *flag]) == 0
        size, quantized = export_size(out), export_config(out)["bits"]
        assert size.accounted_bytes == accounted and 0 < size.overhead < 0.02, str(size)
        # beyond the header, the file adds only each packed stream's rounding up to whole bytes
        assert 0 <= size.data_bytes - accounted <= 2 * len(quantized)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    from nmtq.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(GERMAN + ENGLISH, out, vocab_size=40)
    return out


def copy_with(source, target, remove=(), tokenizer_from=None):
    shutil.copytree(source, target)
    for name in remove:
        (target / name).unlink()
    if tokenizer_from is not None:
        for f in tokenizer_from.iterdir():
            shutil.copyfile(f, target / f.name)
    return target


def test_bad_students_are_refused_and_nothing_is_written(distilled, other_tokenizer, tmp_path, capsys):
    one_student, out = distilled("qd"), tmp_path / "out"
    cases = [
        (copy_with(one_student, tmp_path / "fp", remove=["quantization.json", "quantized.safetensors"]),
         "run `nmtq distill` with a quantized method"),
        (copy_with(one_student, tmp_path / "tok", tokenizer_from=other_tokenizer), "the tokenizer has"),
        (tmp_path / "missing", "is not a directory"),
    ]
    for model_dir, message in cases:
        assert main(["export", str(model_dir), str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    assert main(["export", str(one_student), str(tmp_path / "notes")]) == 2
    assert "is not an nmtq export" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]
    assert main(["export", str(one_student), str(out)]) == 0 and main(["export", str(one_student), str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".out*"))  # replaced in place


def rewrite(path, change):
    """Rewrite an export's model.safetensors after ``change(tensors, header)`` edits it in place."""
    from safetensors.torch import save_file

    tensors, header = stored(path)
    change(tensors, header)
    document = {"format": "nmtq.codes.v2", "storage": "packed", "tensors": header}
    tensors[HEADER_KEY] = torch.frombuffer(bytearray(json.dumps(document).encode()), dtype=torch.uint8)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_damaged_exports_raise_value_errors_that_say_what_to_fix(distilled, other_tokenizer, tmp_path):
    good = tmp_path / "good"
    assert main(["export", str(distilled("qd")), str(good)]) == 0
    name = "model.encoder.layers.0.fc1.weight"

    def broken(label, edit):
        folder = copy_with(good, tmp_path / label)
        edit(folder)
        return folder

    def truncate(folder):
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) - 100])

    def fewer_bits(folder):  # codes packed at 3 bits declared as 2: the byte count no longer fits
        rewrite(folder / "model.safetensors", lambda t, h: h[name].update(bits=2))
        config = json.loads((folder / "config.json").read_text())
        config["quantization_config"]["bits"][name] = 2
        (folder / "config.json").write_text(json.dumps(config))

    def out_of_range(folder):  # a packed 3-bit code of 7 under 2 points
        def edit(tensors, header):
            tensors[f"{name}.points"] = torch.tensor([0.0, 1.0])
            tensors[f"{name}.codes"][0] = 7
        rewrite(folder / "model.safetensors", edit)

    cases = [
        (broken("truncated", truncate), "truncated or corrupted"),
        (broken("garbage", lambda f: (f / "model.safetensors").write_bytes(b"\x10" * 64)), "truncated or corrupted"),
        (broken("no-config", lambda f: (f / "config.json").unlink()), "is not an nmtq export"),
        (broken("bits", fewer_bits), "cannot be decoded"),
        (broken("range", out_of_range), "out of range"),
        (copy_with(good, tmp_path / "tokenizer", tokenizer_from=other_tokenizer), "the tokenizer has .* the model"),
    ]
    for folder, message in cases:
        with pytest.raises(ValueError, match=message):
            load_exported(folder)
    load_exported(good)  # the original is untouched


@pytest.mark.parametrize("kind", [*STUDENTS, "huffman"])
def test_from_pretrained_loads_an_export_as_load_exported_does(kind, distilled, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    import nmtq  # noqa: F401  registers the quantization method "nmtq" with transformers

    out = tmp_path / "export"
    huffman = ["--huffman"] if kind == "huffman" else []
    assert main(["export", str(distilled("qd" if huffman else kind)), str(out), *huffman]) == 0
    expected, tokenizer = load_exported(out)
    model = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    for ours, theirs in zip(outputs(model, tokenizer), outputs(expected, tokenizer)):
        assert torch.equal(ours, theirs)
    # save_pretrained writes the codes it holds through export's writer: the same file, byte for byte
    again = tmp_path / "again"
    model.save_pretrained(again)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert export_config(again) == export_config(out)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(again).eval()
    for ours, theirs in zip(outputs(reloaded, tokenizer), outputs(expected, tokenizer)):
        assert torch.equal(ours, theirs)


def test_save_pretrained_refuses_codes_that_no_longer_hold_the_weights(distilled, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    import nmtq  # noqa: F401
    from nmtq.hf import decode_weights

    out = tmp_path / "export"
    assert main(["export", str(distilled("qd")), str(out)]) == 0
    model = decode_weights(AutoModelForSeq2SeqLM.from_pretrained(out))
    model.save_pretrained(tmp_path / "decoded")  # decoded but unchanged: still its codes
    assert (tmp_path / "decoded" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.model.encoder.layers[0].fc1.weight.add_(0.1)  # fine-tuned in full precision: the codes are stale
    with pytest.raises(ValueError, match="fc1.weight was changed after loading"):
        model.save_pretrained(tmp_path / "changed")
    assert not (tmp_path / "changed" / "model.safetensors").exists()


def test_from_pretrained_keeps_the_codes_packed_in_memory(distilled, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForSeq2SeqLM

    import nmtq  # noqa: F401
    from nmtq.hf import decode_weights, resident_bytes

    out = tmp_path / "export"
    assert main(["export", str(distilled("qd")), str(out)]) == 0
    packed = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    decoded = decode_weights(AutoModelForSeq2SeqLM.from_pretrained(out).eval())
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:  # its tensors, less the decoding header
        keys = set(f.keys()) - {HEADER_KEY}
        stored = sum(f.get_tensor(k).nbytes for k in keys)
    names = {type(m).__name__ for m in packed.modules()}
    assert {"PackedLinear", "PackedEmbedding"} & names and not {"PackedLinear"} & {type(m).__name__ for m in
                                                                                    decoded.modules()}
    # the weights held: the file's tensors, plus the tables the model computes and never stores (sinusoidal
    # positions); decoded, the quantized weights take 4 bytes each instead of their packed codes
    computed = sum(t.nbytes for k, t in packed.state_dict().items() if k not in keys and "_packed." not in k)
    assert computed > 0 and resident_bytes(packed) == stored + computed
    assert resident_bytes(decoded) > 2 * resident_bytes(packed)
    from nmtq.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(out)
    for ours, theirs in zip(outputs(packed, tokenizer), outputs(decoded, tokenizer)):
        assert torch.equal(ours, theirs)
