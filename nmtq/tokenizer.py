"""A joint SentencePiece vocabulary for source and target, saved as a Marian tokenizer.

The saved directory loads with ``AutoTokenizer.from_pretrained(dir)``. The vocabulary follows OPUS-MT's
layout: ``</s>`` is id 0, ``<unk>`` id 1, the pieces, and ``<pad>`` last, which is what CTranslate2's Marian
converter expects.

Example:
    >>> tok = train_tokenizer(["ein Haus", "a house"] * 20, "/tmp/nmtq-doc-tok", vocab_size=40)  # doctest: +SKIP
    >>> tok.decode(tok("ein Haus")["input_ids"], skip_special_tokens=True)  # doctest: +SKIP
    'ein Haus'
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from . import files
from .errors import NmtqError
from .hub import require_hub
from .io import atomic_path, temporary_prefix

SPECIALS = ("</s>", "<unk>")
PAD = "<pad>"
VOCAB = "vocab.json"  # a Marian or M2M100 tokenizer's token -> id map
TOKENIZER_FILES = (files.TOKENIZER_CONFIG, "special_tokens_map.json", VOCAB, "source.spm", "target.spm")
"""A saved Marian tokenizer's files, as :func:`copy_tokenizer_files` copies them."""


def _train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            hard_vocab_limit=False,  # a small corpus gets a smaller vocabulary instead of an error
            input_sentence_size=2_000_000, shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as err:  # e.g. more distinct characters in the corpus than pieces asked for
        raise NmtqError(f"SentencePiece cannot make {vocab_size + len(SPECIALS) + 1} ids of this corpus "
                        f"({' '.join(str(err).split())}): raise --vocab_size") from None
    return model.getvalue()


def _marian_vocab(model_file: Path) -> dict[str, int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        if piece not in vocab and piece != PAD:
            vocab[piece] = len(vocab)
    vocab[PAD] = len(vocab)
    return vocab


def train_tokenizer(texts: Iterable[str], output_dir: str | os.PathLike, vocab_size: int = 8000,
                    source_lang: str = "de", target_lang: str = "en", model_type: str = "unigram"):
    """Train a joint SentencePiece model on ``texts`` (both sides) and save a ``MarianTokenizer`` in ``output_dir``.

    ``vocab_size`` counts every id, ``</s>``, ``<unk>`` and ``<pad>`` included; a corpus too small for it
    gets fewer pieces. Files are written to a temporary directory first, then moved into place one by one.
    Returns the tokenizer, loaded back from ``output_dir``.
    """
    if vocab_size < 8:
        raise NmtqError(f"vocab_size={vocab_size}: pass at least 8 (typical: 4000-32000)")
    if model_type not in ("unigram", "bpe"):
        raise NmtqError(f"model_type={model_type!r}: pass 'unigram' or 'bpe'")
    from transformers import MarianTokenizer

    model = _train_sentencepiece(texts, vocab_size - len(SPECIALS) - 1, model_type)  # before any file is written
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=temporary_prefix("tokenizer")) as tmp:
        spm_file, vocab_file = Path(tmp) / "joint.spm", Path(tmp) / VOCAB
        spm_file.write_bytes(model)
        vocab_file.write_text(json.dumps(_marian_vocab(spm_file), ensure_ascii=False, indent=0))
        tokenizer = MarianTokenizer(str(spm_file), str(spm_file), str(vocab_file),
                                    source_lang=source_lang, target_lang=target_lang)
        saved = Path(tmp) / "saved"
        tokenizer.save_pretrained(saved)
        for f in saved.iterdir():
            os.replace(f, output_dir / f.name)
    return load_tokenizer(output_dir)


def load_tokenizer(name_or_path: str | os.PathLike):
    """``AutoTokenizer.from_pretrained`` with a clear error when the directory holds no tokenizer."""
    from transformers import AutoTokenizer

    require_hub(str(name_or_path), "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as err:
        raise NmtqError(
            f"could not load a tokenizer from {str(name_or_path)!r}: pass a directory saved by nmtq or "
            f"save_pretrained (with {files.TOKENIZER_CONFIG}), or a Hub id when online ({err})"
        ) from err


def copy_tokenizer_files(source_dir: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Copy a saved tokenizer's files next to a model (each file written atomically)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = Path(source_dir) / name
        if src.exists():
            with atomic_path(output_dir / name) as tmp:
                shutil.copyfile(src, tmp)


def encode_targets(tokenizer, texts: list[str], truncation: bool = False, max_length: int | None = None,
                   add_special_tokens: bool = True) -> dict[str, list[list[int]]]:
    """``{"input_ids": ...}`` of ``texts`` as targets: ``tokenizer(text_target=texts, ...)``, except for FSMT.

    transformers' FSMT tokenizer encodes ``text_target`` with the *source* dictionary and the source language's
    Moses rules, so a teacher with separate dictionaries (facebook/wmt19-de-en) would get label ids from the wrong
    vocabulary. Here FSMT targets take the target language's rules (``tokenize(text, lang=tgt_lang)``) and the
    target dictionary (the one ``decode`` reads), then ``</s>``, as fairseq's target side does.
    """
    if type(tokenizer).__name__ != "FSMTTokenizer":
        return tokenizer(text_target=list(texts), truncation=truncation, max_length=max_length,
                         add_special_tokens=add_special_tokens)
    target_ids = {token: index for index, token in tokenizer.decoder.items()}
    # FSMT ends a sequence with its sep token, </s>, as build_inputs_with_special_tokens does
    unknown, eos = target_ids[tokenizer.unk_token], target_ids[tokenizer.eos_token or tokenizer.sep_token]
    rows = []
    for text in texts:
        ids = [target_ids.get(token, unknown) for token in tokenizer.tokenize(text, lang=tokenizer.tgt_lang)]
        ids = ids + [eos] if add_special_tokens else ids
        rows.append(ids[:max_length] if truncation and max_length else ids)
    return {"input_ids": rows}
