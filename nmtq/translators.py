"""The one interface evaluation decodes through: :class:`Translator`, with a transformers and a CTranslate2 engine.

A translator holds a model and its tokenizer and gives ``translate(sources) -> hypotheses`` (one detokenized string
per source, in order) and ``perplexity(sources, references)``. :class:`TransformersTranslator` runs any
``AutoModelForSeq2SeqLM`` (:mod:`nmtq.decoding`); :class:`nmtq.ct2.Ct2Translator` runs a CTranslate2 folder written by
:func:`nmtq.ct2.convert_to_ctranslate2`. :func:`nmtq.evaluation.open_translator` chooses between them.

Example:
    >>> TransformersTranslator(model, tokenizer).translate(["Das Haus ist klein."])  # doctest: +SKIP
    ['The house is small.']
"""

from __future__ import annotations

from typing import Any

from .decoding import perplexity, translate


class Translator:
    """Translates and scores with one model; subclasses give :meth:`translate` and :meth:`perplexity`.

    ``tokenizer`` is the model's (the hypotheses' generated tokens are counted with it); :meth:`metrics_fields` are
    added to the metrics of :func:`nmtq.evaluation.evaluate_translator`.
    """

    tokenizer: Any

    def translate(self, sources: list[str], num_beams: int = 4, max_new_tokens: int = 128,
                  batch_size: int = 32) -> list[str]:
        """One detokenized translation per source, in order."""
        raise NotImplementedError

    def perplexity(self, sources: list[str], references: list[str], batch_size: int = 32) -> float:
        """exp of the mean negative log-likelihood per reference token (``</s>`` included), by teacher forcing."""
        raise NotImplementedError

    def metrics_fields(self) -> dict[str, Any]:
        """What the metrics say about the engine (none for transformers)."""
        return {}


class TransformersTranslator(Translator):
    """A transformers seq2seq model and its tokenizer: :func:`nmtq.decoding.translate` and
    :func:`nmtq.decoding.perplexity`, with a progress bar unless ``progress=False``.

    Example:
        >>> TransformersTranslator(model, tokenizer).translate(["Das Haus ist klein."])  # doctest: +SKIP
        ['The house is small.']
    """

    def __init__(self, model: Any, tokenizer: Any, progress: bool = True) -> None:
        self.model, self.tokenizer, self.progress = model, tokenizer, progress

    def translate(self, sources: list[str], num_beams: int = 4, max_new_tokens: int = 128,
                  batch_size: int = 32) -> list[str]:
        return translate(self.model, self.tokenizer, sources, num_beams, max_new_tokens, batch_size, self.progress)

    def perplexity(self, sources: list[str], references: list[str], batch_size: int = 32) -> float:
        return perplexity(self.model, self.tokenizer, sources, references, batch_size, self.progress)
