"""Quantized weights on disk: the exact integer codes beside a student, and Hub-ready exports of it.

``save_codes`` writes the :class:`~nmtq.quant.QuantizedTensor` of every quantized weight (codes, per-bucket
ranges, learned points, pruning masks) into one safetensors file, with what is needed to decode them (bits,
bucket size, scaling, shape, dtype) in its JSON header; ``load_codes`` reads it back without unpickling
anything. ``nmtq distill`` writes ``quantized.safetensors`` next to the student, so the exact codes that were
scored are the ones that get exported.

``export_model`` (``nmtq export MODEL_DIR OUT_DIR [--huffman] [--dequantize]``) turns such a student into a
folder for the Hub: codes bit-packed or Huffman-coded in one ``model.safetensors`` with every other tensor,
``quantization_config.json``, config, tokenizer and a model card; ``load_exported`` reads it back into a model
whose outputs equal the student's exactly, without unpickling anything. ``export_size`` compares the file with
the size accounting (:mod:`nmtq.quant.size`), the ``bytes`` of the student's metrics.

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

from .card import CardFacts, model_card
from .errors import NmtqError
from .io import atomic_path, sweep_temporary_files, temporary_prefix
from .methods import not_stored
from .quant import QuantizedTensor, huffman_decode, huffman_encode, pack_codes, size_report, unpack_codes
from .quant.functional import check_points, max_code, num_buckets
from .quant.size import stored_tensors

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
        raise NmtqError(f"{path} does not exist: quantized codes are written by `nmtq distill` as {CODES_FILE}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise NmtqError(f"{path} is not an nmtq codes file (format {metadata.get('format')!r})")
            header = json.loads(metadata["tensors"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as err:
        raise NmtqError(f"{path} is truncated or corrupted ({err}): write it again") from err
    state = {}
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise NmtqError(f"{path}: {name} has dtype {info['dtype']!r}; expected one of {sorted(_DTYPES)}")
        mask = tensors.get(f"{name}.mask")
        state[name] = QuantizedTensor(
            codes=tensors[f"{name}.codes"], ranges=tensors[f"{name}.ranges"], bits=info["bits"],
            bucket_size=info["bucket_size"], scaling=info["scaling"], shape=torch.Size(info["shape"]),
            dtype=_DTYPES[info["dtype"]], points=tensors.get(f"{name}.points"),
            mask=None if mask is None else mask.bool())
    return state


# ---------------------------------------------------------------------------------------------- export
EXPORT_FORMAT = "nmtq.export.v1"
EXPORT_CONFIG = "quantization_config.json"
WEIGHTS_FILE = "model.safetensors"
DEQUANTIZED_DIR = "dequantized"
QUANTIZED_PARTS = ("codes", "huffman_lengths", "huffman_stream", "ranges", "points", "mask")
NOTICE_KEY = "nmtq.packed_weights.import_nmtq_and_load_with_nmtq.export.load_exported"
"""An empty tensor whose name plain transformers lists among the unexpected keys when it refuses the folder."""


def _loud_without_nmtq(tensors: dict[str, torch.Tensor], header: Mapping[str, dict]) -> None:
    """Make plain ``from_pretrained`` raise instead of loading random weights: it skips an unknown
    ``quant_method`` with a warning and would initialise the packed weights at random, silently translating
    garbage; an empty tensor under the largest quantized weight's own name is a size mismatch, which it refuses
    (a ``RuntimeError``), and its load report names :data:`NOTICE_KEY`."""
    if header:
        largest = max(header, key=lambda name: torch.Size(header[name]["shape"]).numel())
        tensors[largest] = torch.empty(0, dtype=torch.uint8)
        tensors[NOTICE_KEY] = torch.empty(0, dtype=torch.uint8)


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
    for name in ("quantization.json", CODES_FILE):
        if not (model_dir / name).is_file():
            raise NmtqError(f"{model_dir} has no {name}, so it holds no quantized codes: {rerun}")
    quantization = _read_json(model_dir / "quantization.json", rerun)
    image = _is_image_model(_read_json(model_dir / "config.json", rerun).get("model_type"))
    codes = load_codes(model_dir / CODES_FILE)
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
            raise NmtqError(f"{model_dir}: the codes of {name} in {CODES_FILE} do not decode to the weights in "
                             f"model.safetensors (files of two different runs?): {rerun}")
    metrics_path = model_dir / "test" / "metrics.json"
    metrics = _read_json(metrics_path, "write it again with `nmtq distill`") if metrics_path.exists() else None
    return model, tokenizer, codes, quantization, metrics


def _kept_codes(q: QuantizedTensor) -> torch.Tensor:
    """The codes that are stored: all of them, or those of the kept weights of a pruned tensor."""
    return q.codes if q.mask is None else q.codes[q.mask.reshape(-1)]


def _export_tensors(codes: Mapping[str, QuantizedTensor], rest: Mapping[str, torch.Tensor], huffman: bool
                    ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Flat safetensors entries (``<param>.codes``, ``.ranges``, ...; the rest under their own names) and the
    decoding header of each quantized tensor."""
    tensors: dict[str, torch.Tensor] = {}
    header: dict[str, dict] = {}
    for name, q in codes.items():
        kept = _kept_codes(q).cpu()
        if huffman:
            tensors[f"{name}.huffman_lengths"], tensors[f"{name}.huffman_stream"] = huffman_encode(kept, q.bits)
        else:
            tensors[f"{name}.codes"] = pack_codes(kept, q.bits)
        tensors[f"{name}.ranges"] = q.ranges.detach().cpu().contiguous()
        if q.points is not None:
            tensors[f"{name}.points"] = q.points.detach().cpu().contiguous()
        if q.mask is not None:
            tensors[f"{name}.mask"] = pack_codes(q.mask.cpu(), 1)
        header[name] = {"bits": q.bits, "bucket_size": q.bucket_size, "scaling": q.scaling, "shape": list(q.shape),
                        "dtype": str(q.dtype).removeprefix("torch."), "stored_codes": kept.numel()}
    for name, t in rest.items():
        tensors[name] = t.detach().cpu().contiguous()
    _loud_without_nmtq(tensors, header)
    return tensors, header


