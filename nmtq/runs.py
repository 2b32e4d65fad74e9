"""What every training command shares, translation and images alike: the training arguments' CPU-friendly base,
the time budget, and the start of a run (seed, logger, checkpoint to resume, output_dir checks).

Example:
    >>> log, checkpoint = start_run(training_args, [teacher], [data_file])  # doctest: +SKIP
    >>> log("on the main process only")  # doctest: +SKIP
    [nmtq] on the main process only
"""

from __future__ import annotations

import importlib.util
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
    """What every training command does first, before reading data or weights: its logger, the checkpoint it
    resumes (:func:`nmtq.checkpoints.resolve_checkpoint`) and the checks of its ``output_dir`` against the inputs
    (:func:`nmtq.outputs.check_output_dir`, which also sweeps killed runs' temporary files), and the seed of
    ``--seed`` for every random number generator: the models are built before the Trainer seeds them, and torch
    seeds itself at random in every process. Returns ``(log, checkpoint)``."""
    from transformers import set_seed

    set_seed(training_args.seed)
    log = main_process_logger(training_args)
    checkpoint = resolve_checkpoint(training_args, last_file, log=log)
    for swept in check_output_dir(training_args.output_dir, model_inputs=model_inputs, data_files=data_files,
                                  resuming=checkpoint is not None, overwrite=training_args.overwrite_output_dir,
                                  main_process=training_args.local_process_index == 0):
        log(f"removed {swept}, a temporary file of a killed run")
    return log, checkpoint


def main_process_logger(training_args: TrainingArguments):
    """``log(message)`` that prints on the main process only."""
    def log(message: str) -> None:
        if training_args.process_index == 0:
            print(f"[nmtq] {message}", flush=True)

    return log
