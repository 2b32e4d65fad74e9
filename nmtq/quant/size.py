"""Exact size accounting of a quantized model: the one function behind logs, model cards and benchmarks.

Counted, in bits:
* codes: ``numel * bits`` per quantized tensor (what bit-packing stores), and, beside it, the length of the
  same codes under a real Huffman code built from their frequencies plus its code-length table;
* bucket scales: per bucket, (min, max) for linear scaling or max|w| for absmax, at their stored width;
* points: the learned quantization points of each tensor;
* full precision: every other tensor (biases, norms, excluded layers, buffers) at its own width.
The reference is the same model with every floating-point tensor in fp32.

A pruned tensor (its :class:`QuantizedTensor` has a ``mask``) is stored as a bitmap of the mask, one bit per
weight, plus the codes of the kept weights only: ``code_bits = kept * bits + numel``, of which ``mask_bits =
numel`` is the bitmap. Its Huffman size likewise codes only the kept weights' codes, plus the table and the
bitmap. Scales and points are counted as for any other tensor. Unpruned tensors have ``mask_bits = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from .functional import QuantizedTensor
from .huffman import huffman_stats, symbol_counts


@dataclass(frozen=True)
class TensorSize:
    """Size of one quantized tensor; ``code_bits`` and ``huffman_bits`` include the ``mask_bits`` bitmap."""

    name: str
    numel: int
    bits: int
    code_bits: int
    huffman_bits: int
    entropy: float
    scale_bits: int
    points_bits: int
    mask_bits: int = 0

    @property
    def kept(self) -> int:
        """Number of weights whose codes are stored (all of them unless the tensor is pruned)."""
        return (self.code_bits - self.mask_bits) // self.bits

    @property
    def mean_huffman_length(self) -> float:
        return self.huffman_bits / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SizeReport:
    """Bits of a quantized model, by part, and its compression ratios against fp32."""

    tensors: tuple[TensorSize, ...]
    full_precision_bits: int
    fp32_bits: int

    @property
    def code_bits(self) -> int:
        return sum(t.code_bits for t in self.tensors)

    @property
    def huffman_bits(self) -> int:
        return sum(t.huffman_bits for t in self.tensors)

    @property
    def entropy_bits(self) -> float:
        """Entropy of the stored codes plus the mask bitmaps: the floor of ``huffman_bits`` without tables."""
        return sum(t.entropy * t.kept + t.mask_bits for t in self.tensors)

    @property
    def mask_bits(self) -> int:
        """Bitmaps of the pruned tensors (already part of ``code_bits`` and ``huffman_bits``)."""
        return sum(t.mask_bits for t in self.tensors)

    @property
    def overhead_bits(self) -> int:
        """Bucket scales and points."""
        return sum(t.scale_bits + t.points_bits for t in self.tensors)

    @property
    def total_bits(self) -> int:
        """Codes at ``bits`` each + scales and points + the full-precision rest."""
        return self.code_bits + self.overhead_bits + self.full_precision_bits

    @property
    def total_huffman_bits(self) -> int:
        return self.huffman_bits + self.overhead_bits + self.full_precision_bits

    @property
    def total_bytes(self) -> int:
        return math.ceil(self.total_bits / 8)

    @property
    def total_huffman_bytes(self) -> int:
        return math.ceil(self.total_huffman_bits / 8)

    @property
    def fp32_bytes(self) -> int:
        return math.ceil(self.fp32_bits / 8)

    @property
    def compression_ratio(self) -> float:
        return self.fp32_bits / self.total_bits

    @property
    def huffman_compression_ratio(self) -> float:
        return self.fp32_bits / self.total_huffman_bits

    def table(self) -> str:
        """A plain-text summary, one line per quantized tensor and the totals."""
        lines = [f"{'tensor':40} {'numel':>10} {'bits':>4} {'pruned':>6} {'huffman b/w':>11} {'entropy':>7}"]
        for t in self.tensors:
            pruned = 1 - t.kept / t.numel if t.numel else 0.0
            lines.append(f"{t.name[:40]:40} {t.numel:>10} {t.bits:>4} {pruned:>6.1%} {t.mean_huffman_length:>11.3f} "
                         f"{t.entropy:>7.3f}")
        lines.append(
            f"fp32 {self.fp32_bytes:,} B | packed {self.total_bytes:,} B ({self.compression_ratio:.2f}x) | "
            f"Huffman {self.total_huffman_bytes:,} B ({self.huffman_compression_ratio:.2f}x) | "
            f"scales+points {math.ceil(self.overhead_bits / 8):,} B | "
            f"full precision {math.ceil(self.full_precision_bits / 8):,} B"
            + (f" | mask bitmaps {math.ceil(self.mask_bits / 8):,} B (in packed)" if self.mask_bits else "")
        )
        return "\n".join(lines)


def _tensor_bits(t: torch.Tensor) -> int:
    return t.numel() * t.element_size() * 8


def _fp32_bits(t: torch.Tensor) -> int:
    return t.numel() * 32 if t.is_floating_point() else _tensor_bits(t)


def tensor_size(name: str, q: QuantizedTensor, huffman: bool = True) -> TensorSize:
    """Bits of one :class:`QuantizedTensor`: codes (of the kept weights and a mask bitmap if it is pruned),
    Huffman-coded codes, scales and points."""
    numel = q.codes.numel()
    codes = q.codes if q.mask is None else q.codes[q.mask.reshape(-1)]
    mask_bits = 0 if q.mask is None else numel
    if huffman and codes.numel():
        stats = huffman_stats(symbol_counts(codes, q.num_symbols))
        huffman_bits, entropy = stats.total_bits + stats.table_bits + mask_bits, stats.entropy
    else:
        huffman_bits, entropy = codes.numel() * q.bits + mask_bits, float(q.bits)
    points_bits = _tensor_bits(q.points) if q.points is not None else 0
    return TensorSize(name, numel, q.bits, codes.numel() * q.bits + mask_bits, huffman_bits, entropy,
                      _tensor_bits(q.ranges), points_bits, mask_bits)


def stored_tensors(module: torch.nn.Module, skip: Iterable[torch.Tensor] = (),
                   not_stored: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """The tensors of ``module.state_dict()``, each tied tensor once (first name), without those in ``skip``
    and without the entries named in ``not_stored`` (left out of the checkpoint, recomputed on load)."""
    seen = {id(t) for t in skip}
    names = set(not_stored)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in seen and name not in names:
            seen.add(id(tensor))
            tensors[name] = tensor
    return tensors


def size_report(quantized: Mapping[str, QuantizedTensor], full_precision: Mapping[str, torch.Tensor],
                huffman: bool = True) -> SizeReport:
    """Size of a model made of the ``quantized`` tensors and the ``full_precision`` rest (each tensor once).

    Example:
        >>> from nmtq.quant.functional import encode_tensor
        >>> q = encode_tensor(torch.randn(1024), bits=4, bucket_size=256)
        >>> r = size_report({"w": q}, {"b": torch.zeros(16)})
        >>> r.code_bits, r.overhead_bits, r.full_precision_bits, r.fp32_bits
        (4096, 256, 512, 33280)
    """
    tensors = tuple(tensor_size(name, q, huffman) for name, q in quantized.items())
    full_bits = sum(_tensor_bits(t) for t in full_precision.values())
    fp32 = sum(t.numel for t in tensors) * 32 + sum(_fp32_bits(t) for t in full_precision.values())
    return SizeReport(tensors, full_bits, fp32)
