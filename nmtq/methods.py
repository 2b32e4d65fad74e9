"""The compression methods both trainers share: translation (``nmtq.distill``) and images (``nmtq.vision.train``).

``--method`` selects what is trained:

* ``fp``: the student alone, cross-entropy on the labels (alpha = 0), full precision;
* ``kd``: distillation, full precision;
* ``ptq``: post-training ("post-mortem") quantization of a trained student, no training;
* ``qd``: quantized distillation: the distillation loss through fake-quantized weights, straight-through
  gradients to the full-precision weights;
* ``dq``: differentiable quantization: the weights of a trained student stay fixed and the quantization points
  are learned against the distillation loss; with ``--alternate_every`` (steps or ``epoch``) phases of quantized
  distillation of the weights and of point learning alternate, as in the paper.

Pruning, quantization and distillation together (PQK; Deep Compression): ``--sparsity S`` with ``qd`` or ``dq``
prunes the smallest weights of the quantized tensors on Zhu & Gupta's cubic schedule, from ``prune_start_step``
to ``prune_end_step``, every ``prune_every`` steps; with ``ptq`` it prunes once before quantizing.

A trainer takes the methods by mixing :class:`QuantizedTrainingMixin` into a ``transformers.Trainer`` subclass
that computes the distillation loss; the set-up (:func:`prepare_quantizer`), the callbacks
(:func:`method_callbacks`) and the final quantization (:func:`finish_quantization`) are the same for both.

Example:
    >>> MethodArguments(method="qd", alpha=0.5).quantized
    True
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from . import files
from .errors import NmtqError
from .guard import GuardedTrainingMixin
from .io import atomic_path, write_json_atomic
from .losses import distillation_loss
from .models import not_stored
from .quant import Quantizer, QuantizerConfig, SizeReport, size_report
from .quant.prune import sparsity_at
from .quant.quantizer import POINTS_SUFFIX
from .quant.size import stored_tensors

logger = logging.getLogger(__name__)

METHODS = ("fp", "kd", "ptq", "qd", "dq")


@dataclass
class MethodArguments:
    """The method, the distillation loss, bits by gradient, the alternation and pruning."""

    method: str = field(default="qd", metadata={"help": f"One of {', '.join(METHODS)} (see nmtq.methods)."})
    alpha: float = field(default=0.7, metadata={"help": "Weight of the distillation term (1 - alpha: labels)."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the distillation term."})
    student_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this trained student (needed by ptq and dq)."})
    mean_bits: float | None = field(
        default=None, metadata={"help": "Spread this many bits per weight over the tensors by gradient norm "
                                        "(instead of --bits for all)."})
    alternate_every: str | None = field(
        default=None, metadata={"help": "dq: alternate quantized distillation of the weights and learning of the "
                                        "points, switching every N optimizer steps or every 'epoch'; unset: only "
                                        "the points of a trained student are learned."})
    sparsity: float = field(
        default=0.0, metadata={"help": "Prune this fraction of every quantized tensor, smallest magnitudes first "
                                       "(qd, dq: on a schedule while training; ptq: at once)."})
    prune_start_step: int = field(default=0, metadata={"help": "First step of the pruning schedule."})
    prune_end_step: int | None = field(
        default=None, metadata={"help": "Step at which --sparsity is reached (default: two thirds of the run)."})
    prune_every: int = field(default=50, metadata={"help": "Steps between two pruning updates."})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise NmtqError(f"method={self.method!r}: pass one of {', '.join(METHODS)}")
        self.alternate_every = self._alternation()
        if (self.method == "ptq" or self.method == "dq" and self.alternate_every is None) \
                and not self.student_name_or_path:
            raise NmtqError(f"method={self.method} starts from a trained student: pass --student_name_or_path "
                             "(a directory written with --method kd, say)"
                             + ("; or alternate weights and points from a fresh student with --alternate_every"
                                if self.method == "dq" else ""))
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise NmtqError(f"need 0 <= alpha <= 1 and temperature > 0, got {self.alpha}, {self.temperature}")
        if not 0 <= self.sparsity < 1 or self.prune_every < 1 or self.prune_start_step < 0:
            raise NmtqError(f"sparsity={self.sparsity}, prune_every={self.prune_every}, prune_start_step="
                             f"{self.prune_start_step}: pass 0 <= sparsity < 1, prune_every >= 1, start >= 0")
        if self.sparsity and not self.quantized:
            raise NmtqError(f"sparsity prunes the quantized tensors: use method qd, dq or ptq, not {self.method}")
        if self.prune_end_step is not None and self.prune_end_step < self.prune_start_step:
            raise NmtqError(f"prune_end_step={self.prune_end_step} comes before prune_start_step="
                             f"{self.prune_start_step}")
        if self.mean_bits is not None and not self.quantized:
            raise NmtqError(f"mean_bits spreads the bits of quantized tensors: use method qd, dq or ptq, not "
                             f"{self.method}")

    def _alternation(self) -> int | str | None:
        """``alternate_every`` as a number of steps, ``'epoch'``, or None."""
        value = self.alternate_every
        if value is None or str(value).lower() in ("", "none"):
            return None
        if self.method != "dq":
            raise NmtqError(f"alternate_every applies to method dq only (the method is {self.method})")
        if str(value).lower() == "epoch":
            return "epoch"
        if not str(value).isdigit() or int(value) < 1:
            raise NmtqError(f"alternate_every={value!r}: pass a positive number of optimizer steps or 'epoch'")
        return int(value)

    @property
    def quantized(self) -> bool:
        return self.method in ("ptq", "qd", "dq")

    @property
    def checkpoint_last_file(self) -> str:
        """The file written last into a checkpoint: the quantizer's state when there is a quantizer."""
        return files.QUANTIZER_STATE if self.quantized else files.TRAINER_STATE

    @property
    def effective_alpha(self) -> float:
        """The distillation weight the trainer uses: 0 for ``fp`` (labels only)."""
        return 0.0 if self.method == "fp" else self.alpha


