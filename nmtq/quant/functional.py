"""Quantization math on tensors: bucketing, scaling, rounding, integer codes (torch only).

Polino et al. (2018) quantize a weight tensor in *buckets* of consecutive values. Each bucket is scaled onto
[0, 1] by its own min and max (``scaling="linear"``), rounded to one of ``2**bits`` uniform levels and mapped
back. Inference engines use the symmetric ``scaling="absmax"`` scheme instead: signed integer levels times
``max|w| / (2**(bits-1) - 1)``, where zero is exactly representable.

Everything here is a pure function of its inputs; nothing is changed in place.

Example:
    >>> w = torch.tensor([0.0, 0.1, 0.6, 1.0])
    >>> quantize_tensor(w, bits=1, bucket_size=None).tolist()
    [0.0, 0.0, 1.0, 1.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

BucketSize = int | Literal["row"] | None
SCALINGS = ("linear", "absmax")
MAX_BITS = 16


# ---------------------------------------------------------------------------------------------- validation
def check_bits(bits: int, scaling: str = "linear") -> None:
    """Raise a ``ValueError`` naming ``bits`` unless it is an integer in 1..16 (2..16 for absmax)."""
    low = 2 if scaling == "absmax" else 1
    if isinstance(bits, bool) or not isinstance(bits, int) or not low <= bits <= MAX_BITS:
        raise ValueError(
            f"bits={bits!r} is not supported with scaling={scaling!r}: pass an integer from {low} to "
            f"{MAX_BITS}" + (" (absmax needs a sign bit, so at least 2)" if scaling == "absmax" else "")
        )


def check_bucket_size(bucket_size: BucketSize) -> None:
    """Raise a ``ValueError`` naming ``bucket_size`` unless it is a positive int, ``"row"`` or ``None``."""
    if bucket_size is None or bucket_size == "row":
        return
    if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
        raise ValueError(
            f"bucket_size={bucket_size!r} is invalid: pass a positive integer (e.g. 256), 'row' for one "
            "bucket per output row, or None for one bucket per tensor"
        )


def check_scaling(scaling: str) -> None:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling={scaling!r} is unknown: pass one of {', '.join(map(repr, SCALINGS))}")


def check_weights(w: torch.Tensor, name: str = "w") -> None:
    """Raise a ``ValueError`` unless ``w`` is a floating-point tensor without NaN or inf."""
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise ValueError(
            f"{name} has dtype {w.dtype}; only floating-point tensors can be quantized: "
            "convert it with .float() or exclude it"
        )
    if w.numel() and not bool(torch.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or inf values; fix the weights (or the training run) first")


def check_points(points: torch.Tensor) -> None:
    """Raise a ``ValueError`` unless ``points`` is a sorted 1-D float tensor of 1..65536 values in [0, 1]."""
    if not isinstance(points, torch.Tensor) or not points.is_floating_point() or points.dim() != 1:
        raise ValueError("points must be a 1-D floating-point tensor of quantization points in [0, 1]")
    if not 1 <= points.numel() <= 2**MAX_BITS:
        raise ValueError(f"points has {points.numel()} values; pass between 1 and {2**MAX_BITS}")
    p = points.detach()
    if not bool(torch.isfinite(p).all()) or p.min() < 0 or p.max() > 1:
        raise ValueError("points must lie in [0, 1] (they are positions inside each bucket's [min, max])")
    if points.numel() > 1 and bool((p[1:] < p[:-1]).any()):
        raise ValueError("points must be sorted in ascending order: pass torch.sort(points).values")


def check_mask(mask: object, shape: torch.Size | tuple[int, ...], name: str = "mask") -> None:
    """Raise a ``ValueError`` unless ``mask`` is a bool tensor of ``shape`` (True = weight kept)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True where the weight is kept); convert it with .bool()")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, the weight has shape {tuple(shape)}")


def _check(w: torch.Tensor, bits: int, bucket_size: BucketSize, scaling: str) -> None:
    check_scaling(scaling)
    check_bits(bits, scaling)
    check_bucket_size(bucket_size)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        check_weights(w)


def max_code(bits: int, scaling: str) -> int:
    """Largest level index: codes run over 0..max_code (linear) or -max_code..max_code (absmax)."""
    return 2**bits - 1 if scaling == "linear" else 2 ** (bits - 1) - 1


