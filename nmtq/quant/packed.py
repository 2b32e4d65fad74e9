"""Quantized weights kept bit-packed in memory and decoded when a layer runs (torch only).

:class:`PackedTensor` holds a :class:`~nmtq.quant.QuantizedTensor` as its file does: the codes of the kept
weights packed at ``bits`` each (:func:`~nmtq.quant.pack_codes`), the per-bucket ranges, the learned points and the
pruning mask at one bit a weight. Calling it decodes the tensor, exactly as ``QuantizedTensor.dequantize`` does.

:func:`pack_module_weight` makes a module read one of its weights from a :class:`PackedTensor`: the parameter is
removed and the module's class is swapped for a subclass whose attribute of that name decodes on every read. So
``nn.Linear``, ``nn.Embedding``, ``nn.Conv2d`` and their subclasses (scaled embeddings) run unchanged, holding
the packed codes only; the decoded weight lives while the layer runs.

Example:
    >>> import torch
    >>> from nmtq.quant import encode_tensor
    >>> layer = torch.nn.Linear(64, 32)
    >>> q = encode_tensor(layer.weight.detach(), bits=4, bucket_size=64)
    >>> pack_module_weight(layer, "weight", PackedTensor(q))
    >>> torch.equal(layer.weight, q.dequantize()), type(layer).__name__
    (True, 'PackedLinear')
"""

from __future__ import annotations

import torch
from torch import nn

from .functional import QuantizedTensor
from .packing import _unpack, pack_codes

__all__ = ["PackedTensor", "pack_module_weight"]


class PackedTensor(nn.Module):
    """A quantized tensor, bit-packed in its buffers; ``packed_tensor()`` decodes it."""

    def __init__(self, q: QuantizedTensor) -> None:
        super().__init__()
        kept = q.codes.reshape(-1) if q.mask is None else q.codes.reshape(-1)[q.mask.reshape(-1)]
        self.register_buffer("codes", pack_codes(kept, q.bits))
        self.register_buffer("ranges", q.ranges.detach().clone())
        self.register_buffer("points", None if q.points is None else q.points.detach().clone())
        self.register_buffer("mask", None if q.mask is None else pack_codes(q.mask.reshape(-1), 1))
        self.bits, self.bucket_size, self.scaling = q.bits, q.bucket_size, q.scaling
        self.shape, self.dtype, self.kept = torch.Size(q.shape), q.dtype, kept.numel()

    def quantized(self) -> QuantizedTensor:
        """The :class:`QuantizedTensor` (codes unpacked, one per weight)."""
        numel = self.shape.numel()
        stored = _unpack(self.codes, self.bits, self.kept)
        mask = None
        if self.mask is not None:
            mask = _unpack(self.mask, 1, numel).bool()
            stored = stored.new_zeros(numel).masked_scatter_(mask, stored)
            mask = mask.reshape(self.shape)
        return QuantizedTensor(stored, self.ranges, self.bits, self.bucket_size, self.scaling, self.shape,
                               self.dtype, self.points, mask)

    def forward(self) -> torch.Tensor:
        return self.quantized().dequantize()

    def nbytes(self) -> int:
        """Bytes held: the packed codes and mask, the ranges and points."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return f"{tuple(self.shape)}, bits={self.bits}, bucket_size={self.bucket_size}, scaling={self.scaling}"


_CLASSES: dict[tuple[type, str], type] = {}


def _packed_class(cls: type, attr: str) -> type:
    """``cls`` with ``attr`` read from the :class:`PackedTensor` submodule ``<attr>_packed`` (one class per pair)."""
    if (cls, attr) not in _CLASSES:
        def decode(self) -> torch.Tensor:
            return self._modules[f"{attr}_packed"]()

        _CLASSES[cls, attr] = type(f"Packed{cls.__name__}", (cls,), {attr: property(decode), "__module__": __name__})
    return _CLASSES[cls, attr]


def pack_module_weight(module: nn.Module, attr: str, packed: PackedTensor) -> None:
    """Make ``module.<attr>`` decode from ``packed`` on every read (see the module docstring); in place."""
    if isinstance(module, nn.RNNBase):
        raise ValueError(f"{type(module).__name__} caches its weights in flat buffers: keep them decoded")
    if attr in module._parameters:
        del module._parameters[attr]
    module.add_module(f"{attr}_packed", packed)
    module.__class__ = _packed_class(type(module), attr)
