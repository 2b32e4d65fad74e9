"""Fast CPU inference with CTranslate2: convert a saved Marian or BART model, translate and score with it.

``convert_to_ctranslate2`` turns a model folder (an ``nmtq train``/``nmtq distill`` output_dir, or an ``nmtq
export`` folder) into a self-contained CTranslate2 folder: ``model.bin`` (int8 weights by default: absmax codes
per output row), CTranslate2's ``config.json``, the Marian tokenizer files and ``nmtq_ct2.json`` (what decoding
needs to match ``transformers``). ``Ct2Translator``, a :class:`nmtq.translators.Translator`, translates and scores
with it, so :func:`nmtq.evaluation.evaluate_translator` gives the metrics of either engine.

int8 weights are nmtq's own codes: ``int8_bits``-bit absmax per output row, rounded by
:func:`nmtq.quant.functional.encode_tensor` and stored with CTranslate2's per-row scale, so CTranslate2 multiplies
exactly the codes a student trained through (``nmtq distill --bucket_size row --scaling absmax --bits B``: its
``B`` is the default), as wide as the CPU the model will run on multiplies exactly (``target_cpu``,
:mod:`nmtq.ct2_int8`): 8 bits where int8 products are summed in 32 bits, 7 on x86 CPUs without VNNI.

The conversion maps the model exactly, so at ``float32`` greedy outputs equal ``transformers``' and reference
log-probabilities match: CTranslate2's own Marian converter does not. It drops ``<pad>`` from the vocabulary and
starts the decoder from a zero vector, where ``transformers`` starts it from ``<pad>``'s embedding, which training
moves away from zero when the output layer is tied to the embeddings (as in nmtq's models). Here ``<pad>`` stays
in the vocabulary (wherever it is) and the decoder starts from the model's ``decoder_start_token_id``. At int8,
CTranslate2 rounds the weights (absmax per row) and, in its int8 matrix products, each input row the same way.

Example:
    >>> convert_to_ctranslate2("runs/student", "runs/student-ct2")  # doctest: +SKIP
    PosixPath('runs/student-ct2')
    >>> Ct2Translator("runs/student-ct2").translate(["Das Haus ist klein."])  # doctest: +SKIP
    ['The house is small.']
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import files
from .ct2_int8 import int8_codes, int8_target, int8_width, student_int8_bits, warn_if_saturated
from .decoding import check_lengths, max_source_length, truncation
from .errors import NmtqError
from .io import write_dir_atomic, write_json_atomic
from .models import check_model_dir
from .shortlist import Shortlist, write_vmap
from .tokenizer import encode_targets
from .translators import Translator

SUPPORTED_MODEL_TYPES = ("marian", "bart", "mbart", "m2m_100", "t5", "mt5")
_FORMAT = "nmtq.ctranslate2.v1"
INT8_QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16")
QUANTIZATIONS = (*INT8_QUANTIZATIONS, "int16", "float16", "bfloat16", "float32")


def _require_ctranslate2():
    """The ``ctranslate2`` module, or a one-line error that says how to install it."""
    try:
        import ctranslate2
    except ImportError as err:
        raise NmtqError("CTranslate2 is not installed: pip install 'nmtq[ct2]' (or pip install ctranslate2)") from err
    return ctranslate2


def _model_type(model_dir: Path) -> str:
    """The ``model_type`` of ``model_dir/config.json``; a clear error for what CTranslate2 cannot run."""
    from .lstm import is_lstm_model_type

    check_model_dir(model_dir)
    model_type = json.loads((model_dir / files.CONFIG).read_text(encoding="utf-8")).get("model_type")
    if is_lstm_model_type(model_type):
        raise NmtqError(f"{model_dir} holds nmtq's LSTM student, which CTranslate2 cannot run (it runs "
                         "Transformers): distill a Transformer student (--student_type transformer) to use it")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise NmtqError(f"{model_dir} holds a {model_type!r} model; nmtq converts {SUPPORTED_MODEL_TYPES} to "
                         "CTranslate2 (its Transformers converter has no FSMT mapping): train with --model_type "
                         "marian, or run this model with transformers")
    return model_type


def _load(model_dir: Path):
    """``(model, tokenizer)`` from a saved model folder or an ``nmtq export`` folder, vocabulary checked."""
    from .exported import export_config, load_exported
    from .models import load_model
    from .tokenizer import load_tokenizer

    if export_config(model_dir) is not None:
        model, tokenizer = load_exported(model_dir)
    else:
        model, tokenizer = load_model(model_dir).eval(), load_tokenizer(model_dir)
    rows = model.get_input_embeddings().num_embeddings
    ids = sorted(tokenizer.get_vocab().values())
    # T5 pads its rows to a multiple of 128 and M2M100 keeps unused ones, which CTranslate2's loaders name;
    # elsewhere every row needs its token
    padded = model.config.model_type in ("m2m_100", "t5", "mt5")
    if ids != list(range(len(ids))) or len(ids) > rows or (len(ids) < rows and not padded):
        raise NmtqError(f"{model_dir}: the tokenizer's {len(ids)} ids (from {ids[0]} to {ids[-1]}) do not number "
                         f"the model's {rows} embedding rows 0..{rows - 1}: save the model with the tokenizer it "
                         "was trained with")
    return model, tokenizer


def _model_spec(model, tokenizer):
    """CTranslate2's mapping of the model's family (its Transformers converter's loader), decoding from the model's
    own start token: Marian and BART post-norm (Marian without BART's embedding layer norm), mBART pre-norm with it,
    M2M100 and NLLB pre-norm with sinusoidal positions, T5 and mT5 with relative positions."""
    from ctranslate2.converters import transformers as loaders

    model_type = model.config.model_type
    base = {"marian": loaders.BartLoader, "bart": loaders.BartLoader, "mbart": loaders.MBartLoader,
            "m2m_100": loaders.M2M100Loader, "t5": loaders.T5Loader, "mt5": loaders.T5Loader}[model_type]

    class Loader(base):
        def set_config(self, config, model, tokenizer) -> None:
            if model_type in ("t5", "mt5"):  # the BART family's base sets only what is set below, bos as None
                super().set_config(config, model, tokenizer)
            config.eos_token, config.unk_token = tokenizer.eos_token, tokenizer.unk_token
            if tokenizer.bos_token is not None:
                config.bos_token = tokenizer.bos_token
            # Marian starts from <pad>: its embedding, not CTranslate2's zero vector (start_from_zero_embedding)
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

    if model_type in ("marian", "bart", "mbart"):
        # transformers 5 configs lack these two fields, which BartLoader reads (mBART is pre-norm, with the
        # embedding layer norm; BART post-norm with it; Marian post-norm without it)
        model.config.normalize_before = model_type == "mbart"
        model.config.normalize_embedding = model_type in ("bart", "mbart")
    return Loader()(model, tokenizer)


def _check_conversion(model_dir: Path, out_dir: Path, quantization: str, force: bool, int8_bits: int | None,
                      target_cpu: str) -> tuple[int | None, str | None]:
    """The arguments of :func:`convert_to_ctranslate2` checked before anything is loaded or written; returns the
    bits of the int8 codes and the kind of CPU they are for (:func:`nmtq.ct2_int8.int8_width`; None, None for
    float types)."""
    target = int8_target(target_cpu)
    if quantization not in QUANTIZATIONS:
        raise NmtqError(f"quantization={quantization!r}: pass one of {QUANTIZATIONS} (int8 for a CPU)")
    if int8_bits is not None and quantization not in INT8_QUANTIZATIONS:
        raise NmtqError(f"int8_bits={int8_bits} with quantization={quantization!r}: the bits are those of int8 "
                         f"codes, so pass one of {INT8_QUANTIZATIONS}, or leave int8_bits out")
    if target_cpu != "here" and quantization not in INT8_QUANTIZATIONS:
        raise NmtqError(f"target_cpu={target_cpu!r} with quantization={quantization!r}: the target sets the bits of "
                         f"int8 codes, so it is for int8 codes: pass one of {INT8_QUANTIZATIONS}, or leave it out")
    if int8_bits is not None and (isinstance(int8_bits, bool) or int8_bits not in range(2, 9)):
        raise NmtqError(f"int8_bits={int8_bits!r}: pass 2 to 8 (7 keeps CTranslate2's int8 exact on x86 CPUs "
                         "without VNNI)")
    if out_dir.exists() and not force:
        raise NmtqError(f"{out_dir} exists: pass force=True (--force) to replace it, or choose another folder")
    if out_dir.resolve() == model_dir.resolve() or out_dir.resolve() in model_dir.resolve().parents:
        raise NmtqError(f"{out_dir} would replace the model folder {model_dir}: choose another output folder")
    if quantization not in INT8_QUANTIZATIONS:
        return None, None
    return int8_width(int8_bits, student_int8_bits(model_dir), target), target


def _decoding_info(model, tokenizer) -> dict[str, Any]:
    """What a translator needs beside ``model.bin``: the longest source, forced tokens and T5's task prefixes."""
    forced_eos = getattr(model.generation_config, "forced_eos_token_id", None) is not None
    forced_bos = getattr(model.generation_config, "forced_bos_token_id", None)  # BART's <s>: a target prefix here
    return {"max_source_length": max_source_length(model, tokenizer), "forced_eos": forced_eos,
            "forced_bos_token": None if forced_bos is None else tokenizer.convert_ids_to_tokens(forced_bos),
            # T5's task prefixes by pair (translation_de_to_en), which evaluation puts before each source
            "prefixes": {key: params["prefix"] for key, params in
                         (getattr(model.config, "task_specific_params", None) or {}).items()
                         if key.startswith("translation_") and (params or {}).get("prefix")}}


def _register_files(spec, tokenizer, shortlist: Shortlist | None, directory: Path) -> dict[str, int] | None:
    """Register with ``spec`` the files a translator needs beside ``model.bin``, written into ``directory``: every
    file the tokenizer saves (a Marian tokenizer's SentencePiece models, BART's vocab.json and merges.txt, or a
    tokenizer.json) and the shortlist's vocabulary map; returns what ``nmtq_ct2.json`` says of the shortlist."""
    tokenizer.save_pretrained(directory / "tokenizer")
    for path in sorted((directory / "tokenizer").iterdir()):
        spec.register_file(str(path))
    if shortlist is None:
        return None
    write_vmap(shortlist, directory / files.CT2_VMAP)
    spec.register_vocabulary_mapping(str(directory / files.CT2_VMAP))
    return {"common": len(shortlist.common), "source_tokens": len(shortlist.by_source),
            "per_source": max(map(len, shortlist.by_source.values()), default=0)}


def _converter(ct2, spec, quantization: str, int8_bits: int | None):
    """A CTranslate2 converter of ``spec`` that writes nmtq's int8 codes (:func:`nmtq.ct2_int8.int8_codes`), not
    CTranslate2's re-rounding (``convert`` then gets no quantization), where ``int8_bits`` is set."""

    class SpecConverter(ct2.converters.Converter):
        def _load(self):
            if int8_bits is not None:
                spec.validate()  # torch tensors into CTranslate2 variables
                int8_codes(spec, int8_bits, {"int8_float16": "float16", "int8_bfloat16": "bfloat16",
                                             "int8_float32": "float32"}.get(quantization))
            return spec

    return SpecConverter()


def convert_to_ctranslate2(model_dir: str | os.PathLike, out_dir: str | os.PathLike, quantization: str = "int8",
                           force: bool = False, int8_bits: int | None = None, target_cpu: str = "here",
                           shortlist: Shortlist | None = None) -> Path:
    """Convert the Marian or BART model in ``model_dir`` into a self-contained CTranslate2 folder ``out_dir``.

    ``model_dir`` is an ``nmtq train``/``nmtq distill`` output_dir or an ``nmtq export`` folder. ``quantization``
    is the weight type of ``model.bin`` (``int8``: absmax codes per output row, CTranslate2's scheme), whose
    ``int8_bits`` (2 to 8) are by default chosen for ``target_cpu``, the kind of CPU the model will run on
    (``"here"``, ``"vnni"`` or ``"avx2"``; :func:`nmtq.ct2_int8.int8_width`); ``nmtq_ct2.json`` records both.
    ``shortlist`` (:func:`nmtq.shortlist.build_shortlist`) is saved as CTranslate2's vocabulary map, ``vmap.txt``,
    for ``Ct2Translator(..., use_vmap=True)``. The folder is built beside ``out_dir`` and renamed into place, so a
    failed conversion leaves nothing behind; an existing ``out_dir`` is replaced only with ``force=True``.

    Example:
        >>> convert_to_ctranslate2("runs/student", "runs/student-ct2", quantization="int8")  # doctest: +SKIP
        PosixPath('runs/student-ct2')
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model_type = _model_type(model_dir)
    int8_bits, target = _check_conversion(model_dir, out_dir, quantization, force, int8_bits, target_cpu)
    ct2 = _require_ctranslate2()
    model, tokenizer = _load(model_dir)
    spec = _model_spec(model, tokenizer)
    info = {"format": _FORMAT, "model_type": model_type, "quantization": quantization, "int8_bits": int8_bits,
            "int8_target_cpu": target, "source": str(model_dir), **_decoding_info(model, tokenizer)}

    def write(tmp: Path) -> None:
        _converter(ct2, spec, quantization, int8_bits).convert(str(tmp), quantization=None if int8_bits else
                                                              quantization, force=True)
        write_json_atomic(tmp / files.CT2_INFO, info)

    with tempfile.TemporaryDirectory(prefix="nmtq-ct2-files-") as saved:
        info["shortlist"] = _register_files(spec, tokenizer, shortlist, Path(saved))
        write_dir_atomic(out_dir, write)
    return out_dir


class Ct2Translator(Translator):
    """A CTranslate2 model with its Marian tokenizer; translates and scores like :mod:`nmtq.evaluation` does.

    ``model_dir`` is a folder written by :func:`nmtq.ct2.convert_to_ctranslate2`, or a model folder that it accepts,
    converted on the fly (into a temporary folder, deleted once loaded). ``compute_type`` is CTranslate2's
    (``int8``, ``int8_float32`` or ``float32`` on a CPU). ``inter_threads`` batches are decoded at once (CTranslate2
    splits the input into batches of ``batch_size``), each on ``intra_threads`` threads, by default
    ``torch.get_num_threads() // inter_threads``: on a 2-core CPU, ``inter_threads=2`` decodes two batches of the
    small student at once, one core each, which keeps the cores busier than one batch on both.

    Example:
        >>> Ct2Translator("runs/student-ct2", compute_type="int8").translate(["Das Haus ist klein."])  # doctest: +SKIP
        ['The house is small.']
    """

    def __init__(self, model_dir: str | os.PathLike, compute_type: str = "int8", device: str = "cpu",
                 intra_threads: int | None = None, inter_threads: int = 1, use_vmap: bool = False) -> None:
        if inter_threads < 1 or (intra_threads is not None and intra_threads < 1):
            raise NmtqError(f"inter_threads={inter_threads}, intra_threads={intra_threads}: pass positive numbers")
        ct2, model_dir = _require_ctranslate2(), Path(model_dir)
        if use_vmap and inter_threads > 1:
            raise NmtqError(f"use_vmap with inter_threads={inter_threads}: a shortlist decodes one batch at a time "
                             "(CTranslate2 4.8 keeps a stale shortlist between batches, which nmtq resets on one "
                             "decoder); pass inter_threads=1 (--inter-threads 1)")
        if use_vmap and not (model_dir / files.CT2_VMAP).is_file():
            raise NmtqError(f"use_vmap: {model_dir} has no {files.CT2_VMAP}; convert it with a shortlist (nmtq export "
                             "--ctranslate2 --shortlist DATA), or leave use_vmap out")
        self.compute_type, self.inter_threads, self.use_vmap = compute_type, inter_threads, use_vmap
        threads = intra_threads or max(1, torch.get_num_threads() // inter_threads)
        if (model_dir / files.CT2_WEIGHTS).is_file():
            self._open(ct2, model_dir, device, threads)
            return
        with tempfile.TemporaryDirectory(prefix="nmtq-ct2-") as tmp:  # CTranslate2 reads the files once, here
            quantization = compute_type if compute_type in QUANTIZATIONS else "float32"
            self._open(ct2, convert_to_ctranslate2(model_dir, Path(tmp) / "model", quantization), device, threads)

    def _open(self, ct2, model_dir: Path, device: str, threads: int) -> None:
        from .tokenizer import load_tokenizer

        info_file = model_dir / files.CT2_INFO
        info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
        self.tokenizer = load_tokenizer(model_dir)
        self.max_source_length: int | None = info.get("max_source_length", self.tokenizer.model_max_length)
        self.forced_eos: bool = info.get("forced_eos", False)
        self.forced_bos_token: str | None = info.get("forced_bos_token")
        self.prefixes: dict[str, str] = info.get("prefixes", {})
        if self.compute_type.startswith("int8"):
            warn_if_saturated(model_dir, info.get("int8_bits"))
        torch_threads = torch.get_num_threads()  # CTranslate2 sets the calling thread's OpenMP count, torch's too
        try:
            self.translator = ct2.Translator(str(model_dir), device=device, compute_type=self.compute_type,
                                             intra_threads=threads, inter_threads=self.inter_threads)
        except (RuntimeError, ValueError) as err:
            raise NmtqError(f"CTranslate2 cannot load {model_dir} with compute_type={self.compute_type!r} on "
                             f"{device} ({err}): convert it again, or pick a compute type this machine supports "
                             f"({sorted(ct2.get_supported_compute_types(device))})") from err
        finally:
            torch.set_num_threads(torch_threads)

    def _source_tokens(self, sources: list[str]) -> list[list[str]]:
        ids = self.tokenizer(list(sources), **truncation(self.max_source_length))["input_ids"]
        return [self.tokenizer.convert_ids_to_tokens(row) for row in ids]

    def translate(self, sources: list[str], num_beams: int = 4, max_new_tokens: int = 128,
                  batch_size: int = 32) -> list[str]:
        """One detokenized translation per source, in order, decoded as :func:`nmtq.evaluation.translate` does.

        Same truncation of long sources, same special tokens skipped, no minimum length; ``max_new_tokens``
        counts ``</s>``, which ``transformers`` forces at the last step when the model sets ``forced_eos_token_id``
        (so at most ``max_new_tokens - 1`` pieces of text then, as here). Greedy outputs (``num_beams=1``) equal
        ``transformers``' at float32; beam search follows CTranslate2's rules for when to stop and how to
        normalize by length, not ``generate``'s defaults, so a few beam outputs differ. Batches are sorted by
        length inside CTranslate2.
        """
        if max_new_tokens < 1 or num_beams < 1 or batch_size < 1:
            raise NmtqError(f"max_new_tokens={max_new_tokens}, num_beams={num_beams}, batch_size={batch_size}: "
                             "pass positive numbers")
        max_length = max_new_tokens - int(self.forced_eos)
        if not sources or max_length == 0:  # transformers' only token is then the forced </s>
            return [""] * len(sources)
        # the token generate forces first (forced_bos_token_id) is CTranslate2's target prefix, one of the steps
        prefix = None if self.forced_bos_token is None else [[self.forced_bos_token]] * len(sources)
        tokens = self._source_tokens(sources)
        step = batch_size if self.use_vmap else len(tokens)
        results = []
        for i in range(0, len(tokens), step):
            if self.use_vmap:
                self._forget_vocabulary_map()
            results += self.translator.translate_batch(
                tokens[i:i + step], beam_size=num_beams, max_batch_size=batch_size, max_input_length=0,
                max_decoding_length=max_length, min_decoding_length=0, target_prefix=prefix and prefix[i:i + step],
                use_vmap=self.use_vmap)
        ids = [self.tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def _forget_vocabulary_map(self) -> None:
        """Decode one step over the whole vocabulary, so the next batch maps its own shortlist from scratch.

        CTranslate2 (4.8.5) keeps the output positions of the previous batch's shortlist for the tokens the next
        batch's shortlist also has (``Decoder::update_output_layer`` adds to ``_to_output_word_id`` without
        clearing it): the decoder start token then points at another token, so every batch after the first
        decodes from a wrong first token, or indexes out of range when its shortlist is shorter. A decode without
        the map clears both maps. So each batch is its own call (CTranslate2 would split them itself without a
        reset) and the translator has one decoder (``inter_threads=1``), which the reset reaches. The reset's
        source is ``<unk>``: a source of ``</s>`` alone leaves the maps as they were.
        """
        self.translator.translate_batch([[self.tokenizer.unk_token]], beam_size=1, max_decoding_length=1,
                                        use_vmap=False)

    def perplexity(self, sources: list[str], references: list[str], batch_size: int = 32) -> float:
        """exp of the mean negative log-likelihood per reference token (``</s>`` included), by teacher forcing.

        Exact: CTranslate2's ``score_batch`` gives the log-probability of every target token and of ``</s>``,
        over the whole vocabulary, so at float32 this equals :func:`nmtq.evaluation.perplexity`.
        """
        check_lengths(sources, {"references": references})
        if not sources:
            raise NmtqError("perplexity of no sentences: pass at least one source/reference pair")
        labels = encode_targets(self.tokenizer, list(references), **truncation(self.max_source_length))["input_ids"]
        targets = [self.tokenizer.convert_ids_to_tokens(row[:-1]) for row in labels]  # CTranslate2 adds </s>
        results = self.translator.score_batch(self._source_tokens(sources), targets, max_batch_size=batch_size,
                                              max_input_length=0)
        log_probs = [p for result in results for p in result.log_probs]
        return math.exp(-math.fsum(log_probs) / len(log_probs))

    def metrics_fields(self) -> dict[str, Any]:
        return {"engine": "ctranslate2", "compute_type": self.compute_type, "use_vmap": self.use_vmap}
