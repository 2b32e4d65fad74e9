"""Huffman coding of quantized values: code lengths, canonical codes and size statistics.

Used to measure how many bits per value an entropy-coded quantized model needs. Torch-only.
"""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["HuffmanStats", "canonical_codes", "entropy_bits", "huffman_code_lengths", "huffman_stats",
           "is_int_tensor", "symbol_counts"]


def is_int_tensor(t: object) -> bool:
    """True for a tensor of an integer dtype (bool excluded)."""
    ok = isinstance(t, torch.Tensor) and t.dtype != torch.bool
    return ok and not (t.is_floating_point() or t.is_complex())


def _as_counts(counts: Sequence[int] | torch.Tensor) -> list[int]:
    """Validate ``counts`` and return it as a list of non-negative Python ints."""
    if isinstance(counts, torch.Tensor):
        if counts.dim() != 1 or not is_int_tensor(counts):
            raise ValueError(
                f"counts must be a 1-D integer tensor; got dtype={counts.dtype}, "
                f"shape={tuple(counts.shape)}. Pass e.g. symbol_counts(codes, n)."
            )
        values = counts.tolist()
    else:
        values = list(counts)
    out = []
    for i, v in enumerate(values):
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))
        except TypeError:
            raise ValueError(f"counts must hold integers; counts[{i}] = {v!r}. Cast to int.") from None
        if out[-1] < 0:
            raise ValueError(f"counts must be non-negative; counts[{i}] = {out[-1]}. Pass frequencies.")
    if sum(out) == 0:
        raise ValueError(f"counts must contain a positive value; got {len(out)} values, all zero or none.")
    return out


def huffman_code_lengths(counts: Sequence[int] | torch.Tensor) -> list[int]:
    """Bit length of each symbol's codeword in an optimal Huffman code (0 for unused symbols).

    Ties are broken deterministically (by weight, then creation order).
    A lone used symbol gets length 1.

    >>> huffman_code_lengths([5, 9, 12, 13, 16, 45])
    [4, 4, 3, 3, 3, 1]
    """
    freqs = _as_counts(counts)
    n = len(freqs)
    heap = [(c, i) for i, c in enumerate(freqs) if c > 0]  # (weight, node id); leaves are ids 0..n-1
    if len(heap) == 1:
        return [int(c > 0) for c in freqs]
    heapq.heapify(heap)
    parent: dict[int, int] = {}
    while len(heap) > 1:
        (w1, a), (w2, b) = heapq.heappop(heap), heapq.heappop(heap)
        node = n + len(parent) // 2  # internal nodes get increasing ids, so parents outrank children
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
    depth = {heap[0][1]: 0}
    for child in sorted(parent, reverse=True):
        depth[child] = depth[parent[child]] + 1
    return [depth.get(i, 0) for i in range(n)]


def canonical_codes(lengths: Sequence[int]) -> dict[int, str]:
    """Canonical (prefix-free) Huffman codewords for the given code lengths; length 0 is omitted.

    >>> canonical_codes([2, 1, 0, 2])
    {1: '0', 0: '10', 3: '11'}
    """
    if any(n < 0 for n in lengths):
        raise ValueError(f"lengths must be non-negative; got {list(lengths)!r}.")
    codes: dict[int, str] = {}
    code, prev = 0, 0
    for sym in sorted((s for s, n in enumerate(lengths) if n > 0), key=lambda s: (lengths[s], s)):
        n = lengths[sym]
        code <<= n - prev
        if code >= 1 << n:
            raise ValueError(f"lengths violate the Kraft inequality: {list(lengths)!r}. Use Huffman lengths.")
        codes[sym] = format(code, f"0{n}b")
        code, prev = code + 1, n
    return codes


def entropy_bits(counts: Sequence[int] | torch.Tensor) -> float:
    """Shannon entropy (bits per symbol) of the empirical distribution given by ``counts``.

    >>> entropy_bits([1, 1, 2])
    1.5
    """
    freqs = _as_counts(counts)
    total = sum(freqs)
    return max(0.0, -sum(c / total * math.log2(c / total) for c in freqs if c > 0))


@dataclass(frozen=True)
class HuffmanStats:
    """Size of a Huffman-coded stream.

    >>> huffman_stats([1, 1, 2]).mean_length
    1.5
    """

    num_symbols_coded: int  # number of coded values (sum of counts)
    total_bits: int  # sum over symbols of count * code length
    mean_length: float  # bits per coded value
    entropy: float  # Shannon entropy, bits per value (lower bound on mean_length)
    table_bits: int  # code table overhead: 8 bits per alphabet symbol (lengths up to 255)


def huffman_stats(counts: Sequence[int] | torch.Tensor) -> HuffmanStats:
    """Huffman-code ``counts`` and report bits, bits per value, entropy and table overhead.

    >>> huffman_stats([5, 9, 12, 13, 16, 45]).total_bits
    224
    """
    freqs = _as_counts(counts)
    lengths = huffman_code_lengths(freqs)
    n = sum(freqs)
    total = sum(c * ln for c, ln in zip(freqs, lengths, strict=True))
    return HuffmanStats(n, total, total / n, entropy_bits(freqs), 8 * len(freqs))


def symbol_counts(codes: torch.Tensor, num_symbols: int) -> torch.Tensor:
    """Frequencies (int64, length ``num_symbols``) of the integer codes in ``[0, num_symbols)``.

    >>> symbol_counts(torch.tensor([0, 2, 2]), 4).tolist()
    [1, 0, 2, 0]
    """
    if not is_int_tensor(codes):
        raise ValueError(
            f"codes must be an integer tensor; got {getattr(codes, 'dtype', type(codes))}. "
            "Quantize to integer indices first."
        )
    if isinstance(num_symbols, bool) or not isinstance(num_symbols, int) or num_symbols < 1:
        raise ValueError(f"num_symbols must be a positive int; got {num_symbols!r}.")
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_symbols):
        raise ValueError(
            f"codes must lie in [0, {num_symbols}); got range [{int(flat.min())}, {int(flat.max())}]."
        )
    return torch.bincount(flat, minlength=num_symbols).to(torch.int64)
