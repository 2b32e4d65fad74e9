"""Data specs: the one string that names a parallel corpus, parsed and checked before anything is loaded.

A data spec is ``KIND`` or ``KIND:ARGUMENTS``::

    bible                    the embedded verse-aligned Bible, source_lang -> target_lang (de -> en by default)
    bible:SRC-TGT            a chosen pair (it wins over source_lang/target_lang). SRC and TGT are ISO codes with
                             a default translation (de = e Elberfelder 1932, en = 4 World English Bible, fr = l
                             Segond 1910, ro = u Cornilescu 1928, ru = r Synodal 1876, es = v Reina-Valera 1909)
                             or the package's own bbName codes (bible:e-4, bible:s-k)
    hf:NAME | hf:NAME:CONFIG datasets.load_dataset(NAME, CONFIG, split=split) of a Hub dataset or a local
                             directory, or of a local .json/.jsonl/.csv/.parquet file; e.g. hf:wmt16:de-en
    tsv:PATH                 source TAB target per line; a first line "SRC_LANG<TAB>TGT_LANG" is skipped
    jsonl:PATH               one object per line: {"translation": {"de": ..., "en": ...}} or {"de": ..., "en": ...}
    text:SRC_PATH,TGT_PATH   two line-aligned plain-text files
    sacrebleu:TESTSET        a WMT test set (source, first reference) through sacrebleu, e.g. sacrebleu:wmt14

:mod:`nmtq.data` loads the corpus a spec names. This module needs neither ``datasets`` nor the files' contents,
so the recipe arguments (:mod:`nmtq.args`) and ``nmtq evaluate`` check their specs here before anything is
written or loaded.

Example:
    >>> parse_data_spec("hf:wmt16:de-en")
    DataSpec(kind='hf', name='wmt16', config='de-en', paths=(), pair=None)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import NmtqError

__all__ = ["DataError", "DataSpec", "check_data_spec", "parse_data_spec"]

_FORMS = ("valid data specs: bible, bible:SRC-TGT (e.g. bible:de-en, bible:e-4), hf:NAME, hf:NAME:CONFIG, tsv:PATH, "
          "jsonl:PATH, text:SRC_PATH,TGT_PATH, sacrebleu:TESTSET")


class DataError(NmtqError):
    """A data spec or a corpus that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: ``kind`` and its arguments (see the module docstring for the grammar).

    Example:
        >>> parse_data_spec("text:news.de,news.en").paths
        ('news.de', 'news.en')
    """

    kind: str
    name: str | None = None  # hf dataset (or local path), sacrebleu test set
    config: str | None = None  # hf configuration
    paths: tuple[str, ...] = ()  # local files
    pair: tuple[str, str] | None = None  # bible: (source, target) as ISO or bbName codes


def _malformed(spec: str, why: str) -> DataError:
    return DataError(f"malformed data spec {spec!r}: {why}; {_FORMS}")


def parse_data_spec(spec: str) -> DataSpec:
    """Parse a data spec string (grammar in the module docstring); DataError lists the valid forms.

    Example:
        >>> parse_data_spec("bible:de-en")
        DataSpec(kind='bible', name=None, config=None, paths=(), pair=('de', 'en'))
    """
    kind, colon, rest = spec.strip().partition(":")
    if colon and not rest:
        raise _malformed(spec, f"nothing follows '{kind}:'")
    if kind == "bible":
        source, dash, target = rest.partition("-")
        if (colon and not (source and dash and target)) or "-" in target:
            raise _malformed(spec, "expected bible:SRC-TGT with two codes")
        return DataSpec("bible", pair=(source, target) if colon else None)
    if kind == "hf" and colon:
        name, _, config = rest.partition(":")
        return DataSpec("hf", name=name, config=config or None)
    if kind in ("tsv", "jsonl") and colon:
        return DataSpec(kind, paths=(rest,))
    if kind == "text" and colon:
        paths = tuple(rest.split(","))
        if len(paths) != 2 or not all(paths):
            raise _malformed(spec, "expected text:SRC_PATH,TGT_PATH with two paths (no commas inside a path)")
        return DataSpec("text", paths=paths)
    if kind == "sacrebleu" and colon:
        return DataSpec("sacrebleu", name=rest)
    if kind in ("hf", "tsv", "jsonl", "text", "sacrebleu"):
        raise _malformed(spec, f"'{kind}' needs arguments after a colon")
    raise DataError(f"unknown data spec kind {kind!r} in {spec!r}; {_FORMS}")


def check_data_spec(spec: str) -> DataSpec:
    """Parse ``spec`` and check that its local files exist (a one-line DataError), before anything is loaded."""
    parsed = parse_data_spec(spec)
    for name in parsed.paths:
        path = Path(name).expanduser()
        if not path.is_file():
            kind = "a directory, not a file" if path.is_dir() else "missing"
            raise DataError(f"{path} is {kind}: check the path in {spec!r} (relative paths start at {Path.cwd()})")
    return parsed
