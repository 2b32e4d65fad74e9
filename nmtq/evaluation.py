"""Translate a test set and score it: sacreBLEU BLEU and chrF, perplexity of the references, and speed.

Works for any ``AutoModelForSeq2SeqLM`` (Marian, FSMT, BART) with its tokenizer. Scores match the
``sacrebleu`` command line (default 13a tokenizer, mixed case) and carry its signatures, so they are comparable
across papers; multiple reference sets are passed as one list per set, as in ``sacrebleu.corpus_bleu``.

Example:
    >>> metrics = evaluate_directory("runs/teacher", "bible", split="test")  # doctest: +SKIP
    >>> print(format_metrics(metrics))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from . import files
from .env import environment
from .errors import NmtqError
from .io import write_json_atomic, write_text_atomic
from .tokenizer import encode_targets


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the caller's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of ``batch_size``, longest first, so each batch pads little.

    Example:
        >>> list(_length_sorted_batches([1, 5, 3, 4], batch_size=2))
        [[1, 3], [2, 0]]
    """
    if batch_size < 1:
        raise NmtqError(f"batch_size={batch_size}: pass a positive number of sentences per batch")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep their input order
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _max_source_length(model: Any, tokenizer: Any) -> int | None:
    """The longest input both the tokenizer and the model's position embeddings accept; None for no limit (T5's
    relative positions, and a tokenizer whose ``model_max_length`` is transformers' "unset" of 1e30)."""
    limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
    limits = [limit for limit in limits if _is_limit(limit)]
    return min(limits) if limits else None


def _is_limit(length: int | None) -> bool:
    return bool(length) and length < 2**31  # transformers' "unset" model_max_length is int(1e30)


def _truncation(limit: int | None) -> dict[str, Any]:
    """The tokenizer's truncation arguments for a length limit: none where there is no limit."""
    return {"truncation": True, "max_length": limit} if _is_limit(limit) else {}


def _pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad lists of ids into a (rows, longest) tensor."""
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(row) for row in rows], batch_first=True, padding_value=value)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sent", disable=not enabled)


def translate(model: Any, tokenizer: Any, sources: list[str], num_beams: int = 4, max_new_tokens: int = 128,
              batch_size: int = 32, progress: bool = True) -> list[str]:
    """Translate ``sources`` with ``model.generate`` in batches; returns one detokenized string per source, in order.

    Sources are batched by length (longest first) to save padding, then put back in their input order. Sources
    longer than the model accepts are truncated. The model runs on its own device and is left in the train/eval
    mode it came in.

    Example:
        >>> translate(model, tokenizer, ["Das Haus ist klein."], num_beams=4)  # doctest: +SKIP
        ['The house is small.']
    """
    if not sources:
        return []
    input_ids = tokenizer(list(sources), **_truncation(_max_source_length(model, tokenizer)))["input_ids"]
    hypotheses: list[str] = [""] * len(sources)
    with _eval_mode(model), _progress(len(sources), "translate", progress) as bar:
        for batch in _length_sorted_batches([len(ids) for ids in input_ids], batch_size):
            padded = tokenizer.pad({"input_ids": [input_ids[i] for i in batch]}, return_tensors="pt")
            output = model.generate(**padded.to(model.device), num_beams=num_beams, max_new_tokens=max_new_tokens)
            for i, text in zip(batch, tokenizer.batch_decode(output, skip_special_tokens=True)):
                hypotheses[i] = text
            bar.update(len(batch))
    return hypotheses


def _summed_nll(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over all non-padding target tokens of -log p(token | source, previous tokens)."""
    from .models import decoder_inputs_from_labels

    decoder_input_ids = decoder_inputs_from_labels(model, labels)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids).logits
    nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                            reduction="sum")
    return nll.item()


def perplexity(model: Any, tokenizer: Any, sources: list[str], references: list[str], batch_size: int = 32,
               progress: bool = True) -> float:
    """exp of the mean negative log-likelihood per reference token, by teacher forcing.

    Every target token counts once, ``</s>`` included and padding excluded: the NLL is summed over the whole
    corpus and divided by its number of target tokens, so long sentences weigh more than short ones.

    Example:
        >>> perplexity(model, tokenizer, ["Das Haus ist klein."], ["The house is small."])  # doctest: +SKIP
        3.21
    """
    _check_lengths(sources, {"references": references})
    if not sources:
        raise NmtqError("perplexity of no sentences: pass at least one source/reference pair")
    truncation = _truncation(_max_source_length(model, tokenizer))
    encoded = tokenizer(list(sources), **truncation)
    encoded["labels"] = encode_targets(tokenizer, list(references), **truncation)["input_ids"]
    total_nll, total_tokens = 0.0, 0
    with _eval_mode(model), _progress(len(sources), "perplexity", progress) as bar:
        for batch in _length_sorted_batches([len(ids) for ids in encoded["labels"]], batch_size):
            padded = tokenizer.pad({"input_ids": [encoded["input_ids"][i] for i in batch]}, return_tensors="pt")
            labels = _pad([encoded["labels"][i] for i in batch], value=-100)
            padded, labels = padded.to(model.device), labels.to(model.device)
            total_nll += _summed_nll(model, padded["input_ids"], padded["attention_mask"], labels)
            total_tokens += int((labels != -100).sum())
            bar.update(len(batch))
    return math.exp(total_nll / total_tokens)


