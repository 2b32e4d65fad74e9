"""Training through quantization: the straight-through estimator and learnable quantization points.

* :func:`fake_quantize` is Polino et al.'s *quantized distillation* step (Algorithm 1): the forward pass uses
  Q(w) while the full-precision ``w`` receives the gradient unchanged (straight-through estimator).
* :func:`fake_quantize_to_points` is *differentiable quantization*, the differentiable twin of
  :func:`~nmtq.quant.functional.quantize_to_points` (as :func:`fake_quantize` is of ``quantize_tensor``): the
  forward pass maps each weight to the nearest learnable point, and the gradient of point ``p_j`` is the sum of
  dL/dQ(w_i) over the weights mapped to it, times their bucket's scale (max - min), since
  Q(w_i) = min + p_j * (max - min).
"""

from __future__ import annotations

import torch

from .functional import (
    BucketSize,
    bucket_ranges,
    bucket_view,
    check_bucket_size,
    check_points,
    nearest_point,
    quantize_tensor,
    scaled_to_unit,
    unbucket,
    unit_to_bucket,
)


class _StraightThrough(torch.autograd.Function):
    """Forward: a precomputed Q(w). Backward: the upstream gradient goes to ``w`` unchanged."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return quantized

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def fake_quantize(w: torch.Tensor, bits: int, bucket_size: BucketSize = 256, scaling: str = "linear",
                  stochastic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Q(w) in the forward pass, identity in the backward pass.

    Example:
        >>> w = torch.tensor([0.1, 0.6, 0.9], requires_grad=True)
        >>> fake_quantize(w, bits=1, bucket_size=None).sum().backward()
        >>> w.grad.tolist()
        [1.0, 1.0, 1.0]
    """
    with torch.no_grad():
        quantized = quantize_tensor(w.detach(), bits, bucket_size, scaling, stochastic, generator)
    return _StraightThrough.apply(w, quantized)


