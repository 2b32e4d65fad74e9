"""Trim a multilingual teacher's vocabulary to the tokens of one language pair (``nmtq distill --trim_vocabulary``).

NLLB-200 carries 256k tokens and mBART-50 250k, and at 1,024 dimensions their embedding and output rows are a
gigabyte in fp32: most of a 12+2 student. A German-English student needs only the tokens its training data
uses. :func:`plan_trim` keeps those, plus what the tokenizer needs to stay whole: every added token (the specials,
all language codes, T5's sentinels, M2M100's made-up words), the ids the model and its generation config name,
and, for BPE, the pieces each kept token is merged from (so the training text still tokenizes the same way;
byte-level BPE keeps its 256-byte alphabet). The kept ids, ascending, become ``0 .. n-1``: :func:`trim_model`
slices the embedding, output and bias rows and remaps the config's ids, :func:`trim_tokenizer` rewrites the
tokenizer's files the same way, and :class:`TrimmedTeacher` shows the teacher through the kept ids (its
distribution renormalised over them by the loss's softmax), so the word-level loss compares like with like.

Trimmable: tokenizers with a ``tokenizer.json`` (NLLB, mBART-50, T5, BART in transformers 5) and those with a
``vocab.json`` (Marian, M2M100). FSMT keeps one dictionary per language already and is refused.

Example:
    >>> trim = VocabularyTrim(kept=(0, 2, 5), old_size=6)
    >>> trim.remap([5, 0, 2])
    [2, 0, 1]
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from . import files
from .errors import NmtqError
from .tokenizer import VOCAB

logger = logging.getLogger(__name__)

TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_bos_token_id",
                   "forced_eos_token_id", "sep_token_id", "unk_token_id")
"""Config and generation-config fields that hold token ids (an int or a list of ints)."""
TOKEN_LIST_FIELDS = ("suppress_tokens", "begin_suppress_tokens")
VOCAB_SIZE_FIELDS = ("vocab_size", "decoder_vocab_size")


@dataclass(frozen=True)
class VocabularyTrim:
    """The teacher's token ids a student keeps: the student's id ``i`` is the teacher's ``kept[i]``.

    ``kept`` is strictly ascending, so the trimmed vocabulary keeps the teacher's order (specials first, language
    codes after the pieces); ``old_size`` is the number of rows of the teacher's output layer.
    """

    kept: tuple[int, ...]
    old_size: int

    def __post_init__(self) -> None:
        if not self.kept or any(b <= a for a, b in zip(self.kept, self.kept[1:])) or self.kept[0] < 0 \
                or self.kept[-1] >= self.old_size:
            raise NmtqError(f"kept ids must be ascending, distinct and within 0..{self.old_size - 1}")

    @property
    def size(self) -> int:
        return len(self.kept)

    @cached_property
    def new_ids(self) -> dict[int, int]:
        """The student's id of each kept teacher id."""
        return {old: new for new, old in enumerate(self.kept)}

    def index(self) -> torch.Tensor:
        """``kept`` as a long tensor: ``teacher_row[index]`` are the student's rows."""
        return torch.tensor(self.kept, dtype=torch.long)

    def remap(self, ids: Iterable[int]) -> list[int]:
        """The student's ids of teacher ids; a ``ValueError`` for an id that was not kept."""
        try:
            return [self.new_ids[i] for i in ids]
        except KeyError as err:
            raise NmtqError(f"token id {err.args[0]} is not in the trimmed vocabulary: trim from data that "
                             "contains it") from None

    def remap_optional(self, value):
        """An id field's value remapped: an int (None if not kept), a list of ints (those kept), or None."""
        if value is None:
            return None
        if isinstance(value, int):
            return self.new_ids.get(value)
        return [self.new_ids[i] for i in value if i in self.new_ids]


def save_trim(trim: VocabularyTrim, path: str | Path) -> None:
    """``trim`` as JSON (``kept``, ``teacher_size``), written atomically."""
    from .io import write_json_atomic

    write_json_atomic(path, {"teacher_size": trim.old_size, "kept": list(trim.kept)})


