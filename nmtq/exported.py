"""Reading an nmtq export back: its ``quantization_config``, its size, and the model with every weight decoded.

:mod:`nmtq.export` writes the folder; this module reads it, for :mod:`nmtq.ct2`, the Hub and the tests.
``import nmtq`` also lets ``from_pretrained`` load it, codes packed in memory (:mod:`nmtq.hf`).

Example:
    >>> model, tokenizer = load_exported("exports/bible-de-en-qd4")  # doctest: +SKIP
    >>> export_size("exports/bible-de-en-qd4").overhead < 0.01  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files
from .codes import StoredCodes, header_bytes, read_codes
from .errors import NmtqError
from .io import read_json_object
from .models import not_stored

EXPORT_AGAIN = "export the student again with `nmtq export MODEL_DIR OUT_DIR`"
"""What an error about a damaged export tells the user to do."""


@dataclass(frozen=True)
class ExportSize:
    """Bytes of an export's ``model.safetensors`` beside the size accounting of :mod:`nmtq.quant.size`.

    The file is the accounting plus the safetensors header (key names, shapes, offsets and the decoding
    metadata, a few hundred bytes per quantized tensor) and at most two bytes per quantized tensor where its
    packed codes and mask bitmap round up to whole bytes.
    """

    file_bytes: int
    header_bytes: int  # the 8-byte length and the JSON header
    accounted_bytes: int  # SizeReport.total_bytes, or total_huffman_bytes for Huffman-coded codes
    storage: str  # "packed" or "huffman"

    @property
    def data_bytes(self) -> int:
        return self.file_bytes - self.header_bytes

    @property
    def overhead(self) -> float:
        """How much larger the file is than the accounting, as a fraction (0.01 = 1%)."""
        return self.file_bytes / self.accounted_bytes - 1

    def __str__(self) -> str:
        return (f"model.safetensors: {self.file_bytes:,} bytes = {self.data_bytes:,} of tensors + "
                f"{self.header_bytes:,} of header (key names, metadata); size accounting ({self.storage}): "
                f"{self.accounted_bytes:,} bytes; the file is {self.overhead:+.1%} of it")


IMAGE_MODEL_TYPE = "nmtq_cifar_resnet"  # CifarResNetConfig.model_type (nmtq.vision.models, imported on use)


def is_image_model(model_type: str | None) -> bool:
    """Whether ``model_type`` is nmtq's image classifier (a CIFAR ResNet)."""
    return model_type == IMAGE_MODEL_TYPE


def check_vocab(model, tokenizer, where: Path) -> None:
    """The tokenizer's ids must all have a row, and its padding id must be the model's. A model may have more rows
    than the tokenizer has tokens: T5 pads its embeddings to a multiple of 128, M2M100 and NLLB carry unused ones."""
    rows = model.get_output_embeddings().weight.shape[0]
    source_rows = model.get_input_embeddings().weight.shape[0]
    targets = getattr(tokenizer, "tgt_vocab_size", None) or len(tokenizer)  # FSMT keeps two dictionaries
    pads = (tokenizer.pad_token_id, getattr(model.config, "pad_token_id", None))
    if len(tokenizer) > source_rows or targets > rows or (None not in pads and pads[0] != pads[1]):
        raise NmtqError(f"{where}: the tokenizer has {len(tokenizer)} tokens (padding id {pads[0]}) but the model's "
                         f"vocabulary has {rows} (padding id {pads[1]}): the tokenizer files belong to another model; "
                         "put the student's own tokenizer files there")


