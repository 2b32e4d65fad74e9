"""The training commands as Python calls: ``nmtq train``, ``nmtq distill`` and ``nmtq distill-images`` by name.

The command line (:mod:`nmtq.cli`) and the table (:mod:`nmtq.table`) both run them through :func:`run_recipe`, so
a run of the table is the same call as the command it names, without going back through the command line.

:func:`train_teacher` and :func:`distill` end by scoring the test split with the translators of
:mod:`nmtq.evaluation` (:func:`score_test_split`): they live here, a layer above both training and evaluation,
so that training never imports evaluation. ``nmtq distill-images`` scores its own accuracy
(:func:`nmtq.vision.train.distill_images`).

Example:
    >>> recipe_command("distill").output_dir
    'runs/student'
    >>> run_recipe("train", ["--config", "recipes/bible-de-en-teacher.yaml"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import files
from .errors import NmtqError

if TYPE_CHECKING:
    from .args import DataArguments, ModelArguments, NmtTrainingArguments
    from .distill import DistillArguments
    from .quant import QuantizerConfig

logger = logging.getLogger(__name__)

RECIPE_COMMANDS = ("train", "distill", "distill-images")


@dataclass(frozen=True)
class RecipeCommand:
    """A command that takes a recipe: its argument dataclasses, the function they go to, its default output_dir."""

    classes: tuple[type, ...]
    run: Callable
    output_dir: str


def recipe_command(name: str) -> RecipeCommand:
    """The training command ``name`` (one of :data:`RECIPE_COMMANDS`), its modules imported on use."""
    if name == "train":
        from .args import TRAIN_ARGUMENT_CLASSES

        return RecipeCommand(TRAIN_ARGUMENT_CLASSES, train_teacher, "runs/teacher")
    if name == "distill":
        from .distill import DISTILL_ARGUMENT_CLASSES

        return RecipeCommand(DISTILL_ARGUMENT_CLASSES, distill, "runs/student")
    if name == "distill-images":
        from .vision.train import IMAGE_ARGUMENT_CLASSES, distill_images

        return RecipeCommand(IMAGE_ARGUMENT_CLASSES, distill_images, "runs/images")
    raise NmtqError(f"{name!r} is not a training command: pass one of {', '.join(RECIPE_COMMANDS)}")


def parse_recipe(name: str, fields: Sequence[str]) -> tuple:
    """The argument dataclasses of ``nmtq NAME FIELDS`` (``--config RECIPE.yaml`` and ``--field value`` pairs)."""
    from .args import parse_train_args

    command = recipe_command(name)
    return parse_train_args(list(fields), command.classes, output_dir=command.output_dir, command=name)


def run_recipe(name: str, fields: Sequence[str]):
    """Run ``nmtq NAME FIELDS`` in this process; returns what the command's function returns."""
    return recipe_command(name).run(*parse_recipe(name, fields))


def train_teacher(data_args: DataArguments, model_args: ModelArguments, training_args: NmtTrainingArguments) -> dict:
    """``nmtq train``: train (or resume) a teacher (:func:`nmtq.train.fit_teacher`) and return its test metrics
    (also written to ``output_dir/test``)."""
    from .io import write_json_atomic
    from .train import fit_teacher

    teacher = fit_teacher(data_args, model_args, training_args)
    metrics: dict = {}
    if teacher.trainer.is_world_process_zero():
        metrics = score_test_split(teacher.trainer.model, teacher.tokenizer, teacher.test_set, data_args,
                                   training_args)
        metrics["train_target_tokens_per_second"] = round(teacher.target_tokens_per_second, 1)
        metrics["train_runtime_seconds"] = round(teacher.runtime_seconds, 1)
        write_json_atomic(files.metrics_file(training_args.output_dir), metrics)
    training_args.distributed_state.wait_for_everyone()
    return metrics


def distill(data_args: DataArguments, distill_args: DistillArguments, quant_config: QuantizerConfig,
            training_args: NmtTrainingArguments) -> dict:
    """``nmtq distill``: distil and/or quantize a student as ``distill_args.method`` says
    (:func:`nmtq.distill.train_student`), then quantize it for real, save it and score it on the test split
    (:func:`nmtq.trainer.save_and_score`); returns its test metrics and size."""
    from .distill import train_student
    from .student import depth
    from .trainer import save_and_score

    student = train_student(data_args, distill_args, quant_config, training_args)

    def score(model, size: dict) -> dict:
        metrics = score_test_split(model, student.tokenizer, student.test_set, data_args, training_args)
        metrics.update(teacher=distill_args.teacher, teacher_card=student.card_teacher, data=data_args.spec("train"),
                       method=distill_args.method, **size,
                       **dict(zip(("encoder_layers", "decoder_layers"), depth(model.config))),
                       sequence_kd=distill_args.sequence_kd, teacher_top_k=distill_args.teacher_top_k,
                       alternate_every=distill_args.alternate_every,
                       **({"vocabulary": student.vocabulary} if student.trim else {}))
        return metrics

    return save_and_score(student.model, student.quantizer, training_args, score, student.teacher_size,
                          student.save_beside)


def score_test_split(model, tokenizer, test_set, data_args: DataArguments, training_args: NmtTrainingArguments) -> dict:
    """Translate the test split with beam search and score it (BLEU, chrF, perplexity)."""
    from .evaluation import evaluate_model, format_metrics, keep_short_pairs

    sources, references = list(test_set["source"]), list(test_set["target"])
    if data_args.test_max_length:
        sources, references = keep_short_pairs(tokenizer, sources, references, data_args.test_max_length)
        logger.info(f"test pairs with at most {data_args.test_max_length} pieces a side: {len(sources):,} of "
                    f"{len(test_set):,}")
    model.eval()
    metrics = evaluate_model(model, tokenizer, sources, references, num_beams=training_args.num_beams,
                             max_new_tokens=training_args.max_new_tokens,
                             batch_size=training_args.per_device_eval_batch_size,
                             output_dir=Path(training_args.output_dir) / files.TEST_DIR)
    logger.info("test split:\n" + format_metrics(metrics))
    return metrics
