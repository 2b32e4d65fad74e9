"""`nmtq distill-images`: a tiny ResNet through every method, with the translation trainer's quantizer and loss."""

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification

import nmtq.losses
import nmtq.trainer
import nmtq.vision.train as vision_train
from nmtq.cli import main
from nmtq.codes import read_codes
from nmtq.distill import DistillationTrainer
from nmtq.methods import QuantizedTrainingMixin
from nmtq.vision.data import load_image_data

DATA = ["--data", "synthetic:80", "--split_seed", "0"]
TINY = ["--depth", "8", "--base_width", "4", "--per_device_train_batch_size", "16", "--learning_rate", "1e-2",
        "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--logging_steps", "1",
        "--bucket_size", "16"]


def run(out, *extra) -> dict:
    assert main(["distill-images", *DATA, *TINY, "--output_dir", str(out), "--save_strategy", "no", *extra]) == 0
    return json.loads((out / "test" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("images") / "teacher"
    run(out, "--method", "fp", "--base_width", "8", "--max_steps", "60", "--logging_steps", "20")
    return out


@pytest.fixture(scope="module")
def kd(teacher):
    out = teacher.parent / "kd"
    run(out, "--method", "kd", "--teacher", str(teacher), "--max_steps", "6")
    return out


def test_the_teacher_learns_the_synthetic_classes(teacher):
    metrics = json.loads((teacher / "test" / "metrics.json").read_text())
    assert metrics["method"] == "fp" and metrics["bits"] == 32 and metrics["examples"] == 16
    assert metrics["accuracy"] > 30  # ten prototype classes: chance is 10%
    assert metrics["ratio_vs_fp32_teacher"] == 1.0 and metrics["parameters"] > 0
    assert metrics["environment"]["torch"] == importlib.metadata.version("torch")


@pytest.mark.parametrize("method, extra", [
    ("qd", []),
    ("ptq", ["--student_name_or_path", "KD"]),
    ("dq", ["--student_name_or_path", "KD"]),
    ("dq", ["--alternate_every", "2"]),
    ("qd", ["--sparsity", "0.5", "--prune_every", "1", "--prune_end_step", "3"]),
    ("qd", ["--mean_bits", "3"]),
])
def test_every_method_saves_weights_equal_to_its_decoded_codes(method, extra, teacher, kd, tmp_path):
    extra = [str(kd) if e == "KD" else e for e in extra]
    metrics = run(tmp_path / "s", "--method", method, "--teacher", str(teacher), "--bits", "2", "--max_steps", "4",
                  *extra)
    assert metrics["method"] == method and metrics["bits"] == 2
    teacher_bytes = json.loads((teacher / "test" / "metrics.json").read_text())["bytes"]
    assert metrics["ratio_vs_fp32_teacher"] == pytest.approx(teacher_bytes / metrics["bytes"], rel=0.01)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "s")
    codes, weights = read_codes(tmp_path / "s" / "quantized.safetensors").quantized, dict(loaded.named_parameters())
    assert codes and all(torch.equal(q.dequantize(), weights[name]) for name, q in codes.items())
    assert all(p.dim() == 1 for n, p in weights.items() if n not in codes)  # BN and biases stay fp32
    if "--sparsity" in extra:
        assert metrics["sparsity"] == pytest.approx(0.5, abs=0.02)
    data = load_image_data("synthetic:80")
    assert vision_train.evaluate_split(loaded, data.test)["accuracy"] == metrics["accuracy"]  # the saved model


def test_kd_student_round_trips_through_the_auto_classes(kd):
    model = AutoModelForImageClassification.from_pretrained(kd).eval()
    x = load_image_data("synthetic:80").test.pixel_values
    again = AutoModelForImageClassification.from_pretrained(kd).eval()
    assert torch.equal(model(pixel_values=x).logits, again(pixel_values=x).logits)
    assert model.config.image_mean is not None and not list(kd.glob("*.bin"))


def test_both_tasks_share_one_trainer_one_loss_and_one_quantized_training_mixin(teacher, tmp_path, monkeypatch):
    assert vision_train.DistillationTrainer is DistillationTrainer is nmtq.trainer.DistillationTrainer
    assert issubclass(DistillationTrainer, QuantizedTrainingMixin)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[3])  # alpha
        return nmtq.losses.distillation_loss(*args, **kwargs)

    monkeypatch.setattr(nmtq.trainer, "distillation_loss", spy)
    run(tmp_path / "qd", "--method", "qd", "--teacher", str(teacher), "--max_steps", "2", "--alpha", "0.4")
    assert calls == [0.4, 0.4]
    package = Path(nmtq.losses.__file__).parent  # one implementation of each in the whole package
    sources = [p.read_text() for p in package.rglob("*.py")]
    assert sum(s.count("def distillation_loss(") for s in sources) == 1
    assert sum(s.count("def compute_loss(") for s in sources) == 1  # one distillation trainer
    assert sum(s.count("class Quantizer:") + s.count("class Quantizer(") for s in sources) == 1