def export_config(folder: str | os.PathLike) -> dict | None:
    """The ``quantization_config`` of an nmtq export (config.json's; an earlier version's quantization_config.json),
    or None where ``folder`` holds none."""
    folder = Path(folder)
    try:
        config = json.loads((folder / files.CONFIG).read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(config, dict) or config.get("quant_method") != "nmtq":
        return None
    if "bits" not in config and (folder / files.EXPORT_CONFIG).is_file():  # exported by nmtq 0.1's first versions
        return read_json_object(folder / files.EXPORT_CONFIG, f"export the student again; {EXPORT_AGAIN}")
    return config


def export_size(out_dir: str | os.PathLike) -> ExportSize:
    """Bytes of ``out_dir/model.safetensors`` (and of its header) beside the size accounting of the export.

    The accounting (``bytes`` in ``nmtq distill``'s metrics.json, or ``huffman_bytes`` for a Huffman export) is
    recorded in config.json's ``quantization_config`` at export time.
    """
    out_dir = Path(out_dir)
    config = export_config(out_dir) or {}
    path, storage = out_dir / files.WEIGHTS, config.get("storage", "packed")
    accounted = (config.get("size") or {}).get("huffman_bytes" if storage == "huffman" else "packed_bytes")
    if not isinstance(accounted, int) or not path.is_file():
        raise NmtqError(f"{out_dir} lacks {files.WEIGHTS} or the size in config.json's quantization_config: "
                         f"{EXPORT_AGAIN}")
    return ExportSize(path.stat().st_size, header_bytes(path), accounted, storage)


# ---------------------------------------------------------------------------------------------- loading
def load_exported(out_dir: str | os.PathLike) -> tuple:
    """``(model, tokenizer)`` of a folder written by :func:`export_model`, the model in eval mode (an image
    classifier comes with ``None`` for its tokenizer).

    The model is built from config.json with the Auto classes (the nmtq LSTM is registered), every quantized
    weight is set to its decoded codes (:meth:`QuantizedTensor.dequantize`) and every other tensor to the stored
    one, so its outputs equal the quantized student's exactly. Only JSON and safetensors are read; nothing is
    unpickled. A damaged or inconsistent folder raises ``ValueError`` saying what to fix.
    """
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSeq2SeqLM, GenerationConfig

    from . import lstm  # noqa: F401  registers the LSTM student with the Auto classes
    from .models import enable_generation_cache, freeze_fixed_tables
    from .tokenizer import load_tokenizer
    from .vision import models as vision_models  # noqa: F401  registers the CIFAR ResNets

    out_dir = Path(out_dir)
    stored = _read_export(out_dir)
    quantized, plain = stored.quantized, stored.plain
    try:
        config = AutoConfig.from_pretrained(str(out_dir))
    except (OSError, ValueError) as err:
        raise NmtqError(f"{out_dir}/config.json is missing or damaged ({err}): export again") from err
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the model built here holds the decoded weights
    dtypes = {q.dtype for q in quantized.values()}
    image = is_image_model(config.model_type)
    auto = AutoModelForImageClassification if image else AutoModelForSeq2SeqLM
    model = auto.from_config(config, **({"dtype": dtypes.pop()} if len(dtypes) == 1 else {}))
    values = {name: q.dequantize() for name, q in quantized.items()} | plain
    _load_weights(model, values, out_dir / files.WEIGHTS)
    if image:
        return model.eval(), None
    if (out_dir / files.GENERATION_CONFIG).is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(out_dir))
    freeze_fixed_tables(model)
    enable_generation_cache(model)
    tokenizer = load_tokenizer(out_dir)
    check_vocab(model, tokenizer, out_dir)
    return model.eval(), tokenizer


def _read_export(out_dir: Path) -> StoredCodes:
    """The quantized tensors and the plain ones of ``out_dir/model.safetensors``, cross-checked with config.json's
    ``quantization_config``."""
    config = export_config(out_dir)
    if config is None:
        raise NmtqError(f"{out_dir} is not an nmtq export (its config.json has no quantization_config with "
                        f"quant_method nmtq): {EXPORT_AGAIN}")
    path = out_dir / files.WEIGHTS
    stored = read_codes(path)
    bits = {name: q.bits for name, q in stored.quantized.items()}
    if bits != config.get("bits"):
        raise NmtqError(f"config.json's quantization_config and {path.name} disagree on the quantized tensors or "
                        f"their bits ({sorted(set(bits.items()) ^ set((config.get('bits') or {}).items()))[:3]}): "
                        f"{EXPORT_AGAIN}")
    return stored


def _load_weights(model, values: Mapping[str, torch.Tensor], path: Path) -> None:
    """Set every stored tensor of ``model`` (each tied group once, by any of its names) from ``values``."""
    groups: dict[int, list[str]] = {}
    params = model.state_dict(keep_vars=True)
    for name, tensor in params.items():
        groups.setdefault(id(tensor), []).append(name)
    skipped, state, unused = not_stored(model), {}, set(values)
    for names in groups.values():
        found = [n for n in names if n in values]
        if not found and not set(names) <= skipped:
            raise NmtqError(f"{path} has no tensor for {names[0]} of {type(model).__name__}: config.json and "
                             "model.safetensors come from different models; export the student again")
        for n in names if found else ():
            value = values[found[0]]
            if value.shape != params[n].shape or value.dtype != params[n].dtype:
                raise NmtqError(f"{path}: {found[0]} is {value.dtype} {tuple(value.shape)} but the model built "
                                 f"from config.json expects {params[n].dtype} {tuple(params[n].shape)}: export "
                                 "the student again")
            state[n] = value
        unused -= set(found)
    if unused:
        raise NmtqError(f"{path} holds tensors {sorted(unused)[:3]} that {type(model).__name__} does not have: "
                         "config.json and model.safetensors come from different models; export the student again")
    model.load_state_dict(state, strict=False)  # what is left out is recomputed on init (sinusoidal tables)