class QuantizedTrainingMixin(GuardedTrainingMixin):
    """What a ``transformers.Trainer`` subclass needs for the quantized methods; mix it in before the Trainer.

    With ``alternate_every`` (steps or ``'epoch'``) the optimizer updates the weights and the quantizer's points in
    turn, starting with the weights: after backward, the other group's gradients are dropped, which Adam skips and
    which is the same on every process (DDP-safe). Learned points get no weight decay and stay sorted.
    """

    def __init__(self, *args, quantizer: Quantizer | None = None, alternate_every: int | str | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.quantizer, self.alternate_every = quantizer, alternate_every
        if alternate_every is not None and (quantizer is None or not quantizer.config.learn_points):
            raise NmtqError("alternate_every needs a quantizer with learned points (method dq)")

    def points_phase(self) -> bool:
        """With alternation: whether this step updates the points (else the weights)."""
        if self.alternate_every == "epoch":
            return int(self.state.epoch or 0) % 2 == 1
        return (self.state.global_step // self.alternate_every) % 2 == 1

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.alternate_every is not None:
            points = {id(p) for p in self.quantizer.point_parameters()}
            learn_points = self.points_phase()
            for p in self.model.parameters():
                if (id(p) in points) != learn_points:
                    p.grad = None  # Adam skips a parameter without a gradient: no update, no moment change
        return loss

    def get_decay_parameter_names(self, model) -> list[str]:
        return [n for n in super().get_decay_parameter_names(model) if not n.endswith(POINTS_SUFFIX)]

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.quantizer is not None and self.quantizer.config.learn_points:
            self.quantizer.attach_optimizer(optimizer)  # learned points stay sorted after every step
        return optimizer

    def finish_loss(self, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """The loss as the Trainer expects it: ``num_items_in_batch`` counts every process's items, so a loss
        divided by it is scaled back up by the number of processes. (:class:`GuardedTrainingMixin` stops training
        before a non-finite loss reaches the weights.)"""
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return loss

    def check_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` if finite, else a one-line error that blames the teacher, not the learning rate."""
        if not bool(torch.isfinite(logits).all()):
            raise NmtqError(f"the teacher's outputs hold NaN or inf at step {self.state.global_step + 1} (its "
                            "weights are finite): it overflows in this precision; run it in fp32 (drop --fp16/--bf16)"
                            " or use another teacher")
        return logits


class SaveQuantizerState(TrainerCallback):
    """Write the quantizer's bit allocation and pruning masks into every checkpoint (points are model weights)."""

    def __init__(self, quantizer: Quantizer) -> None:
        self.quantizer = quantizer

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = files.checkpoint_dir(args.output_dir, state.global_step)
            masks = self.quantizer.mask_state()
            if masks:
                from safetensors.torch import save_file

                with atomic_path(checkpoint / files.MASKS) as tmp:
                    save_file({name: mask.to(torch.uint8) for name, mask in masks.items()}, str(tmp))
            write_json_atomic(checkpoint / files.QUANTIZER_STATE, self.quantizer.state_dict())  # last: marks it whole


def load_quantizer_state(quantizer: Quantizer, checkpoint: str | Path) -> None:
    """Restore what :class:`SaveQuantizerState` wrote into ``checkpoint`` (nothing if it holds no quantizer)."""
    checkpoint = Path(checkpoint)
    if (checkpoint / files.QUANTIZER_STATE).is_file():
        quantizer.load_state_dict(json.loads((checkpoint / files.QUANTIZER_STATE).read_text()))
    if (checkpoint / files.MASKS).is_file():
        from safetensors.torch import load_file

        quantizer.load_mask_state(load_file(str(checkpoint / files.MASKS)))


class PruneSchedule(TrainerCallback):
    """Magnitude pruning of the quantized tensors on Zhu & Gupta's cubic schedule, every ``every`` steps.

    Masks only shrink, so a resumed run (masks restored from the checkpoint) continues where it stopped. When
    training ends early (a time budget), the final sparsity is applied at the end and the log says so.
    """

    def __init__(self, quantizer: Quantizer, sparsity: float, start: int, end: int | None, every: int) -> None:
        self.quantizer, self.sparsity, self.start, self.end, self.every = quantizer, sparsity, start, end, every

    def _end(self, state) -> int:
        return self.end if self.end is not None else max(self.start, (2 * state.max_steps) // 3)

    def on_step_begin(self, args, state, control, **kwargs):
        step, end = state.global_step, self._end(state)
        if step >= self.start and ((step - self.start) % self.every == 0 or step == end):
            target = sparsity_at(step, self.sparsity, self.start, max(end, self.start))
            if target > self.quantizer.sparsity():
                self.quantizer.prune(target)

    def on_train_end(self, args, state, control, **kwargs):
        if self.quantizer.sparsity() < self.sparsity:
            logger.info(f"training stopped at step {state.global_step}, before the pruning schedule ended: pruning "
                        f"to {self.sparsity} now, without retraining")
            self.quantizer.prune(self.sparsity)


def fp32_size(model) -> SizeReport:
    """Size of ``model`` with every stored tensor in full precision, each tied tensor once."""
    return size_report({}, stored_tensors(model, not_stored=not_stored(model)))


def set_bits_by_distillation_gradient(quantizer: Quantizer, student, teacher, batches, mean_bits: float,
                                      alpha: float, temperature: float) -> dict[str, int]:
    """Polino et al.'s heuristic: set the quantizer's bits per tensor in proportion to the norm of the gradient of
    the distillation loss, and return them.

    ``batches`` are model inputs with ``labels``; the student and the teacher both take the rest.
    """
    student.train()
    for batch in batches:
        batch = dict(batch)
        labels = batch.pop("labels")
        with torch.no_grad():
            teacher_logits = teacher(**batch).logits
        distillation_loss(student(**batch).logits, teacher_logits, labels, alpha, temperature).backward()
    bits = quantizer.set_bits_by_gradient_norm(mean_bits, max_bits=8)
    student.zero_grad(set_to_none=True)
    return bits


def first_batches(dataset, collator: Callable[[list], dict], examples: int = 128, batch_size: int = 32) -> list[dict]:
    """The first ``examples`` of ``dataset`` in batches made by ``collator``."""
    end = min(len(dataset), examples)
    return [collator([dataset[i] for i in range(j, min(j + batch_size, end))]) for j in range(0, end, batch_size)]


def prepare_quantizer(student, method_args: MethodArguments, quant_config: QuantizerConfig, teacher=None,
                      train_set=None, collator: Callable[[list], dict] | None = None) -> Quantizer | None:
    """The quantizer the method asks for, attached to ``student`` (None for fp and kd).

    ``dq`` learns points (only the points, unless it alternates); ``--mean_bits`` spreads the bits by gradient norm
    against ``teacher`` on the first 128 examples of ``train_set``, batched by ``collator`` (model inputs and
    labels only); ``ptq`` with ``--sparsity`` prunes at once.
    """
    if not method_args.quantized:
        return None
    config = dataclasses.replace(quant_config, learn_points=method_args.method == "dq")
    quantizer = Quantizer(student, config)
    if method_args.mean_bits is not None:
        if teacher is None or train_set is None or collator is None:
            raise NmtqError("mean_bits spreads the bits by the gradient of the distillation loss: it needs the "
                             "teacher loaded (pass --teacher) and training data")
        batches = first_batches(train_set, collator)
        bits = set_bits_by_distillation_gradient(quantizer, student, teacher, batches, method_args.mean_bits,
                                                 method_args.alpha, method_args.temperature)
        logger.info(f"bits by gradient norm (mean {method_args.mean_bits}): {sorted(set(bits.values()))}")
    if method_args.method == "dq" and method_args.alternate_every is None:
        quantizer.train_points_only()
    if method_args.method == "ptq" and method_args.sparsity:
        logger.info(f"pruned to sparsity {quantizer.prune(method_args.sparsity):.3f} before quantizing")
    return quantizer


def method_callbacks(quantizer: Quantizer | None, method_args: MethodArguments,
                     checkpoint: str | None) -> list[TrainerCallback]:
    """Restore the quantizer from ``checkpoint`` and return the callbacks that save it and prune on schedule."""
    if quantizer is None:
        return []
    if checkpoint:
        load_quantizer_state(quantizer, checkpoint)
    callbacks: list[TrainerCallback] = [SaveQuantizerState(quantizer)]
    if method_args.sparsity:
        callbacks.append(PruneSchedule(quantizer, method_args.sparsity, method_args.prune_start_step,
                                       method_args.prune_end_step, method_args.prune_every))
    return callbacks


@dataclass
class Finished:
    """A student after :func:`finish_quantization`: its codes (None in fp32), size, quantization and sparsity."""

    codes: dict | None
    size: SizeReport
    quantization: dict | None
    sparsity: float

    def metrics(self, teacher_size: SizeReport) -> dict:
        """Bits, bytes (packed and Huffman-coded), the ratio against the fp32 teacher and the sparsity."""
        config = (self.quantization or {}).get("config", {})
        return {"bits": config.get("bits", 32), "bytes": self.size.total_bytes,
                "huffman_bytes": self.size.total_huffman_bytes if self.codes is not None else None,
                "teacher_fp32_bytes": teacher_size.total_bytes,
                "ratio_vs_fp32_teacher": round(teacher_size.total_bits / self.size.total_bits, 2),
                "sparsity": round(self.sparsity, 4)}

    def summary(self, teacher_size: SizeReport) -> str:
        """One log line: bytes, the ratio against the fp32 teacher and the Huffman-coded bytes."""
        return (f"size: {self.size.total_bytes:,} bytes ({teacher_size.total_bits / self.size.total_bits:.2f}x "
                f"smaller than the fp32 teacher's {teacher_size.total_bytes:,})"
                + (f"; Huffman-coded {self.size.total_huffman_bytes:,}" if self.codes is not None else ""))


def finish_quantization(student, quantizer: Quantizer | None) -> Finished:
    """Quantize for real: the weights now hold the values their integer codes decode to; measure the size."""
    if quantizer is None:
        return Finished(None, fp32_size(student), None, 0.0)
    codes = quantizer.quantize()
    size, sparsity = quantizer.size(not_stored=not_stored(student)), quantizer.sparsity()
    quantization = {"config": dataclasses.asdict(quantizer.config), **quantizer.state_dict()}
    quantizer.remove()  # hooks and points go; the weights now hold Q(w)
    return Finished(codes, size, quantization, sparsity)
