"""`nmtq train` and `nmtq evaluate` end to end on a tiny corpus: recipes, CLI, resume, architectures, bad input."""

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, kill_after_checkpoint

from nmtq.args import TRAIN_ARGUMENT_CLASSES, parse_train_args, read_recipe
from nmtq.cli import main
from nmtq.distill import DISTILL_ARGUMENT_CLASSES

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", f"tsv:{data}", "--output_dir", str(out), *TINY, *extra]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(recipe, tmp_path):
    if "teacher" not in recipe.name and "student" not in recipe.name:  # an `nmtq table` recipe
        from nmtq.table import TableArguments, plan

        (table,) = parse_train_args(["--config", str(recipe)], (TableArguments,))
        assert table.output_dir.startswith("runs/") and plan(table)[2]  # every run's fields parse too
        return
    classes = DISTILL_ARGUMENT_CLASSES if "student" in recipe.name else TRAIN_ARGUMENT_CLASSES
    if "architecture" in yaml.safe_load(recipe.read_text()):  # an `nmtq distill-images` recipe
        from nmtq.vision.train import IMAGE_ARGUMENT_CLASSES as classes
    fields = read_recipe(recipe, classes)
    assert fields["data"] and fields["output_dir"].startswith("runs/")
    parsed = parse_train_args(["--config", str(recipe), "--output_dir", str(tmp_path), "--bf16", "false"], classes)
    assert parsed[0].data == fields["data"]
    assert parsed[-1].output_dir == str(tmp_path)  # the command line overrides the recipe