def _languages(model, tokenizer) -> list[str]:
    langs = [getattr(tokenizer, "source_lang", None), getattr(tokenizer, "target_lang", None)]
    langs = langs if all(langs) else list(getattr(model.config, "langs", None) or [])
    return [x for x in dict.fromkeys(langs) if isinstance(x, str) and x.isalpha() and 2 <= len(x) <= 3]


def export_model(model_dir: str | os.PathLike, out_dir: str | os.PathLike, huffman: bool = False,
                 dequantize: bool = False, teacher: str | None = None, dataset: str | None = None) -> ExportReport:
    """Write a Hub-ready folder for the quantized student in ``model_dir`` (an ``nmtq distill`` output_dir).

    ``out_dir`` gets config.json, generation_config.json, the tokenizer files, ``quantization_config.json``,
    README.md (model card) and one ``model.safetensors``: the codes bit-packed (Huffman-coded with ``huffman``),
    per-bucket ranges, points and packed masks under ``<param>.codes``/``.ranges``/``.points``/``.mask``, and
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
    tensors, header = _export_tensors(codes, rest, huffman)
    storage = "huffman" if huffman else "packed"
    config = _export_config(quantization, header, size, storage)
    notes = [_dequantized_note(model)] if dequantize else []

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        exported = copy.deepcopy(model.config)  # the packed folder's: transformers reads quant_method "nmtq"
        exported.quantization_config = {"quant_method": "nmtq", "format": EXPORT_FORMAT, "storage": storage,
                                        "load_with": "import nmtq; nmtq.export.load_exported(DIR)"}
        exported.save_pretrained(tmp)
        if tokenizer is not None:  # a translation model
            model.generation_config.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / EXPORT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": EXPORT_FORMAT, "quantized": json.dumps(header)})
        if dequantize:
            model.save_pretrained(tmp / DEQUANTIZED_DIR)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / DEQUANTIZED_DIR)
        metrics_ = metrics or {}
        facts = CardFacts(
            name=out_dir.name, languages=_languages(model, tokenizer) if tokenizer else [],
            method=metrics_.get("method"),
            teacher=teacher or _recorded_teacher(metrics_), dataset=dataset or _dataset_name(metrics_),
            bits=config["bits"],
            bucket_size=config["bucket_size"], scaling=config["scaling"], size=size,
            file_bytes=(tmp / WEIGHTS_FILE).stat().st_size, storage=storage, metrics=metrics,
            sparsity=float(quantization.get("sparsity", 0.0)), notes=notes,
            task="translation" if tokenizer is not None else "image-classification")
        (tmp / "README.md").write_text(model_card(facts), encoding="utf-8")

    _write_dir(out_dir, write)
    return ExportReport(out_dir, export_size(out_dir), tuple(notes))


def _dequantized_note(model) -> str:
    if _is_image_model(model.config.model_type):
        return (f"`{DEQUANTIZED_DIR}/` is a plain transformers checkpoint of the decoded weights at full width: "
                "`AutoModelForImageClassification.from_pretrained` loads it after `import nmtq.vision.models`, "
                "which registers the CIFAR ResNets.")
    note = (f"`{DEQUANTIZED_DIR}/` is a plain transformers checkpoint of the decoded weights at full width (larger "
            "than the packed codes): `AutoModelForSeq2SeqLM.from_pretrained` loads it")
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


def _export_config(quantization: Mapping, header: Mapping[str, dict], size, storage: str) -> dict:
    """``quantization_config.json``: how the codes are stored and what the size accounting says."""
    config = quantization.get("config") or {}
    return {"format": EXPORT_FORMAT, "quant_method": "nmtq", "storage": storage, "huffman": storage == "huffman",
            "bits": {name: info["bits"] for name, info in header.items()},
            "bucket_size": config.get("bucket_size"), "scaling": config.get("scaling"),
            "learn_points": bool(quantization.get("learn_points")), "sparsity": quantization.get("sparsity", 0.0),
            "quantizer": config,
            "size": {"packed_bytes": size.total_bytes, "huffman_bytes": size.total_huffman_bytes,
                     "fp32_bytes": size.fp32_bytes}}


def _check_out_dir(out_dir: Path) -> None:
    earlier_export = (out_dir / EXPORT_CONFIG).is_file()
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
    recorded in ``quantization_config.json`` at export time.
    """
    out_dir = Path(out_dir)
    config = _read_json(out_dir / EXPORT_CONFIG, "export again with `nmtq export MODEL_DIR OUT_DIR`")
    path, storage = out_dir / WEIGHTS_FILE, config.get("storage", "packed")
    accounted = (config.get("size") or {}).get("huffman_bytes" if storage == "huffman" else "packed_bytes")
    if not isinstance(accounted, int) or not path.is_file():
        raise NmtqError(f"{out_dir} lacks {WEIGHTS_FILE} or the size in {EXPORT_CONFIG}: export it again")
    with path.open("rb") as f:
        header = 8 + int.from_bytes(f.read(8), "little")
    return ExportSize(path.stat().st_size, header, accounted, storage)


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
    quantized, plain = _read_export(out_dir)
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
    _load_weights(model, values, out_dir / WEIGHTS_FILE)
    if image:
        return model.eval(), None
    if (out_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(out_dir))
    freeze_fixed_tables(model)
    enable_generation_cache(model)
    tokenizer = load_tokenizer(out_dir)
    _check_vocab(model, tokenizer, out_dir)
    return model.eval(), tokenizer


