"""Properties of the quantization math, each against a hand-computed value or a brute-force reference."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nmtq.quant.functional import (
    bucket_view,
    encode_tensor,
    encode_to_points,
    max_code,
    quantize_tensor,
    quantize_to_points,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)
values = st.lists(finite, min_size=1, max_size=300)
bits_st = st.integers(1, 8)
bucket_st = st.one_of(st.none(), st.integers(1, 64))


def as_tensor(xs):
    return torch.tensor(xs, dtype=torch.float32)


def buckets(w, bucket_size):
    """Brute-force reference bucketing: consecutive slices of the flattened tensor."""
    flat = w.reshape(-1)
    size = flat.numel() if bucket_size is None else bucket_size
    return [flat[i: i + size] for i in range(0, flat.numel(), size)]


def test_hand_computed_linear():
    # bucket [0, 3]: 2 bits -> levels 0, 1, 2, 3; 1.4 -> 1, 1.6 -> 2
    w = torch.tensor([0.0, 1.4, 1.6, 3.0])
    assert quantize_tensor(w, 2, bucket_size=None).tolist() == [0.0, 1.0, 2.0, 3.0]
    # two buckets of 2: [0, 1.4] and [1.6, 3.0] are kept exactly with 1 bit
    assert quantize_tensor(w, 1, bucket_size=2).tolist() == pytest.approx([0.0, 1.4, 1.6, 3.0])


def test_hand_computed_absmax_row():
    # rows scaled by max|w|: 8-bit levels are k * max/127
    w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]])
    q = quantize_tensor(w, 8, bucket_size="row", scaling="absmax")
    expected = torch.tensor([[127, -64, 32], [0, 127, -64]]) / 127 * torch.tensor([[1.0], [2.0]])
    torch.testing.assert_close(q, expected)
    codes = encode_tensor(w, 8, bucket_size="row", scaling="absmax").codes
    assert (codes.int() - 127).tolist() == [127, -64, 32, 0, 127, -64]


@settings(max_examples=150, deadline=None)
@given(values, bits_st, bucket_st, st.sampled_from(["linear", "absmax"]))
def test_levels_error_and_idempotence(xs, bits, bucket_size, scaling):
    if scaling == "absmax":
        bits = max(bits, 2)
    w = as_tensor(xs)
    q = quantize_tensor(w, bits, bucket_size, scaling)
    assert q.shape == w.shape and q.dtype == w.dtype
    for wb, qb in zip(buckets(w, bucket_size), buckets(q, bucket_size)):
        assert qb.unique().numel() <= 2**bits
        if scaling == "linear":
            step = float(wb.max() - wb.min()) / max_code(bits, scaling)
        else:
            step = float(wb.abs().max()) / max_code(bits, scaling)
        slack = 1e-5 * float(wb.abs().max()) + 1e-30
        assert float((qb - wb).abs().max()) <= step / 2 + slack
    # idempotent exactly: lerp maps level 0 and the top level onto min and max bit for bit
    assert torch.equal(quantize_tensor(q, bits, bucket_size, scaling), q)
    assert torch.equal(encode_tensor(q, bits, bucket_size, scaling).codes, encode_tensor(w, bits, bucket_size,
                                                                                      scaling).codes)


@settings(max_examples=80, deadline=None)
@given(values, bits_st, bucket_st)
def test_codes_decode_to_quantize_tensor_exactly(xs, bits, bucket_size):
    w = as_tensor(xs)
    for scaling in ("linear", "absmax"):
        b = max(bits, 2) if scaling == "absmax" else bits
        enc = encode_tensor(w, b, bucket_size, scaling)
        assert int(enc.codes.max()) < enc.num_symbols
        assert torch.equal(enc.dequantize(), quantize_tensor(w, b, bucket_size, scaling))


def test_constant_bucket_is_unchanged_and_never_nan():
    w = torch.full((10,), 3.25)
    for scaling in ("linear", "absmax"):
        assert torch.equal(quantize_tensor(w, 3, 4, scaling), w)
        assert torch.equal(quantize_tensor(w, 3, 4, scaling, stochastic=True), w)
    z = torch.zeros(7)
    assert torch.equal(quantize_tensor(z, 2, None, "absmax"), z)


def test_short_last_bucket_and_row_granularity():
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0, 11.0])
    # bucket 4: [0..3] and the short [10, 11]; each short bucket keeps its own min and max
    assert quantize_tensor(w, 1, 4).tolist() == [0.0, 0.0, 3.0, 3.0, 10.0, 11.0]
    assert bucket_view(w, 4).shape == (2, 4)
    m = torch.tensor([[0.0, 1.0, 2.0], [5.0, 5.0, 9.0]])
    assert quantize_tensor(m, 1, "row").tolist() == [[0.0, 0.0, 2.0], [5.0, 5.0, 9.0]]


def test_dtypes_are_preserved():
    w = torch.randn(300)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        q = quantize_tensor(w.to(dtype), 4, 64)
        assert q.dtype == dtype
        assert torch.equal(encode_tensor(w.to(dtype), 4, 64).dequantize(), q)


def test_stochastic_rounding_is_unbiased():
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([0.0, 0.13, 0.5, 0.71, 0.98, 1.0])
    n = 20000
    draws = torch.stack([quantize_tensor(w, 2, None, stochastic=True, generator=gen) for _ in range(n)])
    # each draw is one of the two neighbouring levels (step 1/3): std of the mean <= (1/3)/2/sqrt(n)
    bound = 5 * (1 / 3) / 2 / math.sqrt(n)
    assert float((draws.mean(0) - w).abs().max()) < bound
    assert set(torch.unique(draws).tolist()) <= {0.0, 1 / 3, 2 / 3, 1.0} or torch.allclose(
        torch.unique(draws), torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    signed = torch.tensor([-1.0, -0.3, 0.2, 0.9])
    draws = torch.stack([quantize_tensor(signed, 3, None, "absmax", True, gen) for _ in range(n)])
    assert float((draws.mean(0) - signed).abs().max()) < 5 * (1 / 3) / 2 / math.sqrt(n)


def test_points_hand_computed_and_uniform_points_match_uniform_levels():
    points = torch.tensor([0.0, 0.1, 1.0])
    w = torch.tensor([[2.0, 2.3, 4.0, 3.9]])  # scaled: 0, .15, 1, .95 -> points 0, .1, 1, 1
    torch.testing.assert_close(quantize_to_points(w, points, None), torch.tensor([[2.0, 2.2, 4.0, 4.0]]))
    torch.manual_seed(0)
    w = torch.randn(4, 500)
    for bits in (1, 2, 4):
        uniform = torch.arange(2**bits) / (2**bits - 1)
        torch.testing.assert_close(quantize_to_points(w, uniform, 64), quantize_tensor(w, bits, 64))


@settings(max_examples=60, deadline=None)
@given(values, st.lists(st.floats(0, 1, width=32), min_size=1, max_size=9), bucket_st)
def test_points_pick_the_nearest_point(xs, raw_points, bucket_size):
    w = as_tensor(xs)
    points = torch.tensor(sorted(raw_points))
    q = encode_to_points(w, points, bucket_size)
    for wb, cb in zip(buckets(w, bucket_size), buckets(q.codes, bucket_size)):
        width = float(wb.max() - wb.min())
        x = (wb - wb.min()) / width if width > 0 else torch.zeros_like(wb)
        dist = (x[:, None] - points[None, :]).abs()
        chosen = dist.gather(1, cb.long()[:, None]).squeeze(1)
        assert torch.all(chosen <= dist.min(1).values + 1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 17}, "bits"),
        ({"bits": 2.5}, "bits"),
        ({"bits": 1, "scaling": "absmax"}, "bits"),
        ({"bits": 4, "bucket_size": 0}, "bucket_size"),
        ({"bits": 4, "bucket_size": "col"}, "bucket_size"),
        ({"bits": 4, "scaling": "log"}, "scaling"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_tensor(torch.randn(8), **kwargs)


def test_bad_tensors():
    with pytest.raises(ValueError, match="floating-point"):
        quantize_tensor(torch.arange(8), 4)
    for bad in (float("nan"), float("inf")):
        w = torch.randn(8)
        w[3] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            quantize_tensor(w, 4)
        with pytest.raises(ValueError, match="NaN or inf"):
            encode_tensor(w, 4)
    with pytest.raises(ValueError, match="sorted"):
        quantize_to_points(torch.randn(8), torch.tensor([0.5, 0.1]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        quantize_to_points(torch.randn(8), torch.tensor([0.0, 1.5]))


def test_narrow_buckets_far_from_zero_keep_codes_in_range():
    # |min| >> max - min: v * inv - min * inv would cancel catastrophically and push codes out of range
    gen = torch.Generator().manual_seed(0)
    w = 1000 + torch.randn(500, generator=gen) * 1e-3
    for bits in (2, 4, 6, 8):
        enc = encode_tensor(w, bits, 7)
        q = quantize_tensor(w, bits, 7)
        assert int(enc.codes.max()) <= 2**bits - 1
        assert torch.equal(enc.dequantize(), q)
        assert torch.equal(quantize_tensor(q, bits, 7), q)
        for wb, qb in zip(buckets(w, 7), buckets(q, 7)):
            assert wb.min() <= qb.min() and qb.max() <= wb.max()
