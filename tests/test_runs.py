"""Where nmtq's messages go (nmtq.runs): module loggers under ``nmtq``, printed on standard output as ``[nmtq] ...``
at the level of ``--log_level`` on the main process and ``--log_level_replica`` on the others."""

import json
import logging

import pytest
import transformers
from transformers import TrainingArguments

from nmtq.cli import main
from nmtq.runs import CpuFriendlyTrainingArguments, start_run

IMAGES = ["distill-images", "--data", "synthetic:40", "--method", "fp", "--depth", "8", "--base_width", "4",
          "--max_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"]


@pytest.fixture(autouse=True)
def levels():
    """A run sets nmtq's level and transformers' verbosity for the whole process: put both back."""
    nmtq_level, verbosity = logging.getLogger("nmtq").level, transformers.logging.get_verbosity()
    yield
    logging.getLogger("nmtq").setLevel(nmtq_level)
    transformers.logging.set_verbosity(verbosity)


def started(tmp_path, capsys, **fields) -> str:
    """What an info message of an nmtq module prints after a run starts with ``fields``."""
    start_run(CpuFriendlyTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", **fields), [], [])
    capsys.readouterr()
    logging.getLogger("nmtq.train").info("tokenizer: 12 ids")
    return capsys.readouterr().out


@pytest.mark.parametrize("fields, shown", [
    ({}, True),  # passive: nmtq's info messages show, as they always have
    ({"log_level": "info"}, True),
    ({"log_level": "warning"}, False),
    ({"log_level": "error"}, False),
])
def test_the_main_process_shows_nmtqs_messages_at_its_log_level(fields, shown, tmp_path, capsys):
    assert started(tmp_path, capsys, **fields) == ("[nmtq] tokenizer: 12 ids\n" if shown else "")


@pytest.mark.parametrize("fields, shown", [
    ({}, False),  # log_level_replica defaults to warning
    ({"log_level": "info"}, False),
    ({"log_level_replica": "info"}, True),
])
def test_other_processes_are_quiet_unless_log_level_replica_says(fields, shown, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(TrainingArguments, "should_log", property(lambda self: False))
    assert started(tmp_path, capsys, **fields) == ("[nmtq] tokenizer: 12 ids\n" if shown else "")


def test_transformers_verbosity_counts_where_log_level_is_passive(tmp_path, capsys):
    transformers.logging.set_verbosity_error()
    assert started(tmp_path, capsys) == ""
    transformers.logging.set_verbosity_info()
    assert started(tmp_path, capsys) == "[nmtq] tokenizer: 12 ids\n"


@pytest.mark.parametrize("log_level", [None, "info", "error"])
def test_a_whole_run_prints_its_messages_unless_log_level_error(log_level, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*IMAGES, "--output_dir", str(out), *(["--log_level", log_level] if log_level else [])]) == 0
    printed = capsys.readouterr().out
    assert json.loads((out / "test" / "metrics.json").read_text())["method"] == "fp"  # the same run either way
    messages = [line for line in printed.splitlines() if line.startswith("[nmtq] ")]
    if log_level == "error":
        assert messages == []
    else:
        assert messages[0].startswith("[nmtq] synthetic:40: ") and messages[-1].startswith("[nmtq] test accuracy ")
