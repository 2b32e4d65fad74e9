"""One guard for every trainer (teacher, distillation, images): nothing non-finite reaches the weights or a checkpoint.

* Before each optimizer update, :class:`GuardedTrainingMixin` checks the step's loss and the gradient norm before
  clipping. A loss that is not finite, or a norm that is not finite or above ``--stop_grad_norm`` (default 1e4),
  stops training *before* the update, on every process at once, with a one-line :class:`~nmtq.errors.NmtqError`
  that names the newest checkpoint and the command that goes on from it with a lower learning rate.
* Each checkpoint's weights are checked when it is saved; a checkpoint with NaN or inf weights is removed and
  training stops, so ``--resume_from_checkpoint last`` always finds finite weights.
* A resumed run uses the learning rate it is given: the scheduler restored from the checkpoint keeps its step but
  takes the new peak rate (``--learning_rate``), so "resume with a lower learning rate" really lowers it.
* :func:`check_finite` is the check of loaded weights (a teacher, a starting student), naming the first bad tensor.

Example:
    >>> import torch
    >>> check_finite(torch.nn.Linear(2, 2), "a model")
    >>> layer = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     layer.bias[0] = float("nan")
    >>> check_finite(layer, "a model")
    Traceback (most recent call last):
    ...
    nmtq.errors.NmtqError: a model: tensor 'bias' holds NaN or inf values ...
"""

from __future__ import annotations

import logging
import math
import shutil

import torch
from transformers import TrainerCallback

from . import files
from .errors import NmtqError

logger = logging.getLogger(__name__)

DEFAULT_STOP_GRAD_NORM = 1e4


def check_finite(model: torch.nn.Module, name: str) -> None:
    """A one-line :class:`NmtqError` naming the first parameter or buffer of ``model`` that holds NaN or inf."""
    for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise NmtqError(f"{name}: tensor {key!r} holds NaN or inf values (the weights are damaged): load an "
                            "earlier checkpoint or retrain it")


def gradient_norm(model: torch.nn.Module) -> torch.Tensor:
    """The 2-norm of every gradient of ``model`` together (a scalar tensor; 0 without gradients)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in model.parameters() if p.grad is not None]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))


def _collective_max(values: torch.Tensor) -> torch.Tensor:
    """``values`` maxed over every process, so that all stop together (one would otherwise wait forever)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_backend() == "nccl":
            values = values.cuda()
        torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return values.cpu()


class GuardedTrainingMixin:
    """Mix into a ``transformers.Trainer`` subclass, before the Trainer: the finite-check guard of this module.

    The threshold is ``args.stop_grad_norm`` (None or 0: only non-finite values stop). With fp16's loss scaling
    the norm is unscaled first, and an overflowing step, which the scaler skips anyway, is not an error.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(FiniteCheckpoints())
        self.add_callback(LearningRateOnResume())

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.check_step(model, loss)
        return loss

    def check_step(self, model, loss: torch.Tensor) -> None:
        """Raise before the update if ``loss`` or the gradients are not finite, or the norm passes the threshold."""
        threshold = getattr(self.args, "stop_grad_norm", DEFAULT_STOP_GRAD_NORM) or math.inf
        scaler = getattr(self.accelerator, "scaler", None)
        norm = gradient_norm(model).to(loss.device)
        if scaler is not None:
            norm = norm / scaler.get_scale()
        bad_loss = ~torch.isfinite(loss.detach().float())
        bad_norm = (norm > threshold) | (~torch.isfinite(norm) if scaler is None else torch.zeros((), dtype=bool,
                                                                                                   device=norm.device))
        flags = _collective_max(torch.stack([bad_loss.float(), bad_norm.float(),
                                             torch.nan_to_num(norm, nan=math.inf).float()]))
        if flags[0] or flags[1]:
            what = (f"the loss is {loss.item()}" if flags[0] else
                    f"the gradient norm is {flags[2].item():.4g}, above --stop_grad_norm {threshold:g}"
                    if math.isfinite(flags[2].item()) else "the gradients are not finite")
            raise NmtqError(self.stop_message(what))

    def stop_message(self, what: str) -> str:
        from .checkpoints import last_complete_checkpoint

        checkpoint = last_complete_checkpoint(self.args.output_dir)
        where = (f"the newest checkpoint, {checkpoint}, holds finite weights" if checkpoint else
                 "no checkpoint was saved yet")
        rate = self.args.learning_rate / 10
        return (f"training stopped at step {self.state.global_step + 1}, before its update: {what}. The weights were "
                f"not changed and {where}. Go on with a lower learning rate: the same command with "
                f"--resume_from_checkpoint last --learning_rate {rate:g} (a resumed run uses the new rate)"
                + ("" if checkpoint else f"; or start again with --learning_rate {rate:g}"))


class FiniteCheckpoints(TrainerCallback):
    """Check every checkpoint's weights when it is saved: NaN or inf removes it and stops training."""

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is None:
            return control
        directory = files.checkpoint_dir(args.output_dir, state.global_step)
        try:
            check_finite(model, directory.name)
        except NmtqError as err:
            if state.is_world_process_zero and directory.is_dir():
                shutil.rmtree(directory, ignore_errors=True)
            raise NmtqError(f"{err}; it was removed, so --resume_from_checkpoint last goes on from the one "
                            "before: resume from it with a lower --learning_rate") from None
        return control


class LearningRateOnResume(TrainerCallback):
    """A resumed run's scheduler takes ``args.learning_rate`` as its peak, at the step it had reached.

    The Trainer restores the optimizer and scheduler from the checkpoint, with the old peak rate; transformers'
    schedules are ``LambdaLR`` (rate = peak x factor(step)), so the new peak replaces the old in every group.
    Nothing changes when the rate is the same, so an unchanged resume stays bit-identical.
    """

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if not state.global_step or optimizer is None or lr_scheduler is None:
            return control
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            return control
        if all(base == args.learning_rate for base in scheduler.base_lrs):
            return control
        logger.warning("resuming with learning rate %g (the checkpoint's was %s)", args.learning_rate,
                       ", ".join(f"{base:g}" for base in sorted(set(scheduler.base_lrs))))
        scheduler.base_lrs = [args.learning_rate] * len(scheduler.base_lrs)
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group["initial_lr"] = args.learning_rate
            group["lr"] = args.learning_rate * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        return control
