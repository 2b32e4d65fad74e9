"""Quantized weights kept bit-packed in memory and decoded when a layer runs (torch only).

:class:`PackedTensor` holds a :class:`~nmtq.quant.QuantizedTensor` as its file does: the codes of the kept
weights packed at ``bits`` each (:func:`~nmtq.quant.pack_codes`), the per-bucket ranges, the learned points and the
pruning mask at one bit a weight. Calling it decodes the tensor, bit for bit as ``QuantizedTensor.dequantize``
does.

:func:`pack_module_weight` makes a module read one of its weights from a :class:`PackedTensor`: the parameter is
removed and the module's class is swapped for a subclass whose attribute of that name decodes on every read. So
``nn.Linear``, ``nn.Embedding``, ``nn.Conv2d`` and their subclasses (scaled embeddings) run unchanged, holding
the packed codes only; the decoded weight lives while the layer runs.

What decoding costs: a layer decodes its whole weight each time it runs, so each decoder step of a generation
decodes the decoder's weights and the output projection again (a plain ``nn.Embedding`` decodes only the rows it
looks up). Each packed byte is decoded by one table lookup (the values of its codes), then each bucket is scaled
as ``dequantize`` scales it: a multiply-add and a clip (linear) or a multiply (absmax) over the decoded tensor.
Each decoded weight is a fresh allocation, whose pages the C allocator may return to the system and fault in
again at the next step (glibc's ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` keep them).
``scripts/bench_packed.py`` measures the milliseconds per model and the tokens per second against fp32. Where speed
matters more than memory for a while, :func:`decoded` keeps each weight decoded for a scope:
``with decoded(model): model.generate(...)`` decodes each weight once for the whole generation, holds the fp32
weights while it lasts, and drops them when it ends.

Example:
    >>> import torch
    >>> from nmtq.quant import encode_tensor
    >>> layer = torch.nn.Linear(64, 32)
    >>> q = encode_tensor(layer.weight.detach(), bits=4, bucket_size=64)
    >>> pack_module_weight(layer, "weight", PackedTensor(q))
    >>> torch.equal(layer.weight, q.dequantize()), type(layer).__name__
    (True, 'PackedLinear')
    >>> with decoded(layer):
    ...     layer.weight is layer.weight  # decoded once, at the first read
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .functional import QuantizedTensor, compute_dtype, max_code, unit_to_bucket
from .packing import byte_table, gather_rows, pack_codes, unpack_codes

__all__ = ["PackedTensor", "decoded", "pack_module_weight"]

# bytes of one packed byte's decoded values -> a dtype of that size, to gather them as one element
_WIDE = {4: torch.int32, 8: torch.int64, 16: torch.complex128}
_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}  # a floating-point value's bits
_TABLES: dict[tuple, torch.Tensor] = {}  # values of the codes without points, per bits, scaling, dtype, device


class PackedTensor(nn.Module):
    """A quantized tensor, bit-packed in its buffers; ``packed_tensor()`` decodes it (see :func:`decoded`)."""

    def __init__(self, q: QuantizedTensor) -> None:
        super().__init__()
        kept = q.codes.reshape(-1) if q.mask is None else q.codes.reshape(-1)[q.mask.reshape(-1)]
        self.register_buffer("codes", pack_codes(kept, q.bits))
        self.register_buffer("ranges", q.ranges.detach().clone())
        self.register_buffer("points", None if q.points is None else q.points.detach().clone())
        self.register_buffer("mask", None if q.mask is None else pack_codes(q.mask.reshape(-1), 1))
        self.bits, self.bucket_size, self.scaling = q.bits, q.bucket_size, q.scaling
        self.shape, self.dtype, self.kept = torch.Size(q.shape), q.dtype, kept.numel()
        self._scopes, self._decoded = 0, None  # open decoded() scopes; the tensor they keep

    def quantized(self) -> QuantizedTensor:
        """The :class:`QuantizedTensor` (codes unpacked, one per weight)."""
        numel = self.shape.numel()
        stored = unpack_codes(self.codes, self.bits, self.kept)
        mask = None
        if self.mask is not None:
            mask = unpack_codes(self.mask, 1, numel).bool()
            stored = stored.new_zeros(numel).masked_scatter_(mask, stored)
            mask = mask.reshape(self.shape)
        return QuantizedTensor(stored, self.ranges, self.bits, self.bucket_size, self.scaling, self.shape,
                               self.dtype, self.points, mask)

    def forward(self) -> torch.Tensor:
        if not self._scopes:
            return self.decode()
        if self._decoded is None:
            self._decoded = self.decode()
        return self._decoded

    def decode(self) -> torch.Tensor:
        """A new decoded tensor, equal bit for bit to ``self.quantized().dequantize()``, without the integer codes.

        The value of each code inside ``[0, 1]`` (``[-1, 1]`` for absmax) is gathered a packed byte at a time,
        then each bucket is scaled by the functions ``dequantize`` uses, on the same (buckets, bucket length)
        layout, so every floating-point operation is the same.
        """
        numel = self.shape.numel()
        if numel == 0:
            return torch.empty(self.shape, dtype=self.dtype, device=self.codes.device)
        buckets = self.ranges.shape[0]
        padded = buckets * self.bucket_size if isinstance(self.bucket_size, int) else numel
        t = self.codes.new_empty(max(padded, _room(numel, self.bits)), dtype=compute_dtype(self.dtype))
        if self.mask is None:
            self._values(self.codes, numel, t)
        else:  # each weight takes the value of the kept code at its rank (a pruned one: any, cleared below)
            kept = t.new_empty(max(_room(self.kept, self.bits), self.kept + 1))
            self._values(self.codes, self.kept, kept)[self.kept :].zero_()  # past the last kept one: a zero
            keep = unpack_codes(self.mask, 1, numel)
            ranks = torch.cumsum(keep, 0, dtype=torch.int32 if numel < 2**31 else torch.int64).sub_(keep)
            torch.index_select(kept, 0, ranks, out=t[:numel])
        t[numel:padded].zero_()  # the last bucket's padding: dropped below
        out = self._scale(t[:padded].view(buckets, -1), self.ranges).view(-1)[:numel]
        out = out.view(self.shape).to(self.dtype)
        if self.mask is None:
            return out
        # where(mask, out, 0.0): pruned weights to +0.0, by clearing all their bits
        bits = _INTS[out.element_size()]
        out.view(bits).bitwise_and_(keep.to(bits).neg_().view(self.shape))
        return out

    def rows(self, index: torch.Tensor) -> torch.Tensor | None:
        """Rows ``index`` of the decoded 2-D tensor (an embedding lookup, ``index.shape + (columns,)``), decoding
        only those rows; ``None`` where the whole tensor has to be decoded (pruned, rows that share a bucket or
        a byte with the next, or inside :func:`decoded`, which keeps the whole tensor anyway)."""
        if self._scopes or self.mask is not None or len(self.shape) != 2:
            return None
        num_rows, columns = self.shape
        size = self.bucket_size
        if columns * self.bits % 8 or isinstance(size, int) and columns % size:
            return None
        ids = index.reshape(-1)
        data = self.codes.view(num_rows, -1).index_select(0, ids).view(-1)
        t = data.new_empty(ids.numel() * columns, dtype=compute_dtype(self.dtype))
        self._values(data, t.numel(), t)
        if size is None:
            ranges, t2 = self.ranges, t.view(1, -1)
        elif size == "row":
            ranges, t2 = self.ranges.index_select(0, ids), t.view(-1, columns)
        else:
            per_row = columns // size
            first = ids[:, None] * per_row
            ranges = self.ranges.index_select(0, (first + torch.arange(per_row, device=ids.device)).view(-1))
            t2 = t.view(-1, size)
        return self._scale(t2, ranges).view(*index.shape, columns).to(self.dtype)

    def _levels(self, dtype: torch.dtype, per_byte: bool) -> torch.Tensor:
        """The value before bucket scaling of each of the ``2**bits`` codes, computed as ``dequantize`` computes
        it, or with ``per_byte`` (1, 2, 4 and 8 bits) the ``(256, 8 // bits)`` values of the codes in each byte."""
        key = (self.bits, self.scaling, dtype, self.codes.device, per_byte)
        if key in _TABLES and self.points is None:
            return _TABLES[key]
        if self.points is not None:
            levels = self.points.to(dtype)
            levels = torch.cat([levels, levels.new_zeros(2**self.bits - levels.numel())])  # unused codes: 0
        else:
            top = max_code(self.bits, self.scaling)
            levels = torch.arange(2**self.bits, dtype=dtype, device=self.codes.device)
            levels = (levels.sub_(top) if self.scaling == "absmax" else levels).div_(top)
        levels = byte_table(levels, self.bits) if per_byte else levels
        if self.points is None:
            _TABLES[key] = levels
        return levels

    def _values(self, data: torch.Tensor, n: int, out: torch.Tensor) -> torch.Tensor:
        """``out[:n]`` (returned) = the value of each of the first ``n`` codes packed in ``data``, before bucket
        scaling; ``out`` has room for :func:`_room` values (whole bytes)."""
        bits, top = self.bits, max_code(self.bits, self.scaling)
        if bits == 8 and self.points is None:  # the codes are the bytes: dequantize's own operations
            y = out[:n].copy_(data[:n])
            return (y.sub_(top) if self.scaling == "absmax" else y).div_(top)
        per_byte = 8 // bits if 8 % bits == 0 else 0
        wide = _WIDE.get(per_byte * out.element_size())
        if wide is None:  # 3, 5, 6 and 7 bits, or a byte's values wider than 16 bytes: the codes first
            return torch.index_select(self._levels(out.dtype, False), 0, unpack_codes(data, bits, n).int(), out=out[:n])
        gather_rows(self._levels(out.dtype, True), data, out[: data.numel() * per_byte].view(-1, per_byte), wide)
        return out[:n]

    def _scale(self, t: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
        """Values in buckets (rows of ``t``) onto their ``ranges``, in place: ``dequantize``'s last step."""
        linear = self.scaling == "linear" or self.points is not None  # points: always onto (min, max)
        return unit_to_bucket(t, ranges, out=t) if linear else t.mul_(ranges)

    def _apply(self, fn, recurse=True):  # moved or cast: a decoded copy kept by decoded() would be stale
        self._decoded = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:  # a copy (deepcopy, pickle) is at rest, outside any decoded() scope
        return {**self.__dict__, "_scopes": 0, "_decoded": None}

    def nbytes(self) -> int:
        """Bytes held: the packed codes and mask, the ranges and points."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return f"{tuple(self.shape)}, bits={self.bits}, bucket_size={self.bucket_size}, scaling={self.scaling}"


def _room(n: int, bits: int) -> int:
    """Values decoded from the ``ceil(n * bits / 8)`` bytes of ``n`` codes when whole bytes are decoded."""
    return -(-n * bits // 8) * (8 // bits) if 8 % bits == 0 else n


@contextmanager
def decoded(model: nn.Module) -> Iterator[nn.Module]:
    """Keep every packed weight of ``model`` decoded while the ``with`` block runs: each is decoded once, at its
    first read, kept (tied weights once), and dropped when the block ends, so the model holds only the packed codes
    again. Outputs are the same bit for bit; the memory of the decoded weights is held meanwhile. Scopes nest.

    Example:
        >>> import torch
        >>> from nmtq.quant import encode_tensor
        >>> layer = torch.nn.Linear(8, 4)
        >>> pack_module_weight(layer, "weight", PackedTensor(encode_tensor(layer.weight.detach(), bits=2)))
        >>> with decoded(layer):
        ...     first = layer.weight
        ...     first is layer.weight
        True
        >>> layer.weight_packed._decoded is None  # dropped at the end of the block
        True
    """
    packed = [m for m in model.modules() if isinstance(m, PackedTensor)]  # each module once: tied ones too
    for p in packed:
        p._scopes += 1
    try:
        yield model
    finally:
        for p in packed:
            p._scopes -= 1
            if not p._scopes:
                p._decoded = None


_CLASSES: dict[tuple[type, str], type] = {}


def _lookup(self: nn.Embedding, input: torch.Tensor) -> torch.Tensor:
    """``nn.Embedding.forward``, decoding only the rows looked up where it can (see :meth:`PackedTensor.rows`)."""
    rows = None if self.max_norm is not None else self._modules["weight_packed"].rows(input)
    return nn.Embedding.forward(self, input) if rows is None else rows


def _packed_class(cls: type, attr: str) -> type:
    """``cls`` with ``attr`` read from the :class:`PackedTensor` submodule ``<attr>_packed`` (one class per pair)."""
    if (cls, attr) not in _CLASSES:
        def decode(self) -> torch.Tensor:
            return self._modules[f"{attr}_packed"]()

        body = {attr: property(decode), "__module__": __name__}
        if attr == "weight" and issubclass(cls, nn.Embedding) and cls.forward is nn.Embedding.forward:
            body["forward"] = _lookup
        _CLASSES[cls, attr] = type(f"Packed{cls.__name__}", (cls,), body)
    return _CLASSES[cls, attr]


def pack_module_weight(module: nn.Module, attr: str, packed: PackedTensor) -> None:
    """Make ``module.<attr>`` decode from ``packed`` on every read (see the module docstring); in place."""
    if isinstance(module, nn.RNNBase):
        raise ValueError(f"{type(module).__name__} caches its weights in flat buffers: keep them decoded")
    if attr in module._parameters:
        del module._parameters[attr]
    module.add_module(f"{attr}_packed", packed)
    module.__class__ = _packed_class(type(module), attr)
