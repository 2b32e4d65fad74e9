"""Tiny random-weight teachers of every pretrained family, each saved with its real tokenizer, built offline.

A pretrained teacher comes from the Hub, which tests cannot reach. This module rebuilds each family's
conventions (model class, tokenizer class and files, special ids, language codes, forced BOS, task prefix)
at toy size: the tokenizer is trained on the German-English pairs below, the model is built from its config
with random weights, and both are saved with ``save_pretrained`` so that ``AutoTokenizer.from_pretrained``
and ``AutoModelForSeq2SeqLM.from_pretrained`` load the directory as they would a downloaded checkpoint.

Example (from a test; the directory is built once per session)::

    spec = cached_family(tmp_path_factory, "mbart50")
    tokenizer = AutoTokenizer.from_pretrained(spec.directory)
    tokenizer.src_lang, tokenizer.tgt_lang = spec.source_lang, spec.target_lang
    model = AutoModelForSeq2SeqLM.from_pretrained(spec.directory)
    model.generate(**tokenizer(spec.pairs[0][0], return_tensors="pt"), max_new_tokens=3)
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FAMILIES = ("marian", "bart", "mbart50", "m2m100", "nllb", "t5", "fsmt")

PAIRS = [
    ("Der Hund schläft unter dem großen Baum.", "The dog sleeps under the big tree."),
    ("Die Frau liest ein Buch.", "The woman reads a book."),
    ("Das Haus ist alt und klein.", "The house is old and small."),
    ("Ein Kind spielt im Garten.", "A child plays in the garden."),
    ("Der Mann geht nach Hause.", "The man goes home."),
    ("Die Sonne scheint heute.", "The sun shines today."),
    ("Wir essen Brot und Käse.", "We eat bread and cheese."),
    ("Ich trinke gern kaltes Wasser.", "I like to drink cold water."),
    ("Das Wetter ist schön.", "The weather is nice."),
    ("Mein Bruder wohnt in Berlin.", "My brother lives in Berlin."),
    ("Die Katze sitzt auf dem Tisch.", "The cat sits on the table."),
    ("Er schreibt einen langen Brief.", "He writes a long letter."),
    ("Sie singt ein schönes Lied.", "She sings a beautiful song."),
    ("Der Zug kommt um acht Uhr.", "The train arrives at eight o'clock."),
    ("Wir fahren morgen ans Meer.", "We are driving to the sea tomorrow."),
    ("Die Kinder lachen laut.", "The children laugh loudly."),
    ("Der Lehrer erklärt die Aufgabe.", "The teacher explains the task."),
    ("Meine Mutter kocht Suppe.", "My mother cooks soup."),
    ("Der Himmel ist blau.", "The sky is blue."),
    ("Das Auto ist sehr schnell.", "The car is very fast."),
    ("Im Winter fällt Schnee.", "In winter, snow falls."),
    ("Die Blumen blühen im Frühling.", "The flowers bloom in spring."),
    ("Er hat keine Zeit.", "He has no time."),
    ("Wo ist der Bahnhof?", "Where is the station?"),
    ("Ich verstehe die Frage nicht.", "I do not understand the question."),
    ("Das Essen schmeckt gut.", "The food tastes good."),
    ("Die Stadt ist groß und laut.", "The city is big and loud."),
    ("Der Vogel fliegt über das Feld.", "The bird flies over the field."),
    ("Wir lernen jeden Tag Deutsch.", "We learn German every day."),
    ("Der Fluss fließt durch das Tal.", "The river flows through the valley."),
    ("Mein Vater arbeitet im Büro.", "My father works in the office."),
    ("Die Tür ist offen.", "The door is open."),
    ("Sie kauft frisches Obst.", "She buys fresh fruit."),
    ("Der Abend ist ruhig.", "The evening is quiet."),
    ("Ich habe einen Hund und eine Katze.", "I have a dog and a cat."),
    ("Die Straße ist nass.", "The street is wet."),
    ("Er liest die Zeitung am Morgen.", "He reads the newspaper in the morning."),
    ("Das Fenster ist geschlossen.", "The window is closed."),
    ("Wir spielen Fußball im Park.", "We play football in the park."),
    ("Die Nacht ist dunkel und still.", "The night is dark and still."),
]
"""Forty German-English pairs: the local text every family's tokenizer is trained on."""
GERMAN = [de for de, _ in PAIRS]
ENGLISH = [en for _, en in PAIRS]

