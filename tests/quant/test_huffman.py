"""Tests for nmtq.quant.huffman: optimality, Kraft equality, entropy bounds, canonical codes, validation."""

import doctest
import itertools
from collections import Counter
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nmtq.quant.huffman as huffman
from nmtq.quant.huffman import (
    HuffmanStats,
    canonical_codes,
    entropy_bits,
    huffman_code_lengths,
    huffman_stats,
    symbol_counts,
)

counts_st = st.lists(st.integers(0, 1000), min_size=2, max_size=20).filter(
    lambda c: sum(1 for x in c if x > 0) >= 2
)


def test_clrs_example():
    counts = [5, 9, 12, 13, 16, 45]
    assert huffman_code_lengths(counts) == [4, 4, 3, 3, 3, 1]
    stats = huffman_stats(counts)
    assert stats.total_bits == 224
    assert stats.num_symbols_coded == 100
    assert stats.mean_length == pytest.approx(2.24)
    assert stats.table_bits == 48
    assert isinstance(stats, HuffmanStats)


def test_tensor_input_matches_list():
    counts = [5, 9, 12, 13, 16, 45]
    assert huffman_code_lengths(torch.tensor(counts)) == huffman_code_lengths(counts)
    assert huffman_code_lengths(torch.tensor(counts, dtype=torch.int32)) == [4, 4, 3, 3, 3, 1]


def test_doctests():
    assert doctest.testmod(huffman, extraglobs={"torch": torch}).failed == 0


@settings(max_examples=200, deadline=None)
@given(counts_st)
def test_entropy_bound_and_kraft_equality(counts):
    stats = huffman_stats(counts)
    lengths = huffman_code_lengths(counts)
    assert stats.entropy - 1e-9 <= stats.mean_length < stats.entropy + 1
    assert stats.entropy == pytest.approx(entropy_bits(counts))
    assert stats.total_bits == sum(c * n for c, n in zip(counts, lengths, strict=True))
    assert all((n == 0) == (c == 0) for c, n in zip(counts, lengths, strict=True))
    assert sum(Fraction(1, 2**n) for n in lengths if n > 0) == 1


def _brute_force_min_bits(counts):
    coded = [c for c in counts if c > 0]
    best = None
    for lengths in itertools.product(range(1, 5), repeat=len(coded)):
        if sum(Fraction(1, 2**n) for n in lengths) <= 1:
            bits = sum(c * n for c, n in zip(coded, lengths, strict=True))
            best = bits if best is None else min(best, bits)
    return best


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=5).filter(lambda c: sum(c) > 0))
def test_optimal_against_brute_force(counts):
    assert huffman_stats(counts).total_bits == _brute_force_min_bits(counts)


@settings(max_examples=100, deadline=None)
@given(counts_st)
def test_canonical_codes_prefix_free_with_requested_lengths(counts):
    lengths = huffman_code_lengths(counts)
    codes = canonical_codes(lengths)
    assert set(codes) == {s for s, n in enumerate(lengths) if n > 0}
    assert all(len(codes[s]) == lengths[s] and set(codes[s]) <= {"0", "1"} for s in codes)
    words = list(codes.values())
    assert len(set(words)) == len(words)
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_canonical_codes_rejects_kraft_violation():
    with pytest.raises(ValueError, match="Kraft"):
        canonical_codes([1, 1, 1])


def test_single_symbol_and_zero_counts():
    assert huffman_code_lengths([0, 7, 0]) == [0, 1, 0]
    stats = huffman_stats([0, 7, 0])
    assert (stats.total_bits, stats.mean_length, stats.entropy, stats.table_bits) == (7, 1.0, 0.0, 24)
    assert canonical_codes([0, 1, 0]) == {1: "0"}
    assert huffman_code_lengths([3, 0, 3]) == [1, 0, 1]


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [0, 0, 0],
        [3, -1],
        [1.5, 2],
        [True, 2],
        torch.tensor([1.0, 2.0]),
        torch.tensor([[1, 2]]),
        torch.zeros(3, dtype=torch.int64),
    ],
)
@pytest.mark.parametrize("fn", [huffman_code_lengths, entropy_bits, huffman_stats])
def test_invalid_counts_raise(fn, bad):
    with pytest.raises(ValueError, match="counts"):
        fn(bad)


def test_symbol_counts_matches_counter():
    codes = torch.tensor([[3, 0, 3], [1, 3, 0]], dtype=torch.int32)
    got = symbol_counts(codes, 5)
    assert got.dtype == torch.int64
    expected = Counter(codes.flatten().tolist())
    assert got.tolist() == [expected.get(i, 0) for i in range(5)]
    assert symbol_counts(torch.tensor([], dtype=torch.int64), 3).tolist() == [0, 0, 0]


@pytest.mark.parametrize("codes", [torch.tensor([0, 5]), torch.tensor([-1, 0]), torch.tensor([0.0, 1.0])])
def test_symbol_counts_rejects_bad_codes(codes):
    with pytest.raises(ValueError, match="codes"):
        symbol_counts(codes, 5)
