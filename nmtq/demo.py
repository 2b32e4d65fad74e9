"""Distillation + quantization end to end on real data in about a minute on a laptop CPU.

Launch with ``nmtq demo`` (or ``python -m nmtq demo --output-dir runs/demo --seed 0``).

The data are scikit-learn's 1,797 handwritten 8x8 digits, shipped inside the package, so nothing is
downloaded. A small fp32 CNN teacher is trained, a smaller student is distilled from it, and the student is
quantized three ways (Polino, Pascanu & Alistarh, 2018):

* ``PTQ``: post-training quantization of the fp32 student, no further training;
* ``QD``:  quantized distillation: the student is fine-tuned on the distillation loss through fake
  quantization (forward with Q(w), straight-through gradient to the float weights), then quantized;
* ``DQ``:  differentiable quantization: the weights are frozen and only the quantization points are learned.

Every conv and linear weight is quantized in buckets of 64 values; biases stay fp32 (the quantizer's default).
The table gives test accuracy and exact packed sizes, each row compared with the fp32 teacher.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .io import write_text_atomic
from .losses import distillation_loss
from .quant import Quantizer

BUCKET_SIZE = 64
TEACHER_CHANNELS = (32, 64)
STUDENT_CHANNELS = (8, 16)
KD_ALPHA, KD_TEMPERATURE = 0.7, 4.0
BATCH_SIZE = 64
COLUMNS = ("model", "bits", "test accuracy %", "bytes", "ratio vs fp32 teacher", "Huffman bytes")


@dataclass(frozen=True)
class Digits:
    """Images as (n, 1, 8, 8) floats in [0, 1] and integer labels, split into train and test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Digits:
    """scikit-learn's digits, shuffled by ``seed``; the last ``test_fraction`` of them is the test set."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError(
            "the demo's data ship with scikit-learn, which is not installed: run pip install 'nmtq[data]'"
        ) from err
    bunch = sklearn_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_train = len(y) - int(len(y) * test_fraction)
    return Digits(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def make_cnn(channels: tuple[int, int], seed: int = 0) -> nn.Sequential:
    """conv3x3 -> ReLU -> conv3x3 -> ReLU -> 2x2 max-pool -> linear, for 8x8 single-channel images.

    Example:
        >>> make_cnn((4, 8))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    c1, c2 = channels
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the global generator
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * 4 * 4, 10),
        )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int = 0,
          teacher_logits: torch.Tensor | None = None, params: list[nn.Parameter] | None = None,
          quantizer: Quantizer | None = None) -> None:
    """Adam on cross-entropy, or on the distillation loss when ``teacher_logits`` (one row per image) are given.

    ``params`` restricts what is trained (the points of differentiable quantization); ``quantizer`` keeps
    learned points sorted after each step.
    """
    optimizer = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    if quantizer is not None:
        quantizer.attach_optimizer(optimizer)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(y), generator=generator).split(BATCH_SIZE):
            logits = model(x[batch])
            if teacher_logits is None:
                loss = F.cross_entropy(logits, y[batch])
            else:
                loss = distillation_loss(logits, teacher_logits[batch], y[batch], KD_ALPHA, KD_TEMPERATURE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy in percent, in eval mode."""
    model.eval()
    return 100.0 * float((model(x).argmax(dim=-1) == y).float().mean())


def fp32_bytes(model: nn.Module) -> int:
    """4 bytes per element of every parameter and buffer."""
    return 4 * sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def post_training_quantization(student: nn.Module, bits: int) -> Quantizer:
    """A copy of ``student`` with a quantizer attached and nothing trained."""
    return Quantizer(copy.deepcopy(student), bits=bits, bucket_size=BUCKET_SIZE)


def quantized_distillation(student: nn.Module, teacher_logits: torch.Tensor, data: Digits, bits: int,
                           epochs: int, lr: float = 1e-3, seed: int = 0) -> Quantizer:
    """A copy of ``student`` fine-tuned on the distillation loss through fake quantization (training state)."""
    quantizer = Quantizer(copy.deepcopy(student), bits=bits, bucket_size=BUCKET_SIZE)
    train(quantizer.model, data.x_train, data.y_train, epochs, lr, seed, teacher_logits=teacher_logits)
    return quantizer


def differentiable_quantization(student: nn.Module, teacher_logits: torch.Tensor, data: Digits, bits: int,
                                epochs: int, lr: float = 1e-3, seed: int = 0) -> Quantizer:
    """A copy of ``student`` with frozen weights whose quantization points are learned (training state)."""
    model = copy.deepcopy(student)
    quantizer = Quantizer(model, bits=bits, bucket_size=BUCKET_SIZE, learn_points=True)
    points = quantizer.train_points_only()
    train(model, data.x_train, data.y_train, epochs, lr, seed, teacher_logits=teacher_logits, params=points,
          quantizer=quantizer)
    return quantizer


def _row(name: str, bits: int, acc: float, size: int, teacher_size: int, huffman: int | None) -> dict:
    return {"model": name, "bits": bits, "test_accuracy": round(acc, 2), "bytes": size,
            "ratio_vs_fp32_teacher": round(teacher_size / size, 2), "huffman_bytes": huffman}


def quantized_row(name: str, quantizer: Quantizer, data: Digits, teacher_size: int) -> dict:
    """Quantize for real (integer codes), then measure test accuracy and the exact packed size."""
    quantizer.quantize()
    size = quantizer.size()
    acc = accuracy(quantizer.model, data.x_test, data.y_test)
    return _row(name, quantizer.config.bits, acc, size.total_bytes, teacher_size, size.total_huffman_bytes)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a markdown table with the columns of :data:`COLUMNS`."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        huffman = "-" if r["huffman_bytes"] is None else f"{r['huffman_bytes']:,}"
        lines.append(f"| {r['model']} | {r['bits']} | {r['test_accuracy']:.2f} | {r['bytes']:,} | "
                     f"{r['ratio_vs_fp32_teacher']:.2f} | {huffman} |")
    return "\n".join(lines)


class _Progress:
    """One line per finished stage on stderr, with the time since the start."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.start = enabled, time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[demo {time.perf_counter() - self.start:5.1f}s] {message}", file=sys.stderr, flush=True)


