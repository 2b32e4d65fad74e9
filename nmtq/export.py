"""Hub-ready exports of a quantized student (reading them back: :mod:`nmtq.exported`).

``export_model`` (``nmtq export MODEL_DIR OUT_DIR [--huffman] [--dequantize]``) turns the output_dir of ``nmtq
distill`` into a folder for the Hub: one ``model.safetensors`` in nmtq's format (:mod:`nmtq.codes`: the exact codes
that were scored, bit-packed or Huffman-coded, beside every other tensor), config.json whose
``quantization_config`` (``quant_method: nmtq``) says how they are stored and what the size accounting counts,
the tokenizer and a model card. ``import nmtq`` lets ``from_pretrained`` load it (:mod:`nmtq.hf`), codes packed in
memory; :func:`nmtq.exported.load_exported` reads it back with every weight decoded. Either way the outputs
equal the student's exactly, and nothing is unpickled. :func:`nmtq.exported.export_size` compares the file with the
size accounting (:mod:`nmtq.quant.size`), the ``bytes`` of the student's metrics.

Example:
    >>> from nmtq.exported import load_exported
    >>> report = export_model("runs/bible-de-en-qd4", "exports/bible-de-en-qd4")  # doctest: +SKIP
    >>> model, tokenizer = load_exported("exports/bible-de-en-qd4")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files
from .card import CardFacts, model_card
from .codes import FORMAT, read_codes, save_codes
from .errors import NmtqError
from .exported import ExportSize, check_vocab, export_config, export_size, is_image_model
from .io import read_json_object, write_dir_atomic
from .models import not_stored
from .quant import size_report
from .quant.size import stored_tensors

__all__ = ["ExportReport", "export_model"]


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote: the folder, its size against the accounting, and notes for the user."""

    out_dir: Path
    size: ExportSize
    notes: tuple[str, ...] = ()


def _read_student(model_dir: Path) -> tuple:
    """The student of ``model_dir``, checked: (model, tokenizer, codes, quantization.json, metrics or None)."""
    rerun = ("run `nmtq distill` with a quantized method (--method qd, dq or ptq) and export its output_dir; a "
             "full-precision student (fp, kd) needs no export: its directory is already a transformers checkpoint")
    if not model_dir.is_dir():
        raise NmtqError(f"{model_dir} is not a directory: pass the output_dir of `nmtq distill`")
    for name in (files.QUANTIZATION, files.CODES):
        if not (model_dir / name).is_file():
            raise NmtqError(f"{model_dir} has no {name}, so it holds no quantized codes: {rerun}")
    quantization = read_json_object(model_dir / files.QUANTIZATION, rerun)
    image = is_image_model(read_json_object(model_dir / files.CONFIG, rerun).get("model_type"))
    codes = read_codes(model_dir / files.CODES).quantized
    if image:  # nmtq distill-images: no tokenizer
        from .vision.models import load_classifier

        model, tokenizer = load_classifier(model_dir, "student"), None
    else:
        from .models import load_model
        from .tokenizer import load_tokenizer

        model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
        check_vocab(model, tokenizer, model_dir)
    weights = model.state_dict(keep_vars=True)
    for name, q in codes.items():
        if q.bits > 8:
            raise NmtqError(f"{name} has {q.bits}-bit codes; an export packs 1 to 8 bits per code: distill with "
                             "--bits 8 or fewer")
        if name not in weights or not torch.equal(q.dequantize(), weights[name].detach()):
            raise NmtqError(f"{model_dir}: the codes of {name} in {files.CODES} do not decode to the weights in "
                             f"model.safetensors (files of two different runs?): {rerun}")
    metrics_path = files.metrics_file(model_dir)
    metrics = read_json_object(metrics_path, "write it again with `nmtq distill`") if metrics_path.exists() else None
    return model, tokenizer, codes, quantization, metrics


