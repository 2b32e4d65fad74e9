"""Quantized weights on disk: the integer codes of a quantized model, exactly, in safetensors.

``save_codes`` writes the :class:`~nmtq.quant.QuantizedTensor` of every quantized weight (codes, per-bucket
ranges, learned points, pruning masks) into one safetensors file, with what is needed to decode them (bits,
bucket size, scaling, shape, dtype) in its JSON header; ``load_codes`` reads it back without unpickling
anything. ``nmtq distill`` writes ``quantized.safetensors`` next to the student, so the exact codes that were
scored are the ones that get exported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from .io import atomic_path
from .quant import QuantizedTensor

CODES_FILE = "quantized.safetensors"
_FORMAT = "nmtq.codes.v1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def save_codes(state: Mapping[str, QuantizedTensor], path: str | os.PathLike) -> None:
    """Write ``state`` (parameter name -> codes) to ``path`` atomically.

    Example:
        >>> from nmtq.quant import encode_tensor
        >>> w = torch.randn(4, 8)
        >>> save_codes({"w": encode_tensor(w, bits=3, bucket_size=16)}, "/tmp/nmtq-doc-codes.safetensors")
        >>> torch.equal(load_codes("/tmp/nmtq-doc-codes.safetensors")["w"].dequantize(),
        ...             encode_tensor(w, bits=3, bucket_size=16).dequantize())
        True
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    header: dict[str, dict] = {}
    for name, q in state.items():
        tensors[f"{name}.codes"] = q.codes.contiguous().cpu()
        tensors[f"{name}.ranges"] = q.ranges.contiguous().cpu()
        if q.points is not None:
            tensors[f"{name}.points"] = q.points.detach().contiguous().cpu()
        if q.mask is not None:
            tensors[f"{name}.mask"] = q.mask.to(torch.uint8).contiguous().cpu()
        header[name] = {"bits": q.bits, "bucket_size": q.bucket_size, "scaling": q.scaling, "shape": list(q.shape),
                        "dtype": str(q.dtype).removeprefix("torch.")}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": _FORMAT, "tensors": json.dumps(header)})


def load_codes(path: str | os.PathLike) -> dict[str, QuantizedTensor]:
    """Read what :func:`save_codes` wrote; a file that is not one raises ``ValueError`` saying so."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist: quantized codes are written by `nmtq distill` as {CODES_FILE}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise ValueError(f"{path} is not an nmtq codes file (format {metadata.get('format')!r})")
            header = json.loads(metadata["tensors"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path} is truncated or corrupted ({err}): write it again") from err
    state = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: {name} has dtype {info['dtype']!r}; expected one of {sorted(_DTYPES)}")
        mask = tensors.get(f"{name}.mask")
        state[name] = QuantizedTensor(
            codes=tensors[f"{name}.codes"], ranges=tensors[f"{name}.ranges"], bits=info["bits"],
            bucket_size=info["bucket_size"], scaling=info["scaling"], shape=torch.Size(info["shape"]),
            dtype=_DTYPES[info["dtype"]], points=tensors.get(f"{name}.points"),
            mask=None if mask is None else mask.bool())
    return state
