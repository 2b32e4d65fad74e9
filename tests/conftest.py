"""Shared fixtures: a tiny parallel corpus on disk and tiny model sizes, so training tests take seconds."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

GERMAN = ["ein Haus", "das Haus ist groß", "der Mann geht", "die Frau liest", "ein Kind spielt", "das Buch ist alt",
          "der Hund schläft", "die Sonne scheint", "ein Baum wächst", "das Wasser ist kalt", "der Tag ist lang",
          "die Nacht ist kurz"]
ENGLISH = ["a house", "the house is big", "the man walks", "the woman reads", "a child plays", "the book is old",
           "the dog sleeps", "the sun shines", "a tree grows", "the water is cold", "the day is long",
           "the night is short"]

# fields of `nmtq train` for a model that trains in a second
TINY = ["--vocab_size", "60", "--d_model", "16", "--encoder_layers", "1", "--decoder_layers", "1",
        "--attention_heads", "2", "--ffn_dim", "32", "--max_position_embeddings", "64",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "1e-2",
        "--logging_steps", "1", "--num_beams", "2", "--max_new_tokens", "8", "--report_to", "none",
        "--disable_tqdm", "true", "--seed", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The twelve pairs as a TSV file shared by a test module (its teacher fixtures are module-scoped too)."""
    path = tmp_path_factory.mktemp("data") / "pairs.tsv"
    path.write_text("".join(f"{de}\t{en}\n" for de, en in zip(GERMAN, ENGLISH)), encoding="utf-8")
    return path


@pytest.fixture
def tiny_tsv(tmp_path):
    """Twelve German-English pairs, repeated, as a TSV file: a corpus small enough to overfit in seconds."""
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{de}\t{en}\n" for de, en in zip(GERMAN, ENGLISH)) * 1, encoding="utf-8")
    return path


def complete_checkpoints(out: Path, last_file: str = "trainer_state.json") -> list[int]:
    def whole(state: Path) -> bool:
        try:
            return bool(json.loads(state.read_text()))
        except (OSError, ValueError):
            return False

    return sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")
                  if whole(p / "trainer_state.json") and whole(p / last_file))


def kill_after_checkpoint(argv: list[str], out: Path, step: int, timeout: float = 120,
                          last_file: str = "trainer_state.json") -> int:
    """Start ``argv``, SIGKILL it once ``out`` holds a complete checkpoint (its ``last_file`` whole) at ``step`` or
    later; return the last."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not any(s >= step for s in complete_checkpoints(out, last_file)):
            assert proc.poll() is None and time.monotonic() < deadline, f"training never wrote checkpoint-{step}"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as a crash or a pre-empted job would: no chance to clean up
        proc.wait()
    return max(complete_checkpoints(out))


@pytest.fixture(scope="module")
def small_teacher(corpus, tmp_path_factory):
    """A 1+2-layer teacher trained for 4 steps: for tests that need its shapes and files, not its quality."""
    from nmtq.cli import main

    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", "--data", f"tsv:{corpus}", "--output_dir", str(out), *TINY, "--decoder_layers", "2",
                 "--max_steps", "4", "--save_strategy", "no"]) == 0
    return out


@pytest.fixture(scope="module")
def distilled(request, corpus, small_teacher, tmp_path_factory):
    """``distilled(kind)``: the output_dir of `nmtq distill` from the small teacher for the test module's
    ``STUDENTS[kind]`` (its fields), distilled once per module."""
    from test_distill import distill_argv

    from nmtq.cli import main

    done: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in done:
            out = tmp_path_factory.mktemp("runs") / kind
            argv = distill_argv(corpus, small_teacher, out, *request.module.STUDENTS[kind], "--save_strategy", "no")
            assert main(argv) == 0
            done[kind] = out
        return done[kind]

    return get
