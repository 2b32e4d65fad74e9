"""Resuming only from whole checkpoints: truncated safetensors, pickled weights and missing shards are passed over."""

import json
import logging
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from nmtq.checkpoints import (
    checkpoint_problem,
    last_complete_checkpoint,
    resolve_checkpoint,
    safetensors_problem,
    weights_are_complete,
    weights_problem,
)
from nmtq.errors import NmtqError
from nmtq.runs import process_log_level, show_messages


@pytest.fixture
def shown(capsys):
    """Shows nmtq's messages as a training run does, and gives what they printed; the level is restored after."""
    level = logging.getLogger("nmtq").level
    show_messages(logging.INFO)
    capsys.readouterr()
    yield lambda: capsys.readouterr().out
    logging.getLogger("nmtq").setLevel(level)


def make_checkpoint(run: Path, step: int, weights: bool = True, state: str = '{"global_step": 0}') -> Path:
    """``run/checkpoint-STEP`` as the Trainer leaves it: a couple of tensors in model.safetensors, then its state."""
    checkpoint = run / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    if weights:
        save_file({"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.ones(3)},
                  str(checkpoint / "model.safetensors"))
    (checkpoint / "trainer_state.json").write_text(state)
    return checkpoint


def truncate_to_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def hand_made_safetensors(path: Path) -> int:
    """Two float32 values written byte by byte as the format says; returns the file's size: 8 + header + 8."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, 2.0))
    return 8 + len(header) + 8


def training_args(run: Path, value) -> SimpleNamespace:
    return SimpleNamespace(resume_from_checkpoint=value, output_dir=str(run), process_index=0)


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_complete_one(tmp_path, shown):
    for step in (2, 4, 6):
        make_checkpoint(tmp_path, step)
    truncate_to_half(tmp_path / "checkpoint-6" / "model.safetensors")
    assert last_complete_checkpoint(str(tmp_path), report_skipped=True) == str(tmp_path / "checkpoint-4")
    messages = shown().splitlines()
    assert len(messages) == 1 and messages[0].startswith("[nmtq] skipping checkpoint-6: its model.safetensors is "
                                                         "truncated")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4") and shown() == ""
    assert weights_are_complete(tmp_path / "checkpoint-4") and not weights_are_complete(tmp_path / "checkpoint-6")


def test_resume_last_says_what_it_skipped_and_resumes_from_the_complete_one(tmp_path, shown):
    make_checkpoint(tmp_path, 2)
    make_checkpoint(tmp_path, 4)
    truncate_to_half(tmp_path / "checkpoint-4" / "model.safetensors")
    assert resolve_checkpoint(training_args(tmp_path, "last")) == str(tmp_path / "checkpoint-2")
    out = shown()
    assert "[nmtq] skipping checkpoint-4: its model.safetensors is truncated" in out
    assert f"[nmtq] resuming from {tmp_path / 'checkpoint-2'}" in out


def test_only_the_main_process_prints(tmp_path, shown):
    make_checkpoint(tmp_path, 2)
    replica = SimpleNamespace(should_log=False, log_level="passive", get_process_log_level=lambda: logging.WARNING)
    show_messages(process_log_level(replica))  # what start_run does on another process
    assert resolve_checkpoint(training_args(tmp_path, "last")) == str(tmp_path / "checkpoint-2")
    assert shown() == ""


def test_a_checkpoint_with_only_pickled_weights_is_never_resumed_from(tmp_path):
    make_checkpoint(tmp_path, 2)
    pickled = make_checkpoint(tmp_path, 4, weights=False)
    torch.save({"weight": torch.ones(3)}, pickled / "pytorch_model.bin")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert weights_problem(pickled) == ("it has no model.safetensors, only pytorch_model.bin (a pickle, which nmtq "
                                        "does not load)")
    with pytest.raises(NmtqError, match="only pytorch_model.bin"):
        resolve_checkpoint(training_args(tmp_path, str(pickled)))


def test_a_checkpoint_without_weights_is_skipped_and_none_means_none(tmp_path):
    make_checkpoint(tmp_path, 2, weights=False)
    assert weights_problem(tmp_path / "checkpoint-2") == "it has no model.safetensors"
    assert last_complete_checkpoint(str(tmp_path)) is None
    with pytest.raises(NmtqError, match="no complete checkpoint-"):
        resolve_checkpoint(training_args(tmp_path, "last"))


def test_an_explicit_incomplete_checkpoint_is_a_one_line_error_that_says_what_to_pass(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 4)
    truncate_to_half(checkpoint / "model.safetensors")
    with pytest.raises(NmtqError) as err:
        resolve_checkpoint(training_args(tmp_path, str(checkpoint)))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"--resume_from_checkpoint {str(checkpoint)!r} cannot be resumed from: its "
                              "model.safetensors is truncated (")
    assert message.endswith("pass --resume_from_checkpoint last (the newest complete checkpoint) or another "
                            "checkpoint")


def test_an_explicit_complete_checkpoint_is_taken_as_it_is(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 4)
    assert resolve_checkpoint(training_args(tmp_path, str(checkpoint))) == str(checkpoint)
    for value in (None, "false", "none", ""):
        assert resolve_checkpoint(training_args(tmp_path, value)) is None
    with pytest.raises(NmtqError, match="is not a directory; pass --resume_from_checkpoint last"):
        resolve_checkpoint(training_args(tmp_path, str(tmp_path / "checkpoint-9")))


def test_cut_off_state_files_are_passed_over(tmp_path):
    make_checkpoint(tmp_path, 2)
    (tmp_path / "checkpoint-2" / "quantizer.json").write_text("{}")
    make_checkpoint(tmp_path, 4)  # killed before the callback wrote quantizer.json
    make_checkpoint(tmp_path, 6, state='{"global_st')  # killed while the Trainer wrote its state
    (tmp_path / "checkpoint-8").mkdir()  # killed at once
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert last_complete_checkpoint(str(tmp_path), "quantizer.json") == str(tmp_path / "checkpoint-2")
    assert checkpoint_problem(tmp_path / "checkpoint-4", "quantizer.json") == \
        "its quantizer.json is missing or not whole JSON (not a checkpoint, or its save was cut off)"
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None


def test_sharded_weights_need_every_listed_shard_whole(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 2, weights=False)
    shards = {"weight": "model-00001-of-00002.safetensors", "bias": "model-00002-of-00002.safetensors"}
    for name, shard in shards.items():
        save_file({name: torch.ones(3)}, str(checkpoint / shard))
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))
    assert weights_are_complete(checkpoint)
    truncate_to_half(checkpoint / shards["bias"])
    assert weights_problem(checkpoint).startswith("its model-00002-of-00002.safetensors is truncated")
    (checkpoint / shards["bias"]).unlink()
    assert weights_problem(checkpoint) == ("model-00002-of-00002.safetensors, listed in its "
                                           "model.safetensors.index.json, is missing")
    assert last_complete_checkpoint(str(tmp_path)) is None
    (checkpoint / "model.safetensors.index.json").write_text('{"weight_map": {"bias": "model-0')
    assert weights_problem(checkpoint) == "its model.safetensors.index.json is not whole JSON with a weight_map"


def test_another_truncated_safetensors_file_makes_the_checkpoint_incomplete(tmp_path):
    checkpoint = make_checkpoint(tmp_path, 2)
    save_file({"mask": torch.ones(64, dtype=torch.uint8)}, str(checkpoint / "quantizer-masks.safetensors"))
    assert weights_are_complete(checkpoint)
    truncate_to_half(checkpoint / "quantizer-masks.safetensors")
    assert weights_problem(checkpoint).startswith("its quantizer-masks.safetensors is truncated")


def test_the_size_check_follows_the_format_byte_by_byte(tmp_path):
    path = tmp_path / "w.safetensors"
    size = hand_made_safetensors(path)
    assert path.stat().st_size == size and safetensors_problem(path) is None
    with open(path, "ab") as f:
        f.write(b"\0")
    assert safetensors_problem(path) == "has 1 bytes more than its header accounts for"
    os.truncate(path, size - 1)
    assert safetensors_problem(path) == f"is truncated ({size - 1:,} of {size:,} bytes)"
    os.truncate(path, 20)  # inside the header
    assert safetensors_problem(path) == "is truncated (20 bytes, too short for its header)"
    path.write_bytes(struct.pack("<Q", 3) + b"abc")
    assert safetensors_problem(path).startswith("is not a safetensors file")


@settings(max_examples=40, deadline=None)
@given(keep=st.integers(min_value=0, max_value=10_000))
def test_any_cut_of_a_saved_file_is_caught(tmp_path_factory, keep):
    path = tmp_path_factory.mktemp("cut") / "model.safetensors"
    save_file({"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.ones(3, dtype=torch.float16)}, str(path))
    size = path.stat().st_size
    assert safetensors_problem(path) is None
    os.truncate(path, keep % size)
    assert safetensors_problem(path) is not None


def test_a_trainer_resumes_from_the_last_whole_checkpoint_after_the_newest_is_cut(tmp_path):
    """End to end: a tiny Marian model trained to checkpoint-4, its newest weights cut in half, resumed to step 6."""
    from transformers import MarianConfig, MarianMTModel, Seq2SeqTrainer, Seq2SeqTrainingArguments

    config = MarianConfig(vocab_size=20, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=16, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    rows = [{"input_ids": [3 + i % 5, 4, 1], "attention_mask": [1, 1, 1], "labels": [5, 3 + i % 7, 1]}
            for i in range(8)]

    def trainer(max_steps: int) -> Seq2SeqTrainer:
        torch.manual_seed(0)
        args = Seq2SeqTrainingArguments(str(tmp_path), max_steps=max_steps, save_steps=2, per_device_train_batch_size=2,
                                        report_to="none", use_cpu=True, disable_tqdm=True, logging_steps=1)
        return Seq2SeqTrainer(model=MarianMTModel(config), args=args, train_dataset=rows)

    trainer(4).train()
    truncate_to_half(tmp_path / "checkpoint-4" / "model.safetensors")
    checkpoint = resolve_checkpoint(training_args(tmp_path, "last"))
    assert checkpoint == str(tmp_path / "checkpoint-2")
    trainer(6).train(resume_from_checkpoint=checkpoint)
    state = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 6 and steps == [1, 2, 3, 4, 5, 6]
    assert weights_are_complete(tmp_path / "checkpoint-4")  # rewritten whole by the resumed run
