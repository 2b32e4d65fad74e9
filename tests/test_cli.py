"""Tests of nmtq.cli's flags: every multi-word flag of every command takes dashes and underscores alike, and
``nmtq export --ctranslate2`` refuses the flags of nmtq's own export before anything is written."""

from __future__ import annotations

import argparse

import pytest

from nmtq.cli import SPELLINGS, build_parser, main

# the smallest valid command line of each argparse command: its positionals and required flags
ARGPARSE_COMMANDS = {
    "evaluate": ["evaluate", "runs/model", "--data", "bible"],
    "export": ["export", "runs/student", "runs/export"],
    "push": ["push", "runs/export", "--repo-id", "someone/model"],
    "env": ["env"],
}
RECIPE_COMMANDS = ("train", "distill", "distill-images", "table")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def _flags(command: str) -> list[tuple[argparse.Action, str, list[str]]]:
    """Each multi-word flag of ``command``, its dashed spelling and a value it accepts other than its default."""
    found = []
    for action in _subparsers()[command]._actions:
        dashed = [name for name in action.option_strings if name.startswith("--") and "-" in name[2:]]
        if dashed:
            value = "3" if not action.choices else next(c for c in action.choices if c != action.default)
            found.append((action, dashed[0], [] if action.nargs == 0 else [value]))
    return found


def test_every_command_is_covered():
    assert set(ARGPARSE_COMMANDS) | set(RECIPE_COMMANDS) == set(_subparsers())


def test_the_argparse_commands_have_the_multi_word_flags_checked_below():
    assert {dashed for _, dashed, _ in _flags("evaluate")} >= {"--num-beams", "--max-new-tokens", "--output-dir"}
    assert {dashed for _, dashed, _ in _flags("export")} == {"--int8-bits", "--target-cpu", "--shortlist-size"}
    assert {dashed for _, dashed, _ in _flags("push")} == {"--repo-id", "--dry-run", "--commit-message"}


@pytest.mark.parametrize("command", sorted(ARGPARSE_COMMANDS))
def test_each_multi_word_flag_of_an_argparse_command_takes_both_spellings(command):
    parser, base = build_parser(), ARGPARSE_COMMANDS[command]
    defaults = vars(parser.parse_args(base))
    for action, dashed, value in _flags(command):
        underscored = "--" + dashed[2:].replace("-", "_")
        with_dashes = vars(parser.parse_args([*base, dashed, *value]))
        assert with_dashes == vars(parser.parse_args([*base, underscored, *value])), dashed
        assert with_dashes[action.dest] != defaults[action.dest] or action.required, dashed
    help_text = _subparsers()[command].format_help()
    assert "".join(SPELLINGS.split()) in "".join(help_text.split())  # however argparse wraps it
    listed = help_text[:help_text.index("Every multi-word")]
    assert all("--" + dashed[2:].replace("-", "_") not in listed for _, dashed, _ in _flags(command))  # once each


def test_evaluate_reads_num_beams_in_either_spelling(monkeypatch):
    import nmtq.evaluation

    seen = []
    monkeypatch.setattr(nmtq.evaluation, "evaluate_directory", lambda *args, **kwargs: seen.append(kwargs) or {})
    monkeypatch.setattr(nmtq.evaluation, "format_metrics", lambda metrics: "ok")
    assert main([*ARGPARSE_COMMANDS["evaluate"], "--num-beams", "2", "--max_new_tokens", "7"]) == 0
    assert main([*ARGPARSE_COMMANDS["evaluate"], "--num_beams", "2", "--max-new-tokens", "7"]) == 0
    assert [(kwargs["num_beams"], kwargs["max_new_tokens"]) for kwargs in seen] == [(2, 7), (2, 7)]


def test_abbreviated_flags_are_refused_as_in_the_recipe_commands(capsys):
    assert main([*ARGPARSE_COMMANDS["evaluate"], "--num", "2"]) == 2  # would match --num-beams and --num_beams
    assert "unrecognized arguments: --num 2" in capsys.readouterr().err


def _recipe_classes(command: str) -> tuple[tuple[type, ...], str]:
    if command == "table":
        from nmtq.table import TableArguments

        return (TableArguments,), "runs/table"
    from nmtq.commands import recipe_command

    return recipe_command(command).classes, recipe_command(command).output_dir


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_each_multi_word_field_of_a_recipe_command_takes_both_spellings(command, tmp_path):
    from nmtq.args import _FieldParser, parse_train_args

    classes, output_dir = _recipe_classes(command)
    parser = _FieldParser(classes, command)
    underscored = [name for name in parser._option_string_actions if "_" in name]
    assert "--output_dir" in underscored
    for name in underscored:
        assert parser._option_string_actions[name] is parser._option_string_actions[name.replace("_", "-")], name
    extra = {"train": ["--max-steps", "5", "--num-beams", "2"], "distill": ["--method", "fp", "--num-beams", "2"],
             "distill-images": ["--method", "fp", "--max-steps", "5"], "table": []}[command]
    runs = []
    for spell in (lambda flag: flag, lambda flag: flag.replace("-", "_").replace("__", "--", 1)):
        fields = [spell(item) if item.startswith("--") else item for item in [*extra, "--output-dir", str(tmp_path)]]
        parsed = parse_train_args(fields, classes, output_dir, command)
        runs.append({name: getattr(group, name) for group in parsed
                     for name in ("output_dir", "max_steps", "num_beams") if hasattr(group, name)})
    assert runs[0] == runs[1] and runs[0]["output_dir"] == str(tmp_path)
    assert "--max-steps" not in extra or runs[0]["max_steps"] == 5
    assert "--num-beams" not in extra or runs[0]["num_beams"] == 2


@pytest.mark.parametrize("flags", [["--huffman"], ["--dequantize"], ["--teacher", "Helsinki-NLP/opus-mt-de-en"],
                                   ["--dataset", "bible"], ["--huffman", "--dequantize"]])
def test_export_to_ctranslate2_refuses_the_flags_of_nmtqs_own_export(flags, tmp_path, capsys):
    out = tmp_path / "ct2"
    assert main(["export", str(tmp_path / "student"), str(out), "--ctranslate2", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nmtq export: error: ")
    assert all(flag in err for flag in flags if flag.startswith("--")) and "drop --ctranslate2" in err
    assert list(tmp_path.iterdir()) == []  # nothing written
