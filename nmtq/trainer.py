"""The one distillation trainer of every task: translation (:mod:`nmtq.distill`) and images (:mod:`nmtq.vision.train`).

:class:`DistillationTrainer` is a ``transformers.Trainer`` that overrides ``compute_loss`` and nothing of the
training loop. Its loss is ``alpha T^2 KL(teacher || student) + (1 - alpha) CE`` per item
(:func:`nmtq.losses.distillation_loss`), through the quantizer of :class:`nmtq.methods.QuantizedTrainingMixin`.
A task supplies only how a batch reaches the models: ``target_streams(batch)`` splits it into
:class:`TargetStream` s, each the inputs of the student (and of a live teacher), its labels and, where the
teacher's outputs were cached, their top-k. :func:`save_and_score` ends every run the same way.

Example:
    >>> batch = {"pixel_values": torch.zeros(2, 3, 8, 8), "labels": torch.tensor([1, 0])}
    >>> [(sorted(stream.inputs), stream.weight) for stream in model_inputs_and_labels(batch)]
    [(['pixel_values'], 1.0)]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer

from . import files
from .codes import save_codes
from .errors import NmtqError
from .io import write_json_atomic
from .losses import TopK, distillation_loss
from .methods import QuantizedTrainingMixin, finish_quantization, fp32_size
from .quant import Quantizer, SizeReport

logger = logging.getLogger(__name__)


@dataclass
class TargetStream:
    """One set of targets in a batch: ``inputs`` go to the student and to a live teacher, ``labels`` are the
    targets (-100: padding), ``teacher_top_k`` the teacher's cached top-k (None: the teacher runs live) and
    ``weight`` the stream's share of the loss when a batch has several."""

    inputs: dict
    labels: torch.Tensor
    teacher_top_k: TopK | None = None
    weight: float = 1.0


def model_inputs_and_labels(batch: dict) -> list[TargetStream]:
    """One stream: everything but ``labels`` goes to the models (images: ``pixel_values``)."""
    return [TargetStream({k: v for k, v in batch.items() if k != "labels"}, batch["labels"])]


class DistillationTrainer(QuantizedTrainingMixin, Trainer):
    """``Trainer`` whose loss is ``alpha T^2 KL(teacher || student) + (1 - alpha) CE`` per item or target token.

    The teacher is frozen (``eval()``, ``requires_grad_(False)``, ``no_grad``) and placed on the student's device;
    it may be None when every batch carries cached teacher outputs, and is never run at ``alpha`` 0.
    ``target_streams`` splits a batch into :class:`TargetStream` s; the loss of the first is scaled by
    ``num_items_in_batch``, each further one's is its mean, weighted like the first by this batch's share of the
    items (interpolated sequence-level KD). The quantizer and the alternation of ``dq`` come from
    :class:`nmtq.methods.QuantizedTrainingMixin`.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by num_items_in_batch

    def __init__(self, *args, teacher, alpha: float, temperature: float,
                 target_streams: Callable[[dict], list[TargetStream]] = model_inputs_and_labels, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = None if teacher is None else teacher.requires_grad_(False).eval().to(self.args.device)
        self.alpha, self.temperature, self.target_streams = alpha, temperature, target_streams

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        first, *others = self.target_streams(dict(inputs))
        loss, outputs = self.stream_loss(model, first, num_items_in_batch)
        if others:
            share = 1.0 if num_items_in_batch is None else (first.labels != -100).sum() / num_items_in_batch
            loss = first.weight * loss
            for stream in others:
                loss = loss + stream.weight * self.stream_loss(model, stream, None)[0] * share
        loss = self.finish_loss(loss, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def stream_loss(self, model, stream: TargetStream, num_items_in_batch) -> tuple[torch.Tensor, object]:
        """The distillation loss of one stream and the student's outputs."""
        outputs = model(**stream.inputs)
        teacher = self.teacher_targets(stream, outputs.logits)
        loss = distillation_loss(outputs.logits, teacher, stream.labels, self.alpha, self.temperature,
                                 num_items_in_batch=num_items_in_batch)
        return loss, outputs

    def teacher_targets(self, stream: TargetStream, student_logits: torch.Tensor) -> torch.Tensor | TopK:
        """The teacher's side of the loss: its cached top-k, or its logits, run live."""
        if self.alpha == 0:
            return student_logits.detach()  # unused at alpha = 0: skip the teacher's forward pass
        if stream.teacher_top_k is not None:
            return stream.teacher_top_k
        if self.teacher is None:
            raise NmtqError("this batch has no cached teacher outputs and the trainer has no teacher")
        with torch.no_grad():
            return self.check_teacher_logits(self.teacher(**stream.inputs).logits)


def save_and_score(student, quantizer: Quantizer | None, training_args, score: Callable[[object, dict], dict],
                   teacher_size: SizeReport | None = None, save_beside: Callable[[Path], None] | None = None,
                   headline: Callable[[dict], str] | None = None) -> dict:
    """The end of every run: quantize for real (:func:`nmtq.methods.finish_quantization`); then, on the main
    process, save the model (its weights = the decoded codes), what ``save_beside(output_dir)`` adds (a
    tokenizer), ``quantization.json`` and the exact integer codes; score it with ``score(model, size)``, which
    returns the test metrics with the run's fields around ``size`` (bytes and ratio against ``teacher_size``;
    None: the model's own fp32 size, a teacher being trained); write ``test/metrics.json`` and log the size,
    after ``headline(metrics)``. Every process returns once the main one is done, the others with ``{}``."""
    student = student.module if hasattr(student, "module") else student
    finished = finish_quantization(student, quantizer)
    teacher_size = teacher_size if teacher_size is not None else fp32_size(student)
    metrics: dict = {}
    if training_args.process_index == 0:
        output_dir = Path(training_args.output_dir)
        student.save_pretrained(output_dir)
        if save_beside is not None:
            save_beside(output_dir)
        if finished.quantization is not None:
            write_json_atomic(output_dir / files.QUANTIZATION, finished.quantization)
            save_codes(finished.codes, output_dir / files.CODES)  # the exact integer codes behind the saved weights
        metrics = score(student, finished.metrics(teacher_size))
        write_json_atomic(files.metrics_file(output_dir), metrics)
        logger.info((headline(metrics) if headline is not None else "") + finished.summary(teacher_size))
    training_args.distributed_state.wait_for_everyone()
    return metrics