def _languages(model, tokenizer) -> list[str]:
    langs = [getattr(tokenizer, "source_lang", None), getattr(tokenizer, "target_lang", None)]
    langs = langs if all(langs) else list(getattr(model.config, "langs", None) or [])
    return [x for x in dict.fromkeys(langs) if isinstance(x, str) and x.isalpha() and 2 <= len(x) <= 3]


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, huffman: bool = False,
                 dequantize: bool = False, teacher: str | None = None, dataset: str | None = None) -> ExportReport:
    """Write a Hub-ready folder for the quantized student in ``model_dir`` (an ``nmtq distill`` output_dir).

    ``out_dir`` gets config.json (its ``quantization_config`` says how the codes are stored, see
    :func:`nmtq.exported.export_config`), generation_config.json, the tokenizer files, README.md (model card) and one
    ``model.safetensors`` (:mod:`nmtq.codes`): the codes bit-packed (Huffman-coded with ``huffman``), per-bucket
    ranges, points and packed masks under ``<param>.codes``/``.ranges``/``.points``/``.mask``, and
    every other tensor of ``model_dir/model.safetensors`` under its own name at its own dtype (read through the
    model, so a tied tensor is stored once, by the name the size accounting uses, and transformers'
    ``_keys_to_ignore_on_save`` are left out, as :meth:`Quantizer.size` counts them). ``dequantize`` also writes
    ``out_dir/dequantized/``, a plain transformers checkpoint of the decoded weights. Everything is checked
    before anything is written; the folder is built beside ``out_dir`` and renamed into place (a previous
    export there is replaced). Load it with :func:`nmtq.exported.load_exported`.

    ``teacher`` and ``dataset`` name them in the model card (default: ``metrics.json``'s, if recorded).
    Only quantized students are exported (a full-precision one raises ``ValueError``: it is already a
    transformers checkpoint).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_out_dir(out_dir)
    model, tokenizer, codes, quantization, metrics = _read_student(model_dir)
    weights = model.state_dict(keep_vars=True)
    rest = stored_tensors(model, skip=[weights[n] for n in codes], not_stored=not_stored(model))
    size = size_report(codes, rest)
    storage = "huffman" if huffman else "packed"
    auto_class = "AutoModelForImageClassification" if tokenizer is None else "AutoModelForSeq2SeqLM"
    config = _export_config(quantization, codes, size, storage, auto_class)
    notes = [_dequantized_note(model)] if dequantize else []

    def write(tmp: Path) -> None:
        exported = copy.deepcopy(model.config)  # the packed folder's: transformers reads quant_method "nmtq"
        exported.quantization_config = config
        exported.save_pretrained(tmp)
        if tokenizer is not None:  # a translation model
            model.generation_config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        save_codes(codes, tmp / files.WEIGHTS, plain=rest, storage=storage)
        if dequantize:
            model.save_pretrained(tmp / files.DEQUANTIZED_DIR)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / files.DEQUANTIZED_DIR)
        facts = _card_facts(model, tokenizer, quantization, metrics, teacher, dataset, name=out_dir.name,
                            bits=config["bits"], bucket_size=config["bucket_size"], scaling=config["scaling"],
                            size=size, file_bytes=(tmp / files.WEIGHTS).stat().st_size, storage=storage, notes=notes)
        (tmp / files.MODEL_CARD).write_text(model_card(facts), encoding="utf-8")

    write_dir_atomic(out_dir, write)
    return ExportReport(out_dir, export_size(out_dir), tuple(notes))


def _card_facts(model, tokenizer, quantization: Mapping, metrics: Mapping | None, teacher: str | None,
                dataset: str | None, **facts) -> CardFacts:
    """The model card's facts: languages and task from the model, the method, teacher and data set from the run's
    metrics unless named; ``facts`` are the export's own (name, bits, sizes, notes)."""
    recorded = metrics or {}
    return CardFacts(languages=_languages(model, tokenizer) if tokenizer else [], method=recorded.get("method"),
                     teacher=teacher or _recorded_teacher(recorded), dataset=dataset or _dataset_name(recorded),
                     metrics=metrics, sparsity=float(quantization.get("sparsity", 0.0)),
                     task="translation" if tokenizer is not None else "image-classification", **facts)


def _dequantized_note(model) -> str:
    from .lstm import is_lstm_model_type

    if is_image_model(model.config.model_type):
        return (f"`{files.DEQUANTIZED_DIR}/` is a plain transformers checkpoint of the decoded weights at full width: "
                "`AutoModelForImageClassification.from_pretrained` loads it after `import nmtq.vision.models`, "
                "which registers the CIFAR ResNets.")
    note = (f"`{files.DEQUANTIZED_DIR}/` is a plain transformers checkpoint of the decoded weights at full width "
            "(larger than the packed codes): `AutoModelForSeq2SeqLM.from_pretrained` loads it")
    if is_lstm_model_type(model.config.model_type):
        return (f"{note} only after `import nmtq.lstm`, which registers the nmtq LSTM (model_type "
                f"{model.config.model_type}); transformers alone cannot.")
    return f"{note} without nmtq."


def _recorded_teacher(metrics: Mapping) -> str | None:
    """The teacher for the card: as ``nmtq distill`` described it, or (older runs) its Hub id, never a path."""
    if metrics.get("teacher_card") or not metrics.get("teacher"):
        return metrics.get("teacher_card")
    from transformers import AutoConfig

    from .models import teacher_card

    name = str(metrics["teacher"])
    try:
        config = AutoConfig.from_pretrained(name) if Path(name).expanduser().is_dir() else None
    except (OSError, ValueError):
        config = None
    return teacher_card(name, config, metrics.get("teacher_fp32_bytes"))


def _dataset_name(metrics: Mapping) -> str | None:
    data = metrics.get("data")
    return data.get("spec") if isinstance(data, Mapping) else data if isinstance(data, str) else None


def _export_config(quantization: Mapping, codes: Mapping, size, storage: str, auto_class: str) -> dict:
    """config.json's ``quantization_config`` (:class:`nmtq.hf.NmtqConfig`): how the codes are stored and what the
    size accounting says."""
    config = quantization.get("config") or {}
    return {"quant_method": "nmtq", "format": FORMAT, "storage": storage,
            "load_with": f"import nmtq; {auto_class}.from_pretrained(DIR)",
            "bits": {name: q.bits for name, q in codes.items()},
            "bucket_size": config.get("bucket_size"), "scaling": config.get("scaling"),
            "learn_points": bool(quantization.get("learn_points")), "sparsity": quantization.get("sparsity", 0.0),
            "quantizer": config,
            "size": {"packed_bytes": size.total_bytes, "huffman_bytes": size.total_huffman_bytes,
                     "fp32_bytes": size.fp32_bytes}}


def _check_out_dir(out_dir: Path) -> None:
    earlier_export = export_config(out_dir) is not None
    if out_dir.exists() and not earlier_export and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise NmtqError(f"{out_dir} exists and is not an nmtq export: remove it or choose another OUT_DIR (an "
                         "earlier export there would be replaced)")


