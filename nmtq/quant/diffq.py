"""DiffQ: bit-widths learned through pseudo-quantization noise (Défossez, Adi & Synnaeve, 2021), the pure math.

Each *group* of weights (``group_size`` consecutive values of a tensor, the last one short, or the whole tensor
when ``group_size`` is ``None``) has one unconstrained logit ``l`` and continuous bits
``b = min_bits + (max_bits - min_bits) * sigmoid(l)``. During training, rounding to ``2**b`` uniform levels
(linear scaling by the group's min and max, as :func:`~nmtq.quant.functional.quantize_tensor`) is replaced by
additive noise of the same variance, ``delta * u`` with ``delta = (max - min) / (2**b - 1)`` and
``u ~ U[-1/2, 1/2]``, which is differentiable in ``b``. The loss is ``task_loss + penalty * size_in_megabytes``,
where the size ``sum(b * numel)`` over groups is differentiable too. After training the bits are rounded to
integers (:func:`round_bits`, optionally under a budget) and the weights really quantized
(:func:`encode_groups`).

Everything here is a pure function of its inputs; nothing is changed in place.

Example:
    >>> logits = logits_for_bits(torch.tensor([4.0, 8.0]))
    >>> w = torch.linspace(-1, 1, 512)
    >>> noisy = pseudo_quantize(w, bits_from_logits(logits), group_size=256)
    >>> round_bits(bits_from_logits(logits)).tolist()
    [4, 8]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .functional import MAX_BITS, bucket_ranges, bucket_view, check_weights, compute_dtype, unbucket, unit_to_bucket

GroupSize = int | None
DEFAULT_MIN_BITS = 2  # the paper's range of bits
DEFAULT_MAX_BITS = 15
BITS_PER_MEGABYTE = 8 * 2**20  # a megabyte here is 2**20 bytes
BITS_FIELD_BITS = 4  # each group's bit-width is stored as bits - 1 in 4 bits, which covers 1..16


# ---------------------------------------------------------------------------------------------- validation
def check_group_size(group_size: GroupSize) -> None:
    """Raise a ``ValueError`` naming ``group_size`` unless it is a positive int or ``None``."""
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r} is invalid: pass a positive integer (e.g. 256) or None for "
                         "one group per tensor")


def check_bit_range(min_bits: int, max_bits: int) -> None:
    """Raise a ``ValueError`` unless ``min_bits < max_bits`` are integers in 1..16."""
    for name, value in (("min_bits", min_bits), ("max_bits", max_bits)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BITS:
            raise ValueError(f"{name}={value!r} is invalid: pass an integer from 1 to {MAX_BITS}")
    if min_bits >= max_bits:
        raise ValueError(f"min_bits={min_bits} must be below max_bits={max_bits}: e.g. min_bits=2, max_bits=15 "
                         "(the paper's range)")


def _check_float_tensor(t: object, name: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a floating-point tensor, got {got}: convert it with torch.as_tensor(...)"
                         ".float()")


def _check_group_bits(bits: object, groups: int, low: float, high: float, name: str = "bits_per_group") -> None:
    """``bits`` must be a 1-D tensor of ``groups`` finite values in [low, high]."""
    if not isinstance(bits, torch.Tensor):
        raise ValueError(f"{name} must be a 1-D tensor with one value per group, got {type(bits).__name__}")
    if bits.dim() != 1 or bits.numel() != groups:
        raise ValueError(f"{name} has shape {tuple(bits.shape)}; pass a 1-D tensor of {groups} values, one per "
                         "group (see group_numels)")
    b = bits.detach()
    if groups and (not bool(torch.isfinite(b).all()) or b.min() < low or b.max() > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got values from {b.min().item()} to "
                         f"{b.max().item()}: clamp them, or widen min_bits/max_bits")


def num_groups(numel: int, group_size: GroupSize) -> int:
    """Number of groups of a tensor of ``numel`` values (0 for an empty tensor)."""
    if numel == 0:
        return 0
    return 1 if group_size is None else math.ceil(numel / group_size)


def group_numels(numel: int, group_size: GroupSize = 256) -> torch.Tensor:
    """Values in each group of a tensor of ``numel`` values: ``group_size`` each, the last one short.

    Example:
        >>> group_numels(600, 256).tolist(), group_numels(600, None).tolist()
        ([256, 256, 88], [600])
    """
    check_group_size(group_size)
    groups = num_groups(numel, group_size)
    size = numel if group_size is None else group_size
    out = torch.full((groups,), size, dtype=torch.int64)
    if groups:
        out[-1] = numel - size * (groups - 1)
    return out


# ---------------------------------------------------------------------------------------------- bit-widths
def bits_from_logits(logits: torch.Tensor, min_bits: int = DEFAULT_MIN_BITS,
                     max_bits: int = DEFAULT_MAX_BITS) -> torch.Tensor:
    """Continuous bits ``min_bits + (max_bits - min_bits) * sigmoid(logits)``, differentiable in ``logits``.

    Example:
        >>> bits_from_logits(torch.tensor([0.0, -100.0, 100.0])).tolist()
        [8.5, 2.0, 15.0]
    """
    check_bit_range(min_bits, max_bits)
    _check_float_tensor(logits, "logits")
    return min_bits + (max_bits - min_bits) * torch.sigmoid(logits)


def logits_for_bits(bits: torch.Tensor | float, min_bits: int = DEFAULT_MIN_BITS,
                    max_bits: int = DEFAULT_MAX_BITS) -> torch.Tensor:
    """Inverse of :func:`bits_from_logits`, to initialise the logits; ``bits`` strictly inside (min, max).

    Example:
        >>> logits_for_bits(8.5).item(), round(bits_from_logits(logits_for_bits(4.0)).item(), 4)
        (0.0, 4.0)
    """
    check_bit_range(min_bits, max_bits)
    b = torch.as_tensor(bits)
    b = b if b.is_floating_point() else b.to(torch.get_default_dtype())
    if b.numel() and (not bool(torch.isfinite(b).all()) or b.min() <= min_bits or b.max() >= max_bits):
        raise ValueError(f"bits must lie strictly between min_bits={min_bits} and max_bits={max_bits} (the "
                         "sigmoid reaches its ends only at +-inf): e.g. start at 8 bits")
    return torch.logit((b - min_bits) / (max_bits - min_bits))


# ---------------------------------------------------------------------------------------------- training noise
def _steps(ranges: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per group ``delta = (max - min) / (2**b - 1)`` as a (groups, 1) column; the range is a constant."""
    width = (ranges[:, 1:] - ranges[:, :1]).detach()
    return width / (torch.exp2(bits.to(width.dtype)) - 1).unsqueeze(1)


