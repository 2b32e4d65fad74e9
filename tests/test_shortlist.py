"""Lexical shortlists (nmtq.shortlist): Dice ranking by hand, the vmap file, and what CTranslate2 decodes with it."""

import pytest
from conftest import ENGLISH, GERMAN

from nmtq.errors import NmtqError
from nmtq.shortlist import Shortlist, build_shortlist, write_vmap
from nmtq.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer([*GERMAN, *ENGLISH], tmp_path_factory.mktemp("tokenizer"), 60)


def pieces(tokenizer, text: str, target: bool = False) -> set[str]:
    ids = tokenizer(text_target=text)["input_ids"] if target else tokenizer(text)["input_ids"]
    return {t for t in tokenizer.convert_ids_to_tokens(ids) if t not in tokenizer.all_special_tokens}


def test_each_source_token_ranks_target_tokens_by_dice(tokenizer):
    shortlist = build_shortlist(tokenizer, GERMAN, ENGLISH, per_source=1000, common=3)
    sources = [pieces(tokenizer, s) for s in GERMAN]
    targets = [pieces(tokenizer, t, target=True) for t in ENGLISH]
    def dice(source, t):
        together = sum(source in s and t in g for s, g in zip(sources, targets))
        return 2 * together / (sum(source in s for s in sources) + sum(t in g for g in targets))

    for source, ranked in shortlist.by_source.items():
        scores = [dice(source, t) for t in ranked]
        assert scores == sorted(scores, reverse=True), source  # best first
        assert set(ranked) == set().union(*(g for s, g in zip(sources, targets) if source in s))  # all co-occurring
    counts = {t: sum(t in g for g in targets) for t in set().union(*targets)}
    assert [counts[t] for t in shortlist.common] == sorted(counts.values(), reverse=True)[:3]
    assert set(shortlist.by_source) == set().union(*sources)


def test_a_translation_pair_ranks_first(tokenizer):
    # "Haus" occurs only with "house" (twice): nothing else co-occurs with it as often or as exclusively
    shortlist = build_shortlist(tokenizer, GERMAN, ENGLISH, per_source=1, common=0)
    house = pieces(tokenizer, "house", target=True)
    for source in pieces(tokenizer, "Haus"):
        if len(source) > 2:
            assert set(shortlist.by_source[source]) <= house, source
    assert shortlist.common == ()


def test_the_vmap_file_is_ctranslate2s_format(tokenizer, tmp_path):
    shortlist = Shortlist(common=("▁the", "▁a"), by_source={"▁Haus": ("▁house",), "▁Mann": ("▁man", "▁the")})
    write_vmap(shortlist, tmp_path / "vmap.txt")
    assert (tmp_path / "vmap.txt").read_text(encoding="utf-8").splitlines() == [
        "\t▁the ▁a", "▁Haus\t▁house", "▁Mann\t▁man ▁the"]
    assert shortlist.candidates(["▁Mann", "▁unbekannt"]) == {"▁the", "▁a", "▁man"}


@pytest.mark.parametrize("sources, targets, per_source, common, message", [
    (GERMAN, ENGLISH[:3], 50, 100, "got 12 sources and 3 targets"),
    ([], [], 50, 100, "got 0 sources"),
    (GERMAN, ENGLISH, 0, 0, "not both 0"),
    (GERMAN, ENGLISH, -1, 100, "non-negative"),
])
def test_bad_arguments(tokenizer, sources, targets, per_source, common, message):
    with pytest.raises(NmtqError, match=message):
        build_shortlist(tokenizer, sources, targets, per_source, common)