def load_trim(path: str | Path) -> VocabularyTrim:
    """The :class:`VocabularyTrim` :func:`save_trim` wrote."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return VocabularyTrim(tuple(data["kept"]), data["teacher_size"])


def check_trimmable(tokenizer) -> None:
    """A one-line ``ValueError`` unless nmtq can rewrite ``tokenizer`` with fewer ids."""
    name = type(tokenizer).__name__
    if name == "FSMTTokenizer":
        raise NmtqError("--trim_vocabulary: FSMT (fairseq's WMT19 models) already has one dictionary per language, "
                         "nothing to trim; drop --trim_vocabulary")
    if getattr(tokenizer, "separate_vocabs", False):
        raise NmtqError(f"--trim_vocabulary: this {name} has separate source and target vocabularies, which nmtq "
                         "does not trim; drop --trim_vocabulary")
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        kind = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"]
        if kind not in ("BPE", "Unigram", "WordPiece", "WordLevel"):
            raise NmtqError(f"--trim_vocabulary: cannot trim a {kind} tokenizer model; drop --trim_vocabulary")
    elif not isinstance(getattr(tokenizer, "encoder", None), dict):
        raise NmtqError(f"--trim_vocabulary: nmtq trims tokenizers with a tokenizer.json or a vocab.json, not a "
                         f"{name}; drop --trim_vocabulary")


def plan_trim(tokenizer, model, id_lists: Iterable[Iterable[int]]) -> VocabularyTrim:
    """The ids to keep: those in ``id_lists`` (the tokenized training sources and targets), every added token of
    ``tokenizer`` (specials, language codes, sentinels), the ids ``model``'s config and generation config name,
    and what the tokenizer's model needs to reproduce those tokens (BPE merge components, a byte alphabet)."""
    check_trimmable(tokenizer)
    rows = model.get_output_embeddings().weight.shape[0]
    kept: set[int] = set()
    for ids in id_lists:
        kept.update(ids)
    kept.update(tokenizer.all_special_ids)
    kept.update(i for i in tokenizer.added_tokens_decoder)
    kept.update(getattr(tokenizer, "lang_token_to_id", {}).values())  # M2M100's codes follow its vocab.json
    # and its made-up words fill the last rows, which CTranslate2's converter expects to find
    kept.update(range(rows - getattr(tokenizer, "num_madeup_words", 0), rows))
    for config in (model.config, getattr(model, "generation_config", None)):
        for name in TOKEN_ID_FIELDS:
            value = getattr(config, name, None) if config is not None else None
            kept.update([value] if isinstance(value, int) else value or [])
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        kept |= _bpe_requirements(json.loads(tokenizer.backend_tokenizer.to_str()), kept)
    return VocabularyTrim(tuple(sorted(i for i in kept if 0 <= i < rows)), rows)


def _bpe_requirements(data: dict, kept: set[int]) -> set[int]:
    """The ids a tokenizer.json's model needs beside ``kept``: the two pieces each kept BPE token is merged from
    (recursively), a byte-level BPE's single-character alphabet and a byte-fallback model's ``<0xNN>`` pieces."""
    model = data["model"]
    vocab = model["vocab"]
    pieces = dict(vocab) if isinstance(vocab, dict) else {piece: i for i, (piece, _) in enumerate(vocab)}
    needed = {i for piece, i in pieces.items() if model.get("byte_fallback") and piece.startswith("<0x")}
    if model["type"] != "BPE":
        return needed
    if "ByteLevel" in json.dumps(data.get("pre_tokenizer")):
        needed |= {i for piece, i in pieces.items() if len(piece) == 1}
    prefix = model.get("continuing_subword_prefix") or ""
    made_of: dict[int, tuple[int, int]] = {}
    for merge in model["merges"]:
        a, b = _pair(merge)
        merged = _merged(a, b, prefix)
        if merged in pieces and a in pieces and b in pieces:
            made_of.setdefault(pieces[merged], (pieces[a], pieces[b]))
    stack = list(kept | needed)
    while stack:
        for part in made_of.get(stack.pop(), ()):
            if part not in kept and part not in needed:
                needed.add(part)
                stack.append(part)
    return needed


