"""DiffQ math: noise scale and gradients, the size penalty, bit rounding under a budget, per-group codes.

References are brute force (per-group Python slices, closed-form derivatives, finite differences) or by hand.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmtq.quant import (
    bits_from_logits,
    encode_groups,
    encode_tensor,
    group_numels,
    logits_for_bits,
    pseudo_quantize,
    quantize_tensor,
    round_bits,
    size_in_bits,
    size_in_megabytes,
    size_penalty,
)

group_st = st.one_of(st.none(), st.integers(1, 40))


def groups(w, group_size):
    """Brute-force reference grouping: consecutive slices of the flattened tensor."""
    flat = w.reshape(-1)
    size = flat.numel() if group_size is None else group_size
    return [flat[i: i + size] for i in range(0, flat.numel(), size)]


def reference_steps(w, bits, group_size):
    """delta = (max - min) / (2**b - 1) of each group, one value per element of the flattened tensor."""
    steps = [(g.max() - g.min()).item() / (2 ** b - 1) * torch.ones(g.numel(), dtype=torch.float64)
             for g, b in zip(groups(w.detach(), group_size), bits.tolist())]
    return torch.cat(steps)


def num_groups(numel, group_size):
    return 1 if group_size is None else math.ceil(numel / group_size)


# ---------------------------------------------------------------------------------------------- bit-widths
def test_bits_from_logits_hand_computed():
    assert bits_from_logits(torch.tensor([0.0, -50.0, 50.0])).tolist() == [8.5, 2.0, 15.0]
    # sigmoid(log 3) = 3/4: 1 + (9 - 1) * 3/4 = 7
    assert bits_from_logits(torch.tensor([math.log(3)]), 1, 9).item() == pytest.approx(7.0)
    assert logits_for_bits(7.0, 1, 9).item() == pytest.approx(math.log(3))


@settings(max_examples=60, deadline=None)
@given(st.floats(-8, 8), st.integers(1, 8), st.integers(1, 8))
def test_logits_and_bits_are_inverse(logit, min_bits, span):
    max_bits = min(min_bits + span, 16)
    logits = torch.tensor([logit], dtype=torch.float64)
    bits = bits_from_logits(logits, min_bits, max_bits)
    assert min_bits < bits.item() < max_bits
    torch.testing.assert_close(logits_for_bits(bits, min_bits, max_bits), logits)


def test_group_numels_hand_computed():
    assert group_numels(600, 256).tolist() == [256, 256, 88]
    assert group_numels(512, 256).tolist() == [256, 256]
    assert group_numels(7, None).tolist() == [7]
    assert group_numels(0, 256).tolist() == []


# ---------------------------------------------------------------------------------------------- noise
def test_noise_has_the_rounding_error_scale():
    gen = torch.Generator().manual_seed(0)
    group_size, bits = 4096, torch.linspace(2, 15, 14, dtype=torch.float64)
    w = torch.randn(14 * group_size, generator=gen, dtype=torch.float64)
    noise = pseudo_quantize(w, bits, group_size, generator=gen) - w
    delta = reference_steps(w, bits, group_size)
    assert bool((noise.abs() <= delta / 2 * (1 + 1e-9)).all())
    std = noise.view(14, group_size).std(dim=1)
    torch.testing.assert_close(std, delta.view(14, group_size)[:, 0] / math.sqrt(12), rtol=0.05, atol=0)
    assert bool((std[1:] < std[:-1]).all())  # more bits, less noise
    # the bound is reached: the noise is not a smaller fraction of delta
    assert (noise.abs() / delta).max() > 0.49


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 300), group_st, st.integers(0, 10_000))
def test_noise_bound_and_gradients(numel, group_size, seed):
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(numel, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    count = num_groups(numel, group_size)
    bits = (1 + 7 * torch.rand(count, generator=gen, dtype=torch.float64)).requires_grad_(True)
    upstream = torch.randn(numel, generator=gen, dtype=torch.float64)
    noisy = pseudo_quantize(w, bits, group_size, generator=gen)
    noise = (noisy - w).detach()
    delta = reference_steps(w, bits, group_size)
    # the padding of a short last group leaks neither into the output nor into its range
    assert noisy.shape == w.shape and bool((noise.abs() <= delta / 2 * (1 + 1e-9) + 1e-12).all())
    noisy.backward(upstream)
    assert torch.equal(w.grad, upstream)  # straight through: d(noisy)/dw = 1
    # d(delta * u)/db = u * d(delta)/db, with d(delta)/db = -width * ln2 * 2**b / (2**b - 1)**2
    expected = []
    for g, up, nz, d, b in zip(groups(w.detach(), group_size), groups(upstream, group_size),
                               groups(noise, group_size), groups(delta, group_size), bits.tolist()):
        width = (g.max() - g.min()).item()
        ddelta = -width * math.log(2) * 2 ** b / (2 ** b - 1) ** 2
        expected.append(0.0 if width == 0 else (up * nz / d[0]).sum().item() * ddelta)
    torch.testing.assert_close(bits.grad, torch.tensor(expected, dtype=torch.float64))


def test_noise_is_reproducible_and_spares_constant_groups():
    w, bits = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0]), torch.tensor([2.0, 3.0])
    a = pseudo_quantize(w, bits, 3, torch.Generator().manual_seed(1))
    assert torch.equal(a, pseudo_quantize(w, bits, 3, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, pseudo_quantize(w, bits, 3, torch.Generator().manual_seed(2)))
    assert a[:3].tolist() == [1.0, 1.0, 1.0]
    half = pseudo_quantize(w.half(), bits, 3)
    assert half.dtype == torch.float16 and half.shape == w.shape
    empty = pseudo_quantize(torch.empty(0, 4), torch.empty(0), 3)
    assert empty.shape == (0, 4)


def test_task_loss_gradient_matches_finite_difference_for_a_fixed_noise_sample():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    target = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    logits = torch.tensor([-1.5, -0.5, 0.3, -2.0], dtype=torch.float64, requires_grad=True)

    def loss(lg):
        noisy = pseudo_quantize(w, bits_from_logits(lg, 1, 8), 12, torch.Generator().manual_seed(7))
        return (torch.sin(noisy) * target).sum() + (noisy ** 2).sum()

    loss(logits).backward()
    h, numeric = 1e-6, []
    for i in range(logits.numel()):
        step = torch.zeros_like(logits).index_fill_(0, torch.tensor(i), h)
        numeric.append(((loss(logits.detach() + step) - loss(logits.detach() - step)) / (2 * h)).item())
    assert logits.grad.abs().min() > 1e-6  # the noise really depends on every logit
    torch.testing.assert_close(logits.grad, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------- size penalty
def test_size_hand_computed():
    assert size_in_bits([torch.tensor([4.0, 2.5])], [torch.tensor([256, 88])]).item() == 1244.0
    bits = [torch.tensor([8.0]), torch.tensor([4.0, 4.0])]
    numels = [torch.tensor([2**20]), torch.tensor([2**20, 2**20])]
    assert size_in_bits(bits, numels).item() == 16 * 2**20
    assert size_in_megabytes(bits, numels).item() == 2.0
    assert size_penalty(bits, numels, penalty=0.25).item() == 0.5


def test_size_penalty_gradient_matches_finite_difference():
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True),
              torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)]
    numels = [group_numels(700, 256), group_numels(300, 256)]

    def penalty(lgs):
        return size_penalty([bits_from_logits(lg) for lg in lgs], numels, penalty=3.0)

    penalty(logits).backward()
    h = 1e-6
    for k, lg in enumerate(logits):
        for i in range(lg.numel()):
            plus = [x.detach().clone() for x in logits]
            minus = [x.detach().clone() for x in logits]
            plus[k][i] += h
            minus[k][i] -= h
            numeric = (penalty(plus) - penalty(minus)).item() / (2 * h)
            assert lg.grad[i].item() == pytest.approx(numeric, rel=1e-6)


# ---------------------------------------------------------------------------------------------- rounding
def test_round_bits_hand_computed():
    bits, numels = torch.tensor([3.6, 4.4, 5.5]), torch.tensor([100, 100, 10])
    assert round_bits(bits).tolist() == [4, 4, 6]
    assert round_bits(torch.tensor([2.5, 3.5, 4.5, 4.51])).tolist() == [2, 4, 4, 5]  # ties to even
    # 860 bits rounded; 800: the group whose rounding up added most (0.4 * 100 bits) goes down first
    assert round_bits(bits, 800, numels).tolist() == [3, 4, 6]
    assert round_bits(bits, 755, numels).tolist() == [3, 4, 5]
    assert round_bits(bits, 860, numels).tolist() == [4, 4, 6]
    # below the floors (230 bits): cap at 6 fits (200); at 7, the largest group goes down first
    bits, numels = torch.tensor([2.2, 7.9, 7.6]), torch.tensor([10, 10, 20])
    assert round_bits(bits, 210, numels).tolist() == [2, 7, 6]
    assert round_bits(bits, 200, numels).tolist() == [2, 6, 6]
    assert round_bits(bits, 40, numels, min_bits=1, max_bits=8).tolist() == [1, 1, 1]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(2, 15), st.integers(1, 1000)), min_size=1, max_size=30), st.floats(0, 1.2))
def test_round_bits_respects_the_budget(pairs, fraction):
    bits = torch.tensor([b for b, _ in pairs], dtype=torch.float64)
    numels = torch.tensor([n for _, n in pairs])
    nearest = torch.tensor([round(b) for b, _ in pairs])  # Python's round: nearest, ties to even
    assert torch.equal(round_bits(bits), nearest)
    smallest, largest = 2 * int(numels.sum()), int((nearest * numels).sum())
    budget = smallest + int(fraction * (largest - smallest))
    out = round_bits(bits, budget, numels)
    assert int((out * numels).sum()) <= budget
    assert bool(((out >= 2) & (out <= 15) & (out <= nearest)).all())
    if budget >= largest:
        assert torch.equal(out, nearest)
    if budget >= int((bits.floor().long() * numels).sum()):
        assert bool((out >= bits.floor().long()).all())  # only rounded-up groups were lowered


# ---------------------------------------------------------------------------------------------- codes
def test_encode_groups_hand_computed():
    # group [0, 3] at 2 bits: levels 0, 1, 2, 3; group [0, 0.6] at 1 bit keeps both values
    q = encode_groups(torch.tensor([0.0, 1.4, 1.6, 3.0, 0.0, 0.6]), [2, 1], group_size=4)
    assert q.codes.tolist() == [0, 1, 2, 3, 0, 1] and q.codes.dtype == torch.uint8
    assert q.dequantize().tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 0.0, 0.6])
    assert q.bits.tolist() == [2, 1] and q.bits.dtype == torch.uint8
    # codes 4 * 256 + 8 * 256 + 2 * 88, ranges 3 x 2 x 32, bit-widths 3 x 4
    q = encode_groups(torch.randn(600), torch.tensor([4, 8, 2]), 256)
    assert q.stored_bits() == 3248 + 192 + 12
    assert encode_groups(torch.randn(600), [4, 9, 2], 256).codes.dtype == torch.int16
    assert encode_groups(torch.randn(600), [4, 16, 2], 256).codes.dtype == torch.int32
    empty = encode_groups(torch.empty(0, 3), torch.empty(0, dtype=torch.int64))
    assert empty.dequantize().shape == (0, 3) and empty.stored_bits() == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), group_st, st.integers(0, 10_000))
def test_encode_error_is_within_half_a_step(numel, group_size, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(numel, generator=gen) * 5
    bits = torch.randint(1, 17, (num_groups(numel, group_size),), generator=gen)
    q = encode_groups(w, bits, group_size)
    per_value_bits = torch.cat([torch.full((g.numel(),), b) for g, b in zip(groups(w, group_size), bits.tolist())])
    assert bool((q.codes.long() < 2 ** per_value_bits).all()) and bool((q.codes.long() >= 0).all())
    delta = reference_steps(w, bits, group_size)
    error = (q.dequantize().double() - w.double()).abs()
    # float32 rounding: a few ulps of the group's largest magnitude
    ulps = torch.cat([torch.full((g.numel(),), 4 * g.abs().max().item() * 2**-23) for g in groups(w, group_size)])
    assert bool((error <= delta / 2 + ulps).all())


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), group_st, st.integers(1, 16), st.integers(0, 10_000),
       st.sampled_from([torch.float32, torch.float16, torch.float64]))
def test_uniform_bits_equal_quantize_tensor_bit_for_bit(numel, group_size, bits, seed, dtype):
    w = (torch.randn(numel, generator=torch.Generator().manual_seed(seed)) * 4 + 1).to(dtype)
    q = encode_groups(w, [bits] * num_groups(numel, group_size), group_size)
    assert torch.equal(q.dequantize(), quantize_tensor(w, bits, group_size))
    assert torch.equal(q.codes.long(), encode_tensor(w, bits, group_size).codes.long())


@pytest.mark.parametrize("bits", [4, 8, 12, 16])
def test_uniform_bits_equal_quantize_tensor_on_a_large_tensor(bits):
    # one ulp of difference in the inverse step changes a few of 65536 levels at 12+ bits: all must agree
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(bits)) * 4 + 1
    q = encode_groups(w, [bits] * 256, 256)
    assert torch.equal(q.dequantize(), quantize_tensor(w, bits, 256))


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("call, match", [
    (lambda: pseudo_quantize(torch.randn(8), torch.full((2,), 4.0), 0), "group_size=0"),
    (lambda: encode_groups(torch.randn(8), [4], 2.5), "group_size=2.5"),
    (lambda: group_numels(8, True), "group_size=True"),
    (lambda: bits_from_logits(torch.zeros(2), 8, 8), "min_bits=8 must be below max_bits=8"),
    (lambda: bits_from_logits(torch.zeros(2), 2, 17), "max_bits=17"),
    (lambda: logits_for_bits(2.0), "strictly between"),
    (lambda: pseudo_quantize(torch.randn(8), torch.full((3,), 4.0), 4), r"shape \(3,\).*2 values"),
    (lambda: pseudo_quantize(torch.randn(8), torch.tensor([4.0, 0.5]), 4), r"must lie in \[1, 16\]"),
    (lambda: pseudo_quantize(torch.tensor([1.0, math.nan]), torch.tensor([4.0]), None), "NaN"),
    (lambda: encode_groups(torch.tensor([1.0, math.inf]), [4], None), "NaN or inf"),
    (lambda: encode_groups(torch.randn(8), [4, 17], 4), r"must lie in \[1, 16\]"),
    (lambda: encode_groups(torch.randn(8), torch.tensor([4.0, 3.0]), 4), "round_bits"),
    (lambda: round_bits(torch.tensor([3.0, 16.0])), r"must lie in \[2, 15\]"),
    (lambda: round_bits(torch.tensor([3.0]), 100), "needs group_numels"),
    (lambda: round_bits(torch.tensor([3.0, 4.0]), 300, torch.tensor([100, 100])), "raise budget_bits"),
    (lambda: size_in_bits([torch.ones(2)], []), "1 bit tensors but 0"),
    (lambda: size_penalty(torch.ones(2), torch.ones(2), -1.0), "penalty=-1.0"),
])
def test_one_line_errors(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
