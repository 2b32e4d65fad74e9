"""Each family's conventions (nmtq.conventions) on the offline replicas of tests/families.py: language codes from the
data's languages, the forced target code, T5's prefix, one-line refusals, and distil-then-evaluate end to end."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from families import cached_family, pairs_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from nmtq.cli import main
from nmtq.conventions import apply_conventions, resolve_conventions

# family: (source code, target code) for de-en, as each family's published checkpoints spell them
CODES = {"nllb": ("deu_Latn", "eng_Latn"), "mbart50": ("de_DE", "en_XX"), "m2m100": ("de", "en")}
T5_PREFIX = "translate German to English: "


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return functools.partial(cached_family, tmp_path_factory)


def load(spec):
    return AutoTokenizer.from_pretrained(spec.directory), AutoModelForSeq2SeqLM.from_pretrained(spec.directory)


@pytest.mark.parametrize("name", sorted(CODES))
def test_codes_default_from_the_datas_languages_and_the_target_code_is_forced(name, family):
    tokenizer, model = load(family(name))
    conventions = resolve_conventions(tokenizer, model.config, model.generation_config, "de", "en")
    assert (conventions.source_code, conventions.target_code) == CODES[name] and conventions.prefix == ""
    target_token = {"m2m100": "__en__"}.get(name, CODES[name][1])
    assert conventions.forced_bos_token_id == tokenizer.convert_tokens_to_ids(target_token)
    tokenizer.src_lang, tokenizer.tgt_lang = "en", "de"  # the wrong way round, to see apply_conventions set them
    if name != "m2m100":
        tokenizer.src_lang, tokenizer.tgt_lang = CODES[name][::-1]
    model.generation_config.forced_bos_token_id = None
    apply_conventions(conventions, tokenizer, model)
    source_token = {"m2m100": "__de__"}.get(name, CODES[name][0])
    assert tokenizer("ein Haus")["input_ids"][0] == tokenizer.convert_tokens_to_ids(source_token)
    assert tokenizer(text_target="a house")["input_ids"][0] == tokenizer.convert_tokens_to_ids(target_token)
    assert model.generation_config.forced_bos_token_id == conventions.forced_bos_token_id


@pytest.mark.parametrize("name", ["marian", "bart", "fsmt", "t5"])
def test_families_without_codes_get_none(name, family):
    tokenizer, model = load(family(name))
    conventions = resolve_conventions(tokenizer, model.config, model.generation_config, "de", "en")
    assert (conventions.source_code, conventions.target_code, conventions.forced_bos_token_id) == (None, None, None)


def test_t5_takes_its_prefix_from_the_model_or_the_argument_and_keeps_it_in_the_config(family):
    tokenizer, model = load(family("t5"))
    assert resolve_conventions(tokenizer, model.config, None, "de", "en").prefix == ""
    conventions = resolve_conventions(tokenizer, model.config, None, "de", "en", prefix=T5_PREFIX)
    apply_conventions(conventions, tokenizer, model)
    assert model.config.task_specific_params == {"translation_de_to_en": {"prefix": T5_PREFIX}}
    assert resolve_conventions(tokenizer, model.config, None, "de", "en").prefix == T5_PREFIX
    assert conventions.prefixed(["ein Haus"]) == [T5_PREFIX + "ein Haus"]


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("marian", {"source_code": "deu_Latn"}, "--source_lang_code: a MarianTokenizer takes no language codes"),
    ("nllb", {"prefix": T5_PREFIX}, "a m2m_100 model reads no task prefix"),
    ("nllb", {"target_code": "xx_XX"}, "--target_lang_code 'xx_XX' is not a language code of this NllbTokenizer"),
    ("mbart50", {"source_lang": "xx"}, "pass --source_lang_code: the MBart50Tokenizer needs a language code"),
    ("nllb", {"target_lang": "zh"}, "it has zho_Hans, zho_Hant"),
])
def test_bad_conventions_are_one_line_errors(name, kwargs, message, family):
    tokenizer, model = load(family(name))
    langs = {"source_lang": kwargs.pop("source_lang", "de"), "target_lang": kwargs.pop("target_lang", "en")}
    with pytest.raises(ValueError) as err:
        resolve_conventions(tokenizer, model.config, model.generation_config, langs["source_lang"],
                            langs["target_lang"], **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


DISTILL = ("--method", "kd", "--student_encoder_layers", "2", "--student_decoder_layers", "1", "--max_steps", "2",
           "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--save_strategy", "no",
           "--report_to", "none", "--use_cpu", "true", "--num_beams", "2", "--max_new_tokens", "4",
           "--logging_steps", "1")


@pytest.mark.parametrize("name", ["nllb", "mbart50", "m2m100", "t5"])
def test_distil_then_evaluate_with_the_familys_conventions(name, family, tmp_path, capsys):
    spec = family(name)
    data = pairs_file(tmp_path / "pairs.tsv", spec.pairs)
    out = tmp_path / "student"
    prefix = ["--source_prefix", T5_PREFIX] if name == "t5" else []
    assert main(["distill", "--data", data, "--teacher", str(spec.directory), "--output_dir", str(out),
                 *DISTILL, *prefix]) == 0
    tokenizer, student = load(type(spec)(**{**spec.__dict__, "directory": out}))
    if name == "t5":
        assert student.config.task_specific_params["translation_de_to_en"]["prefix"] == T5_PREFIX
    else:
        target = {"m2m100": "__en__"}.get(name, CODES[name][1])
        assert (tokenizer.src_lang, tokenizer.tgt_lang) == CODES[name]
        assert student.generation_config.forced_bos_token_id == tokenizer.convert_tokens_to_ids(target)
        with torch.no_grad():
            generated = student.generate(**tokenizer(["ein Haus"], return_tensors="pt"), max_new_tokens=3)
        assert generated[0, 1].item() == tokenizer.convert_tokens_to_ids(target)  # after the decoder start
    # nmtq evaluate reads the codes and the prefix back from the saved student
    assert main(["evaluate", str(out), "--data", data, "--num-beams", "2", "--max-new-tokens", "4",
                 "--output-dir", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_sentences"] == len(spec.pairs)
    capsys.readouterr()


@pytest.fixture(scope="module")
def family_runs(family, tmp_path_factory):
    """Every method distilled from each family's replica, once per module: ``{family: {method: output_dir}}``."""
    runs: dict = {}

    def run(name: str) -> dict:
        if name not in runs:
            spec = family(name)
            root = tmp_path_factory.mktemp(f"runs-{name}")
            prefix = ["--source_prefix", T5_PREFIX] if name == "t5" else []
            common = ["--data", pairs_file(root / "pairs.tsv", spec.pairs), "--teacher", str(spec.directory),
                      *DISTILL, *prefix, "--bits", "4", "--bucket_size", "16"]
            plans = {"fp": ["--method", "fp"],
                     "kd": ["--method", "kd", "--teacher_top_k", "4"],
                     "qd": ["--method", "qd", "--sequence_kd", "0.5"],
                     "ptq": ["--method", "ptq", "--student_name_or_path", str(root / "kd")],
                     "dq": ["--method", "dq", "--student_name_or_path", str(root / "kd")]}
            runs[name] = {}
            for method, extra in plans.items():
                assert main(["distill", *common, "--output_dir", str(root / method), *extra]) == 0, (name, method)
                runs[name][method] = root / method
        return runs[name]

    return run


