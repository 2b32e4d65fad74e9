"""Where runs write (nmtq.outputs): a finished run is never retrained over, inputs are never written into,
--overwrite_output_dir starts afresh; Ctrl-C keeps the checkpoints and says how to go on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY, complete_checkpoints

from nmtq.cli import main
from nmtq.io import temporary_prefix
from nmtq.outputs import check_output_dir


def train_argv(corpus, out, *extra):
    return ["train", "--data", f"tsv:{corpus}", "--output_dir", str(out), *TINY, "--encoder_layers", "1",
            "--decoder_layers", "1", "--max_steps", "2", *extra]


def nmtq_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("nmtq ")]


def test_a_finished_run_is_not_trained_over_unless_asked_and_then_afresh(corpus, tmp_path, capsys):
    out = tmp_path / "teacher"
    assert main(train_argv(corpus, out, "--save_steps", "1")) == 0
    weights = (out / "model.safetensors").read_bytes()
    vocabulary = json.loads((out / "vocab.json").read_text())
    assert main(train_argv(corpus, out, "--vocab_size", "40")) == 2
    [line] = nmtq_lines(capsys)
    assert "already holds a model" in line and "--overwrite_output_dir true" in line
    assert (out / "model.safetensors").read_bytes() == weights
    # replaced on request: the old checkpoints go (a later resume cannot pick them) and the tokenizer is new
    assert main(train_argv(corpus, out, "--vocab_size", "40", "--overwrite_output_dir", "true",
                           "--save_strategy", "no")) == 0
    assert not list(out.glob("checkpoint-*")) and json.loads((out / "vocab.json").read_text()) != vocabulary
    assert len(json.loads((out / "vocab.json").read_text())) <= 40


def test_a_killed_runs_checkpoints_are_resumed_not_overwritten(corpus, tmp_path, capsys):
    out = tmp_path / "teacher"
    out.mkdir()
    (out / "checkpoint-3").mkdir()
    assert main(train_argv(corpus, out)) == 2
    assert "already holds checkpoints (checkpoint-3)" in nmtq_lines(capsys)[0]


@pytest.mark.parametrize("inside", ["", "student"])
def test_inputs_are_never_written_into(inside, corpus, tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    with pytest.raises(ValueError, match="lies inside the input"):
        check_output_dir(teacher / inside, model_inputs=[teacher, "facebook/nllb-200-distilled-600M"])
    with pytest.raises(ValueError, match="is the folder of the data"):
        check_output_dir(corpus.parent, data_files=[corpus])
    assert check_output_dir(corpus.parent / "run", data_files=[corpus]) == []


def test_temporary_files_of_killed_runs_are_swept_at_the_next_start(corpus, tmp_path, capsys):
    out = tmp_path / "teacher"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / "checkpoint-1").mkdir(parents=True)
    left = [out / (temporary_prefix("model.safetensors").replace(str(os.getpid()), str(dead.pid)) + "x.tmp"),
            out / "checkpoint-1" / (temporary_prefix("quantizer.json").replace(str(os.getpid()), str(dead.pid))
                                    + "y.tmp")]
    for path in left:
        path.write_text("half")
    mine = out / (temporary_prefix("vocab.json") + "z.tmp")  # a live process's: kept
    mine.write_text("being written")
    removed = check_output_dir(out, resuming=True)
    assert sorted(removed) == sorted(left) and not any(p.exists() for p in left) and mine.exists()


def test_ctrl_c_keeps_the_checkpoints_and_prints_how_to_go_on(corpus, tmp_path):
    out = tmp_path / "teacher"
    argv = [sys.executable, "-m", "nmtq", *train_argv(corpus, out, "--max_steps", "100000", "--save_steps", "2")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not complete_checkpoints(out):
        assert proc.poll() is None and time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    [line] = [line for line in err.splitlines() if line.startswith("nmtq ")]
    assert line.startswith("nmtq train: interrupted; the checkpoints written so far are kept; go on with: nmtq train")
    assert line.endswith("--resume_from_checkpoint last") and "Traceback" not in err
    assert "--save_steps 2" in line  # the same command, with the resume added
    last = max(complete_checkpoints(out))
    resume = train_argv(corpus, out, "--max_steps", str(last + 1), "--save_steps", "2",
                        "--resume_from_checkpoint", "last")
    resumed = subprocess.run([sys.executable, "-m", "nmtq", *resume], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads((out / f"checkpoint-{last + 1}" / "trainer_state.json").read_text())
    assert state["global_step"] == last + 1
