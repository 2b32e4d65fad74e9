"""Students of every teacher family nmtq knows (Marian, BART, mBART, M2M100/NLLB, FSMT, T5, mT5), built from tiny
random configs: depth fields, which teacher layer each student layer copies, T5's relative-attention bias, the
generation config, decoder inputs, and the one-line refusal of a family nmtq does not know."""

from __future__ import annotations

import functools

import pytest
import torch
from families import cached_family, pairs_file
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    FSMTConfig,
    FSMTForConditionalGeneration,
    M2M100Config,
    M2M100ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    MT5Config,
    MT5ForConditionalGeneration,
    PegasusConfig,
    PegasusForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from nmtq.cli import main
from nmtq.models import decoder_inputs_from_labels
from nmtq.student import depth, make_student

BART_SIZES = dict(d_model=16, encoder_layers=6, decoder_layers=6, encoder_attention_heads=2,
                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                  pad_token_id=1, eos_token_id=2, bos_token_id=0, decoder_start_token_id=2)
T5_SIZES = dict(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=6, num_decoder_layers=6, num_heads=2,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def teacher(family: str):
    """A tiny seeded 6+6 teacher of ``family`` in eval mode, with generation settings a Hub teacher would carry."""
    torch.manual_seed(0)
    if family == "marian":
        model = MarianMTModel(MarianConfig(vocab_size=40, **{**BART_SIZES, "pad_token_id": 39,
                                                             "decoder_start_token_id": 39, "eos_token_id": 0}))
    elif family == "bart":
        model = BartForConditionalGeneration(BartConfig(vocab_size=40, **BART_SIZES))
    elif family == "mbart":
        model = MBartForConditionalGeneration(MBartConfig(vocab_size=40, **BART_SIZES))
    elif family == "m2m_100":
        model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=40, **BART_SIZES))
    elif family == "fsmt":  # separate dictionaries, as facebook/wmt19-de-en
        model = FSMTForConditionalGeneration(FSMTConfig(langs=["de", "en"], src_vocab_size=40, tgt_vocab_size=30,
                                                        **BART_SIZES))
    elif family == "t5":
        model = T5ForConditionalGeneration(T5Config(**T5_SIZES))
    else:
        model = MT5ForConditionalGeneration(MT5Config(**T5_SIZES))
    model.generation_config.num_beams = 5
    model.generation_config.max_length = 77
    model.generation_config.forced_bos_token_id = 7  # a target-language code, as mBART-50 and NLLB force
    model.generation_config.bad_words_ids = [[3]]
    return model.eval()


FAMILIES = ("marian", "bart", "mbart", "m2m_100", "fsmt", "t5", "mt5")
LAYER = {"marian": "model.{side}.layers.{i}.", "bart": "model.{side}.layers.{i}.", "mbart": "model.{side}.layers.{i}.",
         "m2m_100": "model.{side}.layers.{i}.", "fsmt": "model.{side}.layers.{i}.", "t5": "{side}.block.{i}.",
         "mt5": "{side}.block.{i}."}


