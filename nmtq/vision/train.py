"""Distil and quantize image classifiers with the translation trainer's methods, quantizer and loss.

    nmtq distill-images --config recipes/digits-resnet-teacher.yaml                  # the teacher: method fp
    nmtq distill-images --config recipes/digits-resnet-student.yaml --method qd --bits 2
    accelerate launch --multi_gpu --num_processes 2 -m nmtq distill-images --config recipes/cifar10-resnet-student.yaml

One command trains every model: ``--method fp`` without a teacher trains a teacher (or a student from the labels
alone); ``kd``, ``ptq``, ``qd`` and ``dq`` (with pruning, bits by gradient and the alternation) are those of
:mod:`nmtq.methods`, the very code ``nmtq distill`` runs. The model fields (architecture, depth, widen_factor,
base_width) describe the model being trained: a CIFAR ResNet or Wide ResNet (:mod:`nmtq.vision.models`). The run
directory gets the quantized model (``save_pretrained``: weights = decoded codes, loadable with
``AutoModelForImageClassification`` once ``nmtq.vision`` is imported), its exact integer codes
(``quantized.safetensors``), ``quantization.json`` and ``test/metrics.json`` (top-1 accuracy, bytes, ratio, and
the ``environment`` they were measured in: :mod:`nmtq.env`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..env import environment
from ..errors import NmtqError
from ..methods import MethodArguments, fp32_size, method_callbacks, prepare_quantizer
from ..quant import QuantizerConfig
from ..runs import CpuFriendlyTrainingArguments, start_run, time_budget
from ..trainer import DistillationTrainer, save_and_score
from .data import ImageCollator, ImageData, ImageDataset, ImageSplit, load_image_data, parse_image_spec
from .models import (
    ARCHITECTURES,
    CifarResNetConfig,
    CifarResNetForImageClassification,
    load_classifier,
    read_classifier_config,
)

logger = logging.getLogger(__name__)


@dataclass
class ImageDataArguments:
    """Which images, how they are split and augmented."""

    data: str = field(default="digits", metadata={"help": "Image data spec (see nmtq.vision.data): digits, "
                                                          "mnist:DIR, cifar10, cifar100, hf:NAME_OR_DIR, synthetic:N."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the train/validation/test split (keep it fixed "
                                                         "across teacher and students)."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of the training images held out."})
    test_fraction: float = field(default=0.2, metadata={"help": "Share held out for test (data without a test "
                                                                "split of its own)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training images."})
    augment: bool = field(default=False, metadata={"help": "Random crops (zero padding crop_padding) and flips of "
                                                           "the training images (CIFAR's standard augmentation)."})
    crop_padding: int = field(default=4, metadata={"help": "Padding of the random crops, in pixels."})
    flip: bool = field(default=True, metadata={"help": "With augment: horizontal flips (off for digits)."})

    def __post_init__(self) -> None:
        parse_image_spec(self.data)  # a malformed spec fails here, before anything is written
        if not 0 <= self.validation_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise NmtqError(f"validation_fraction={self.validation_fraction}, test_fraction={self.test_fraction}: "
                             "pass fractions in [0, 1)")
        if self.crop_padding < 0:
            raise NmtqError(f"crop_padding={self.crop_padding}: pass 0 or more pixels")


@dataclass
class ImageModelArguments:
    """The CIFAR ResNet being trained (ignored when it starts from --student_name_or_path)."""

    architecture: str = field(default="resnet", metadata={"help": f"One of {', '.join(ARCHITECTURES)}."})
    depth: int = field(default=20, metadata={"help": "Layers: 6n+2 for resnet (8, 14, 20, 32, 56, 110), 6n+4 for "
                                                     "wide_resnet (10, 16, 22, 28, 40)."})
    widen_factor: int = field(default=1, metadata={"help": "Width multiplier (Wide ResNet's k)."})
    base_width: int = field(default=16, metadata={"help": "Channels of the first stage (resnet)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout inside the wide_resnet blocks."})

    def config(self, **data_fields) -> CifarResNetConfig:
        """The model's config; ``data_fields`` (channels, labels, normalisation) come from the data."""
        return CifarResNetConfig(architecture=self.architecture, depth=self.depth, widen_factor=self.widen_factor,
                                 base_width=self.base_width, dropout=self.dropout, **data_fields)

    def __post_init__(self) -> None:
        self.config()  # validates before anything is written