def test_a_shortlist_limits_what_ctranslate2_decodes(tmp_path_factory, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    from test_ct2 import SOURCES, train

    from nmtq.cli import main
    from nmtq.ct2 import Ct2Translator, convert_to_ctranslate2
    from nmtq.files import CT2_INFO, CT2_VMAP

    marian = train(tmp_path_factory, "marian")
    full = Ct2Translator(convert_to_ctranslate2(marian, tmp_path / "plain", "float32"), "float32")
    expected = full.translate(SOURCES, num_beams=2, max_new_tokens=12)
    # every target token in the list: the same translations as the whole vocabulary
    whole = Shortlist(common=tuple(full.tokenizer.get_vocab()), by_source={})
    out = convert_to_ctranslate2(marian, tmp_path / "whole", "float32", shortlist=whole)
    assert (out / CT2_VMAP).is_file() and not list(tmp_path.glob("*vmap*"))  # the file went into the folder only
    assert Ct2Translator(out, "float32", use_vmap=True).translate(SOURCES, num_beams=2, max_new_tokens=12) == expected
    # one token besides the specials: every hypothesis is made of it
    only = Shortlist(common=("▁the",), by_source={})
    narrow = Ct2Translator(convert_to_ctranslate2(marian, tmp_path / "narrow", "float32", shortlist=only), "float32",
                           use_vmap=True)
    ids = narrow.tokenizer(text_target=narrow.translate(SOURCES, num_beams=1, max_new_tokens=4))["input_ids"]
    assert {t for row in ids for t in narrow.tokenizer.convert_ids_to_tokens(row)} <= {"▁the", "</s>", "<unk>"}
    # through the CLI: built from the training pairs, decoded with --use-vmap
    data = f"tsv:{marian.parent / 'pairs.tsv'}"
    assert main(["export", str(marian), str(tmp_path / "cli"), "--ctranslate2", "--shortlist", data,
                 "--shortlist-size", "5,10"]) == 0
    info = __import__("json").loads((tmp_path / "cli" / CT2_INFO).read_text())
    assert info["shortlist"]["common"] == 10 and info["shortlist"]["per_source"] <= 5
    # more sentences than a batch, each batch with its own candidates: each batch translates as it does alone in a
    # fresh translator (CTranslate2 4.8 keeps the previous batch's shortlist positions unless nmtq resets them)
    many = [SOURCES[-1], *SOURCES, SOURCES[0][:8], *SOURCES[::-1], SOURCES[1][:5]]
    fresh = [h for i in range(0, len(many), 3) for h in Ct2Translator(tmp_path / "cli", use_vmap=True).translate(
        many[i:i + 3], num_beams=2, max_new_tokens=12)]
    cli = Ct2Translator(tmp_path / "cli", use_vmap=True)
    for _ in range(2):
        assert cli.translate(many, num_beams=2, max_new_tokens=12, batch_size=3) == fresh
    with pytest.raises(NmtqError, match="pass inter_threads=1"):
        Ct2Translator(tmp_path / "cli", use_vmap=True, inter_threads=2)
    assert main(["evaluate", str(tmp_path / "cli"), "--data", data, "--engine", "ctranslate2", "--use-vmap",
                 "--output-dir", str(tmp_path / "eval")]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["export", "{model}", "{tmp}/out", "--shortlist", "bible"], "add --ctranslate2"),
    (["export", "{model}", "{tmp}/out", "--ctranslate2", "--shortlist", "bible", "--shortlist-size", "5"],
     "PER_SOURCE,COMMON"),
    (["export", "{model}", "{tmp}/out", "--ctranslate2", "--shortlist-size", "5,5"], "is for --shortlist"),
    (["evaluate", "{model}", "--data", "bible", "--use-vmap"], "use_vmap is for engine='ctranslate2'"),
    (["evaluate", "{model}", "--data", "bible", "--engine", "ctranslate2", "--use-vmap"], "has no vmap.txt"),
])
def test_bad_shortlist_flags_fail_in_one_line_before_anything_is_written(tmp_path, capsys, argv, message):
    pytest.importorskip("ctranslate2")
    from nmtq.cli import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.bin").write_bytes(b"")  # looks like a CTranslate2 folder: what is checked first
    assert main([a.format(model=model, tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

