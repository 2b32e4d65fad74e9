"""Lexical shortlists: the target tokens a source token may bring, for CTranslate2's vocabulary map (``vmap.txt``).

At a large vocabulary the output layer dominates a shallow decoder's cost. Marian's and Bergamot's students
score only a shortlist of the vocabulary for each batch: the most frequent target tokens, plus, for each source
token of the batch, the target tokens that translate it. CTranslate2 does the same with a vocabulary map
(``translate_batch(..., use_vmap=True)``): a text file whose lines are ``source n-gram<TAB>target tokens``, the
line with an empty source always included.

Bergamot's lexical tables come from a word aligner. Here they come from sentence-level co-occurrence in the
training pairs, which needs nothing but the tokenizer: a target token ranks for a source token by its Dice
coefficient, ``2 c(s, t) / (c(s) + c(t))``, counted over sentence pairs (each token once a side), which prefers
the tokens that occur *with* the source token over the tokens that occur everywhere; those come in through the
``common`` list, the most frequent target tokens of the corpus.

Example:
    >>> shortlist = build_shortlist(tokenizer, sources, targets, per_source=50, common=100)  # doctest: +SKIP
    >>> write_vmap(shortlist, "runs/student-ct2/vmap.txt")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import NmtqError
from .io import write_text_atomic
from .tokenizer import encode_targets

__all__ = ["Shortlist", "build_shortlist", "write_vmap"]


@dataclass(frozen=True)
class Shortlist:
    """``common``: target tokens always scored; ``by_source``: source token -> the target tokens it adds, best first."""

    common: tuple[str, ...]
    by_source: dict[str, tuple[str, ...]]

    def candidates(self, source_tokens: Sequence[str]) -> set[str]:
        """The target tokens a sentence of ``source_tokens`` lets the decoder score (specials not counted)."""
        return set(self.common).union(*(self.by_source.get(s, ()) for s in source_tokens))


def _token_sets(id_lists: list[list[int]], skip: set[int]) -> list[np.ndarray]:
    return [np.unique(np.asarray([i for i in ids if i not in skip], dtype=np.int64)) for ids in id_lists]


def build_shortlist(tokenizer, sources: Sequence[str], targets: Sequence[str], per_source: int = 50,
                    common: int = 100) -> Shortlist:
    """The shortlist of the pairs ``(sources[i], targets[i])`` in ``tokenizer``'s pieces (see the module docstring):
    the ``common`` most frequent target tokens, and for each source token its ``per_source`` best target tokens
    by Dice coefficient (ties: the more frequent pair first, then the lower id)."""
    if len(sources) != len(targets) or not sources:
        raise NmtqError(f"a shortlist needs pairs: got {len(sources)} sources and {len(targets)} targets")
    if per_source < 0 or common < 0 or per_source + common == 0:
        raise NmtqError(f"per_source={per_source}, common={common}: pass non-negative numbers, not both 0")
    skip = set(tokenizer.all_special_ids)
    source_sets = _token_sets(tokenizer(list(sources))["input_ids"], skip)
    target_sets = _token_sets(encode_targets(tokenizer, list(targets))["input_ids"], skip)
    size = max(len(tokenizer), *(int(s.max()) + 1 for s in source_sets + target_sets if s.size))
    source_count = np.bincount(np.concatenate(source_sets), minlength=size)
    target_count = np.bincount(np.concatenate(target_sets), minlength=size)
    pairs = np.concatenate([(s[:, None] * size + t[None, :]).ravel() for s, t in zip(source_sets, target_sets)])
    keys, together = np.unique(pairs, return_counts=True)
    s_ids, t_ids = keys // size, keys % size
    dice = 2.0 * together / (source_count[s_ids] + target_count[t_ids])
    # best first within each source token: by source, then Dice, then co-occurrence, then target id (lexsort: last
    # key first)
    order = np.lexsort((t_ids, -together, -dice, s_ids))
    s_ids, t_ids = s_ids[order], t_ids[order]
    starts = np.flatnonzero(np.r_[True, s_ids[1:] != s_ids[:-1]])
    ends = np.r_[starts[1:], len(s_ids)]
    to_token = tokenizer.convert_ids_to_tokens
    by_source = {to_token(int(s_ids[a])): tuple(to_token([int(t) for t in t_ids[a:min(b, a + per_source)]]))
                 for a, b in zip(starts, ends)} if per_source else {}
    frequent = np.lexsort((np.arange(size), -target_count))[:common]
    return Shortlist(tuple(to_token([int(t) for t in frequent if target_count[t] > 0])), by_source)


def write_vmap(shortlist: Shortlist, path: str | os.PathLike) -> None:
    """``shortlist`` as CTranslate2's vocabulary map (``vmap.txt``): the common tokens on the line with an empty
    source, then a line per source token; written atomically."""
    lines = ["\t" + " ".join(shortlist.common)]
    lines += [f"{source}\t{' '.join(targets)}" for source, targets in sorted(shortlist.by_source.items())]
    write_text_atomic(path, "\n".join(lines) + "\n")