def test_a_run_resumes_with_its_pruning_masks(teacher, tmp_path):
    out = tmp_path / "pqk"
    argv = ["distill-images", *DATA, *TINY, "--output_dir", str(out), "--method", "qd", "--teacher", str(teacher),
            "--sparsity", "0.5", "--prune_every", "1", "--prune_end_step", "4", "--save_steps", "2"]
    assert main([*argv, "--max_steps", "2"]) == 0
    assert (out / "checkpoint-2" / "quantizer-masks.safetensors").is_file()
    assert main([*argv, "--max_steps", "6", "--resume_from_checkpoint", "last"]) == 0
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert json.loads((out / "test" / "metrics.json").read_text())["sparsity"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("extra, message", [
    (["--method", "kd"], "pass --teacher DIR"),
    (["--method", "ptq"], "pass --student_name_or_path"),
    (["--depth", "9"], "depth=9 is not 6n+2"),
    (["--data", "cifar11"], "cifar11"),
    (["--data", "synthetic:80", "--validation_fraction", "1.5"], "validation_fraction=1.5"),
    (["--method", "qd", "--teacher", "TEACHER", "--data", "digits"], "10 classes and 3 channels"),
    (["--method", "qd", "--teacher", "/nonexistent"], "is not a model directory"),
])
def test_bad_input_fails_before_any_file_is_written(extra, message, teacher, tmp_path, capsys):
    out = tmp_path / "never"
    extra = [str(teacher) if e == "TEACHER" else e for e in extra]
    argv = ["distill-images", *DATA, *TINY, "--output_dir", str(out), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_two_processes_distil_with_accelerate(teacher, tmp_path):
    import subprocess

    config = Path(__file__).resolve().parents[2] / "recipes" / "accelerate" / "cpu.yaml"
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
              "--main_process_port", "29521", "-m", "nmtq", "distill-images", *DATA, *TINY, "--output_dir",
              str(out), "--method", "qd", "--teacher", str(teacher), "--max_steps", "2", "--save_strategy", "no"]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "test" / "metrics.json").read_text())["method"] == "qd"


def test_an_image_student_exports_and_loads_back_exactly(teacher, tmp_path):
    from huggingface_hub import ModelCard

    from nmtq.export import export_model
    from nmtq.exported import load_exported

    run(tmp_path / "qd", "--method", "qd", "--teacher", str(teacher), "--bits", "3", "--max_steps", "2",
        "--sparsity", "0.5", "--prune_every", "1", "--prune_end_step", "1")
    for huffman in (False, True):
        out = tmp_path / f"export-{huffman}"
        export_model(tmp_path / "qd", out, huffman=huffman, dequantize=True)
        model, tokenizer = load_exported(out)
        student = AutoModelForImageClassification.from_pretrained(tmp_path / "qd").eval()
        x = load_image_data("synthetic:80").test.pixel_values
        assert tokenizer is None and torch.equal(model(pixel_values=x).logits, student(pixel_values=x).logits)
        dequantized = AutoModelForImageClassification.from_pretrained(out / "dequantized").eval()
        assert torch.equal(dequantized(pixel_values=x).logits, student(pixel_values=x).logits)
        registered = AutoModelForImageClassification.from_pretrained(out).eval()  # quant_method nmtq
        assert torch.equal(registered(pixel_values=x).logits, student(pixel_values=x).logits)
        registered.save_pretrained(tmp_path / f"saved-{huffman}")  # the export's file, byte for byte
        assert (tmp_path / f"saved-{huffman}" / "model.safetensors").read_bytes() == \
            (out / "model.safetensors").read_bytes()
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.eval_results[0].metric_type == "accuracy"


def test_the_guard_stops_image_training_before_an_exploding_update(tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["distill-images", *DATA, *TINY, "--output_dir", str(out), "--method", "fp", "--max_steps", "3",
                 "--stop_grad_norm", "1e-9"]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nmtq ")]
    assert "training stopped at step 1, before its update: the gradient norm is" in line
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