def _fp32_rows(data: Digits, seed: int, teacher_epochs: int, student_epochs: int,
               log: _Progress) -> tuple[list[dict], nn.Module, nn.Module, torch.Tensor]:
    teacher = make_cnn(TEACHER_CHANNELS, seed)
    train(teacher, data.x_train, data.y_train, teacher_epochs, lr=3e-3, seed=seed)
    teacher.requires_grad_(False).eval()
    teacher_size, teacher_acc = fp32_bytes(teacher), accuracy(teacher, data.x_test, data.y_test)
    log(f"teacher fp32 trained: {teacher_acc:.2f}% test accuracy")
    with torch.no_grad():
        teacher_logits = teacher(data.x_train)  # the teacher is frozen and the data fixed: compute them once
    student = make_cnn(STUDENT_CHANNELS, seed + 1)
    train(student, data.x_train, data.y_train, student_epochs, lr=3e-3, seed=seed, teacher_logits=teacher_logits)
    student_acc = accuracy(student, data.x_test, data.y_test)
    log(f"student fp32 distilled: {student_acc:.2f}% test accuracy")
    rows = [_row("teacher fp32", 32, teacher_acc, teacher_size, teacher_size, None),
            _row("student fp32 (KD)", 32, student_acc, fp32_bytes(student), teacher_size, None)]
    return rows, teacher, student, teacher_logits


def run_demo(output_dir: str = "runs/demo", seed: int = 0, teacher_epochs: int = 20, student_epochs: int = 30,
             finetune_epochs: int = 10, progress: bool = True) -> list[dict]:
    """Train, distil and quantize on the digits; print the table, write ``results.md`` and ``results.json``.

    Returns one dict per row (model, bits, test_accuracy, bytes, ratio_vs_fp32_teacher, huffman_bytes).
    """
    for label, value in (("teacher_epochs", teacher_epochs), ("student_epochs", student_epochs),
                         ("finetune_epochs", finetune_epochs)):
        if value < 1:
            raise ValueError(f"{label}={value}: pass a positive number of epochs")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)  # fail on an unwritable directory before any training
    log = _Progress(progress)
    data = load_digits(seed)
    rows, _, student, teacher_logits = _fp32_rows(data, seed, teacher_epochs, student_epochs, log)
    teacher_size = rows[0]["bytes"]
    methods = {
        "PTQ": lambda bits: post_training_quantization(student, bits),
        "QD": lambda bits: quantized_distillation(student, teacher_logits, data, bits, finetune_epochs, seed=seed),
        "DQ": lambda bits: differentiable_quantization(student, teacher_logits, data, bits, finetune_epochs,
                                                       seed=seed),
    }
    for bits in (2, 4):
        for method, build in methods.items():
            rows.append(quantized_row(f"{method} {bits}-bit", build(bits), data, teacher_size))
            log(f"{rows[-1]['model']}: {rows[-1]['test_accuracy']:.2f}% test accuracy")
    table = markdown_table(rows)
    print(table)
    write_text_atomic(out / "results.md", table + "\n")
    write_text_atomic(out / "results.json", json.dumps(rows, indent=2) + "\n")
    log(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return rows
