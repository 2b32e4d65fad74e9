"""The training commands as Python calls: ``nmtq train``, ``nmtq distill`` and ``nmtq distill-images`` by name.

The command line (:mod:`nmtq.cli`) and the table (:mod:`nmtq.table`) both run them through :func:`run_recipe`, so
a run of the table is the same call as the command it names, without going back through the command line.

Example:
    >>> recipe_command("distill").output_dir
    'runs/student'
    >>> run_recipe("train", ["--config", "recipes/bible-de-en-teacher.yaml"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import NmtqError

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
        from .train import train_teacher

        return RecipeCommand(TRAIN_ARGUMENT_CLASSES, train_teacher, "runs/teacher")
    if name == "distill":
        from .distill import DISTILL_ARGUMENT_CLASSES, distill

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