def layer_state(model, family: str, side: str, index: int) -> dict[str, torch.Tensor]:
    prefix = LAYER[family].format(side=side, i=index)
    return {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def sample_batch(model) -> dict[str, torch.Tensor]:
    source_vocab = model.get_input_embeddings().weight.shape[0]
    labels = torch.tensor([[5, 6, 8, 2], [9, 10, -100, -100]])
    return {"input_ids": torch.tensor([[4, 5, 6, 2], [7, 8, 2, 1]]) % source_vocab,
            "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
            "decoder_input_ids": decoder_inputs_from_labels(model, labels)}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_deep_encoder_shallow_decoder_student_copies_a_spread_of_the_teachers_layers(family):
    big = teacher(family)
    student = make_student(big, encoder_layers=3, decoder_layers=1)
    assert type(student) is type(big) and depth(student.config) == (3, 1) and depth(big.config) == (6, 6)
    # encoder layers 0, 1, 2 of the student are the teacher's 0, 3 (2.5 rounded up) and 5; decoder 0 is its 5
    for side, picks in (("encoder", [0, 3, 5]), ("decoder", [5])):
        for j, i in enumerate(picks):
            mine, theirs = layer_state(student, family, side, j), layer_state(big, family, side, i)
            for name in mine:
                if "relative_attention_bias" in name:
                    continue  # checked below: it comes from the teacher's first block
                assert torch.equal(mine[name], theirs[name]), (side, j, name)
    assert torch.equal(student.get_input_embeddings().weight, big.get_input_embeddings().weight)
    assert torch.equal(student.get_output_embeddings().weight, big.get_output_embeddings().weight)
    with torch.no_grad():
        assert student(**sample_batch(student)).logits.shape[-1] == big.get_output_embeddings().weight.shape[0]


@pytest.mark.parametrize("family", ["t5", "mt5"])
def test_t5_students_take_the_relative_attention_bias_from_the_teachers_first_block(family):
    big = teacher(family)
    bias = "layer.0.SelfAttention.relative_attention_bias.weight"
    student = make_student(big, encoder_layers=1, decoder_layers=1)  # its only blocks copy the teacher's last
    for side in ("encoder", "decoder"):
        assert bias not in layer_state(big, family, side, 5)
        assert torch.equal(layer_state(student, family, side, 0)[bias], layer_state(big, family, side, 0)[bias])
        assert torch.equal(layer_state(student, family, side, 0)["layer.0.SelfAttention.q.weight"],
                           layer_state(big, family, side, 5)["layer.0.SelfAttention.q.weight"])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_student_as_deep_as_its_teacher_is_the_teacher(family):
    big = teacher(family)
    student = make_student(big).eval()
    batch = sample_batch(big)
    with torch.no_grad():
        assert torch.equal(student(**batch).logits, big(**batch).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_student_carries_the_teachers_generation_config_through_save_and_load(family, tmp_path):
    student = make_student(teacher(family), encoder_layers=2, decoder_layers=1)
    student.save_pretrained(tmp_path)
    loaded = type(student).from_pretrained(tmp_path).generation_config
    assert (loaded.num_beams, loaded.max_length, loaded.forced_bos_token_id, loaded.bad_words_ids) == \
        (5, 77, 7, [[3]])
    assert loaded.decoder_start_token_id == student.config.decoder_start_token_id


@pytest.mark.parametrize("family", FAMILIES)
def test_narrower_students_start_from_scratch_with_the_teachers_vocabulary(family):
    big = teacher(family)
    student = make_student(big, encoder_layers=2, decoder_layers=2, d_model=8, ffn_dim=16)
    assert student.config.d_model == 8 and depth(student.config) == (2, 2)
    assert student.get_output_embeddings().weight.shape == (big.get_output_embeddings().weight.shape[0], 8)
    with torch.no_grad():
        student(**sample_batch(student))


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_inputs_are_what_the_model_uses_for_its_own_loss(family):
    model = teacher(family)
    labels = torch.tensor([[5, 6, 8, 2], [9, 10, -100, -100]])
    batch = sample_batch(model)
    with torch.no_grad():
        logits = model(**batch).logits
        own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=batch["decoder_input_ids"], labels=labels).loss
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert own.item() == pytest.approx(expected.item(), rel=1e-4)  # a wrong shift is far off
    # mBART's and FSMT's own shifts wrap each row's last label (its eos or language code) to the front
    starts = [2, 10] if family in ("mbart", "fsmt") else [model.config.decoder_start_token_id] * 2
    assert batch["decoder_input_ids"][:, 0].tolist() == starts
    assert batch["decoder_input_ids"][:, 1:].tolist() == [[5, 6, 8], [9, 10, model.config.pad_token_id]]


def test_a_family_nmtq_does_not_know_is_refused_in_one_line():
    pegasus = PegasusForConditionalGeneration(PegasusConfig(vocab_size=40, **BART_SIZES))
    with pytest.raises(ValueError) as err:
        make_student(pegasus, encoder_layers=1, decoder_layers=1)
    message = str(err.value)
    assert "\n" not in message and "'pegasus'" in message and "--student_name_or_path" in message
    assert "m2m_100" in message and "t5" in message


@pytest.fixture(scope="session")
def family_teacher(tmp_path_factory):
    return functools.partial(cached_family, tmp_path_factory)


DISTILL = ("--method", "kd", "--student_encoder_layers", "1", "--student_decoder_layers", "1", "--max_steps", "1",
           "--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true")


def test_an_fsmt_teacher_with_separate_dictionaries_is_distilled_with_target_ids(family_teacher, tmp_path):
    # transformers' FSMT tokenizer encodes text_target with the source dictionary (154 ids here, as
    # facebook/wmt19-de-en's does), past the 128 target ids its model predicts; nmtq encodes targets with the
    # target dictionary and the target language's rules
    from nmtq.tokenizer import encode_targets

    spec = family_teacher("fsmt")
    tokenizer = AutoTokenizer.from_pretrained(spec.directory)
    english = [en for _, en in spec.pairs]
    labels = encode_targets(tokenizer, english)["input_ids"]
    assert max(map(max, labels)) < 128 <= max(map(max, tokenizer(text_target=english)["input_ids"]))
    assert tokenizer.batch_decode(labels[:3], skip_special_tokens=True) == english[:3]
    out = tmp_path / "student"
    assert main(["distill", "--data", pairs_file(tmp_path / "pairs.tsv", spec.pairs), "--teacher",
                 str(spec.directory), "--output_dir", str(out), *DISTILL]) == 0
    assert (out / "model.safetensors").is_file()


def test_targets_encoded_outside_the_teachers_output_vocabulary_are_refused_before_anything_is_written(
        family_teacher, tmp_path, capsys):
    marian, nllb = family_teacher("marian"), family_teacher("nllb")
    teacher = tmp_path / "teacher"
    model = AutoModelForSeq2SeqLM.from_pretrained(marian.directory)
    model.save_pretrained(teacher)
    AutoTokenizer.from_pretrained(nllb.directory).save_pretrained(teacher)  # NLLB's codes beside a Marian model
    out = tmp_path / "never"
    assert main(["distill", "--data", pairs_file(tmp_path / "pairs.tsv", marian.pairs), "--teacher", str(teacher),
                 "--output_dir", str(out), "--target_lang_code", "zul_Latn", *DISTILL]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    rows = model.get_output_embeddings().weight.shape[0]
    assert "encodes a target token as id" in error and f"has {rows:,} output ids" in error and not out.exists()


def test_a_tokenizer_that_is_not_the_models_is_refused_before_anything_is_written(family_teacher, tmp_path, capsys):
    marian, nllb = family_teacher("marian"), family_teacher("nllb")
    teacher = tmp_path / "teacher"
    model = AutoModelForSeq2SeqLM.from_pretrained(marian.directory)
    model.save_pretrained(teacher)
    tokenizer = AutoTokenizer.from_pretrained(nllb.directory, src_lang="zul_Latn")
    tokenizer.save_pretrained(teacher)  # NLLB's tokenizer beside a Marian model: its last codes lie past its rows
    rows = model.get_input_embeddings().weight.shape[0]
    assert tokenizer("ein Haus")["input_ids"][0] == tokenizer.convert_tokens_to_ids("zul_Latn") >= rows
    out = tmp_path / "never"
    assert main(["distill", "--data", pairs_file(tmp_path / "pairs.tsv", marian.pairs), "--teacher", str(teacher),
                 "--output_dir", str(out), "--source_lang_code", "zul_Latn", *DISTILL]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "encodes a source token as id" in error and f"has {rows:,} input embeddings" in error
    assert not out.exists()
