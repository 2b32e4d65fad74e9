"""Decode with a transformers seq2seq model: beam-search translation and teacher-forced perplexity, in batches.

The inference primitives that evaluation (:mod:`nmtq.evaluation`, :mod:`nmtq.translators`) and the teacher cache
(:mod:`nmtq.teacher_cache`) share: sources are batched by length (longest first) to save padding and put back in
their input order; sources longer than the model accepts are truncated.

Example:
    >>> list(length_sorted_batches([1, 5, 3, 4], batch_size=2))
    [[1, 3], [2, 0]]
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .errors import NmtqError
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


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices in batches of ``batch_size``, longest first, so each batch pads little.

    Example:
        >>> list(length_sorted_batches([1, 5, 3, 4], batch_size=2))
        [[1, 3], [2, 0]]
    """
    if batch_size < 1:
        raise NmtqError(f"batch_size={batch_size}: pass a positive number of sentences per batch")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep their input order
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def max_source_length(model: Any, tokenizer: Any) -> int | None:
    """The longest input both the tokenizer and the model's position embeddings accept; None for no limit (T5's
    relative positions, and a tokenizer whose ``model_max_length`` is transformers' "unset" of 1e30)."""
    limits = [tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None)]
    limits = [limit for limit in limits if _is_limit(limit)]
    return min(limits) if limits else None


def _is_limit(length: int | None) -> bool:
    return bool(length) and length < 2**31  # transformers' "unset" model_max_length is int(1e30)


def truncation(limit: int | None) -> dict[str, Any]:
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
    input_ids = tokenizer(list(sources), **truncation(max_source_length(model, tokenizer)))["input_ids"]
    hypotheses: list[str] = [""] * len(sources)
    with _eval_mode(model), _progress(len(sources), "translate", progress) as bar:
        for batch in length_sorted_batches([len(ids) for ids in input_ids], batch_size):
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
    check_lengths(sources, {"references": references})
    if not sources:
        raise NmtqError("perplexity of no sentences: pass at least one source/reference pair")
    limit = truncation(max_source_length(model, tokenizer))
    encoded = tokenizer(list(sources), **limit)
    encoded["labels"] = encode_targets(tokenizer, list(references), **limit)["input_ids"]
    total_nll, total_tokens = 0.0, 0
    with _eval_mode(model), _progress(len(sources), "perplexity", progress) as bar:
        for batch in length_sorted_batches([len(ids) for ids in encoded["labels"]], batch_size):
            padded = tokenizer.pad({"input_ids": [encoded["input_ids"][i] for i in batch]}, return_tensors="pt")
            labels = _pad([encoded["labels"][i] for i in batch], value=-100)
            padded, labels = padded.to(model.device), labels.to(model.device)
            total_nll += _summed_nll(model, padded["input_ids"], padded["attention_mask"], labels)
            total_tokens += int((labels != -100).sum())
            bar.update(len(batch))
    return math.exp(total_nll / total_tokens)


def check_lengths(hypotheses: Sequence[str], named_streams: dict[str, Sequence[Any]]) -> None:
    for name, stream in named_streams.items():
        if len(stream) != len(hypotheses):
            raise NmtqError(f"{name} has {len(stream)} lines but there are {len(hypotheses)} sentences to score: "
                             f"pass one line per sentence, in the same order")