T5_PREFIX = "translate German to English: "

# tiny sizes: 6+6 layers so tests can pick a spread of teacher layers, yet each model builds in milliseconds
_BART_LIKE_SIZES = dict(d_model=16, encoder_layers=6, decoder_layers=6, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                        max_position_embeddings=64)


@dataclass(frozen=True)
class FamilySpec:
    """What a test needs to drive one family's saved teacher the way its real checkpoints are driven.

    ``family`` is a key of :data:`FAMILIES`; ``directory`` holds the saved model and tokenizer;
    ``model_type`` is ``config.model_type`` (NLLB's is ``m2m_100``, mBART-50's ``mbart``).
    ``source_lang``/``target_lang`` are the values the tokenizer's ``src_lang``/``tgt_lang`` take (None for
    Marian, BART and T5, whose tokenizers have no such setting). ``forced_bos_token_id`` is the token
    ``generate`` must emit right after the decoder start (None where nothing is forced). ``prefix`` goes in
    front of each source sentence (T5's task prefix, else None). ``pairs`` are the (German, English) pairs
    the tokenizer was trained on.
    """

    family: str
    directory: Path
    model_type: str
    source_lang: str | None = None
    target_lang: str | None = None
    forced_bos_token_id: int | None = None
    prefix: str | None = None
    pairs: list[tuple[str, str]] = field(default_factory=lambda: list(PAIRS))


def _train_spm(texts: list[str], vocab_size: int, model_type: str = "unigram", **special_ids: int) -> bytes:
    """A SentencePiece model trained on ``texts``; a small corpus gets fewer pieces instead of an error."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                   model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
                                   num_threads=1, minloglevel=2, **special_ids)
    return model.getvalue()


def _spm_pieces(model: bytes) -> list[tuple[str, float]]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def _write_spm(directory: Path, name: str, model: bytes) -> str:
    (directory / name).write_bytes(model)
    return str(directory / name)


def _write_json(directory: Path, name: str, data: dict) -> str:
    (directory / name).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return str(directory / name)


def _marian(directory: Path):
    """OPUS-MT: a SentencePiece model per side, one joint vocab.json with ``</s>`` 0, ``<unk>`` 1, ``<pad>`` last."""
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    source = _write_spm(directory, "source.spm", _train_spm(GERMAN, 120, unk_id=0, bos_id=-1, eos_id=-1))
    target = _write_spm(directory, "target.spm", _train_spm(ENGLISH, 120, unk_id=0, bos_id=-1, eos_id=-1))
    vocab = {"</s>": 0, "<unk>": 1}
    for piece, _ in _spm_pieces(Path(source).read_bytes()) + _spm_pieces(Path(target).read_bytes()):
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = pad = len(vocab)
    tokenizer = MarianTokenizer(source, target, _write_json(directory, "vocab.json", vocab),
                                source_lang="de", target_lang="en")
    config = MarianConfig(vocab_size=len(vocab), pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0,
                          forced_eos_token_id=0, scale_embedding=True, **_BART_LIKE_SIZES)
    model = MarianMTModel(config)
    model.generation_config.bad_words_ids = [[pad]]  # as OPUS-MT's config: never emit <pad>
    return model, tokenizer, {}


def _bart(directory: Path):
    """facebook/bart-large: byte-level BPE (vocab.json + merges.txt), ``<mask>`` last, forced BOS ``<s>`` (0).

    transformers 5's ``BartTokenizer`` is an alias of ``RobertaTokenizer`` (same class object)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(GERMAN + ENGLISH, vocab_size=400, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    bpe.save_model(str(directory))  # vocab.json and merges.txt, the files facebook/bart-large ships
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    vocab["<mask>"] = len(vocab)
    _write_json(directory, "vocab.json", vocab)
    tokenizer = BartTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))
    model = BartForConditionalGeneration(BartConfig(vocab_size=len(vocab), **_BART_LIKE_SIZES))
    model.generation_config.forced_bos_token_id = 0
    return model, tokenizer, {"forced_bos_token_id": 0}


