"""The digits demo on a tiny budget: its table, sizes, files and CLI, and that a quantized model is Q(w)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nmtq.cli import main
from nmtq.demo import (
    BUCKET_SIZE,
    STUDENT_CHANNELS,
    TEACHER_CHANNELS,
    differentiable_quantization,
    load_digits,
    make_cnn,
    quantized_distillation,
    run_demo,
)
from nmtq.quant import quantize_tensor, quantize_to_points

pytest.importorskip("sklearn")

TINY = {"teacher_epochs": 1, "student_epochs": 1, "finetune_epochs": 1}
NAMES = ["teacher fp32", "student fp32 (KD)", "PTQ 2-bit", "QD 2-bit", "DQ 2-bit", "PTQ 4-bit", "QD 4-bit",
         "DQ 4-bit"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(str(out), seed=0, progress=False, **TINY)


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["model"]: r for r in rows}


def test_table_has_every_row(demo):
    _, rows = demo
    assert [r["model"] for r in rows] == NAMES
    assert [r["bits"] for r in rows] == [32, 32, 2, 2, 2, 4, 4, 4]
    assert all(0 <= r["test_accuracy"] <= 100 for r in rows)
    assert all(r["huffman_bytes"] is None for r in rows[:2])
    assert all(0 < r["huffman_bytes"] for r in rows[2:])


def test_sizes(demo):
    rows = by_name(demo[1])
    student = rows["student fp32 (KD)"]["bytes"]
    # student: conv 1->8 (72 weights + 8 biases), conv 8->16 (1152 + 16), linear 256->10 (2560 + 10)
    assert student == 4 * (72 + 8 + 1152 + 16 + 2560 + 10)
    # 2-bit codes for 3784 weights; buckets of 64: 2 + 18 + 40 = 60, each (min, max) in fp32; fp32 biases
    assert rows["PTQ 2-bit"]["bytes"] == (2 * 3784 + 60 * 64 + 34 * 32) // 8
    assert rows["teacher fp32"]["ratio_vs_fp32_teacher"] == 1.0
    for method in ("PTQ", "QD", "DQ"):
        two, four = rows[f"{method} 2-bit"], rows[f"{method} 4-bit"]
        assert two["bytes"] < four["bytes"] < student
        assert two["ratio_vs_fp32_teacher"] > four["ratio_vs_fp32_teacher"]
        assert four["ratio_vs_fp32_teacher"] == round(rows["teacher fp32"]["bytes"] / four["bytes"], 2)


def test_files_are_written(demo, capsys):
    out, rows = demo
    assert json.loads((out / "results.json").read_text()) == rows
    table = (out / "results.md").read_text()
    assert table.startswith("| model | bits | test accuracy % | bytes | ratio vs fp32 teacher | Huffman bytes |")
    assert all(f"| {name} |" in table for name in NAMES)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cli_runs_the_demo_and_is_deterministic(demo, tmp_path, capsys):
    args = ["demo", "--output-dir", str(tmp_path), "--seed", "0", "--teacher-epochs", "1",
            "--student-epochs", "1", "--finetune-epochs", "1", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert printed.out.strip() == (tmp_path / "results.md").read_text().strip()
    assert printed.err == ""
    assert json.loads((tmp_path / "results.json").read_text()) == demo[1]  # same seed, same numbers


def test_python_dash_m_nmtq():
    result = subprocess.run([sys.executable, "-m", "nmtq", "demo", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--output-dir" in result.stdout


def test_cli_rejects_a_missing_command_and_bad_epochs(capsys):
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["demo", "--teacher-epochs", "0"])


def test_missing_scikit_learn_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'nmtq\[data\]'"):
        load_digits()


def _teacher_logits(digits) -> torch.Tensor:
    with torch.no_grad():
        return make_cnn(TEACHER_CHANNELS, seed=0).eval()(digits.x_train)


@pytest.mark.parametrize("bits", [2, 4])
def test_quantized_distillation_student_is_q_of_w(digits, bits):
    quantizer = quantized_distillation(make_cnn(STUDENT_CHANNELS, seed=1), _teacher_logits(digits), digits,
                                       bits, epochs=1)
    model, x = quantizer.model.eval(), digits.x_test
    float_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        fake_quantized = model(x)
        quantizer.quantize()
        quantized = model(x)
        reference = make_cnn(STUDENT_CHANNELS)
        reference.load_state_dict(float_weights)
        for p in reference.parameters():
            if p.dim() >= 2:  # conv and linear weights; biases stay fp32
                p.copy_(quantize_tensor(p, bits, BUCKET_SIZE))
        expected = reference.eval()(x)
    assert torch.equal(quantized, expected)
    assert torch.equal(fake_quantized, expected)


def test_differentiable_quantization_learns_points_only(digits):
    student = make_cnn(STUDENT_CHANNELS, seed=1)
    quantizer = differentiable_quantization(student, _teacher_logits(digits), digits, bits=2, epochs=1)
    model = quantizer.model
    state = model.state_dict()
    for name, before in student.state_dict().items():
        assert torch.equal(before, state[name]), name  # weights and biases frozen
    points = {k: v for k, v in state.items() if k.endswith("_quant_points")}
    assert len(points) == 3
    assert all(bool((p[1:] >= p[:-1]).all()) and 0 <= p.min() and p.max() <= 1 for p in points.values())
    float_weights = {k: v.clone() for k, v in state.items() if k not in points}
    with torch.no_grad():
        quantizer.quantize()
        quantized = model.eval()(digits.x_test)
        reference = make_cnn(STUDENT_CHANNELS)
        reference.load_state_dict(float_weights)
        for name, p in reference.named_parameters():
            if p.dim() >= 2:
                p.copy_(quantize_to_points(p, points[name + "_quant_points"], BUCKET_SIZE))
        assert torch.equal(quantized, reference.eval()(digits.x_test))