def fake_quantize_activations(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Each row (vector along the last dimension) of ``x`` onto signed absmax levels; identity backward.

    This is what int8 inference engines (CTranslate2, oneDNN, FBGEMM) do to the input of an int8 matrix product
    at run time, so a model trained through it sees the engine's rounding.

    Example:
        >>> fake_quantize_activations(torch.tensor([[1.0, 0.3, -0.6]]), bits=2).tolist()
        [[1.0, 0.0, -1.0]]
    """
    flat = x.reshape(-1, x.shape[-1])
    return fake_quantize(flat, bits, "row", "absmax").reshape(x.shape)


class _FakeQuantizeToPoints(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: torch.Tensor, points: torch.Tensor, bucket_size: BucketSize) -> torch.Tensor:
        v = bucket_view(w.detach().float(), bucket_size)
        ranges = bucket_ranges(v, "linear")
        idx = nearest_point(scaled_to_unit(v, ranges), points.detach().float())
        out = unit_to_bucket(points.detach().float()[idx], ranges)
        ctx.save_for_backward(idx, ranges[:, 1:] - ranges[:, :1])
        ctx.bucket_size = bucket_size
        ctx.num_points = points.numel()
        return unbucket(out, w.shape, w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        idx, width = ctx.saved_tensors
        grad_points = None
        if ctx.needs_input_grad[1]:
            # zero padding: the padded tail of the last bucket must contribute nothing
            scaled = bucket_view(grad.float(), ctx.bucket_size, pad="zero") * width
            grad_points = torch.bincount(idx.reshape(-1), weights=scaled.reshape(-1), minlength=ctx.num_points)
            grad_points = grad_points.to(grad.dtype)
        return (grad if ctx.needs_input_grad[0] else None), grad_points, None


def fake_quantize_to_points(w: torch.Tensor, points: torch.Tensor, bucket_size: BucketSize = 256) -> torch.Tensor:
    """Quantize ``w`` onto learnable sorted ``points`` in [0, 1]; differentiable in ``points``. The forward value is
    :func:`~nmtq.quant.functional.quantize_to_points`'s, which has no gradient.

    ``w`` gets the straight-through gradient; ``points`` gets, for each point, the sum over the weights
    mapped to it of the upstream gradient times the bucket's scale (a vectorised ``bincount``).

    Example:
        >>> points = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
        >>> fake_quantize_to_points(torch.tensor([0.0, 0.4, 2.0]), points, None).sum().backward()
        >>> points.grad.tolist()
        [4.0, 0.0, 2.0]
    """
    check_bucket_size(bucket_size)
    check_points(points)
    return _FakeQuantizeToPoints.apply(w, points, bucket_size)


def init_points(w: torch.Tensor, num_points: int, bucket_size: BucketSize = 256,
                method: str = "quantile", max_samples: int = 2**22) -> torch.Tensor:
    """Initial sorted points in [0, 1] for :func:`fake_quantize_to_points`.

    ``"uniform"`` spaces them evenly (the uniform quantizer's levels); ``"quantile"`` puts them at evenly
    spaced quantiles of the bucket-scaled weights, so each point starts with a similar share of weights.
    Both include 0 and 1 when ``num_points >= 2``, so every bucket's min and max stay representable.

    Example:
        >>> init_points(torch.randn(100), 3, method="uniform").tolist()
        [0.0, 0.5, 1.0]
    """
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
        raise ValueError(f"num_points={num_points!r}: pass a positive integer (2**bits for bits-bit codes)")
    if method not in ("uniform", "quantile"):
        raise ValueError(f"method={method!r} is unknown: pass 'uniform' or 'quantile'")
    if num_points == 1:
        return torch.zeros(1)
    probs = torch.linspace(0, 1, num_points)
    if method == "uniform" or w.numel() == 0:
        return probs
    v = bucket_view(w.detach().float(), bucket_size)
    x = scaled_to_unit(v, bucket_ranges(v, "linear")).reshape(-1)[: w.numel()]
    step = max(1, x.numel() // max_samples)  # a strided sample bounds the cost of the sort
    values = x[::step].sort().values
    return values[(probs * (values.numel() - 1)).round().long()].contiguous()


def bits_by_gradient_norm(grad_norms: list[float], numels: list[int], mean_bits: float, min_bits: int = 1,
                          max_bits: int = 8) -> list[int]:
    """Spread a bit budget over tensors in proportion to their gradient norm (Polino et al., Sec. 3).

    Finds bits ``b_i`` close to ``c * g_i``, clamped to [min_bits, max_bits], with
    ``sum(b_i * n_i) <= mean_bits * sum(n_i)``: floors of the continuous solution are taken,
    and the spare bits go one at a time to the largest remainders, round after round, while any fits.
    ``c`` is found by bisection, since the clamped spend grows monotonically with it.

    Example:
        >>> bits_by_gradient_norm([1.0, 2.0, 1.0], [100, 100, 200], mean_bits=4)
        [3, 7, 3]
    """
    if len(grad_norms) != len(numels) or not numels:
        raise ValueError("grad_norms and numels must be non-empty and of the same length (one per tensor)")
    if any(not g >= 0 or g == float("inf") for g in grad_norms):
        raise ValueError("grad_norms must be finite and non-negative; run a backward pass first")
    if any(n < 1 for n in numels):
        raise ValueError("numels must be positive")
    if not 1 <= min_bits <= max_bits <= 16:
        raise ValueError(f"need 1 <= min_bits <= max_bits <= 16, got min_bits={min_bits}, max_bits={max_bits}")
    total = sum(numels)
    budget = mean_bits * total
    if min_bits * total > budget + 1e-9:
        raise ValueError(f"mean_bits={mean_bits} is below min_bits={min_bits}: raise the budget or min_bits")
    if max(grad_norms) == 0:
        grad_norms = [1.0] * len(numels)
    target = _water_fill(grad_norms, numels, budget, min_bits, max_bits)
    bits = [max(min_bits, int(t)) for t in target]
    used = sum(b * n for b, n in zip(bits, numels))
    # remainders rounded so that bisection noise does not decide ties; the larger gradient norm does
    order = sorted(range(len(bits)), key=lambda i: (round(target[i] - bits[i], 6), grad_norms[i]), reverse=True)
    changed = True
    while changed:
        changed = False
        for i in order:
            if bits[i] < max_bits and used + numels[i] <= budget + 1e-9:
                bits[i] += 1
                used += numels[i]
                changed = True
    return bits


def _water_fill(g: list[float], n: list[int], budget: float, lo: int, hi: int) -> list[float]:
    """Continuous bits ``clamp(c * g_i, lo, hi)``; ``c`` found by bisection so their weighted sum meets ``budget``."""

    def spent(c: float) -> float:
        return sum(min(max(c * gi, lo), hi) * ni for gi, ni in zip(g, n))

    low, high = 0.0, 1.0
    while spent(high) < budget and high < 1e30:
        high *= 2
    for _ in range(200):  # the spend is monotone in c
        mid = (low + high) / 2
        low, high = (mid, high) if spent(mid) < budget else (low, mid)
    return [min(max(low * gi, lo), hi) for gi in g]
