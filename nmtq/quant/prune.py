"""Magnitude pruning for pruning + quantization (Han et al., *Deep Compression*, 2016) (torch only).

* :func:`sparsity_at` is the gradual schedule of Zhu & Gupta (2017): the sparsity rises from ``s_i`` to
  ``s_f`` along a cubic, fast at first while many redundant weights remain, then slowly.
* :func:`magnitude_mask` keeps the largest-magnitude weights; a mask only ever shrinks, so a weight pruned
  once stays pruned.

:meth:`nmtq.quant.Quantizer.prune` applies both to the quantized weights; the forward pass then sees
Q(w * m) * m, and the size accounting stores a 1-bit-per-weight bitmap plus the codes of the kept weights.

Example:
    >>> [round(sparsity_at(t, 0.8, start_step=0, end_step=4), 4) for t in range(5)]
    [0.0, 0.4625, 0.7, 0.7875, 0.8]
"""

from __future__ import annotations

import math

import torch

from .functional import check_mask, check_weights


def _check_sparsity(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"{name}={value!r}: pass the fraction of weights to prune, a number with 0 <= {name} < 1")


def sparsity_at(step: int, final_sparsity: float, start_step: int, end_step: int,
                initial_sparsity: float = 0.0) -> float:
    """Zhu & Gupta's sparsity at ``step``: ``s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))**3`` on [t0, t1].

    Before ``start_step`` nothing is pruned yet (0.0); from ``end_step`` on it is ``final_sparsity``. Exact
    at both ends and non-decreasing in ``step``.

    Example:
        >>> sparsity_at(50, 0.9, start_step=0, end_step=100), sparsity_at(-1, 0.9, 0, 100, initial_sparsity=0.5)
        (0.7875, 0.0)
    """
    _check_sparsity(final_sparsity, "final_sparsity")
    _check_sparsity(initial_sparsity, "initial_sparsity")
    if initial_sparsity > final_sparsity:
        raise ValueError(f"initial_sparsity={initial_sparsity} is above final_sparsity={final_sparsity}: "
                         "the schedule only prunes more over time, so pass initial_sparsity <= final_sparsity")
    for name, value in (("step", step), ("start_step", start_step), ("end_step", end_step)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}={value!r}: pass an integer training step")
    if not 0 <= start_step <= end_step:
        raise ValueError(f"start_step={start_step}, end_step={end_step}: pass 0 <= start_step <= end_step")
    if step < start_step:
        return 0.0
    if step >= end_step:
        return float(final_sparsity)
    if step == start_step:
        return float(initial_sparsity)
    left = 1 - (step - start_step) / (end_step - start_step)
    s = final_sparsity + (initial_sparsity - final_sparsity) * (left * left * left)  # x*x*x: monotone in floats
    return min(max(s, initial_sparsity), final_sparsity)


def as_mask(mask: object, shape: torch.Size | tuple[int, ...], name: str = "mask") -> torch.Tensor:
    """``mask`` as a bool tensor of ``shape``; a uint8 tensor of 0s and 1s (how some formats store masks) is
    converted, anything else raises a ``ValueError``."""
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.uint8 and bool((mask <= 1).all()):
        mask = mask.bool()
    check_mask(mask, shape, name)
    return mask


def magnitude_mask(w: torch.Tensor, sparsity: float, previous_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask of the weights to keep: the ``numel - floor(sparsity * numel)`` largest ``|w|``.

    Only entries that ``previous_mask`` keeps compete, so a pruned weight never comes back; if
    ``previous_mask`` already prunes at least that many, it is returned unchanged (as a copy). Ties go to the
    lower flat index. When the pruned entries of ``w`` are zero (as :meth:`Quantizer.prune` leaves them),
    this is ``new_mask & previous_mask``.

    Example:
        >>> magnitude_mask(torch.tensor([0.5, -2.0, 0.1, 1.0]), 0.5).tolist()
        [False, True, False, True]
        >>> magnitude_mask(torch.tensor([3.0, 2.0, 1.0]), 0.3, torch.tensor([False, True, True])).tolist()
        [False, True, True]
    """
    check_weights(w)
    _check_sparsity(sparsity, "sparsity")
    if previous_mask is not None:
        check_mask(previous_mask, w.shape, "previous_mask")
    keep = w.numel() - math.floor(sparsity * w.numel())
    if previous_mask is not None and int(previous_mask.sum()) <= keep:
        return previous_mask.clone()
    score = w.detach().abs().reshape(-1)
    if previous_mask is not None:
        score = score.masked_fill(~previous_mask.reshape(-1), -1.0)  # below every magnitude
    order = torch.sort(score, descending=True, stable=True).indices  # stable: ties keep the lower index
    mask = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
    mask[order[:keep]] = True
    return mask.reshape(w.shape)
