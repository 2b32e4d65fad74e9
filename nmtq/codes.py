"""The one on-disk format of quantized weights: a safetensors file, one writer (:func:`save_codes`), one reader
(:func:`read_codes`).

The run's ``quantized.safetensors`` (``nmtq distill``: the exact codes that were scored) and an export's
``model.safetensors`` (``nmtq export``, ``save_pretrained``) are the same schema. For every quantized weight
``W`` the file holds:

* ``W.codes``: the codes of the kept weights, in the file's **storage**: ``raw`` (one integer each, uint8 up to
  8 bits), ``packed`` (:func:`~nmtq.quant.pack_codes`, ``bits`` bits each) or, for ``huffman``,
  ``W.huffman_lengths`` and ``W.huffman_stream`` (:func:`~nmtq.quant.huffman_encode`) instead;
* ``W.ranges``: the per-bucket ranges, ``W.points`` the learned points (differentiable quantization),
  ``W.mask`` the pruning mask at one bit a weight (only for pruned weights).

Every other tensor of a model file is stored under its own name. What decodes the codes (bits, bucket size,
scaling, shape, dtype, number of stored codes), the storage and the format's version are one JSON document, kept
as the UTF-8 bytes of the tensor :data:`HEADER_KEY` rather than in the safetensors metadata: transformers'
``save_pretrained`` writes the metadata ``{"format": "pt"}`` over any other, and safetensors writes metadata keys
in no fixed order, so only this way is the file written the same, byte for byte, by :func:`save_codes` and by
``save_pretrained`` of a model loaded from it (:mod:`nmtq.hf`).

A model file also holds an empty tensor under the name of its largest quantized weight: plain transformers,
without nmtq, then refuses the file for a size mismatch instead of initialising the packed weights at random,
and its report lists :data:`HEADER_KEY`, whose name says what to do.

Files of the two earlier formats (``nmtq.codes.v1`` runs, ``nmtq.export.v1`` exports) are read too.

Example:
    >>> import torch
    >>> from nmtq.quant import encode_tensor
    >>> q = encode_tensor(torch.randn(4, 8), bits=3, bucket_size=16)
    >>> save_codes({"w": q}, "/tmp/nmtq-doc-codes.safetensors", storage="packed")
    >>> stored = read_codes("/tmp/nmtq-doc-codes.safetensors")
    >>> stored.storage, torch.equal(stored.quantized["w"].dequantize(), q.dequantize())
    ('packed', True)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import NmtqError
from .io import atomic_path
from .quant import QuantizedTensor, huffman_decode, huffman_encode, pack_codes, unpack_codes
from .quant.functional import check_points, code_dtype, max_code, num_buckets

FORMAT = "nmtq.codes.v2"
HEADER_KEY = "nmtq.header.import_nmtq_before_from_pretrained"
STORAGES = ("raw", "packed", "huffman")
PARTS = ("codes", "huffman_lengths", "huffman_stream", "ranges", "points", "mask")
"""The suffixes of the stored parts of a quantized weight."""
_LEGACY = ("nmtq.codes.v1", "nmtq.export.v1")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
_AGAIN = "write it again with the nmtq command that made it (`nmtq distill`, or `nmtq export MODEL_DIR OUT_DIR`)"


@dataclass
class StoredCodes:
    """What :func:`read_codes` found: the quantized weights (codes unpacked, one per weight), the other tensors and
    the storage of the codes."""

    quantized: dict[str, QuantizedTensor]
    plain: dict[str, torch.Tensor] = field(default_factory=dict)
    storage: str = "raw"


def _kept(q: QuantizedTensor) -> torch.Tensor:
    """The codes that are stored: all of them, or those of the kept weights of a pruned tensor."""
    codes = q.codes.reshape(-1)
    return codes if q.mask is None else codes[q.mask.reshape(-1)]


def codes_tensors(quantized: Mapping[str, QuantizedTensor], plain: Mapping[str, torch.Tensor] | None = None,
                  storage: str = "raw") -> dict[str, torch.Tensor]:
    """The tensors of a file of this format (``plain`` given: a model file, with its placeholder), on the CPU."""
    if storage not in STORAGES:
        raise ValueError(f"storage={storage!r}: use one of {STORAGES}")
    tensors: dict[str, torch.Tensor] = {}
    header: dict[str, dict] = {}
    for name, q in quantized.items():
        kept = _kept(q).cpu()
        if storage == "huffman":
            tensors[f"{name}.huffman_lengths"], tensors[f"{name}.huffman_stream"] = huffman_encode(kept, q.bits)
        elif storage == "packed":
            if q.bits > 8:
                raise NmtqError(f"{name} has {q.bits}-bit codes; packed codes take 1 to 8 bits: distill with --bits "
                                "8 or fewer")
            tensors[f"{name}.codes"] = pack_codes(kept, q.bits)
        else:
            tensors[f"{name}.codes"] = kept.to(code_dtype(q.bits)).contiguous()
        tensors[f"{name}.ranges"] = q.ranges.detach().cpu().contiguous()
        if q.points is not None:
            tensors[f"{name}.points"] = q.points.detach().cpu().contiguous()
        if q.mask is not None:
            tensors[f"{name}.mask"] = pack_codes(q.mask.reshape(-1).cpu(), 1)
        header[name] = {"bits": q.bits, "bucket_size": q.bucket_size, "scaling": q.scaling, "shape": list(q.shape),
                        "dtype": str(q.dtype).removeprefix("torch."), "stored_codes": kept.numel()}
    for name, t in (plain or {}).items():
        if name in tensors or name == HEADER_KEY:
            raise ValueError(f"the tensor name {name} is taken by the stored parts of a quantized weight")
        tensors[name] = t.detach().cpu().contiguous()
    if plain is not None and header:  # see the module docstring: plain transformers must refuse the file
        tensors[max(header, key=lambda n: torch.Size(header[n]["shape"]).numel())] = torch.empty(0, dtype=torch.uint8)
    document = {"format": FORMAT, "storage": storage, "tensors": header}
    text = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
    tensors[HEADER_KEY] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return tensors


def save_codes(quantized: Mapping[str, QuantizedTensor], path: str | os.PathLike,
               plain: Mapping[str, torch.Tensor] | None = None, storage: str = "raw") -> None:
    """Write ``quantized`` (parameter name -> codes), and with ``plain`` every other tensor of the model, to
    ``path`` atomically, the codes in ``storage`` (``raw``, ``packed`` or ``huffman``)."""
    from safetensors.torch import save_file

    tensors = codes_tensors(quantized, plain, storage)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def header_bytes(path: str | os.PathLike) -> int:
    """Bytes of a file's header: safetensors' length and JSON header, and the decoding header :data:`HEADER_KEY`."""
    from safetensors import safe_open

    with open(path, "rb") as f:
        size = 8 + int.from_bytes(f.read(8), "little")
    with safe_open(str(path), framework="pt") as f:
        if HEADER_KEY in f.keys():
            size += f.get_slice(HEADER_KEY).get_shape()[0]
    return size


def read_codes(path: str | os.PathLike) -> StoredCodes:
    """Read a file written by :func:`save_codes` (or ``save_pretrained`` of a model loaded from one), every size
    and code checked; nothing is unpickled. A file that is not one raises :class:`NmtqError` saying what to do."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise NmtqError(f"{path} does not exist: {_AGAIN}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, keys = f.metadata() or {}, set(f.keys())
            if HEADER_KEY in keys:
                document = json.loads(bytes(f.get_tensor(HEADER_KEY).tolist()).decode("utf-8"))
            elif metadata.get("format") in _LEGACY:
                document = _legacy_document(metadata)
            else:
                raise NmtqError(f"{path} holds no nmtq codes (no {HEADER_KEY}; safetensors format "
                                f"{metadata.get('format')!r}): {_AGAIN}")
            tensors = {key: f.get_tensor(key) for key in keys if key != HEADER_KEY}
    except (SafetensorError, OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as err:
        raise NmtqError(f"{path} is truncated or corrupted ({err}): {_AGAIN}") from err
    if not isinstance(document, dict) or document.get("format") not in (FORMAT, *_LEGACY) \
            or document.get("storage") not in STORAGES or not isinstance(document.get("tensors"), dict):
        raise NmtqError(f"{path}: its header is not one of nmtq's formats ({FORMAT}): {_AGAIN}")
    storage, header = document["storage"], document["tensors"]
    quantized = {name: _decode(name, info, tensors, storage, path) for name, info in header.items()}
    parts = {f"{name}.{part}" for name in header for part in PARTS}
    plain = {k: v for k, v in tensors.items() if k not in parts and k not in header}  # header: the placeholders
    return StoredCodes(quantized, plain, storage)


def _legacy_document(metadata: Mapping[str, str]) -> dict:
    """The header of an ``nmtq.codes.v1`` run file (codes one per weight, masks one byte each) or an
    ``nmtq.export.v1`` export (packed or Huffman codes of the kept weights)."""
    if metadata["format"] == "nmtq.codes.v1":
        return {"format": "nmtq.codes.v1", "storage": "raw", "tensors": json.loads(metadata["tensors"])}
    return {"format": "nmtq.export.v1", "storage": "packed", "tensors": json.loads(metadata["quantized"])}


def _decode(name: str, info: Mapping, tensors: Mapping[str, torch.Tensor], storage: str, path: Path
            ) -> QuantizedTensor:
    """One quantized tensor from its stored parts, with every size and code checked."""
    try:
        bits, shape = info["bits"], torch.Size(info["shape"])
        dtype, bucket_size, scaling = DTYPES[info["dtype"]], info["bucket_size"], info["scaling"]
        numel = shape.numel()
        mask, legacy_raw = tensors.get(f"{name}.mask"), "stored_codes" not in info  # nmtq.codes.v1
        if mask is not None:
            mask = (mask.reshape(-1) if legacy_raw else unpack_codes(mask, 1, numel)).bool().reshape(shape)
        # nmtq.codes.v1 stored a code for every weight and no count: the kept ones are the mask's
        kept = int(mask.sum()) if legacy_raw and mask is not None else info.get("stored_codes", numel)
        if mask is not None and int(mask.sum()) != kept:
            raise NmtqError(f"the mask keeps {int(mask.sum())} weights but {kept} codes are stored")
        elif mask is None and kept != numel:
            raise NmtqError(f"{kept} codes are stored for {numel} weights and there is no mask")
        if f"{name}.huffman_stream" in tensors:
            stored = huffman_decode(tensors[f"{name}.huffman_lengths"], tensors[f"{name}.huffman_stream"], kept)
        elif storage == "raw":
            stored = tensors[f"{name}.codes"].reshape(-1)
            if legacy_raw and mask is not None:
                stored = stored[mask.reshape(-1)]
            if stored.numel() != kept or stored.is_floating_point():
                raise NmtqError(f"{stored.numel()} {stored.dtype} codes are stored for {kept} weights")
            stored = stored.to(code_dtype(bits))
        else:
            stored = unpack_codes(tensors[f"{name}.codes"], bits, kept)
        points, ranges = tensors.get(f"{name}.points"), tensors[f"{name}.ranges"]
        _check_codes(stored, bits, scaling, points)
        expected = (num_buckets(numel, shape, bucket_size), 2 if scaling == "linear" else 1)
        if tuple(ranges.shape) != expected or not ranges.is_floating_point():
            raise NmtqError(f"ranges have shape {tuple(ranges.shape)}, {ranges.dtype}; expected float {expected}")
        codes = stored if mask is None else stored.new_zeros(numel).masked_scatter_(mask.reshape(-1), stored)
        return QuantizedTensor(codes, ranges, bits, bucket_size, scaling, shape, dtype, points, mask)
    except (KeyError, TypeError, ValueError) as err:
        raise NmtqError(f"{path}: the quantized tensor {name} cannot be decoded ({err}): the file is corrupted "
                         f"or was edited; {_AGAIN}") from err


def _check_codes(codes: torch.Tensor, bits: int, scaling: str, points: torch.Tensor | None) -> None:
    """Codes must index a point, or a level of ``bits``-bit linear or absmax quantization."""
    top = points.numel() - 1 if points is not None else 2 * max_code(bits, scaling) if scaling == "absmax" \
        else max_code(bits, scaling)
    if points is not None:
        check_points(points)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > top):
        raise NmtqError(f"code {int(codes.max())} is out of range: {bits}-bit codes here lie in [0, {top}]")
