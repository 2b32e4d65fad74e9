"""The ``nmtq`` command line: one subcommand per job, each a thin wrapper over a library function.

Example:
    >>> build_parser().parse_args(["demo", "--seed", "3"]).seed
    3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _add_demo(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="Distil and quantize a CNN on the bundled handwritten digits (about a minute on a CPU).",
        description="Train an fp32 teacher, distil a smaller student and quantize it by post-training "
                    "quantization, quantized distillation and differentiable quantization at 2 and 4 bits; "
                    "print a table of accuracy and size and write it to the output directory.",
    )
    # no defaults here: an option left out is not passed, so run_demo's signature is the one place they live
    unset = argparse.SUPPRESS
    parser.add_argument("--output-dir", default=unset, help="Where results.md and results.json go (runs/demo).")
    parser.add_argument("--seed", type=int, default=unset, help="Seed of the split, initialisation and batches (0).")
    parser.add_argument("--teacher-epochs", type=_positive_int, default=unset, help="Epochs of teacher training.")
    parser.add_argument("--student-epochs", type=_positive_int, default=unset,
                        help="Epochs of student distillation.")
    parser.add_argument("--finetune-epochs", type=_positive_int, default=unset,
                        help="Epochs of quantized distillation and of point learning, per bit width.")
    parser.add_argument("--quiet", action="store_true", help="Print only the table, no progress lines.")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # imported on use: `nmtq --help` need not wait for torch

    options = ("output_dir", "seed", "teacher_epochs", "student_epochs", "finetune_epochs")
    run_demo(progress=not args.quiet, **{name: getattr(args, name) for name in options if hasattr(args, name)})
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per command (``train``, ``evaluate`` and ``export`` come later)."""
    parser = argparse.ArgumentParser(
        prog="nmtq", description="Compress translation models by distillation and quantization.")
    parser.add_argument("--version", action="version", version=f"nmtq {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nmtq`` console script and of ``python -m nmtq``; returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.func(args)