def num_buckets(numel: int, shape: torch.Size | tuple[int, ...], bucket_size: BucketSize) -> int:
    if bucket_size is None or numel == 0:
        return 1
    if bucket_size == "row":
        return shape[0] if len(shape) >= 2 else 1
    return math.ceil(numel / bucket_size)


# ---------------------------------------------------------------------------------------------- bucketing
def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype quantization computes in for weights of ``dtype``: float32 for half precision, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def bucket_view(w: torch.Tensor, bucket_size: BucketSize, pad: Literal["edge", "zero"] = "edge") -> torch.Tensor:
    """``w`` as a 2-D (buckets, bucket length) tensor; a short last bucket is padded.

    ``pad="edge"`` repeats the last value, which leaves the last bucket's min, max and max|w| unchanged;
    ``pad="zero"`` is for gradients, where padding must add nothing.
    """
    if bucket_size is None:
        return w.reshape(1, -1)
    if bucket_size == "row":
        return w.reshape(w.shape[0], -1) if w.dim() >= 2 else w.reshape(1, -1)
    flat = w.reshape(-1)
    missing = -flat.numel() % bucket_size
    if missing:
        fill = flat[-1:].expand(missing) if pad == "edge" else flat.new_zeros(missing)
        flat = torch.cat([flat, fill])
    return flat.view(-1, bucket_size)


