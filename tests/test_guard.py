"""The finite-check guard of every trainer (nmtq.guard): stop before a bad update, keep finite checkpoints, resume
with a new learning rate; damaged or overflowing teachers named; the Hub token never written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY
from safetensors.torch import load_file, save_file

from nmtq.cli import main
from nmtq.distill import DistillationTrainer
from nmtq.errors import NmtqError
from nmtq.guard import FiniteCheckpoints, check_finite
from nmtq.models import load_model
from nmtq.train import TeacherTrainer

TEACHER = ["--encoder_layers", "1", "--decoder_layers", "1", "--save_strategy", "steps", "--save_steps", "1",
           "--save_total_limit", "5", "--lr_scheduler_type", "constant"]


def train_argv(corpus, out, *extra):
    return ["train", "--data", f"tsv:{corpus}", "--output_dir", str(out), *TINY, *TEACHER, *extra]


def stderr_line(capsys) -> str:
    """nmtq's one error line (training runs print progress bars on stderr too)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nmtq ")]
    assert len(err) == 1, err
    return err[0]


def all_finite(checkpoint: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(checkpoint / "model.safetensors").values())


@pytest.fixture
def nan_from_step_3(monkeypatch):
    """The loss turns NaN at the third step of any guarded trainer, as an exploding learning rate makes it."""
    def poisoned(original):
        def compute_loss(self, model, inputs, *args, **kwargs):
            loss = original(self, model, inputs, *args, **kwargs)
            if self.state.global_step >= 2:
                loss = loss * float("nan")
            return loss
        return compute_loss

    for trainer in (TeacherTrainer, DistillationTrainer):
        monkeypatch.setattr(trainer, "compute_loss", poisoned(trainer.compute_loss))


def test_teacher_training_stops_before_a_nan_update_and_resumes_with_the_new_rate(corpus, tmp_path, capsys,
                                                                                   nan_from_step_3, monkeypatch):
    out = tmp_path / "teacher"
    assert main(train_argv(corpus, out, "--max_steps", "6")) == 2
    line = stderr_line(capsys)
    assert "training stopped at step 3, before its update: the loss is nan" in line
    assert f"{out / 'checkpoint-2'}" in line and "--resume_from_checkpoint last --learning_rate 0.001" in line
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert all(all_finite(p) for p in out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    monkeypatch.undo()  # the cause is gone: go on as the message says, with its learning rate
    assert main(train_argv(corpus, out, "--max_steps", "4", "--resume_from_checkpoint", "last",
                           "--learning_rate", "0.001")) == 0
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    rates = {entry["step"]: entry["learning_rate"] for entry in history if "learning_rate" in entry}
    assert rates[1] == rates[2] == pytest.approx(1e-2) and rates[3] == rates[4] == pytest.approx(1e-3)


def test_distillation_stops_on_an_exploding_gradient_norm(small_teacher, corpus, tmp_path, capsys):
    from test_distill import distill_argv

    capsys.readouterr()
    out = tmp_path / "student"
    assert main(distill_argv(corpus, small_teacher, out, "--method", "qd", "--max_steps", "3",
                             "--stop_grad_norm", "1e-6")) == 2
    line = stderr_line(capsys)
    assert "training stopped at step 1, before its update: the gradient norm is" in line
    assert "above --stop_grad_norm 1e-06" in line and "no checkpoint was saved yet" in line
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_a_checkpoint_with_nan_weights_is_removed_and_training_stops(tmp_path):
    from types import SimpleNamespace

    model = torch.nn.Linear(2, 2)
    (tmp_path / "checkpoint-3").mkdir()
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=3, is_world_process_zero=True)
    FiniteCheckpoints().on_save(args, state, None, model=model)
    assert (tmp_path / "checkpoint-3").is_dir()
    with torch.no_grad():
        model.weight[1, 0] = float("inf")
    with pytest.raises(NmtqError, match="checkpoint-3: tensor 'weight' holds NaN or inf .* it was removed"):
        FiniteCheckpoints().on_save(args, state, None, model=model)
    assert not (tmp_path / "checkpoint-3").exists()


@pytest.fixture(scope="module")
def small_teacher(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("guard-teacher")
    assert main(train_argv(corpus, out, "--max_steps", "2", "--save_strategy", "no", "--encoder_layers", "2",
                           "--decoder_layers", "2")) == 0
    return out


def copy_teacher(teacher: Path, out: Path, change) -> Path:
    """A copy of ``teacher`` whose weights ``change(state)`` edits in place."""
    out.mkdir()
    for f in teacher.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    state = load_file(teacher / "model.safetensors")
    change(state)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_a_teacher_with_nan_weights_is_named_at_load(small_teacher, corpus, tmp_path, capsys):
    from test_distill import distill_argv

    def poison(state):
        key = next(k for k in sorted(state) if k.endswith("fc1.weight"))
        state[key][0, 0] = float("nan")
        poison.key = key

    teacher = copy_teacher(small_teacher, tmp_path / "nan-teacher", poison)
    out = tmp_path / "student"
    assert main(distill_argv(corpus, teacher, out, "--method", "kd", "--max_steps", "2")) == 2
    line = stderr_line(capsys)
    assert f"tensor '{poison.key}' holds NaN or inf values" in line and not out.exists()
    with pytest.raises(NmtqError, match=f"{teacher}: tensor '{poison.key}' holds NaN or inf"):
        load_model(teacher)
    from transformers import AutoModelForSeq2SeqLM

    with pytest.raises(NmtqError, match="a teacher: tensor"):
        check_finite(AutoModelForSeq2SeqLM.from_pretrained(teacher), "a teacher")


@pytest.mark.parametrize("top_k", [[], ["--teacher_top_k", "4"]], ids=["live", "cached"])
def test_a_teacher_whose_outputs_overflow_is_blamed_not_the_learning_rate(top_k, small_teacher, corpus, tmp_path,
                                                                          capsys):
    from test_distill import distill_argv

    def overflow(state):  # finite weights whose logits are inf: as a teacher run in too low a precision
        for key in state:
            if key.endswith("final_logits_bias"):
                state[key][..., 1] = 3e38
        for key in state:
            if key.endswith("lm_head.weight") or key.endswith("shared.weight"):
                state[key] *= 1e37

    teacher = copy_teacher(small_teacher, tmp_path / "overflowing", overflow)
    out = tmp_path / "student"
    assert main(distill_argv(corpus, teacher, out, "--method", "kd", "--max_steps", "2", *top_k,
                             "--teacher_cache_dir", str(tmp_path / "cache"))) == 2
    line = stderr_line(capsys)
    assert "the teacher's outputs hold NaN or inf" in line and "learning rate" not in line
    assert not list((tmp_path / "cache").glob("*/*.safetensors"))  # nothing non-finite was cached


def test_the_hub_token_never_reaches_the_disk(corpus, tmp_path, capsys):
    from test_distill import distill_argv

    sentinel = "hf_nmtqSentinelToken0123456789"
    teacher = tmp_path / "teacher"
    assert main(train_argv(corpus, teacher, "--max_steps", "2", "--hub_token", sentinel, "--decoder_layers", "2")) == 0
    assert main(distill_argv(corpus, teacher, tmp_path / "student", "--method", "qd", "--max_steps", "2",
                             "--save_steps", "1", "--hub_token", sentinel)) == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "training_args.bin" for p in written)  # the Trainer did pickle its arguments
    assert not [p for p in written if sentinel.encode() in p.read_bytes()]
    assert sentinel not in capsys.readouterr().out