def trim_model(model, trim: VocabularyTrim):
    """Slice ``model``'s embedding, output and ``final_logits_bias`` rows to ``trim.kept`` (in place, tied
    parameters staying tied) and remap the token ids of its config and generation config. Returns ``model``."""
    index = trim.index()
    replaced: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        if not isinstance(module, (torch.nn.Embedding, torch.nn.Linear)):
            continue
        for name in ("weight", "bias"):
            param = getattr(module, name, None)
            if param is None or param.shape[0] != trim.old_size:
                continue
            if id(param) not in replaced:
                replaced[id(param)] = torch.nn.Parameter(param.data.index_select(0, index.to(param.device)),
                                                         requires_grad=param.requires_grad)
            setattr(module, name, replaced[id(param)])
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == trim.old_size:
            module.num_embeddings = trim.size
            module.padding_idx = trim.remap_optional(module.padding_idx)
        elif isinstance(module, torch.nn.Linear) and module.out_features == trim.old_size:
            module.out_features = trim.size
    for module in model.modules():
        bias = module._buffers.get("final_logits_bias")
        if bias is not None and bias.shape[-1] == trim.old_size:
            module.register_buffer("final_logits_bias", bias.index_select(-1, index.to(bias.device)))
    if not replaced:
        raise NmtqError(f"--trim_vocabulary found no embedding of {trim.old_size} rows in "
                         f"{type(model).__name__}; drop --trim_vocabulary")
    for name in VOCAB_SIZE_FIELDS:
        if getattr(model.config, name, None) == trim.old_size:
            setattr(model.config, name, trim.size)
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is None:
            continue
        for name in TOKEN_ID_FIELDS + TOKEN_LIST_FIELDS:
            if getattr(config, name, None) is not None:
                setattr(config, name, trim.remap_optional(getattr(config, name)))
        bad = getattr(config, "bad_words_ids", None)
        if bad:  # a banned sequence with a dropped token can no longer be generated
            kept = [trim.remap(words) for words in bad if all(i in trim.new_ids for i in words)]
            config.bad_words_ids = kept or None
    return model


class TrimmedTeacher(torch.nn.Module):
    """The teacher seen through a trimmed vocabulary: it takes the student's ids and returns logits over the kept
    ids only, which the loss's softmax renormalises. Only ``.logits`` of the output is meant to be read."""

    def __init__(self, teacher, trim: VocabularyTrim) -> None:
        super().__init__()
        self.teacher, self.config = teacher, teacher.config
        self.register_buffer("kept", trim.index(), persistent=False)

    def forward(self, input_ids, decoder_input_ids, **kwargs):
        outputs = self.teacher(input_ids=self.kept[input_ids], decoder_input_ids=self.kept[decoder_input_ids],
                               **kwargs)
        outputs.logits = outputs.logits.index_select(-1, self.kept)
        return outputs


def trim_tokenizer(tokenizer, trim: VocabularyTrim):
    """A tokenizer of the same class over the kept ids: its files rewritten with the student's ids and loaded back.

    Raises a one-line ``ValueError`` if the reloaded tokenizer does not give each kept token its new id.
    """
    from transformers import AutoTokenizer

    check_trimmable(tokenizer)
    with tempfile.TemporaryDirectory(prefix="nmtq-trim-") as tmp:
        directory = Path(tmp)
        tokenizer.save_pretrained(directory)
        _rewrite_json(directory / "tokenizer.json", lambda data: _trim_tokenizer_json(data, trim))
        _rewrite_json(directory / VOCAB, lambda vocab: _trim_mapping(vocab, trim))
        _trim_merges_txt(directory / "merges.txt", directory / VOCAB)
        _rewrite_json(directory / "added_tokens.json", lambda vocab: _trim_mapping(vocab, trim))
        _rewrite_json(directory / files.TOKENIZER_CONFIG, lambda config: _trim_config(config, trim))
        trimmed = AutoTokenizer.from_pretrained(directory)
        for name in ("src_lang", "tgt_lang"):  # set after loading, as nmtq.conventions sets them
            if getattr(tokenizer, name, None) is not None and hasattr(trimmed, name):
                setattr(trimmed, name, getattr(tokenizer, name))
        _check_trimmed(tokenizer, trimmed, trim)
    return trimmed


def _rewrite_json(path: Path, change) -> None:
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(change(data), ensure_ascii=False), encoding="utf-8")