def unbucket(v: torch.Tensor, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`bucket_view`: drop the padding, restore shape and dtype."""
    numel = math.prod(shape)
    return v.reshape(-1)[:numel].reshape(shape).to(dtype)


def bucket_ranges(v: torch.Tensor, scaling: str) -> torch.Tensor:
    """Per-bucket range of a bucketed tensor: (min, max) columns for linear, one max|w| column for absmax."""
    if scaling == "linear":
        # two reductions beat one aminmax by ~4x on CPU (aminmax is not vectorised along rows)
        ranges = torch.cat([v.amin(dim=1, keepdim=True), v.amax(dim=1, keepdim=True)], dim=1)
    else:
        ranges = torch.linalg.vector_norm(v, ord=math.inf, dim=1, keepdim=True)
    if not bool(torch.isfinite(ranges).all()):
        raise ValueError("the tensor contains NaN or inf values; fix the weights (or the training run) first")
    return ranges


def _bounds(ranges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) columns as contiguous tensors: strided broadcasts make the elementwise kernels ~5x slower."""
    return ranges[:, :1].contiguous(), ranges[:, 1:].contiguous()


def unit_to_bucket(t: torch.Tensor, ranges: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``min + t * (max - min)`` per bucket for ``t`` in [0, 1]: exactly min at 0 and max at 1, never above max.

    Where ``min + (max - min)`` rounds below max, that bucket's width is raised by two ulps so ``t = 1``
    reaches max; the result is clipped at max. So quantizing again finds the same (min, max), and
    Q(Q(w)) == Q(w) bit for bit. (``torch.lerp`` has the same end points but branches on ``t < 0.5`` per
    element, which made it the slowest pass, 2x a clone, on CPU.)
    """
    lo, hi = _bounds(ranges)
    width = hi - lo
    inf = torch.tensor(math.inf, dtype=hi.dtype, device=hi.device)
    width = torch.where(lo + width < hi, torch.nextafter(torch.nextafter(width, inf), inf), width)
    out = torch.addcmul(lo, t, width, out=out)
    return torch.minimum(out, hi, out=out)


def _inverse_step(width: torch.Tensor, levels: float) -> torch.Tensor:
    """``levels / width``, or 0 where the bucket is constant (so it maps to its own value, never NaN)."""
    inv = levels / width
    return torch.where((width > 0) & torch.isfinite(inv), inv, torch.zeros_like(inv))


# ---------------------------------------------------------------------------------------------- uniform levels
def _levels(v: torch.Tensor, ranges: torch.Tensor, bits: int, scaling: str, stochastic: bool,
            generator: torch.Generator | None) -> torch.Tensor:
    """Level index of each value as a float tensor (0..L for linear, -L..L for absmax)."""
    top = max_code(bits, scaling)
    if scaling == "linear":
        lo, hi = _bounds(ranges)
        inv = _inverse_step(hi - lo, top)
        # subtract first: v * inv - lo * inv cancels catastrophically when |min| >> max - min
        y = torch.sub(v, lo).mul_(inv)
    else:
        y = v * _inverse_step(ranges, top)
    if stochastic:
        # floor(y + u) with u ~ U[0, 1) is unbiased: E[floor(y + u)] = y
        y.add_(torch.rand(y.shape, generator=generator, dtype=y.dtype, device=y.device)).floor_()
    else:
        y.round_()
    return y.clamp_(-top if scaling == "absmax" else 0, top)  # codes must fit their integer type


def _dequantize_levels(y: torch.Tensor, ranges: torch.Tensor, bits: int, scaling: str) -> torch.Tensor:
    """Values of level indices ``y`` (overwritten); the end levels land exactly on the bucket's range."""
    top = max_code(bits, scaling)
    if scaling == "linear":
        return unit_to_bucket(y.div_(top), ranges, out=y)
    return y.div_(top).mul_(ranges)


def quantize_tensor(w: torch.Tensor, bits: int, bucket_size: BucketSize = 256, scaling: str = "linear",
                    stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantize ``w`` to ``2**bits`` uniform levels per bucket and return the de-quantized tensor.

    Args:
        w: floating-point tensor (any shape); it is not modified.
        bits: bits per value, 1..16 (2..16 for absmax).
        bucket_size: values per bucket (the last may be short), ``"row"`` for one bucket per output row,
            or ``None`` for one bucket per tensor.
        scaling: ``"linear"`` (min/max per bucket onto [0, 1]) or ``"absmax"`` (symmetric, signed levels).
        stochastic: unbiased stochastic rounding instead of rounding to the nearest level.
        generator: random generator for stochastic rounding.

    Returns:
        A tensor of the same shape and dtype holding at most ``2**bits`` distinct values per bucket.

    Example:
        >>> quantize_tensor(torch.tensor([-1.0, -0.6, 0.3, 1.0]), bits=2, bucket_size=None, scaling="absmax").tolist()
        [-1.0, -1.0, 0.0, 1.0]
    """
    _check(w, bits, bucket_size, scaling)
    if w.numel() == 0:
        return w.clone()
    v = bucket_view(w.to(compute_dtype(w.dtype)), bucket_size)
    ranges = bucket_ranges(v, scaling)
    y = _levels(v, ranges, bits, scaling, stochastic, generator)
    return unbucket(_dequantize_levels(y, ranges, bits, scaling), w.shape, w.dtype)


# ---------------------------------------------------------------------------------------------- integer codes
@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor in its real quantized form: integer codes, per-bucket ranges and optional points.

    ``codes`` holds one unsigned integer per value (flattened): a level index for uniform quantization
    (absmax codes are offset by ``max_code`` so they are non-negative) or an index into ``points``.
    ``ranges`` holds, per bucket, (min, max) for linear scaling or (max|w|,) for absmax.
    ``mask`` (pruning, optional) is a bool tensor of ``shape``: where it is False the value decodes to exactly
    0, and only the codes where it is True are stored (see :mod:`nmtq.quant.size`).
    """

    codes: torch.Tensor
    ranges: torch.Tensor
    bits: int
    bucket_size: BucketSize
    scaling: str
    shape: torch.Size
    dtype: torch.dtype
    points: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mask is not None:
            check_mask(self.mask, self.shape)

    @property
    def num_symbols(self) -> int:
        """Size of the code alphabet."""
        return self.points.numel() if self.points is not None else 2**self.bits

    def dequantize(self) -> torch.Tensor:
        """The de-quantized tensor; equals :func:`quantize_tensor` (or :func:`quantize_to_points`) exactly."""
        if self.codes.numel() == 0:
            return torch.empty(self.shape, dtype=self.dtype)
        cdtype = compute_dtype(self.dtype)
        codes = bucket_view(self.codes, self.bucket_size, pad="zero") if self.bucket_size != "row" else \
            self.codes.reshape(self.ranges.shape[0], -1)
        if self.points is not None:
            t = self.points.to(cdtype)[codes.long()]
            out = unit_to_bucket(t, self.ranges)
        else:
            y = codes.to(cdtype)
            if self.scaling == "absmax":
                y = y.sub_(max_code(self.bits, self.scaling))
            out = _dequantize_levels(y, self.ranges, self.bits, self.scaling)
        out = unbucket(out, self.shape, self.dtype)
        return out if self.mask is None else torch.where(self.mask, out, 0.0)


def code_dtype(bits: int) -> torch.dtype:
    return torch.uint8 if bits <= 8 else torch.int32


def encode_tensor(w: torch.Tensor, bits: int, bucket_size: BucketSize = 256, scaling: str = "linear",
                  stochastic: bool = False, generator: torch.Generator | None = None) -> QuantizedTensor:
    """Quantize ``w`` like :func:`quantize_tensor` but return its integer codes and bucket ranges.

    Example:
        >>> q = encode_tensor(torch.tensor([0.0, 0.4, 1.0]), bits=1, bucket_size=None)
        >>> q.codes.tolist(), q.dequantize().tolist()
        ([0, 0, 1], [0.0, 0.0, 1.0])
    """
    _check(w, bits, bucket_size, scaling)
    v = bucket_view(w.detach().to(compute_dtype(w.dtype)), bucket_size) if w.numel() else w.reshape(1, 0)
    ranges = bucket_ranges(v, scaling) if w.numel() else v.new_zeros(1, 2 if scaling == "linear" else 1)
    y = _levels(v, ranges, bits, scaling, stochastic, generator)
    if scaling == "absmax":
        y = y.add_(max_code(bits, scaling))
    codes = y.reshape(-1)[: w.numel()].to(code_dtype(bits))
    return QuantizedTensor(codes, ranges, bits, bucket_size, scaling, w.shape, w.dtype)


# ---------------------------------------------------------------------------------------------- given points
def scaled_to_unit(v: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """Bucketed values mapped linearly onto [0, 1] by their bucket's (min, max); constant buckets go to 0."""
    lo, hi = _bounds(ranges)
    return torch.sub(v, lo).mul_(_inverse_step(hi - lo, 1.0)).clamp_(0, 1)


def nearest_point(x: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of the sorted ``points`` for each value of ``x`` (ties go to the lower point)."""
    if points.numel() == 1:
        return torch.zeros(x.shape, dtype=torch.long, device=x.device)
    midpoints = (points[1:] + points[:-1]) / 2
    return torch.bucketize(x, midpoints.to(x.dtype))


def bits_for(num_points: int) -> int:
    """Bits needed to index ``num_points`` codes (at least 1)."""
    return max(1, math.ceil(math.log2(num_points)))


def encode_to_points(w: torch.Tensor, points: torch.Tensor, bucket_size: BucketSize = 256) -> QuantizedTensor:
    """Quantize ``w`` onto sorted ``points`` in [0, 1] (non-uniform levels) with linear bucket scaling.

    Each bucket is mapped onto [0, 1] by its min and max, each value goes to the nearest point, and the
    point is mapped back. The codes index ``points``.

    Example:
        >>> q = encode_to_points(torch.tensor([0.0, 0.2, 0.7, 1.0]), torch.tensor([0.0, 0.25, 1.0]), None)
        >>> q.codes.tolist(), q.dequantize().tolist()
        ([0, 1, 2, 2], [0.0, 0.25, 1.0, 1.0])
    """
    check_bucket_size(bucket_size)
    check_points(points)
    check_weights(w)
    points = points.detach().float()
    bits = bits_for(points.numel())
    if w.numel() == 0:
        return QuantizedTensor(torch.empty(0, dtype=code_dtype(bits)), w.new_zeros(1, 2).float(), bits,
                               bucket_size, "linear", w.shape, w.dtype, points)
    v = bucket_view(w.detach().to(compute_dtype(w.dtype)), bucket_size)
    ranges = bucket_ranges(v, "linear")
    idx = nearest_point(scaled_to_unit(v, ranges), points)
    codes = idx.reshape(-1)[: w.numel()].to(code_dtype(bits))
    return QuantizedTensor(codes, ranges, bits, bucket_size, "linear", w.shape, w.dtype, points)


def quantize_to_points(w: torch.Tensor, points: torch.Tensor, bucket_size: BucketSize = 256) -> torch.Tensor:
    """De-quantized tensor of :func:`encode_to_points`: same shape and dtype as ``w``."""
    return encode_to_points(w, points, bucket_size).dequantize()
