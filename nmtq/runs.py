"""What every training command shares, translation and images alike: the training arguments' CPU-friendly base,
the time budget, the start of a run (seed, checkpoint to resume, output_dir checks) and where nmtq's messages go.

nmtq's modules log to ``logging.getLogger(__name__)``; :func:`show_messages` gives the ``nmtq`` logger the handler
that prints them on standard output (``[nmtq] message``) and its level: ``--log_level`` on the main process and
``--log_level_replica`` on the others, as transformers' Trainer reads them; where ``--log_level`` is left
``passive`` the main process shows nmtq's info messages, unless transformers' verbosity was set.

Example:
    >>> checkpoint = start_run(training_args, [teacher], [data_file])  # doctest: +SKIP
    >>> logging.getLogger("nmtq.train").info("on the main process only")  # doctest: +SKIP
    [nmtq] on the main process only
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback, TrainingArguments

from . import files
from .checkpoints import resolve_checkpoint
from .distributed import check_distributed_engine
from .errors import NmtqError
from .guard import DEFAULT_STOP_GRAD_NORM
from .outputs import check_output_dir

logger = logging.getLogger(__name__)


@dataclass
class CpuFriendlyTrainingArguments(TrainingArguments):
    """Hugging Face's TrainingArguments plus a time budget; CPU-only machines and missing tensorboard handled."""

    max_train_minutes: float | None = field(
        default=None, metadata={"help": "Stop training after this many minutes (all processes stop together)."})
    stop_grad_norm: float | None = field(
        default=DEFAULT_STOP_GRAD_NORM, metadata={
            "help": "Stop training before an update whose gradient norm (before clipping) is above this, or whose "
                    "loss or gradients are not finite; the newest checkpoint is kept and the message says how to "
                    "go on (0: stop only on non-finite values)."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the model in an output_dir that already holds one (otherwise "
                                         "refused, unless resuming with --resume_from_checkpoint)."})

    def __getstate__(self) -> dict:
        """What pickling keeps: the Trainer saves its arguments in training_args.bin and every checkpoint, and a Hub
        token must never reach the disk."""
        state = dict(self.__dict__)
        for name in state:
            if name.endswith("_token") and isinstance(state[name], str):
                state[name] = None
        return state

    def __post_init__(self) -> None:
        check_distributed_engine(self)  # before transformers builds a DeepSpeed or FSDP plugin, or loads anything
        if self.report_to == "auto":
            self.report_to = "tensorboard" if tensorboard_available() else "none"
        if not self.use_cpu and not torch.cuda.is_available() and not torch.backends.mps.is_available():
            # without it, `accelerate launch --multi_gpu` on a CPU-only machine gives each process a world of one
            self.use_cpu = True
        if self.use_cpu:
            self.dataloader_pin_memory = False  # pinning needs an accelerator
        _check_training_numbers(self)
        super().__post_init__()
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise NmtqError(f"max_train_minutes={self.max_train_minutes}: pass a positive number of minutes")


def _check_training_numbers(args: TrainingArguments) -> None:
    """One-line errors for the numbers transformers accepts but cannot train with (or silently reads otherwise)."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise NmtqError(f"--{name} {getattr(args, name)}: pass at least 1")
    if args.learning_rate < 0 or args.weight_decay < 0 or args.max_grad_norm < 0:
        raise NmtqError(f"--learning_rate {args.learning_rate}, --weight_decay {args.weight_decay} and "
                        f"--max_grad_norm {args.max_grad_norm} must not be negative")
    if args.max_steps == 0 or args.max_steps < -1:
        raise NmtqError(f"--max_steps {args.max_steps}: pass a positive number of steps, or -1 to train for "
                        "--num_train_epochs")
    if args.max_steps == -1 and args.num_train_epochs <= 0:
        raise NmtqError(f"--num_train_epochs {args.num_train_epochs}: pass a positive number (or set --max_steps)")
    if args.stop_grad_norm is not None and args.stop_grad_norm < 0:
        raise NmtqError(f"--stop_grad_norm {args.stop_grad_norm}: pass a positive norm, or 0 to stop only on "
                        "non-finite values")


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class TimeBudget(TrainerCallback):
    """Stop training once ``minutes`` have passed; every process takes the same decision."""

    def __init__(self, minutes: float) -> None:
        self.seconds, self.start = minutes * 60, time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        over = torch.tensor(float(time.monotonic() - self.start > self.seconds))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_backend() == "nccl":
                over = over.cuda()
            torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)  # rank 0's clock may lag
        if over.item() > 0:
            control.should_training_stop = True
        return control


def time_budget(training_args: CpuFriendlyTrainingArguments) -> list[TrainerCallback]:
    """A :class:`TimeBudget` callback when ``max_train_minutes`` is set, else none."""
    return [TimeBudget(training_args.max_train_minutes)] if training_args.max_train_minutes else []


def start_run(training_args, model_inputs: list, data_files: list, last_file: str = files.TRAINER_STATE):
    """What every training command does first, before reading data or weights: the level of nmtq's messages in
    this process (:func:`show_messages`), the checkpoint it resumes (:func:`nmtq.checkpoints.resolve_checkpoint`)
    and the checks of its ``output_dir`` against the inputs (:func:`nmtq.outputs.check_output_dir`, which also
    sweeps killed runs' temporary files), and the seed of ``--seed`` for every random number generator: the
    models are built before the Trainer seeds them, and torch seeds itself at random in every process. Returns
    the checkpoint (None: start afresh)."""
    from transformers import set_seed

    set_seed(training_args.seed)
    show_messages(process_log_level(training_args))
    checkpoint = resolve_checkpoint(training_args, last_file)
    for swept in check_output_dir(training_args.output_dir, model_inputs=model_inputs, data_files=data_files,
                                  resuming=checkpoint is not None, overwrite=training_args.overwrite_output_dir,
                                  main_process=training_args.local_process_index == 0):
        logger.info(f"removed {swept}, a temporary file of a killed run")
    return checkpoint


class TerminalHandler(logging.StreamHandler):
    """nmtq's messages on standard output, one line each: ``[nmtq] message`` (a record's ``tag`` replaces
    ``nmtq``). The stream is looked up at every message, so a redirected ``sys.stdout`` gets them."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.setFormatter(_TaggedFormatter())

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stdout


class _TaggedFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"[{getattr(record, 'tag', 'nmtq')}] {super().format(record)}"


def show_messages(level: int | None = None) -> logging.Logger:
    """Print the messages of every ``nmtq`` logger at ``level`` and above on standard output (a
    :class:`TerminalHandler`, added once; they do not also reach the root logger's handlers). ``level`` None:
    :func:`default_log_level`. Returns the ``nmtq`` logger."""
    nmtq_logger = logging.getLogger("nmtq")
    if not any(isinstance(handler, TerminalHandler) for handler in nmtq_logger.handlers):
        nmtq_logger.addHandler(TerminalHandler())
        nmtq_logger.propagate = False
    nmtq_logger.setLevel(default_log_level() if level is None else level)
    return nmtq_logger


def default_log_level() -> int:
    """nmtq's level where nothing says otherwise: transformers' verbosity where it was set
    (``TRANSFORMERS_VERBOSITY``, ``transformers.logging.set_verbosity_*``), else info: nmtq's messages show."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    if verbosity == logging.WARNING and "TRANSFORMERS_VERBOSITY" not in os.environ:
        return logging.INFO
    return verbosity


def process_log_level(training_args: TrainingArguments) -> int:
    """The level of nmtq's messages in this process: ``--log_level`` on the main process, ``--log_level_replica``
    (warning by default) on the others, as ``training_args.get_process_log_level()`` says; ``passive`` on the main
    process is :func:`default_log_level`."""
    if training_args.should_log and training_args.log_level == "passive":
        return default_log_level()
    return training_args.get_process_log_level()