_AGAIN = "export the student again with `nmtq export MODEL_DIR OUT_DIR`"


def _read_export(out_dir: Path) -> tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor]]:
    """The decoded quantized tensors and the plain ones of ``out_dir/model.safetensors``, cross-checked with
    ``quantization_config.json``."""
    config = _read_json(out_dir / EXPORT_CONFIG, f"{out_dir} is not an nmtq export; {_AGAIN}")
    if config.get("format") != EXPORT_FORMAT:
        raise NmtqError(f"{out_dir / EXPORT_CONFIG} is not in the format {EXPORT_FORMAT} (found "
                        f"{config.get('format')!r}): {_AGAIN}")
    path = out_dir / WEIGHTS_FILE
    quantized, plain = read_packed(path)
    bits = {name: q.bits for name, q in quantized.items()}
    if bits != config.get("bits"):
        raise NmtqError(f"{EXPORT_CONFIG} and {path.name} disagree on the quantized tensors or their bits "
                         f"({sorted(set(bits.items()) ^ set((config.get('bits') or {}).items()))[:3]}): {_AGAIN}")
    return quantized, plain


def read_packed(path: str | os.PathLike) -> tuple[dict[str, QuantizedTensor], dict[str, torch.Tensor]]:
    """The decoded quantized tensors and the plain ones of an export's ``model.safetensors`` (the file alone: what
    ``from_pretrained`` downloads), every size and code checked; nothing is unpickled."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != EXPORT_FORMAT:
                raise NmtqError(f"{path} is not in the format {EXPORT_FORMAT} (found {metadata.get('format')!r}): "
                                f"{_AGAIN}")
            header = json.loads(metadata["quantized"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as err:
        raise NmtqError(f"{path} is missing, truncated or corrupted ({err}): {_AGAIN}") from err
    quantized = {name: _decode(name, info, tensors, path) for name, info in header.items()}
    parts = {f"{name}.{part}" for name in header for part in QUANTIZED_PARTS}
    placeholders = {NOTICE_KEY, *header}  # see _loud_without_nmtq
    return quantized, {k: v for k, v in tensors.items() if k not in parts and k not in placeholders}


def _decode(name: str, info: Mapping, tensors: Mapping[str, torch.Tensor], path: Path) -> QuantizedTensor:
    """One quantized tensor from its stored parts, with every size and code checked."""
    try:
        bits, shape, kept = info["bits"], torch.Size(info["shape"]), info["stored_codes"]
        dtype, bucket_size, scaling = _DTYPES[info["dtype"]], info["bucket_size"], info["scaling"]
        numel = shape.numel()
        mask = None
        if f"{name}.mask" in tensors:
            mask = unpack_codes(tensors[f"{name}.mask"], 1, numel).bool().reshape(shape)
            if int(mask.sum()) != kept:
                raise NmtqError(f"the mask keeps {int(mask.sum())} weights but {kept} codes are stored")
        elif kept != numel:
            raise NmtqError(f"{kept} codes are stored for {numel} weights and there is no mask")
        if f"{name}.codes" in tensors:
            stored = unpack_codes(tensors[f"{name}.codes"], bits, kept)
        else:
            stored = huffman_decode(tensors[f"{name}.huffman_lengths"], tensors[f"{name}.huffman_stream"], kept)
        points, ranges = tensors.get(f"{name}.points"), tensors[f"{name}.ranges"]
        _check_codes(stored, bits, scaling, points)
        expected = (num_buckets(numel, shape, bucket_size), 2 if scaling == "linear" else 1)
        if tuple(ranges.shape) != expected or not ranges.is_floating_point():
            raise NmtqError(f"ranges have shape {tuple(ranges.shape)}, {ranges.dtype}; expected float {expected}")
        codes = stored if mask is None else stored.new_zeros(numel).masked_scatter_(mask.reshape(-1), stored)
        return QuantizedTensor(codes, ranges, bits, bucket_size, scaling, shape, dtype, points, mask)
    except (KeyError, TypeError, ValueError) as err:
        raise NmtqError(f"{path}: the quantized tensor {name} cannot be decoded ({err}): the file is corrupted "
                         "or was edited; export the student again with `nmtq export MODEL_DIR OUT_DIR`") from err


def _check_codes(codes: torch.Tensor, bits: int, scaling: str, points: torch.Tensor | None) -> None:
    """Codes must index a point, or a level of ``bits``-bit linear or absmax quantization."""
    top = points.numel() - 1 if points is not None else 2 * max_code(bits, scaling) if scaling == "absmax" \
        else max_code(bits, scaling)
    if points is not None:
        check_points(points)
    if codes.numel() and int(codes.max()) > top:
        raise NmtqError(f"code {int(codes.max())} is out of range: {bits}-bit codes here lie in [0, {top}]")


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