@dataclass
class ImageDistillArguments(MethodArguments):
    """The teacher and the method (:class:`nmtq.methods.MethodArguments`)."""

    teacher: str | None = field(
        default=None, metadata={"help": "Directory of the full-precision teacher (needed by kd, qd and dq; "
                                        "without one, method fp trains a teacher)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method in ("kd", "qd", "dq") and self.alpha > 0 and not self.teacher:
            raise NmtqError(f"method={self.method} distils from a teacher: pass --teacher DIR (trained with "
                             "--method fp), or --alpha 0 to train on the labels alone")


@dataclass
class ImageTrainingArguments(CpuFriendlyTrainingArguments):
    """Hugging Face's TrainingArguments with a time budget."""


IMAGE_ARGUMENT_CLASSES = (ImageDataArguments, ImageModelArguments, ImageDistillArguments, QuantizerConfig,
                          ImageTrainingArguments)


def check_compatible(config, data: ImageData, what: str) -> None:
    """A model's config (its classes and channels) must fit the data's."""
    if config.num_labels != data.num_labels or getattr(config, "num_channels", data.num_channels) != data.num_channels:
        raise NmtqError(f"the {what} has {config.num_labels} classes and {config.num_channels} channels but the data "
                         f"{data.spec!r} have {data.num_labels} and {data.num_channels}: train it on the same data")


def accuracy_metric(prediction) -> dict:
    """The Trainer's ``compute_metrics``: top-1 accuracy (%) of an ``EvalPrediction``."""
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": round(100.0 * float((logits.argmax(-1) == prediction.label_ids).mean()), 2)}


@torch.no_grad()
def evaluate_split(model, split: ImageSplit, batch_size: int = 256) -> dict:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` on ``split``, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    correct, loss = 0, 0.0
    for start in range(0, len(split), batch_size):
        x = split.pixel_values[start:start + batch_size].to(device)
        y = split.labels[start:start + batch_size].to(device)
        logits = model(pixel_values=x).logits
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
    return {"accuracy": round(100.0 * correct / len(split), 2), "loss": round(loss / len(split), 4),
            "examples": len(split)}


def distill_images(data_args: ImageDataArguments, model_args: ImageModelArguments, method_args: ImageDistillArguments,
                   quant_config: QuantizerConfig, training_args: ImageTrainingArguments) -> dict:
    """Train, distil and/or quantize an image classifier as ``method_args.method`` says; return its test metrics."""
    if training_args.push_to_hub:
        raise NmtqError("nmtq distill-images does not push: the Trainer would upload fp32 checkpoints, not the "
                         "quantized model; push the run directory with `nmtq push DIR --repo-id NAME`")
    checkpoint = start_run(training_args, [method_args.teacher, method_args.student_name_or_path], [data_args.data],
                           method_args.checkpoint_last_file)
    data = load_image_data(data_args.data, seed=data_args.split_seed,
                           validation_fraction=data_args.validation_fraction, test_fraction=data_args.test_fraction,
                           max_train_samples=data_args.max_train_samples)
    for what, path in (("teacher", method_args.teacher), ("student", method_args.student_name_or_path)):
        if path:
            check_compatible(read_classifier_config(path, what), data, what)  # before the weights are loaded
    teacher, student = (load_classifier(path, what) if path else None for what, path in
                        (("teacher", method_args.teacher), ("student", method_args.student_name_or_path)))
    if student is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(training_args.seed)  # the same initial weights whatever ran before
            student = CifarResNetForImageClassification(model_args.config(
                num_channels=data.num_channels, num_labels=data.num_labels, image_mean=list(data.mean),
                image_std=list(data.std)))
    logger.info(f"{data.spec}: {len(data.train):,} train / {len(data.validation):,} validation / "
                f"{len(data.test):,} test images, {data.num_labels} classes; {student.config.architecture}-"
                f"{student.config.depth} x{student.config.widen_factor}, "
                f"{sum(p.numel() for p in student.parameters()):,} parameters; method {method_args.method}")
    train_set = ImageDataset(data.train)
    collator = ImageCollator(augment=data_args.augment, crop_padding=data_args.crop_padding, flip=data_args.flip)

    # --mean_bits measures gradients on training images as they are, not augmented
    quantizer = prepare_quantizer(student, method_args, quant_config, teacher, train_set, ImageCollator())
    if method_args.method != "ptq":
        callbacks = time_budget(training_args) + method_callbacks(quantizer, method_args, checkpoint)
        trainer = DistillationTrainer(
            model=student, args=training_args, train_dataset=train_set, data_collator=collator, callbacks=callbacks,
            eval_dataset=ImageDataset(data.validation) if len(data.validation) else None,
            compute_metrics=accuracy_metric,
            teacher=teacher, alpha=method_args.effective_alpha, temperature=method_args.temperature,
            quantizer=quantizer, alternate_every=method_args.alternate_every)
        trainer.train(resume_from_checkpoint=checkpoint)
        training_args.distributed_state.wait_for_everyone()
    return _finish(student, quantizer, teacher, data, method_args, training_args)


def _finish(student, quantizer, teacher, data: ImageData, method_args: ImageDistillArguments,
            training_args: ImageTrainingArguments) -> dict:
    """Quantize for real, save the model (weights = decoded codes) and its codes, and score the test split."""
    def score(model, size: dict) -> dict:
        config = model.config
        return {**evaluate_split(model, data.test), "data": data.spec, "method": method_args.method,
                "teacher": method_args.teacher, **size,
                "architecture": config.architecture, "depth": config.depth, "widen_factor": config.widen_factor,
                "parameters": sum(p.numel() for p in model.parameters()), "environment": environment()}

    return save_and_score(student, quantizer, training_args, score,
                          fp32_size(teacher) if teacher is not None else None,
                          headline=lambda m: f"test accuracy {m['accuracy']:.2f}% on {m['examples']:,} images; ")