def pseudo_quantize(w: torch.Tensor, bits_per_group: torch.Tensor, group_size: GroupSize = 256,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``w`` plus pseudo-quantization noise ``delta * u``, ``u ~ U[-1/2, 1/2]`` drawn per value.

    ``delta = (max - min) / (2**b - 1)`` is the step of rounding the group to ``2**b`` levels, so the noise has
    the rounding error's variance ``delta**2 / 12``. The gradient reaches ``bits_per_group`` through ``delta``
    (the group's min and max are constants) and goes to ``w`` unchanged (d/dw = 1).

    Args:
        w: floating-point weights (any shape); not modified.
        bits_per_group: 1-D float tensor of continuous bits, one per group, in [1, 16].
        group_size: values per group (the last may be short), or ``None`` for one group per tensor.
        generator: random generator, for a reproducible noise sample.

    Example:
        >>> w = torch.tensor([0.0, 1.0, 2.0, 3.0], requires_grad=True)
        >>> bits = torch.tensor([2.0], requires_grad=True)
        >>> noisy = pseudo_quantize(w, bits, None, torch.Generator().manual_seed(0))
        >>> bool(((noisy - w).abs() <= 0.5).all())  # delta = 3 / (2**2 - 1) = 1
        True
        >>> noisy.sum().backward()
        >>> w.grad.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    check_group_size(group_size)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        check_weights(w)
    groups = num_groups(w.numel(), group_size)
    _check_group_bits(bits_per_group, groups, 1, MAX_BITS)
    if groups == 0:
        return w.clone()
    v = bucket_view(w.to(compute_dtype(w.dtype)), group_size)  # edge padding keeps the last group's range
    delta = _steps(bucket_ranges(v.detach(), "linear"), bits_per_group)
    u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device).sub_(0.5)
    return unbucket(v + delta * u, w.shape, w.dtype)


# ---------------------------------------------------------------------------------------------- size penalty
def _pairs(bits_per_group: torch.Tensor | Sequence[torch.Tensor],
           numels: torch.Tensor | Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    bits_list = [bits_per_group] if isinstance(bits_per_group, torch.Tensor) else list(bits_per_group)
    numel_list = [numels] if isinstance(numels, torch.Tensor) else list(numels)
    if len(bits_list) != len(numel_list):
        raise ValueError(f"{len(bits_list)} bit tensors but {len(numel_list)} group_numels tensors: pass one "
                         "group_numels(w.numel(), group_size) per weight, in the same order")
    for i, (b, n) in enumerate(zip(bits_list, numel_list)):
        if not isinstance(b, torch.Tensor) or not isinstance(n, torch.Tensor) or b.shape != n.shape:
            raise ValueError(f"weight {i}: bits and group_numels must be tensors of the same shape, one value per "
                             "group (see group_numels)")
    return list(zip(bits_list, numel_list))


def size_in_bits(bits_per_group: torch.Tensor | Sequence[torch.Tensor],
                 group_numels: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Differentiable size of the quantized weights, ``sum(bits * numel)`` over all groups, in bits.

    Pass one tensor per weight (or one tensor for one weight); ranges and other overhead are not counted.

    Example:
        >>> size_in_bits([torch.tensor([4.0, 2.5])], [torch.tensor([256, 88])]).item()
        1244.0
    """
    pairs = _pairs(bits_per_group, group_numels)
    if not pairs:
        return torch.zeros(())
    return sum((b * n.to(b.device, b.dtype if b.is_floating_point() else torch.float32)).sum() for b, n in pairs)


def size_in_megabytes(bits_per_group: torch.Tensor | Sequence[torch.Tensor],
                      group_numels: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """:func:`size_in_bits` in megabytes of 2**20 bytes.

    Example:
        >>> size_in_megabytes(torch.tensor([8.0]), torch.tensor([2**20])).item()
        1.0
    """
    return size_in_bits(bits_per_group, group_numels) / BITS_PER_MEGABYTE


def size_penalty(bits_per_group: torch.Tensor | Sequence[torch.Tensor],
                 group_numels: torch.Tensor | Sequence[torch.Tensor], penalty: float) -> torch.Tensor:
    """``penalty * size_in_megabytes``: add it to the task loss (the paper's lambda is ``penalty``).

    Example:
        >>> size_penalty(torch.tensor([8.0]), torch.tensor([2**20]), penalty=0.5).item()
        0.5
    """
    if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not 0 <= penalty < math.inf:
        raise ValueError(f"penalty={penalty!r} is invalid: pass a finite number >= 0 (e.g. 1e-3)")
    return penalty * size_in_megabytes(bits_per_group, group_numels)


# ---------------------------------------------------------------------------------------------- final bits
def _lower_rounded_up(bits: torch.Tensor, rounded: torch.Tensor, numels: torch.Tensor, budget: int) -> torch.Tensor:
    """Round groups down to floor(bits), those whose rounding up added the most bits first, until it fits."""
    excess = int((rounded * numels).sum()) - budget
    up = (rounded > bits).nonzero().squeeze(1)
    if excess <= 0 or up.numel() == 0:
        return rounded
    added = (rounded[up] - bits[up]) * numels[up]
    order = up[torch.sort(added, descending=True, stable=True).indices]
    count = int(torch.searchsorted(numels[order].cumsum(0), excess)) + 1
    out = rounded.clone()
    out[order[:count]] -= 1
    return out


def _cap_from_top(rounded: torch.Tensor, numels: torch.Tensor, budget: int, min_bits: int) -> torch.Tensor:
    """Cap the bits at the highest level that fits; at the next level, lower the largest groups first."""
    def total(cap: int) -> int:
        return int((rounded.clamp(max=cap) * numels).sum())

    cap = next(c for c in range(int(rounded.max()), min_bits - 1, -1) if total(c) <= budget)
    if total(cap + 1) <= budget:
        return rounded.clamp(max=cap + 1)
    out = rounded.clamp(max=cap + 1)
    at_top = (out == cap + 1).nonzero().squeeze(1)
    order = at_top[torch.sort(numels[at_top], descending=True, stable=True).indices]
    count = int(torch.searchsorted(numels[order].cumsum(0), total(cap + 1) - budget)) + 1
    out[order[:count]] = cap
    return out


def _budget_numels(budget_bits: object, group_numels: object, shape: torch.Size, min_bits: int) -> torch.Tensor:
    """Check a budget and its numels; the numels as int64."""
    if isinstance(budget_bits, bool) or not isinstance(budget_bits, int):
        raise ValueError(f"budget_bits={budget_bits!r} is invalid: pass an integer number of bits, or None")
    if not isinstance(group_numels, torch.Tensor) or group_numels.shape != shape \
            or group_numels.is_floating_point() or bool((group_numels < 0).any()):
        raise ValueError("a budget needs group_numels: a 1-D integer tensor of the values in each group, same "
                         "length as bits (see group_numels)")
    numels = group_numels.to("cpu", torch.int64)
    smallest = min_bits * int(numels.sum())
    if smallest > budget_bits:
        raise ValueError(f"budget_bits={budget_bits} is below {smallest}, the size with every group at "
                         f"min_bits={min_bits}: raise budget_bits or lower min_bits")
    return numels


def round_bits(bits: torch.Tensor, budget_bits: int | None = None, group_numels: torch.Tensor | None = None,
               min_bits: int = DEFAULT_MIN_BITS, max_bits: int = DEFAULT_MAX_BITS) -> torch.Tensor:
    """Integer bits per group (int64, on the CPU), each in [min_bits, max_bits], from continuous ``bits`` in that range.

    Without a budget each group gets the nearest integer (ties to even). With ``budget_bits`` (a total in bits,
    counted as ``sum(bits * numel)`` with ``group_numels``), the rounded total never exceeds it:
    1. groups that were rounded up go down to ``floor(bits)``, those whose rounding up added the most bits
       (``numel * (rounded - bits)``) first, until the total fits;
    2. if all the floors still exceed it, bits are taken from the top: every group is capped at the highest
       level ``L`` at which the total fits, then groups above ``L`` keep ``L + 1`` except the largest ones,
       lowered first to ``L``, until the total fits.
    For several weights, ``torch.cat`` their bits and numels and ``.split`` the result.

    Example:
        >>> bits, numels = torch.tensor([3.6, 4.4, 5.5]), torch.tensor([100, 100, 10])
        >>> round_bits(bits).tolist(), round_bits(bits, budget_bits=800, group_numels=numels).tolist()
        ([4, 4, 6], [3, 4, 6])
    """
    check_bit_range(min_bits, max_bits)
    if not isinstance(bits, torch.Tensor) or bits.dim() != 1:
        raise ValueError("bits must be a 1-D tensor of continuous bits, one per group: torch.cat the bits of "
                         "several weights")
    _check_group_bits(bits, bits.numel(), min_bits, max_bits, name="bits")
    b = bits.detach().to("cpu", torch.float64)
    rounded = b.round().long()
    if budget_bits is None:
        return rounded
    numels = _budget_numels(budget_bits, group_numels, bits.shape, min_bits)
    rounded = _lower_rounded_up(b, rounded, numels, budget_bits)
    if int((rounded * numels).sum()) > budget_bits:
        rounded = _cap_from_top(rounded, numels, budget_bits, min_bits)
    return rounded


# ---------------------------------------------------------------------------------------------- integer codes
def group_code_dtype(max_bits: int) -> torch.dtype:
    """Integer dtype of codes of up to ``max_bits`` bits: uint8 up to 8, int16 up to 15, else int32."""
    return torch.uint8 if max_bits <= 8 else torch.int16 if max_bits <= 15 else torch.int32


@dataclass(frozen=True)
class GroupQuantized:
    """A tensor quantized with its own integer bits per group (linear scaling by each group's min and max).

    ``codes`` holds one level index per value (flattened, 0..2**b - 1 for its group's ``b``); ``ranges`` holds
    (min, max) per group; ``bits`` the bits per group (uint8).
    """

    codes: torch.Tensor
    ranges: torch.Tensor
    bits: torch.Tensor
    group_size: GroupSize
    shape: torch.Size
    dtype: torch.dtype

    def dequantize(self) -> torch.Tensor:
        """The de-quantized tensor (see :func:`decode_groups`)."""
        return decode_groups(self)

    def stored_bits(self) -> int:
        """Bits to store it: codes ``sum(bits * numel)``, the ranges at their own width (2 x 32 bits per group
        for float32, as :mod:`nmtq.quant.size` counts bucket scales) and 4 bits per group for its bit-width."""
        numels = group_numels(self.codes.numel(), self.group_size)
        code_bits = int((self.bits.cpu().long() * numels).sum())
        range_bits = self.ranges.numel() * self.ranges.element_size() * 8
        return code_bits + range_bits + BITS_FIELD_BITS * self.bits.numel()


def _top_levels(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``2**b - 1`` per group, as a (groups, 1) float column."""
    return (torch.ones_like(bits, dtype=torch.int64) << bits.long()).sub_(1).to(dtype).unsqueeze(1)


def encode_groups(w: torch.Tensor, bits_per_group: torch.Tensor | Sequence[int],
                  group_size: GroupSize = 256) -> GroupQuantized:
    """Round each group of ``w`` to the nearest of ``2**b`` uniform levels between its min and max.

    With the same ``b`` for every group this equals ``quantize_tensor(w, b, group_size)`` bit for bit.

    Example:
        >>> q = encode_groups(torch.tensor([0.0, 1.4, 1.6, 3.0, 0.0, 0.6]), [2, 1], group_size=4)
        >>> q.codes.tolist(), q.dequantize().tolist()
        ([0, 1, 2, 3, 0, 1], [0.0, 1.0, 2.0, 3.0, 0.0, 0.6000000238418579])
    """
    check_group_size(group_size)
    check_weights(w)
    groups = num_groups(w.numel(), group_size)
    bits = torch.as_tensor(bits_per_group, device=w.device)
    if bits.is_floating_point() or bits.dtype == torch.bool:
        raise ValueError("bits_per_group must hold integers: round continuous bits with round_bits first")
    _check_group_bits(bits, groups, 1, MAX_BITS)
    cdtype = compute_dtype(w.dtype)
    if groups == 0:
        return GroupQuantized(torch.empty(0, dtype=torch.uint8), torch.zeros(0, 2, dtype=cdtype),
                              bits.to(torch.uint8), group_size, w.shape, w.dtype)
    v = bucket_view(w.detach().to(cdtype), group_size)
    ranges = bucket_ranges(v, "linear")
    top = _top_levels(bits, cdtype)
    lo, width = ranges[:, :1].contiguous(), ranges[:, 1:] - ranges[:, :1]
    # reciprocal * top is how quantize_tensor's ``levels / width`` computes (Tensor.__rtruediv__), so equal bits
    # give equal codes; constant groups map to level 0, their own value
    inv = torch.reciprocal(width) * top
    inv = torch.where((width > 0) & torch.isfinite(inv), inv, torch.zeros_like(inv))
    y = torch.sub(v, lo).mul_(inv).round_().clamp_(min=0)
    y = torch.minimum(y, top)
    codes = y.reshape(-1)[: w.numel()].to(group_code_dtype(int(bits.max())))
    return GroupQuantized(codes, ranges, bits.to(torch.uint8), group_size, w.shape, w.dtype)


def decode_groups(q: GroupQuantized) -> torch.Tensor:
    """Values of :func:`encode_groups`' codes: ``min + code / (2**b - 1) * (max - min)`` per group.

    Example:
        >>> decode_groups(encode_groups(torch.tensor([0.0, 0.2, 1.0]), [1], None)).tolist()
        [0.0, 0.0, 1.0]
    """
    if q.codes.numel() == 0:
        return torch.empty(q.shape, dtype=q.dtype)
    y = bucket_view(q.codes, q.group_size, pad="zero").to(q.ranges.dtype)
    return unbucket(unit_to_bucket(y.div_(_top_levels(q.bits, y.dtype)), q.ranges), q.shape, q.dtype)