def _trim_mapping(vocab: dict[str, int], trim: VocabularyTrim) -> dict[str, int]:
    return {token: trim.new_ids[i] for token, i in vocab.items() if i in trim.new_ids}


def _trim_config(config: dict, trim: VocabularyTrim) -> dict:
    decoder = config.get("added_tokens_decoder")
    if decoder:
        config["added_tokens_decoder"] = {str(trim.new_ids[int(i)]): token for i, token in decoder.items()
                                          if int(i) in trim.new_ids}
    return config


def _pair(merge: str | list[str]) -> tuple[str, str]:
    a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
    return a, b


def _merged(a: str, b: str, prefix: str) -> str:
    """The token a BPE merge of ``a`` and ``b`` makes (``b`` without its continuing-subword prefix)."""
    return a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)


def _merge_kept(a: str, b: str, vocab: dict[str, int], prefix: str) -> bool:
    return a in vocab and b in vocab and _merged(a, b, prefix) in vocab


def _trim_merges_txt(path: Path, vocab_path: Path) -> None:
    """merges.txt (byte-level BPE, BART/RoBERTa) without the merges of dropped tokens; its ``#version`` kept."""
    if not (path.exists() and vocab_path.exists()):
        return
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.startswith("#") or not line.strip()
            or _merge_kept(*line.split(" ", 1), vocab, "")]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _trim_tokenizer_json(data: dict, trim: VocabularyTrim) -> dict:
    model = data["model"]
    if isinstance(model["vocab"], list):  # Unigram: the position is the id
        model["vocab"] = [entry for i, entry in enumerate(model["vocab"]) if i in trim.new_ids]
        if model.get("unk_id") is not None:
            model["unk_id"] = trim.new_ids[model["unk_id"]]
    else:
        model["vocab"] = _trim_mapping(model["vocab"], trim)
    if "merges" in model:
        prefix = model.get("continuing_subword_prefix") or ""
        model["merges"] = [merge for merge in model["merges"]
                           if _merge_kept(*_pair(merge), model["vocab"], prefix)]
    data["added_tokens"] = [{**token, "id": trim.new_ids[token["id"]]} for token in data.get("added_tokens", [])
                            if token["id"] in trim.new_ids]
    data["post_processor"] = _remap_processor(data.get("post_processor"), trim)
    if data.get("padding"):
        data["padding"]["pad_id"] = trim.new_ids[data["padding"]["pad_id"]]
    return data


def _remap_processor(processor: dict | None, trim: VocabularyTrim) -> dict | None:
    """A post-processor's special-token ids (Template, Roberta, Bert, or a Sequence of them) remapped."""
    if not processor:
        return processor
    for special in processor.get("special_tokens", {}).values():
        special["ids"] = trim.remap(special["ids"])
    for name in ("sep", "cls"):
        if name in processor:
            token, old = processor[name]
            processor[name] = [token, trim.new_ids[old]]
    processor["processors"] = [_remap_processor(p, trim) for p in processor.get("processors", [])] or None
    if processor["processors"] is None:
        del processor["processors"]
    return processor


def _check_trimmed(original, trimmed, trim: VocabularyTrim) -> None:
    old_tokens = original.convert_ids_to_tokens(list(trim.kept))
    new_tokens = trimmed.convert_ids_to_tokens(list(range(trim.size)))
    wrong = [(old, a, b) for old, a, b in zip(trim.kept, old_tokens, new_tokens) if a != b]
    if wrong:
        old, a, b = wrong[0]
        raise NmtqError(f"--trim_vocabulary: the trimmed {type(trimmed).__name__} reads id {trim.new_ids[old]} as "
                         f"{b!r}, not {a!r} ({len(wrong)} ids differ); drop --trim_vocabulary for this tokenizer")
    if len(trimmed) > trim.size:
        extra = trimmed.convert_ids_to_tokens(list(range(trim.size, len(trimmed))))
        raise NmtqError(f"--trim_vocabulary: the trimmed {type(trimmed).__name__} has {len(trimmed)} tokens for "
                         f"{trim.size} rows (it adds {extra[:3]}...); drop --trim_vocabulary for this tokenizer")