@pytest.mark.parametrize("name", ["marian", "bart", "mbart50", "m2m100", "nllb", "t5", "fsmt"])
def test_every_method_distils_each_family_and_the_export_gives_the_students_logits(name, family_runs, tmp_path):
    from nmtq.export import export_model
    from nmtq.exported import load_exported
    from nmtq.models import decoder_inputs_from_labels, load_model
    from nmtq.student import depth
    from nmtq.tokenizer import encode_targets

    runs = family_runs(name)
    for method, out in runs.items():
        metrics = json.loads((out / "test" / "metrics.json").read_text())
        assert metrics["method"] == method and (metrics["encoder_layers"], metrics["decoder_layers"]) == (2, 1)
        assert depth(load_model(out).config) == (2, 1)
    export_model(runs["qd"], tmp_path / "export")
    exported, tokenizer = load_exported(tmp_path / "export")
    student = load_model(runs["qd"]).eval()
    batch = tokenizer(["ein Haus", "das Buch ist alt"], padding=True, return_tensors="pt")
    rows = encode_targets(tokenizer, ["a house", "the book is old"])["input_ids"]  # FSMT: its target dictionary
    width = max(map(len, rows))
    targets = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    decoder_input_ids = decoder_inputs_from_labels(student, targets)
    with torch.no_grad():
        ours = exported(**batch, decoder_input_ids=decoder_input_ids).logits
        theirs = student(**batch, decoder_input_ids=decoder_input_ids).logits
    assert torch.equal(ours, theirs)