def _check_lengths(hypotheses: Sequence[str], named_streams: dict[str, Sequence[Any]]) -> None:
    for name, stream in named_streams.items():
        if len(stream) != len(hypotheses):
            raise NmtqError(f"{name} has {len(stream)} lines but there are {len(hypotheses)} sentences to score: "
                             f"pass one line per sentence, in the same order")


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
    _check_lengths(hypotheses, {f"reference set {k}": stream for k, stream in enumerate(streams)})
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
    """Translate ``sources`` and return BLEU, chrF, perplexity and speed in one JSON-serializable dict.

    Perplexity is that of the first reference set. ``tokens_per_second`` counts the target pieces of the
    hypotheses (``</s>`` included, as the tokenizer encodes them) per second of ``generate`` wall time;
    ``environment`` says what the numbers were measured with (:func:`nmtq.env.environment`). With ``output_dir``,
    ``hypotheses.txt`` (one line per source, in order) and ``metrics.json`` are written there.

    Example:
        >>> metrics = evaluate_model(model, tokenizer, sources, references, output_dir="runs/eval")  # doctest: +SKIP
        >>> sorted(metrics)[:3]  # doctest: +SKIP
        ['bleu', 'bleu_details', 'bleu_signature']
    """
    return evaluate_with(
        lambda texts: translate(model, tokenizer, texts, num_beams, max_new_tokens, batch_size, progress),
        lambda texts, refs: perplexity(model, tokenizer, texts, refs, batch_size, progress),
        tokenizer, sources, references, num_beams, output_dir)


