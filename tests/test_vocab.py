"""Vocabulary trimming (nmtq.vocab, ``nmtq distill --trim_vocabulary``) on the offline replicas of tests/families.py."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from families import T5_PREFIX, cached_family, pairs_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from nmtq.cli import main
from nmtq.files import TRIMMED_VOCABULARY
from nmtq.models import decoder_inputs_from_labels
from nmtq.student import make_student
from nmtq.vocab import (
    TrimmedTeacher,
    VocabularyTrim,
    _bpe_requirements,
    plan_trim,
    trim_model,
    trim_tokenizer,
)

TRIMMABLE = ["marian", "bart", "mbart50", "m2m100", "nllb", "t5"]
TRAIN = 30  # the first pairs are the training data; the rest hold words it lacks


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return functools.partial(cached_family, tmp_path_factory)


def load(directory):
    return AutoTokenizer.from_pretrained(directory), AutoModelForSeq2SeqLM.from_pretrained(directory).eval()


def training_text(spec, pairs=None):
    pairs = spec.pairs[:TRAIN] if pairs is None else pairs
    return [(spec.prefix or "") + de for de, _ in pairs], [en for _, en in pairs]


def trimmed(spec):
    """The family's tokenizer and teacher, and the trim planned from the training pairs' ids."""
    tokenizer, teacher = load(spec.directory)
    sources, targets = training_text(spec)
    ids = tokenizer(sources)["input_ids"] + tokenizer(text_target=targets)["input_ids"]
    return tokenizer, teacher, plan_trim(tokenizer, teacher, ids)


def test_a_trim_maps_kept_ids_in_order_and_refuses_the_rest():
    trim = VocabularyTrim(kept=(0, 2, 5), old_size=6)
    assert trim.remap([5, 0, 2]) == [2, 0, 1] and trim.size == 3
    assert trim.remap_optional(5) == 2 and trim.remap_optional(3) is None and trim.remap_optional([3, 2]) == [1]
    with pytest.raises(ValueError, match="token id 3 is not in the trimmed vocabulary"):
        trim.remap([3])
    for kept in [(2, 0), (0, 0), (), (0, 6)]:
        with pytest.raises(ValueError, match="ascending, distinct and within 0..5"):
            VocabularyTrim(kept=kept, old_size=6)


def test_bpe_keeps_the_pieces_each_kept_token_is_merged_from():
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "x": 5, "y": 6, "xy": 7}
    model = {"type": "BPE", "vocab": vocab, "merges": ["a b", ["ab", "c"], "x y"]}
    assert _bpe_requirements({"model": model}, {4}) == {0, 1, 2, 3}  # abc <- ab + c <- a + b
    assert _bpe_requirements({"model": model}, {7}) == {5, 6}
    byte_level = {"model": model, "pre_tokenizer": {"type": "ByteLevel"}}  # any byte stays encodable
    assert _bpe_requirements(byte_level, {3}) == {0, 1, 2, 5, 6}
    unigram = {"model": {"type": "Unigram", "vocab": [["a", 0.0], ["<0x41>", 0.0]], "byte_fallback": True}}
    assert _bpe_requirements(unigram, {0}) == {1}


@pytest.mark.parametrize("name", TRIMMABLE)
def test_the_trimmed_tokenizer_gives_the_training_text_its_kept_ids(name, family, tmp_path):
    spec = family(name)
    tokenizer, _, trim = trimmed(spec)
    assert trim.size < trim.old_size
    small = trim_tokenizer(tokenizer, trim)
    made_up = getattr(tokenizer, "num_madeup_words", 0)  # M2M100's 8 rows after its language codes
    assert type(small) is type(tokenizer) and len(small) + made_up == trim.size
    sources, targets = training_text(spec)
    for texts, target in ((sources, False), (targets, True)):
        encode = (lambda t, texts=texts: t(text_target=texts)) if target else (lambda t, texts=texts: t(texts))
        expected = [trim.remap(ids) for ids in encode(tokenizer)["input_ids"]]
        assert encode(small)["input_ids"] == expected
        assert small.batch_decode(expected, skip_special_tokens=True) == \
            tokenizer.batch_decode(encode(tokenizer)["input_ids"], skip_special_tokens=True)
    small.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(sources)["input_ids"] == small(sources)["input_ids"] and len(again) == len(small)
    unseen, _ = training_text(spec, spec.pairs[TRAIN:])
    assert all(max(ids) < trim.size for ids in small(unseen)["input_ids"])  # unknown pieces become <unk>


@pytest.mark.parametrize("name", TRIMMABLE)
def test_before_training_the_trimmed_student_gives_the_untrimmed_logits_on_the_kept_ids(name, family):
    spec = family(name)
    tokenizer, teacher, trim = trimmed(spec)
    sources, targets = training_text(spec)
    batch = tokenizer(sources[:4], text_target=targets[:4], padding=True, return_tensors="pt")
    student = make_student(teacher, 2, 1).eval()
    small = trim_model(copy.deepcopy(student), trim)
    decoder_input_ids = decoder_inputs_from_labels(student, batch["labels"])
    old = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
               decoder_input_ids=decoder_input_ids)
    new = {**old, **{k: torch.tensor([trim.remap(row) for row in old[k].tolist()])
                     for k in ("input_ids", "decoder_input_ids")}}
    index = trim.index()
    with torch.no_grad():
        assert torch.equal(small(**new).logits, student(**old).logits[..., index])
        teacher_logits = teacher(**old).logits
        seen = TrimmedTeacher(teacher, trim)(**new).logits
    assert torch.equal(seen, teacher_logits[..., index])
    # the teacher's distribution over the kept ids, renormalised: what the KD loss's softmax makes of it
    restricted = teacher_logits.softmax(-1)[..., index]
    torch.testing.assert_close(seen.softmax(-1), restricted / restricted.sum(-1, keepdim=True))
    assert small.config.vocab_size == trim.size == small.get_input_embeddings().num_embeddings
    tied = student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert (small.get_output_embeddings().weight is small.get_input_embeddings().weight) == tied
    small_tokenizer = trim_tokenizer(tokenizer, trim)
    for field in ("decoder_start_token_id", "forced_bos_token_id", "eos_token_id", "pad_token_id"):
        before, after = getattr(student.generation_config, field), getattr(small.generation_config, field)
        assert (after is None) == (before is None), field
        if before is not None:
            assert small_tokenizer.convert_ids_to_tokens(after) == tokenizer.convert_ids_to_tokens(before), field


def test_fsmt_is_refused_in_one_line(family, tmp_path, capsys):
    spec = family("fsmt")
    tokenizer, teacher = load(spec.directory)
    with pytest.raises(ValueError, match="already has one dictionary per language") as err:
        plan_trim(tokenizer, teacher, [])
    assert "\n" not in str(err.value)
    out = tmp_path / "student"
    assert main(["distill", "--data", pairs_file(tmp_path / "pairs.tsv", spec.pairs), "--teacher",
                 str(spec.directory), "--output_dir", str(out), "--trim_vocabulary", "true", "--method", "kd",
                 "--sequence_kd", "1", "--teacher_cache_dir", str(tmp_path / "cache"), "--max_steps", "1",
                 "--report_to", "none", "--use_cpu", "true"]) == 2
    assert "drop --trim_vocabulary" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "cache").exists()  # refused before the teacher translated


DISTILL = ("--student_encoder_layers", "2", "--student_decoder_layers", "1", "--max_steps", "2",
           "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--save_strategy", "no",
           "--report_to", "none", "--use_cpu", "true", "--num_beams", "2", "--max_new_tokens", "4",
           "--bits", "4", "--bucket_size", "16", "--trim_vocabulary", "true")


@pytest.mark.parametrize("name", ["nllb", "mbart50", "m2m100", "t5"])
def test_a_trimmed_student_distils_evaluates_exports_and_converts(name, family, tmp_path, capsys):
    from nmtq.ct2 import Ct2Translator, convert_to_ctranslate2
    from nmtq.evaluation import translate
    from nmtq.export import export_model
    from nmtq.exported import load_exported
    from nmtq.models import load_model
    from nmtq.tokenizer import load_tokenizer

    spec = family(name)
    data = pairs_file(tmp_path / "train.tsv", spec.pairs[:TRAIN])
    prefix = ["--source_prefix", T5_PREFIX] if name == "t5" else []
    out = tmp_path / "qd"
    assert main(["distill", "--data", data, "--teacher", str(spec.directory), "--output_dir", str(out), *DISTILL,
                 *prefix, "--method", "qd", "--teacher_top_k", "4", "--sequence_kd", "0.5"]) == 0
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    vocabulary = metrics["vocabulary"]
    teacher = load_model(spec.directory)
    assert vocabulary["teacher_tokens"] == teacher.get_output_embeddings().weight.shape[0]
    assert vocabulary["fp32_bytes_saved"] == \
        (vocabulary["teacher_tokens"] - vocabulary["kept_tokens"]) * teacher.config.d_model * 4 * \
        len({id(m.get_input_embeddings().weight) for m in (teacher,)} |
            {id(teacher.get_output_embeddings().weight)}) + \
        (vocabulary["teacher_tokens"] - vocabulary["kept_tokens"]) * 4 * hasattr(teacher, "final_logits_bias")
    tokenizer, student = load_tokenizer(out), load_model(out).eval()
    made_up = getattr(tokenizer, "num_madeup_words", 0)  # M2M100's 8 rows after its language codes
    assert len(tokenizer) + made_up == student.config.vocab_size == vocabulary["kept_tokens"] == \
        len(json.loads((out / TRIMMED_VOCABULARY).read_text())["kept"])
    if spec.forced_bos_token_id is not None:  # the target code, in the student's ids
        teacher_tokenizer = load_tokenizer(spec.directory)
        assert tokenizer.convert_ids_to_tokens(student.generation_config.forced_bos_token_id) == \
            teacher_tokenizer.convert_ids_to_tokens(spec.forced_bos_token_id)
    # evaluated on all the pairs: those with words the training data lacks too
    everything = pairs_file(tmp_path / "all.tsv", spec.pairs)
    assert main(["evaluate", str(out), "--data", everything, "--num-beams", "2", "--max-new-tokens", "4",
                 "--output-dir", str(tmp_path / "eval")]) == 0
    export_model(out, tmp_path / "export")
    exported, exported_tokenizer = load_exported(tmp_path / "export")
    assert len(exported_tokenizer) == len(tokenizer)
    batch = tokenizer(["ein Haus", "das Buch ist alt"], padding=True, return_tensors="pt")
    decoder_input_ids = decoder_inputs_from_labels(student, tokenizer(text_target=["a house", "the book"],
                                                                      padding=True, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        assert torch.equal(exported(**batch, decoder_input_ids=decoder_input_ids).logits,
                           student(**batch, decoder_input_ids=decoder_input_ids).logits)
    sources = [(spec.prefix or "") + de for de, _ in spec.pairs]
    translator = Ct2Translator(convert_to_ctranslate2(out, tmp_path / "ct2", "float32"), compute_type="float32")
    assert translator.translate(sources, num_beams=1, max_new_tokens=6) == \
        translate(student, tokenizer, sources, num_beams=1, max_new_tokens=6, progress=False)
    int8 = Ct2Translator(convert_to_ctranslate2(out, tmp_path / "int8", "int8"), compute_type="int8")
    assert len(int8.translate(sources, num_beams=2, max_new_tokens=6)) == len(sources)
    # Apprentice's scheme C: the trimmed student, distilled again at low precision, stays trimmed
    again = tmp_path / "again"
    assert main(["distill", "--data", data, "--teacher", str(spec.directory), "--output_dir", str(again), *DISTILL,
                 *prefix, "--method", "qd", "--student_name_or_path", str(out)]) == 0
    assert load_model(again).config.vocab_size == vocabulary["kept_tokens"]
    untrimmed = [a for a in DISTILL if a not in ("--trim_vocabulary", "true")]
    assert main(["distill", "--data", data, "--teacher", str(spec.directory), "--output_dir", str(tmp_path / "no"),
                 *untrimmed, *prefix, "--method", "qd", "--student_name_or_path", str(out)]) == 2
    assert "pass --trim_vocabulary" in capsys.readouterr().err and not (tmp_path / "no").exists()
