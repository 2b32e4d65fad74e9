"""`nmtq table`: a tiny teacher and its students by every method, one table, a plot; finished runs are reused."""

import importlib.metadata
import json

import pytest
from conftest import TINY
from test_distill import TRAINING

from nmtq.cli import main


@pytest.fixture
def recipes(tiny_tsv, tmp_path):
    teacher = tmp_path / "teacher.yaml"
    pairs = [(k, "2" if k in ("--encoder_layers", "--decoder_layers") else v) for k, v in zip(TINY[::2], TINY[1::2])]
    teacher.write_text(f"data: tsv:{tiny_tsv}\n" + "".join(f"{k[2:]}: {v}\n" for k, v in pairs)
                       + f"max_steps: 8\nsave_strategy: 'no'\noutput_dir: {tmp_path / 'teacher'}\n")
    student = tmp_path / "student.yaml"
    fields = [(k[2:], v) for k, v in zip(TRAINING[::2], TRAINING[1::2])]
    student.write_text(f"data: tsv:{tiny_tsv}\n" + "".join(f"{k}: {v}\n" for k, v in fields)
                       + "student_encoder_layers: 1\nstudent_decoder_layers: 1\nbucket_size: 16\nteacher_top_k: 4\n"
                         "max_steps: 2\nsave_strategy: 'no'\n")
    table = tmp_path / "table.yaml"
    table.write_text(f"teacher_recipe: {teacher}\nstudents:\n  - {student}\n"
                     f"  - {student} --student_type lstm --student_d_model 16 --student_hidden_size 16\n"
                     f"bits: [2]\noutput_dir: {tmp_path / 'table'}\n")
    return table


def test_a_table_of_every_method_with_its_plot(recipes, tmp_path, capsys):
    assert main(["table", "--config", str(recipes)]) == 0
    out = tmp_path / "table"
    result = json.loads((out / "table.json").read_text())
    names = [row["name"] for row in result["rows"]]
    assert names == ["teacher fp32", "transformer KD fp32", "transformer PTQ 2-bit", "transformer QD 2-bit",
                     "transformer DQ 2-bit", "lstm KD fp32", "lstm PTQ 2-bit", "lstm QD 2-bit", "lstm DQ 2-bit"]
    rows = {row["name"]: row for row in result["rows"]}
    assert rows["transformer QD 2-bit"]["bytes"] < rows["transformer KD fp32"]["bytes"] < rows["teacher fp32"]["bytes"]
    assert all(row["seconds"] is not None for row in result["rows"])
    assert (out / "bleu-vs-bytes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "| transformer QD 2-bit | 1+1 | 2 |" in printed and "this command took" in printed
    assert result["environment"]["torch"] == importlib.metadata.version("torch")
    assert f"Measured on: {result['environment']['cpu']} (" in printed
    assert (out / "table.md").read_text().startswith("| model | layers |")
    # a second call reuses every finished run
    assert main(["table", "--config", str(recipes), "--bits", "2", "--methods", "kd", "qd"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished before, reusing") == 5 and "| transformer DQ" not in printed
    again = json.loads((out / "table.json").read_text())["rows"]
    first = [rows[r["name"]]["seconds"] for r in again]
    assert [r["seconds"] for r in again] == pytest.approx(first, abs=0.06)  # the minutes of the first call


@pytest.mark.parametrize("extra, message", [
    (["--methods", "kd", "int4"], "methods ['int4']"),
    (["--bits", "9"], "between 1 and 8"),
    (["--student_args", "--student_depth 3"], "unknown argument '--student_depth'"),
])
def test_bad_table_arguments_fail_before_any_run(extra, message, recipes, tmp_path, capsys):
    assert main(["table", "--config", str(recipes), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "teacher").exists() and not (tmp_path / "table").exists()


def test_an_image_table_with_the_fp_student(tmp_path, capsys):
    common = ("data: synthetic:60\ndepth: 8\nbucket_size: 16\nper_device_train_batch_size: 16\nreport_to: none\n"
              "disable_tqdm: true\nsave_strategy: 'no'\n")
    teacher, student = tmp_path / "teacher.yaml", tmp_path / "student.yaml"
    teacher.write_text(common + f"base_width: 8\nmax_steps: 6\noutput_dir: {tmp_path / 'teacher'}\n")
    student.write_text(common + "base_width: 4\nmax_steps: 3\n")
    table = tmp_path / "table.yaml"
    table.write_text(f"task: images\nteacher_recipe: {teacher}\nstudents:\n  - {student}\nbits: [2]\n"
                     f"methods: [fp, kd, ptq, qd, dq]\noutput_dir: {tmp_path / 'table'}\n")
    assert main(["table", "--config", str(table)]) == 0
    result = json.loads((tmp_path / "table" / "table.json").read_text())
    assert [r["name"] for r in result["rows"]] == [
        "teacher fp32", "resnet-8 FP fp32", "resnet-8 KD fp32", "resnet-8 PTQ 2-bit", "resnet-8 QD 2-bit",
        "resnet-8 DQ 2-bit"]
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["resnet-8 QD 2-bit"]["bytes"] < rows["resnet-8 KD fp32"]["bytes"] < rows["teacher fp32"]["bytes"]
    assert all(0 <= r["accuracy"] <= 100 for r in result["rows"])
    assert "| model | architecture | bits | top-1 % |" in capsys.readouterr().out
    assert (tmp_path / "table" / "accuracy-vs-bytes.png").read_bytes()[:4] == b"\x89PNG"