def evaluate_with(translate_fn: Callable[[list[str]], list[str]],
                  perplexity_fn: Callable[[list[str], list[str]], float], tokenizer: Any, sources: list[str],
                  references: list[str] | list[list[str]], num_beams: int,
                  output_dir: str | os.PathLike | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metrics of :func:`evaluate_model` for any decoder: ``translate_fn(sources)`` gives the hypotheses and
    ``perplexity_fn(sources, references)`` the perplexity; ``extra`` entries are added to the metrics, and
    ``environment`` (:func:`nmtq.env.environment`: versions, CPU, threads, GPU) last."""
    streams = _reference_streams(references)
    _check_lengths(sources, {f"reference set {k}": stream for k, stream in enumerate(streams)})
    if not sources:
        raise NmtqError("no sentences to evaluate: pass at least one source and its reference(s)")
    start = time.perf_counter()
    hypotheses = translate_fn(sources)
    seconds = time.perf_counter() - start
    generated_tokens = sum(len(ids) for ids in encode_targets(tokenizer, hypotheses)["input_ids"])
    metrics = {
        **corpus_scores(hypotheses, streams),
        "perplexity": perplexity_fn(sources, streams[0]),
        "num_sentences": len(sources),
        "num_references": len(streams),
        "num_beams": num_beams,
        "generated_tokens": generated_tokens,
        "generation_seconds": seconds,
        "tokens_per_second": generated_tokens / max(seconds, 1e-9),
        **(extra or {}),
        "environment": environment(),  # what the speed and the scores were measured with
    }
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        # a hypothesis holding a line break would shift every later line of the file
        write_text_atomic(output_dir / files.HYPOTHESES, "".join(" ".join(h.splitlines()) + "\n" for h in hypotheses))
        write_json_atomic(output_dir / files.METRICS, metrics)
    return metrics


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise NmtqError(f"model directory {str(model_dir)!r} does not exist: pass a directory written by "
                         f"nmtq or save_pretrained ({files.CONFIG}, {files.WEIGHTS} and the tokenizer files)")
    if not (model_dir / files.CONFIG).is_file():
        raise NmtqError(f"{str(model_dir)!r} has no {files.CONFIG}: pass a directory written by save_pretrained")
    weights = (files.WEIGHTS, files.WEIGHTS_INDEX)
    if not any((model_dir / name).is_file() for name in weights):
        found = sorted(p.name for p in model_dir.iterdir())
        raise NmtqError(
            f"{str(model_dir)!r} holds no safetensors weights ({' or '.join(weights)}; found {found}): "
            f"save the model with save_pretrained, or convert a {files.PICKLED_WEIGHTS} you trust by loading it with "
            f"use_safetensors=False and saving it again")


def keep_short_pairs(tokenizer: Any, sources: list[str], targets: list[str],
                      max_length: int) -> tuple[list[str], list[str]]:
    """Keep the pairs whose source and target each have at most ``max_length`` pieces (``</s>`` not counted)."""
    source_ids = tokenizer(sources, add_special_tokens=False)["input_ids"]
    target_ids = encode_targets(tokenizer, targets, add_special_tokens=False)["input_ids"]
    kept = [i for i in range(len(sources)) if len(source_ids[i]) <= max_length and len(target_ids[i]) <= max_length]
    return [sources[i] for i in kept], [targets[i] for i in kept]


def evaluate_directory(model_dir: str | os.PathLike, data_spec: str, split: str = "test", source_lang: str = "de",
                       target_lang: str = "en", max_length: int | None = None, max_words: int | None = None,
                       num_beams: int = 4, max_new_tokens: int = 128, batch_size: int = 32,
                       output_dir: str | os.PathLike | None = None, device: str | None = None,
                       progress: bool = True, engine: str = "transformers",
                       compute_type: str = "int8", inter_threads: int = 1, source_lang_code: str | None = None,
                       target_lang_code: str | None = None, source_prefix: str | None = None) -> dict[str, Any]:
    """Load a saved model and tokenizer, load ``split`` of ``data_spec`` through ``nmtq.data``, and evaluate.

    ``engine="ctranslate2"`` decodes with CTranslate2 (``compute_type`` int8, float32, ...; ``inter_threads`` batches
    at once) from a folder written by ``nmtq export --ctranslate2``, or a model folder converted on the fly
    (:class:`nmtq.ct2.Ct2Translator`).

    ``max_words`` is passed to ``load_corpus`` (``None``: no cleaning by word count). ``max_length`` then keeps
    only the pairs whose source and target each have at most that many tokenizer pieces; ``metrics["data"]`` says
    how many pairs were read and kept, with the cleaning report. ``device`` defaults to CUDA when available.
    The family's conventions (language codes, the forced target code, T5's prefix) come from the model and its
    tokenizer, or from ``source_lang_code``, ``target_lang_code`` and ``source_prefix``
    (:func:`nmtq.conventions.resolve_conventions`).

    Example:
        >>> evaluate_directory("runs/teacher", "bible", max_length=30, output_dir="runs/teacher/eval")  # doctest: +SKIP
    """
    from .conventions import Conventions, apply_conventions, prefix_key, resolve_conventions
    from .data import check_data_spec
    from .models import load_model
    from .outputs import check_writable
    from .tokenizer import load_tokenizer

    model_dir = Path(model_dir)
    check_data_spec(data_spec)  # before the model is loaded
    if output_dir is not None:
        check_writable(output_dir, "--output-dir")  # before decoding the whole set
    conventions = Conventions()
    if engine == "ctranslate2":
        if source_lang_code or target_lang_code:
            raise NmtqError("a CTranslate2 folder keeps the language codes it was converted with (its tokenizer "
                             f"and {files.CT2_INFO}): leave out --source-lang-code and --target-lang-code, or convert "
                             "a model saved with other codes")
        from .ct2 import Ct2Translator

        translator = Ct2Translator(model_dir, compute_type=compute_type, inter_threads=inter_threads)  # checks it
        tokenizer = translator.tokenizer
        prefix = translator.prefixes.get(prefix_key(source_lang, target_lang), "")
        conventions = Conventions(prefix=source_prefix if source_prefix is not None else prefix)
    elif engine == "transformers":
        if inter_threads != 1:
            raise NmtqError(f"inter_threads={inter_threads} is for engine='ctranslate2' (--engine ctranslate2): "
                             "transformers decodes one batch at a time")
        _check_model_dir(model_dir)
        tokenizer = load_tokenizer(model_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(model_dir).to(device)
        conventions = resolve_conventions(tokenizer, model.config, model.generation_config, source_lang, target_lang,
                                          source_lang_code, target_lang_code, source_prefix)
        apply_conventions(conventions, tokenizer, model)
    else:
        raise NmtqError(f"engine={engine!r}: pass 'transformers' or 'ctranslate2'")
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
    sources = conventions.prefixed(sources)
    if engine == "ctranslate2":
        from .ct2 import evaluate_ctranslate2

        metrics = evaluate_ctranslate2(translator, sources, targets, num_beams=num_beams,
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, output_dir=output_dir)
    else:
        metrics = evaluate_model(model, tokenizer, sources, targets, num_beams=num_beams,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, output_dir=output_dir,
                                 progress=progress)
    metrics["model_dir"] = str(model_dir)
    metrics["data"] = {"spec": str(data_spec), "split": split, "num_pairs": num_pairs, "num_kept": len(sources),
                       "max_length": max_length,
                       "cleaning": dataclasses.asdict(report) if dataclasses.is_dataclass(report) else report}
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