def _mbart50(directory: Path):
    """facebook/mbart-large-50-many-to-many-mmt: fairseq ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3),
    the pieces, the 52 language codes, ``<mask>``; decoding starts at ``</s>`` and forces the target code."""
    from transformers import MBart50Tokenizer, MBartConfig, MBartForConditionalGeneration

    pieces = _spm_pieces(_train_spm(GERMAN + ENGLISH, 200))  # SentencePiece's <unk> 0, <s> 1, </s> 2 are replaced
    tokenizer = MBart50Tokenizer(vocab=pieces, src_lang="de_DE", tgt_lang="en_XX")
    forced = tokenizer.convert_tokens_to_ids("en_XX")
    config = MBartConfig(vocab_size=len(tokenizer), decoder_start_token_id=2, scale_embedding=True,
                         **_BART_LIKE_SIZES)
    model = MBartForConditionalGeneration(config)
    model.generation_config.forced_bos_token_id = forced
    return model, tokenizer, {"source_lang": "de_DE", "target_lang": "en_XX", "forced_bos_token_id": forced}


def _m2m100(directory: Path):
    """facebook/m2m100_418M: a SentencePiece model and a fairseq vocab.json; the 100 ``__xx__`` codes and 8
    made-up words follow the vocabulary (so the embedding has 8 rows more than the tokenizer)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    spm_file = _write_spm(directory, "sentencepiece.bpe.model", _train_spm(GERMAN + ENGLISH, 150, model_type="bpe"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece, _ in _spm_pieces(Path(spm_file).read_bytes()):
        vocab.setdefault(piece, len(vocab))
    # the Hub's tokenizer_config lists the codes as special tokens; without them decode keeps "__de__" even with
    # skip_special_tokens=True (M2M100Tokenizer's own attempt to add them never adds any)
    codes = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    tokenizer = M2M100Tokenizer(_write_json(directory, "vocab.json", vocab), spm_file, src_lang="de", tgt_lang="en",
                                additional_special_tokens=codes)
    forced = tokenizer.get_lang_id("en")
    config = M2M100Config(vocab_size=len(vocab) + 100 + 8, **_BART_LIKE_SIZES)
    model = M2M100ForConditionalGeneration(config)
    model.generation_config.forced_bos_token_id = forced
    return model, tokenizer, {"source_lang": "de", "target_lang": "en", "forced_bos_token_id": forced}


def _nllb(directory: Path):
    """facebook/nllb-200-distilled-600M: an M2M100 model; a Metaspace BPE with fairseq ids, then the 202
    language codes and ``<mask>``; source and target both start with their language code."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    bpe = SentencePieceBPETokenizer()
    bpe.train_from_iterator(GERMAN + ENGLISH, vocab_size=150, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    model_json = json.loads(bpe.to_str())["model"]
    vocab = dict(model_json["vocab"])  # codes and <mask> in the vocabulary: else <mask> would sit before the codes
    for token in [*FAIRSEQ_LANGUAGE_CODES, "<mask>"]:
        vocab[token] = len(vocab)
    merges = [tuple(merge) for merge in model_json["merges"]]
    tokenizer = NllbTokenizer(vocab=vocab, merges=merges, src_lang="deu_Latn", tgt_lang="eng_Latn")
    forced = tokenizer.convert_tokens_to_ids("eng_Latn")
    model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=len(tokenizer), **_BART_LIKE_SIZES))
    model.generation_config.forced_bos_token_id = forced
    return model, tokenizer, {"source_lang": "deu_Latn", "target_lang": "eng_Latn", "forced_bos_token_id": forced}


