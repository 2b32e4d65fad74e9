"""Translate a test set and score it: sacreBLEU BLEU and chrF, perplexity of the references, and speed.

Works for any ``AutoModelForSeq2SeqLM`` (Marian, FSMT, BART) with its tokenizer. Scores match the
``sacrebleu`` command line (default 13a tokenizer, mixed case) and carry its signatures, so they are comparable
across papers; multiple reference sets are passed as one list per set, as in ``sacrebleu.corpus_bleu``.

Example:
    >>> metrics = evaluate_directory("runs/teacher", "bible", split="test")  # doctest: +SKIP
    >>> print(format_metrics(metrics))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch

from . import files
from .ct2 import Ct2Translator
from .decoding import check_lengths, perplexity, translate
from .env import environment
from .errors import NmtqError
from .io import write_json_atomic, write_text_atomic
from .models import check_model_dir, load_model
from .tokenizer import encode_targets, load_tokenizer
from .translators import TransformersTranslator, Translator

__all__ = ["corpus_scores", "evaluate_directory", "evaluate_model", "evaluate_translator", "format_metrics",
           "keep_short_pairs", "open_translator", "perplexity", "translate"]  # translate, perplexity: nmtq.decoding


def _reference_streams(references: list[str] | list[list[str]]) -> list[list[str]]:
    """One list per reference set; a plain list of strings is a single set."""
    if not references or isinstance(references[0], str):
        return [list(references)]
    return [list(stream) for stream in references]


def corpus_scores(hypotheses: list[str], references: list[str] | list[list[str]]) -> dict[str, Any]:
    """Corpus BLEU (13a tokenizer) and chrF from sacreBLEU, with their signatures and BLEU's details.

    ``references`` is one list of strings, or a list of reference sets (each a list as long as
    ``hypotheses``) for multi-reference scoring.

    Example:
        >>> scores = corpus_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
        >>> round(scores["bleu"], 2), round(scores["chrf"], 2), scores["bleu_signature"].split("|version")[0]
        (53.73, 72.08, 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp')
    """
    from sacrebleu.metrics import BLEU, CHRF

    streams = _reference_streams(references)
    check_lengths(hypotheses, {f"reference set {k}": stream for k, stream in enumerate(streams)})
    if not hypotheses:
        raise NmtqError("no sentences to score: pass at least one hypothesis and its reference(s)")
    bleu_metric, chrf_metric = BLEU(), CHRF()
    bleu = bleu_metric.corpus_score(list(hypotheses), streams)
    chrf = chrf_metric.corpus_score(list(hypotheses), streams)
    return {
        "bleu": bleu.score,
        "chrf": chrf.score,
        # signatures are read after scoring: the number of references is only known then
        "bleu_signature": str(bleu_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
        "bleu_details": {
            "precisions": list(bleu.precisions), "brevity_penalty": bleu.bp, "length_ratio": bleu.ratio,
            "hypothesis_length": bleu.sys_len, "reference_length": bleu.ref_len,
        },
    }


def evaluate_model(model: Any, tokenizer: Any, sources: list[str], references: list[str] | list[list[str]],
                   num_beams: int = 4, max_new_tokens: int = 128, batch_size: int = 32,
                   output_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Translate ``sources`` and return BLEU, chrF, perplexity and speed in one JSON-serializable dict:
    :func:`evaluate_translator` of a :class:`nmtq.translators.TransformersTranslator`.

    Example:
        >>> metrics = evaluate_model(model, tokenizer, sources, references, output_dir="runs/eval")  # doctest: +SKIP
        >>> sorted(metrics)[:3]  # doctest: +SKIP
        ['bleu', 'bleu_details', 'bleu_signature']
    """
    return evaluate_translator(TransformersTranslator(model, tokenizer, progress), sources, references, num_beams,
                               max_new_tokens, batch_size, output_dir)


def evaluate_translator(translator: Translator, sources: list[str], references: list[str] | list[list[str]],
                        num_beams: int = 4, max_new_tokens: int = 128, batch_size: int = 32,
                        output_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Translate ``sources`` with any :class:`nmtq.translators.Translator` and score the hypotheses.

    Perplexity is that of the first reference set (:meth:`Translator.perplexity`). ``tokens_per_second`` counts
    the target pieces of the hypotheses (``</s>`` included, as the tokenizer encodes them) per second of
    translation wall time. The translator's :meth:`~nmtq.translators.Translator.metrics_fields` are added, and
    ``environment`` (:func:`nmtq.env.environment`: versions, CPU, threads, GPU) last. With ``output_dir``,
    ``hypotheses.txt`` (one line per source, in order) and ``metrics.json`` are written there.

    Example:
        >>> evaluate_translator(Ct2Translator("runs/student-ct2"), sources, references)  # doctest: +SKIP
    """
    streams = _reference_streams(references)
    check_lengths(sources, {f"reference set {k}": stream for k, stream in enumerate(streams)})
    if not sources:
        raise NmtqError("no sentences to evaluate: pass at least one source and its reference(s)")
    start = time.perf_counter()
    hypotheses = translator.translate(sources, num_beams, max_new_tokens, batch_size)
    seconds = time.perf_counter() - start
    generated_tokens = sum(len(ids) for ids in encode_targets(translator.tokenizer, hypotheses)["input_ids"])
    metrics = {
        **corpus_scores(hypotheses, streams),
        "perplexity": translator.perplexity(sources, streams[0], batch_size),
        "num_sentences": len(sources),
        "num_references": len(streams),
        "num_beams": num_beams,
        "generated_tokens": generated_tokens,
        "generation_seconds": seconds,
        "tokens_per_second": generated_tokens / max(seconds, 1e-9),
        **translator.metrics_fields(),
        "environment": environment(),  # what the speed and the scores were measured with
    }
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        # a hypothesis holding a line break would shift every later line of the file
        write_text_atomic(output_dir / files.HYPOTHESES, "".join(" ".join(h.splitlines()) + "\n" for h in hypotheses))
        write_json_atomic(output_dir / files.METRICS, metrics)
    return metrics


def keep_short_pairs(tokenizer: Any, sources: list[str], targets: list[str],
                      max_length: int) -> tuple[list[str], list[str]]:
    """Keep the pairs whose source and target each have at most ``max_length`` pieces (``</s>`` not counted)."""
    source_ids = tokenizer(sources, add_special_tokens=False)["input_ids"]
    target_ids = encode_targets(tokenizer, targets, add_special_tokens=False)["input_ids"]
    kept = [i for i in range(len(sources)) if len(source_ids[i]) <= max_length and len(target_ids[i]) <= max_length]
    return [sources[i] for i in kept], [targets[i] for i in kept]


def open_translator(model_dir: str | os.PathLike, engine: str = "transformers", source_lang: str = "de",
                    target_lang: str = "en", device: str | None = None, progress: bool = True,
                    compute_type: str = "int8", inter_threads: int = 1, source_lang_code: str | None = None,
                    target_lang_code: str | None = None, source_prefix: str | None = None, use_vmap: bool = False):
    """The one place an engine is chosen: ``(translator, conventions)`` for the model saved in ``model_dir``.

    ``engine="transformers"`` loads the model and tokenizer (on ``device``, default CUDA when available) into a
    :class:`nmtq.translators.TransformersTranslator`, with the family's conventions (language codes, the forced
    target code, T5's prefix) from the model, or from ``source_lang_code``, ``target_lang_code`` and
    ``source_prefix`` (:func:`nmtq.conventions.resolve_conventions`). ``engine="ctranslate2"`` opens a
    :class:`nmtq.translators.Ct2Translator` (``compute_type``, ``inter_threads``, ``use_vmap``: its lexical
    shortlist), whose folder keeps the codes it was converted with; only its source prefix can be chosen.

    Example:
        >>> translator, conventions = open_translator("runs/student-ct2", "ctranslate2")  # doctest: +SKIP
    """
    from .conventions import Conventions, apply_conventions, prefix_key, resolve_conventions

    model_dir = Path(model_dir)
    if engine == "ctranslate2":
        if source_lang_code or target_lang_code:
            raise NmtqError("a CTranslate2 folder keeps the language codes it was converted with (its tokenizer "
                             f"and {files.CT2_INFO}): leave out --source-lang-code and --target-lang-code, or convert "
                             "a model saved with other codes")
        translator = Ct2Translator(model_dir, compute_type=compute_type, inter_threads=inter_threads,
                                   use_vmap=use_vmap)  # checks it
        prefix = translator.prefixes.get(prefix_key(source_lang, target_lang), "")
        return translator, Conventions(prefix=source_prefix if source_prefix is not None else prefix)
    if engine != "transformers":
        raise NmtqError(f"engine={engine!r}: pass 'transformers' or 'ctranslate2'")
    if inter_threads != 1:
        raise NmtqError(f"inter_threads={inter_threads} is for engine='ctranslate2' (--engine ctranslate2): "
                         "transformers decodes one batch at a time")
    if use_vmap:
        raise NmtqError("use_vmap is for engine='ctranslate2' (--engine ctranslate2), whose folder holds the "
                         "shortlist: transformers scores the whole vocabulary")
    check_model_dir(model_dir)
    tokenizer = load_tokenizer(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_dir).to(device)
    conventions = resolve_conventions(tokenizer, model.config, model.generation_config, source_lang, target_lang,
                                      source_lang_code, target_lang_code, source_prefix)
    apply_conventions(conventions, tokenizer, model)
    return TransformersTranslator(model, tokenizer, progress), conventions


def _evaluation_pairs(tokenizer, data_spec: str, split: str, source_lang: str, target_lang: str,
                      max_words: int | None, max_length: int | None) -> tuple[list[str], list[str], dict[str, Any]]:
    """The sources and references of ``split`` that :func:`evaluate_directory` scores, and ``metrics["data"]``:
    how many pairs were read and kept, with the cleaning report."""
    from .data import load_corpus  # imported on use: the rest of this module works without the data module

    dataset, report = load_corpus(data_spec, split=split, source_lang=source_lang, target_lang=target_lang,
                                  max_words=max_words)
    sources, targets = list(dataset["source"]), list(dataset["target"])
    num_pairs = len(sources)
    if max_length is not None:
        sources, targets = keep_short_pairs(tokenizer, sources, targets, max_length)
    if not sources:
        raise NmtqError(f"no pairs of {data_spec!r} ({split}) left to evaluate out of {num_pairs}: "
                         f"raise max_length (now {max_length}) or check the data")
    data = {"spec": str(data_spec), "split": split, "num_pairs": num_pairs, "num_kept": len(sources),
            "max_length": max_length,
            "cleaning": dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report}
    return sources, targets, data


def evaluate_directory(model_dir: str | os.PathLike, data_spec: str, split: str = "test", source_lang: str = "de",
                       target_lang: str = "en", max_length: int | None = None, max_words: int | None = None,
                       num_beams: int = 4, max_new_tokens: int = 128, batch_size: int = 32,
                       output_dir: str | os.PathLike | None = None, device: str | None = None,
                       progress: bool = True, engine: str = "transformers",
                       compute_type: str = "int8", inter_threads: int = 1, source_lang_code: str | None = None,
                       target_lang_code: str | None = None, source_prefix: str | None = None,
                       use_vmap: bool = False) -> dict[str, Any]:
    """Load a saved model and tokenizer, load ``split`` of ``data_spec`` through ``nmtq.data``, and evaluate.

    ``engine="ctranslate2"`` decodes with CTranslate2 (``compute_type`` int8, float32, ...; ``inter_threads`` batches
    at once) from a folder written by ``nmtq export --ctranslate2``, or a model folder converted on the fly
    (:class:`nmtq.translators.Ct2Translator`); :func:`open_translator` chooses the engine.

    ``max_words`` is passed to ``load_corpus`` (``None``: no cleaning by word count). ``max_length`` then keeps
    only the pairs whose source and target each have at most that many tokenizer pieces; ``metrics["data"]`` says
    how many pairs were read and kept, with the cleaning report. ``device`` defaults to CUDA when available.
    The family's conventions (language codes, the forced target code, T5's prefix) come from the model and its
    tokenizer, or from ``source_lang_code``, ``target_lang_code`` and ``source_prefix``
    (:func:`nmtq.conventions.resolve_conventions`).

    Example:
        >>> evaluate_directory("runs/teacher", "bible", max_length=30, output_dir="runs/teacher/eval")  # doctest: +SKIP
    """
    from .data_spec import check_data_spec
    from .outputs import check_writable

    model_dir = Path(model_dir)
    check_data_spec(data_spec)  # before the model is loaded
    if output_dir is not None:
        check_writable(output_dir, "--output-dir")  # before decoding the whole set
    translator, conventions = open_translator(
        model_dir, engine, source_lang, target_lang, device=device, progress=progress, compute_type=compute_type,
        inter_threads=inter_threads, source_lang_code=source_lang_code, target_lang_code=target_lang_code,
        source_prefix=source_prefix, use_vmap=use_vmap)
    sources, targets, data = _evaluation_pairs(translator.tokenizer, data_spec, split, source_lang, target_lang,
                                               max_words, max_length)
    metrics = evaluate_translator(translator, conventions.prefixed(sources), targets, num_beams=num_beams,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, output_dir=output_dir)
    metrics["model_dir"] = str(model_dir)
    metrics["data"] = data
    if output_dir is not None:  # written again, atomically, now with the model and data fields
        write_json_atomic(Path(output_dir) / files.METRICS, metrics)
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A short human-readable block: BLEU, chrF, perplexity, sentence count and the sacreBLEU signatures.

    Example:
        >>> print(format_metrics({"bleu": 27.31, "chrf": 55.02, "perplexity": 6.5, "num_sentences": 123,
        ...                       "bleu_signature": "nrefs:1|tok:13a", "chrf_signature": "nrefs:1|nc:6"}))
        BLEU        27.3  (nrefs:1|tok:13a)
        chrF        55.0  (nrefs:1|nc:6)
        perplexity  6.50
        sentences   123
    """
    lines = [
        f"BLEU        {metrics['bleu']:.1f}  ({metrics['bleu_signature']})",
        f"chrF        {metrics['chrf']:.1f}  ({metrics['chrf_signature']})",
    ]
    if "perplexity" in metrics:
        lines.append(f"perplexity  {metrics['perplexity']:.2f}")
    lines.append(f"sentences   {metrics['num_sentences']}")
    if "tokens_per_second" in metrics:
        lines.append(f"speed       {metrics['tokens_per_second']:.0f} target tokens/s (beam {metrics['num_beams']})")
    return "\n".join(lines)
