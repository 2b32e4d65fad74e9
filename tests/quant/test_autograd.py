"""Straight-through gradients, learned-point gradients against autograd, point init and bit allocation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmtq.quant import bits_by_gradient_norm, fake_quantize, fake_quantize_to_points, init_points, quantize_tensor


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.sampled_from([None, 3, 16, "row"]), st.integers(0, 10_000))
def test_ste_gradient_is_the_upstream_gradient(bits, bucket_size, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 7, generator=gen, requires_grad=True)
    upstream = torch.randn(5, 7, generator=gen)
    q = fake_quantize(w, bits, bucket_size)
    assert torch.equal(q.detach(), quantize_tensor(w.detach(), bits, bucket_size))
    q.backward(upstream)
    assert torch.equal(w.grad, upstream)


def reference_point_quantize(w, points, bucket_size):
    """Brute force: per-bucket loops and autograd through indexing (no bincount)."""
    flat = w.reshape(-1)
    size = flat.numel() if bucket_size is None else bucket_size
    pieces = []
    for i in range(0, flat.numel(), size):
        b = flat[i: i + size].detach()
        lo, hi = b.min(), b.max()
        x = (b - lo) / (hi - lo) if hi > lo else torch.zeros_like(b)
        idx = (x[:, None] - points.detach()[None, :]).abs().argmin(1)
        pieces.append(lo + points[idx] * (hi - lo))
    return torch.cat(pieces).reshape(w.shape)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([None, 4, 13]), st.integers(2, 9))
def test_point_gradients_equal_brute_force_autograd(seed, bucket_size, num_points):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 11, generator=gen, dtype=torch.float64).float()
    points = torch.rand(num_points, generator=gen).sort().values.requires_grad_()
    ref_points = points.detach().clone().requires_grad_()
    upstream = torch.randn(3, 11, generator=gen)
    out = fake_quantize_to_points(w, points, bucket_size)
    ref = reference_point_quantize(w, ref_points, bucket_size)
    torch.testing.assert_close(out, ref)
    out.backward(upstream)
    ref.backward(upstream)
    torch.testing.assert_close(points.grad, ref_points.grad)


def test_point_gradient_hand_computed_and_weights_get_straight_through():
    # bucket [0, 2], scale 2: scaled 0, .2, 1 -> points 0, 0, 2; dL/dp = scale * sum of upstream
    w = torch.tensor([0.0, 0.4, 2.0], requires_grad=True)
    points = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    fake_quantize_to_points(w, points, None).backward(torch.tensor([1.0, 3.0, -1.0]))
    assert points.grad.tolist() == [8.0, 0.0, -2.0]
    assert w.grad.tolist() == [1.0, 3.0, -1.0]


def test_init_points():
    assert init_points(torch.randn(50), 5, method="uniform").tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0])  # skewed: quantiles crowd low
    p = init_points(w, 4, bucket_size=None)
    assert p[0] == 0 and p[-1] == 1 and torch.all(p[1:] >= p[:-1])
    assert p[1] < 0.1 and p[2] < 0.1
    assert init_points(w, 1).tolist() == [0.0]
    with pytest.raises(ValueError, match="num_points"):
        init_points(w, 0)
    with pytest.raises(ValueError, match="method"):
        init_points(w, 4, method="kmeans")


def test_bits_by_gradient_norm_hand_computed():
    # budget 4 * 400 = 1600 bits; c = 1600 / (100 + 200 + 200) = 3.2 -> 3.2, 6.4, 3.2 -> floors 3, 6, 3
    # use 1500; the largest remainder (0.4) takes the spare 100 bits
    assert bits_by_gradient_norm([1.0, 2.0, 1.0], [100, 100, 200], mean_bits=4) == [3, 7, 3]
    # clamping at max_bits hands the surplus to the others (water-filling)
    assert bits_by_gradient_norm([10.0, 1.0], [10, 10], mean_bits=5, max_bits=8) == [8, 2]
    assert bits_by_gradient_norm([0.0, 0.0], [10, 30], mean_bits=3) == [3, 3]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.integers(1, 1000)), min_size=1, max_size=8),
       st.floats(1, 8), st.integers(1, 3), st.integers(3, 10))
def test_bits_by_gradient_norm_respects_budget_and_bounds(items, mean_bits, min_bits, max_bits):
    norms, numels = [g for g, _ in items], [n for _, n in items]
    if min_bits > mean_bits:
        with pytest.raises(ValueError, match="mean_bits"):
            bits_by_gradient_norm(norms, numels, mean_bits, min_bits, max_bits)
        return
    bits = bits_by_gradient_norm(norms, numels, mean_bits, min_bits, max_bits)
    used = sum(b * n for b, n in zip(bits, numels))
    budget = mean_bits * sum(numels)
    assert used <= budget + 1e-6
    assert all(min_bits <= b <= max_bits for b in bits)
    # nothing left that fits: every tensor below max_bits would overflow the budget with one more bit
    assert all(b == max_bits or used + n > budget + 1e-6 for b, n in zip(bits, numels))


def test_bits_by_gradient_norm_is_proportional_when_unconstrained():
    bits = bits_by_gradient_norm([1.0, 2.0, 3.0, 4.0], [1000] * 4, mean_bits=5, min_bits=1, max_bits=16)
    assert bits == [2, 4, 6, 8]


def test_bits_by_gradient_norm_errors():
    with pytest.raises(ValueError, match="same length"):
        bits_by_gradient_norm([1.0], [1, 2], 4)
    with pytest.raises(ValueError, match="grad_norms"):
        bits_by_gradient_norm([float("nan")], [1], 4)