def test_train_then_evaluate_through_the_cli(tiny_tsv, tmp_path, capsys):
    out = tmp_path / "teacher"
    assert main(train_argv(tiny_tsv, out, "--max_steps", "6", "--save_steps", "3")) == 0
    printed = capsys.readouterr().out
    assert "processes: 1" in printed and "BLEU" in printed and "chrF" in printed
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert {"bleu", "chrf", "perplexity", "train_target_tokens_per_second", "environment"} <= set(metrics)
    assert metrics["environment"]["transformers"] == importlib.metadata.version("transformers")
    assert len((out / "test" / "hypotheses.txt").read_text().splitlines()) == 12
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["use_cache"] is True  # generate() keeps its cache
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    # evaluate the saved directory on its own: same data, same decoding, same scores
    assert main(["evaluate", str(out), "--data", f"tsv:{tiny_tsv}", "--num-beams", "2", "--max-new-tokens", "8",
                 "--output-dir", str(tmp_path / "eval")]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["bleu"] == metrics["bleu"] and again["chrf"] == metrics["chrf"]
    assert again["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-5)
    assert again["environment"]["cpu_count"] == os.cpu_count() and again["model_dir"] == str(out)


@pytest.mark.parametrize("model_type", ["fsmt", "bart"])
def test_other_architectures_train_and_translate(model_type, tiny_tsv, tmp_path):
    out = tmp_path / model_type
    assert main(train_argv(tiny_tsv, out, "--model_type", model_type, "--max_steps", "2", "--save_strategy",
                           "no")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model_type
    assert json.loads((out / "test" / "metrics.json").read_text())["num_sentences"] == 12


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(tiny_tsv, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "nmtq", *train_argv(tiny_tsv, out, "--save_steps", "2")]
    last = kill_after_checkpoint([*argv, "--max_steps", "100000"], out, 4)
    (out / f"checkpoint-{last + 1000}").mkdir()  # a checkpoint cut off while being written
    (out / f"checkpoint-{last + 1001}").mkdir()
    (out / f"checkpoint-{last + 1001}" / "trainer_state.json").write_text('{"global_st')  # ... mid-file
    result = subprocess.run([*argv, "--max_steps", str(last + 2), "--resume_from_checkpoint", "last"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads((out / f"checkpoint-{last + 2}" / "trainer_state.json").read_text())
    assert state["global_step"] == last + 2
    # the resumed run continued from the checkpoint's step instead of starting again at step 1
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps[0] == 1 and steps[-2:] == [last + 1, last + 2] and len(steps) == len(set(steps))


def test_two_process_accelerate_launch_on_cpu(tiny_tsv, tmp_path):
    out = tmp_path / "ddp"
    config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "cpu.yaml"  # the documented one
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
              "--main_process_port", "29517", "-m", "nmtq"]
    result = subprocess.run([*launch, *train_argv(tiny_tsv, out, "--max_steps", "3", "--save_strategy", "no")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2 (DistributedType.MULTI_CPU)" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "test" / "metrics.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max_stepz", "3"], "unknown argument '--max_stepz'; did you mean --max_steps"),
        (["--data", "csv:x.csv"], "csv"),
        (["--model_type", "t5"], "model_type='t5'"),
        (["--d_model", "30", "--attention_heads", "4"], "divisible"),
        (["--resume_from_checkpoint", "last"], "no complete checkpoint-"),
        (["--push_to_hub", "true", "--hub_model_id", "me/x"], "cannot push to me/x (checked before training)"),
    ],
)
def test_bad_arguments_fail_before_anything_is_written(argv, message, tiny_tsv, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--data", f"tsv:{tiny_tsv}", "--output_dir", str(out), *TINY, *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_tensorboard_is_used_only_when_installed(monkeypatch, tmp_path):
    monkeypatch.setattr("nmtq.runs.tensorboard_available", lambda: False)
    *_, training = parse_train_args(["--output_dir", str(tmp_path)])
    assert training.report_to == []  # "none"
    assert parse_train_args(["--output_dir", str(tmp_path), "--report_to", "none"])[-1].report_to == []


def test_bad_recipes(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: bible\nlearning_rat: 0.1\n")
    assert main(["train", "--config", str(recipe)]) == 2
    assert "unknown field 'learning_rat'; did you mean learning_rate" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_data_fails_before_anything_is_written(tmp_path, capsys):
    source, target = tmp_path / "a.de", tmp_path / "a.en"
    source.write_text("eins\nzwei\n")
    target.write_text("one\n")
    out = tmp_path / "never"
    assert main(["train", "--data", f"text:{source},{target}", "--output_dir", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert str(source) in err and "2" in err and "1" in err
    assert not out.exists()


def test_an_unreachable_hub_id_is_a_clear_error(monkeypatch, tiny_tsv, tmp_path, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("nmtq.hub.reachable", lambda url, timeout=5.0: False)
    out = tmp_path / "never"
    argv = ["train", "--data", f"tsv:{tiny_tsv}", "--output_dir", str(out), "--model_name_or_path",
            "Helsinki-NLP/opus-mt-de-en", *TINY]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'Helsinki-NLP/opus-mt-de-en' is not a local directory" in err and "could not be reached" in err
    assert not out.exists()


def test_a_local_teacher_directory_is_loaded_and_trained_further(tiny_tsv, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(train_argv(tiny_tsv, first, "--max_steps", "2", "--save_strategy", "no")) == 0
    assert main(train_argv(tiny_tsv, second, "--model_name_or_path", str(first), "--max_steps", "2",
                           "--save_strategy", "no")) == 0
    assert (second / "vocab.json").read_text() == (first / "vocab.json").read_text()  # its own tokenizer reused


def test_the_same_seed_trains_the_same_teacher_in_any_process(tiny_tsv, tmp_path):
    # torch seeds itself at random in each process, and the model is built before the Trainer seeds: --seed must
    # cover the initial weights too
    files = []
    for run in ("a", "b"):
        out = tmp_path / run
        argv = ["train", "--data", f"tsv:{tiny_tsv}", "--output_dir", str(out), *TINY, "--max_steps", "2",
                "--save_strategy", "no"]
        result = subprocess.run([sys.executable, "-m", "nmtq", *argv], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        files.append((out / "model.safetensors").read_bytes())
    assert files[0] == files[1]
