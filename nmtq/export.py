"""Hub-ready exports of a quantized student, and loading them back.

``export_model`` (``nmtq export MODEL_DIR OUT_DIR [--huffman] [--dequantize]``) turns the output_dir of ``nmtq
distill`` into a folder for the Hub: one ``model.safetensors`` in nmtq's format (:mod:`nmtq.codes`: the exact codes
that were scored, bit-packed or Huffman-coded, beside every other tensor), config.json whose
``quantization_config`` (``quant_method: nmtq``) says how they are stored and what the size accounting counts,
the tokenizer and a model card. ``import nmtq`` lets ``from_pretrained`` load it (:mod:`nmtq.hf`), codes packed in
memory; ``load_exported`` reads it back with every weight decoded. Either way the outputs equal the student's
exactly, and nothing is unpickled. ``export_size`` compares the file with the size accounting
(:mod:`nmtq.quant.size`), the ``bytes`` of the student's metrics.

Example:
    >>> report = export_model("runs/bible-de-en-qd4", "exports/bible-de-en-qd4")  # doctest: +SKIP
    >>> model, tokenizer = load_exported("exports/bible-de-en-qd4")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import files
from .card import CardFacts, model_card
from .codes import FORMAT, StoredCodes, header_bytes, read_codes, save_codes
from .errors import NmtqError
from .io import sweep_temporary_files, temporary_prefix
from .methods import not_stored
from .quant import size_report
from .quant.size import stored_tensors


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


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote: the folder, its size against the accounting, and notes for the user."""

    out_dir: Path
    size: ExportSize
    notes: tuple[str, ...] = ()


_AGAIN = "export the student again with `nmtq export MODEL_DIR OUT_DIR`"