def _t5(directory: Path):
    """t5-small: a unigram vocabulary with ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then the sentinels from
    ``<extra_id_99>`` to ``<extra_id_0>``; the embedding is rounded up to a multiple of 128 (as t5-small's
    32,100 tokens get 32,128 rows); decoding starts at ``<pad>``."""
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    texts = [T5_PREFIX + de for de in GERMAN] + ENGLISH
    pieces = _spm_pieces(_train_spm(texts, 200, pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    pieces += [(f"<extra_id_{i}>", 0.0) for i in reversed(range(100))]  # <extra_id_0> last, as in t5-small
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=100)
    config = T5Config(vocab_size=-(-len(tokenizer) // 128) * 128, d_model=16, d_kv=8, d_ff=32, num_layers=6,
                      num_decoder_layers=6, num_heads=2, relative_attention_num_buckets=8,
                      relative_attention_max_distance=16, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config), tokenizer, {"prefix": T5_PREFIX}


def _fsmt(directory: Path):
    """facebook/wmt19-de-en: Moses tokens, one joint BPE (merges.txt, ``</w>`` ends a word) and two fairseq
    dictionaries, vocab-src.json for German and vocab-tgt.json for English, of different sizes."""
    from sacremoses import MosesTokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import FSMTConfig, FSMTForConditionalGeneration, FSMTTokenizer

    words = {}
    for lang, texts in (("de", GERMAN), ("en", ENGLISH)):  # as FSMTTokenizer splits text before its BPE
        moses = MosesTokenizer(lang)
        words[lang] = [w for text in texts for w in moses.tokenize(text, aggressive_dash_splits=True, escape=True)]
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.train_from_iterator(words["de"] + words["en"], trainers.BpeTrainer(
        vocab_size=200, min_frequency=2, end_of_word_suffix="</w>", show_progress=False))
    merges = json.loads(bpe.to_str())["model"]["merges"]
    (directory / "merges.txt").write_text("".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    sizes = {}
    for lang, name in (("de", "vocab-src.json"), ("en", "vocab-tgt.json")):
        # fairseq's dict.<lang>.txt: the specials, then the pieces this side's text uses, most frequent first
        counts = Counter(piece for w in words[lang] for piece in bpe.encode(w).tokens)
        pieces = ["<s>", "<pad>", "</s>", "<unk>"] + [piece for piece, _ in counts.most_common()]
        _write_json(directory, name, {piece: i for i, piece in enumerate(pieces)})
        sizes[lang] = len(pieces)
    tokenizer = FSMTTokenizer(langs=["de", "en"], src_vocab_file=str(directory / "vocab-src.json"),
                              tgt_vocab_file=str(directory / "vocab-tgt.json"),
                              merges_file=str(directory / "merges.txt"))
    config = FSMTConfig(langs=["de", "en"], src_vocab_size=sizes["de"], tgt_vocab_size=sizes["en"],
                        **_BART_LIKE_SIZES)
    return FSMTForConditionalGeneration(config), tokenizer, {"source_lang": "de", "target_lang": "en"}


_BUILDERS = {"marian": _marian, "bart": _bart, "mbart50": _mbart50, "m2m100": _m2m100, "nllb": _nllb,
             "t5": _t5, "fsmt": _fsmt}


def build_family(family: str, directory: Path) -> FamilySpec:
    """Build ``family``'s tiny teacher and tokenizer and save both in ``directory`` (created if missing).

    Weights are random (seed 0); the tokenizer is the family's real class trained on :data:`PAIRS`.
    Example: ``build_family("t5", tmp_path).prefix == "translate German to English: "``.
    """
    if family not in _BUILDERS:
        raise ValueError(f"family={family!r}: pass one of {', '.join(FAMILIES)}")
    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, tokenizer, conventions = _BUILDERS[family](directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return FamilySpec(family=family, directory=directory, model_type=model.config.model_type, **conventions)


_BUILT: dict[tuple[str, str], FamilySpec] = {}


def cached_family(tmp_path_factory, family: str) -> FamilySpec:
    """``build_family`` into a ``tmp_path_factory`` directory, once per family per pytest session.

    Wrap it in a session-scoped fixture: ``return functools.partial(cached_family, tmp_path_factory)``.
    """
    key = (str(tmp_path_factory.getbasetemp()), family)
    if key not in _BUILT:
        _BUILT[key] = build_family(family, tmp_path_factory.mktemp(f"family-{family}"))
    return _BUILT[key]


def pairs_file(path: Path, pairs: list[tuple[str, str]]) -> str:
    """Write ``pairs`` as ``source<TAB>target`` lines to ``path``; returns its data spec, ``tsv:PATH``."""
    path.write_text("".join(f"{de}\t{en}\n" for de, en in pairs), encoding="utf-8")
    return f"tsv:{path}"