def _read_json(path: Path, fix: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise NmtqError(f"{path} is missing: {fix}") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NmtqError(f"{path} is not valid JSON ({err}): {fix}") from err
    if not isinstance(data, dict):
        raise NmtqError(f"{path} does not hold a JSON object: {fix}")
    return data


def _check_vocab(model, tokenizer, where: Path) -> None:
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


IMAGE_MODEL_TYPE = "nmtq_cifar_resnet"  # CifarResNetConfig.model_type (nmtq.vision.models, imported on use)


def _is_image_model(model_type: str | None) -> bool:
    return model_type == IMAGE_MODEL_TYPE


def _read_student(model_dir: Path) -> tuple:
    """The student of ``model_dir``, checked: (model, tokenizer, codes, quantization.json, metrics or None)."""
    rerun = ("run `nmtq distill` with a quantized method (--method qd, dq or ptq) and export its output_dir; a "
             "full-precision student (fp, kd) needs no export: its directory is already a transformers checkpoint")
    if not model_dir.is_dir():
        raise NmtqError(f"{model_dir} is not a directory: pass the output_dir of `nmtq distill`")
    for name in (files.QUANTIZATION, files.CODES):
        if not (model_dir / name).is_file():
            raise NmtqError(f"{model_dir} has no {name}, so it holds no quantized codes: {rerun}")
    quantization = _read_json(model_dir / files.QUANTIZATION, rerun)
    image = _is_image_model(_read_json(model_dir / files.CONFIG, rerun).get("model_type"))
    codes = read_codes(model_dir / files.CODES).quantized
    if image:  # nmtq distill-images: no tokenizer
        from .vision.models import load_classifier

        model, tokenizer = load_classifier(model_dir, "student"), None
    else:
        from .models import load_model
        from .tokenizer import load_tokenizer

        model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
        _check_vocab(model, tokenizer, model_dir)
    weights = model.state_dict(keep_vars=True)
    for name, q in codes.items():
        if q.bits > 8:
            raise NmtqError(f"{name} has {q.bits}-bit codes; an export packs 1 to 8 bits per code: distill with "
                             "--bits 8 or fewer")
        if name not in weights or not torch.equal(q.dequantize(), weights[name].detach()):
            raise NmtqError(f"{model_dir}: the codes of {name} in {files.CODES} do not decode to the weights in "
                             f"model.safetensors (files of two different runs?): {rerun}")
    metrics_path = files.metrics_file(model_dir)
    metrics = _read_json(metrics_path, "write it again with `nmtq distill`") if metrics_path.exists() else None
    return model, tokenizer, codes, quantization, metrics


def _languages(model, tokenizer) -> list[str]:
    langs = [getattr(tokenizer, "source_lang", None), getattr(tokenizer, "target_lang", None)]
    langs = langs if all(langs) else list(getattr(model.config, "langs", None) or [])
    return [x for x in dict.fromkeys(langs) if isinstance(x, str) and x.isalpha() and 2 <= len(x) <= 3]


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, huffman: bool = False,
                 dequantize: bool = False, teacher: str | None = None, dataset: str | None = None) -> ExportReport:
    """Write a Hub-ready folder for the quantized student in ``model_dir`` (an ``nmtq distill`` output_dir).

    ``out_dir`` gets config.json (its ``quantization_config`` says how the codes are stored, see
    :func:`export_config`), generation_config.json, the tokenizer files, README.md (model card) and one
    ``model.safetensors`` (:mod:`nmtq.codes`): the codes bit-packed (Huffman-coded with ``huffman``), per-bucket
    ranges, points and packed masks under ``<param>.codes``/``.ranges``/``.points``/``.mask``, and
    every other tensor of ``model_dir/model.safetensors`` under its own name at its own dtype (read through the
    model, so a tied tensor is stored once, by the name the size accounting uses, and transformers'
    ``_keys_to_ignore_on_save`` are left out, as :meth:`Quantizer.size` counts them). ``dequantize`` also writes
    ``out_dir/dequantized/``, a plain transformers checkpoint of the decoded weights. Everything is checked
    before anything is written; the folder is built beside ``out_dir`` and renamed into place (a previous
    export there is replaced). Load it with :func:`load_exported`.

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
        metrics_ = metrics or {}
        facts = CardFacts(
            name=out_dir.name, languages=_languages(model, tokenizer) if tokenizer else [],
            method=metrics_.get("method"),
            teacher=teacher or _recorded_teacher(metrics_), dataset=dataset or _dataset_name(metrics_),
            bits=config["bits"],
            bucket_size=config["bucket_size"], scaling=config["scaling"], size=size,
            file_bytes=(tmp / files.WEIGHTS).stat().st_size, storage=storage, metrics=metrics,
            sparsity=float(quantization.get("sparsity", 0.0)), notes=notes,
            task="translation" if tokenizer is not None else "image-classification")
        (tmp / files.MODEL_CARD).write_text(model_card(facts), encoding="utf-8")

    _write_dir(out_dir, write)
    return ExportReport(out_dir, export_size(out_dir), tuple(notes))


def _dequantized_note(model) -> str:
    if _is_image_model(model.config.model_type):
        return (f"`{files.DEQUANTIZED_DIR}/` is a plain transformers checkpoint of the decoded weights at full width: "
                "`AutoModelForImageClassification.from_pretrained` loads it after `import nmtq.vision.models`, "
                "which registers the CIFAR ResNets.")
    note = (f"`{files.DEQUANTIZED_DIR}/` is a plain transformers checkpoint of the decoded weights at full width "
            "(larger than the packed codes): `AutoModelForSeq2SeqLM.from_pretrained` loads it")
    if model.config.model_type == "nmtq-lstm":
        return (f"{note} only after `import nmtq.lstm`, which registers the nmtq LSTM (model_type nmtq-lstm); "
                "transformers alone cannot.")
    return f"{note} without nmtq."


def _recorded_teacher(metrics: Mapping) -> str | None:
    """The teacher for the card: as ``nmtq distill`` described it, or (older runs) its Hub id, never a path."""
    if metrics.get("teacher_card") or not metrics.get("teacher"):
        return metrics.get("teacher_card")
    from transformers import AutoConfig

    from .card import teacher_card

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
        return _read_json(folder / files.EXPORT_CONFIG, f"export the student again; {_AGAIN}")
    return config


def _check_out_dir(out_dir: Path) -> None:
    earlier_export = export_config(out_dir) is not None
    if out_dir.exists() and not earlier_export and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise NmtqError(f"{out_dir} exists and is not an nmtq export: remove it or choose another OUT_DIR (an "
                         "earlier export there would be replaced)")


def _write_dir(out_dir: Path, write) -> None:
    """Run ``write(tmp)`` on a new sibling directory of ``out_dir``, then rename it to ``out_dir``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporary_files(out_dir.parent)  # what killed exports left
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=temporary_prefix(out_dir.name), suffix=".tmp"))
    old = out_dir.parent / f"{tmp.name}.old"
    try:
        write(tmp)
        umask = _umask()  # mkdtemp (and safetensors) create private files; the result is an ordinary folder
        for path in [tmp, *tmp.rglob("*")]:
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if out_dir.exists():
            os.replace(out_dir, old)  # a directory cannot be renamed over a non-empty one
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists():
                os.replace(old, out_dir)  # put the earlier export back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


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
        raise NmtqError(f"{out_dir} lacks {files.WEIGHTS} or the size in config.json's quantization_config: {_AGAIN}")
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
    image = _is_image_model(config.model_type)
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
    _check_vocab(model, tokenizer, out_dir)
    return model.eval(), tokenizer


def _read_export(out_dir: Path) -> StoredCodes:
    """The quantized tensors and the plain ones of ``out_dir/model.safetensors``, cross-checked with config.json's
    ``quantization_config``."""
    config = export_config(out_dir)
    if config is None:
        raise NmtqError(f"{out_dir} is not an nmtq export (its config.json has no quantization_config with "
                        f"quant_method nmtq): {_AGAIN}")
    path = out_dir / files.WEIGHTS
    stored = read_codes(path)
    bits = {name: q.bits for name, q in stored.quantized.items()}
    if bits != config.get("bits"):
        raise NmtqError(f"config.json's quantization_config and {path.name} disagree on the quantized tensors or "
                        f"their bits ({sorted(set(bits.items()) ^ set((config.get('bits') or {}).items()))[:3]}): "
                        f"{_AGAIN}")
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
