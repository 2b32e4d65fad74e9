"""Translation speed on this CPU: transformers fp32 against CTranslate2 int8, BLEU beside each; a markdown table.

    .venv/bin/python scripts/bench_ct2.py                 # the Bible de-en test set (verses of at most 30 pieces)
    .venv/bin/python scripts/bench_ct2.py --quick         # 16 sentences, to check that it runs
    .venv/bin/python scripts/bench_ct2.py --student runs/students/qd4 \\
        --student-absmax runs/students/absmax8 --markdown benchmarks/ct2-speed.md   # and the absmax student

Rows: the teacher and the student in transformers (fp32 ``generate``), the student and the teacher converted to
CTranslate2 int8 (absmax per output row), and the student in CTranslate2 float32, which separates what the
engine's beam search changes from what int8 costs. ``--student`` is any student folder (an ``nmtq distill``
output_dir, full precision or quantized, or an ``nmtq export`` folder); ``--int8-bits`` sets the bits of its and
the teacher's int8 codes (by default the widest this CPU multiplies exactly: 8, CTranslate2's own rounding, or 7
on x86 CPUs without VNNI). ``--student-absmax`` adds a student distilled with CTranslate2's kind of scheme
(``nmtq distill --bits B --bucket_size row --scaling absmax``, B = 8 or 7) in transformers and in CTranslate2
int8 (its own B-bit codes), and the BLEU its conversion loses.

Same sentences, beam, batch and threads for all; speed counts the target pieces of the hypotheses (``</s>``
included) per second of decoding, after one warm-up batch, as ``nmtq evaluate`` does. With ``--threads`` above 1,
the CTranslate2 int8 students get a second row where the threads decode that many batches at once, one thread each
(``Ct2Translator(inter_threads=...)``, ``nmtq evaluate --inter-threads``); every other row decodes one batch at a
time on all the threads. The whole set is decoded ``--repeats`` times, in rounds (one pass of every row a round, so
a slow spell of the machine slows a whole round alike): the table gives the median tokens/s, its range, and the
median over the rounds of each row's speed over the teacher's in the same round. BLEU and chrF are those of the
first pass (decoding is deterministic: the repeats must give the same hypotheses, or the script stops). The targets:
the int8 student at least 5x the fp32 teacher's tokens/s, and at most 0.3 BLEU below the same student in
transformers (for the absmax student too). Under the table, the CPU (AVX2, AVX-512, VNNI), threads and versions it
was measured with (:mod:`nmtq.env`). ``--markdown PATH`` also writes the table there and the numbers as JSON beside
it, with the whole ``environment``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nmtq.ct2 import Ct2Translator, convert_to_ctranslate2
from nmtq.ct2_int8 import student_int8_bits
from nmtq.data import load_corpus
from nmtq.env import describe_environment, environment
from nmtq.evaluation import corpus_scores, keep_short_pairs, translate
from nmtq.exported import export_config, load_exported
from nmtq.io import write_json_atomic, write_text_atomic
from nmtq.models import load_model
from nmtq.tokenizer import load_tokenizer

TARGET_BLEU_LOSS = 0.3


def measure(decoders: dict[str, tuple[Callable[[list[str]], list[str]], Any]], sources: list[str],
            references: list[str], batch_size: int, repeats: int = 1) -> dict[str, dict]:
    """Decode ``sources`` ``repeats`` times with each ``(decode, tokenizer)``, in rounds: one pass of every decoder
    a round, after a warm-up batch each, so a slow spell of the machine slows all the rows of its round alike.

    Per row: the median speed and its range, ``speedup``, the median over the rounds of the row's speed over the
    first decoder's speed in the same round, and the scores of the first pass (the others must decode the same).
    """
    for decode, _ in decoders.values():
        decode(sources[:batch_size])  # warm-up: thread pools, allocator, caches
    seconds: dict[str, list[float]] = {name: [] for name in decoders}
    hypotheses: dict[str, list[str]] = {}
    for repeat in range(repeats):
        for name, (decode, _) in decoders.items():
            start = time.perf_counter()
            output = decode(sources)
            seconds[name].append(time.perf_counter() - start)
            if name not in hypotheses:
                hypotheses[name] = output
            elif output != hypotheses[name]:
                changed = sum(a != b for a, b in zip(output, hypotheses[name]))
                raise RuntimeError(f"{name}: repeat {repeat + 1} changed {changed} of {len(sources)} hypotheses: "
                                   "decoding is not deterministic, so one BLEU does not describe the repeats")
    speeds, rows = {}, {}
    for name, (_, tokenizer) in decoders.items():
        tokens = sum(len(ids) for ids in tokenizer(text_target=hypotheses[name])["input_ids"])
        speeds[name] = [tokens / s for s in seconds[name]]
        scores = corpus_scores(hypotheses[name], references)
        rows[name] = {"tokens_per_second": statistics.median(speeds[name]), "tokens_per_second_min": min(speeds[name]),
                      "tokens_per_second_max": max(speeds[name]),
                      "sentences_per_second": len(sources) / statistics.median(seconds[name]),
                      "seconds": seconds[name], "target_tokens": tokens, "bleu": scores["bleu"],
                      "chrf": scores["chrf"], "hypotheses": hypotheses[name]}
    base = speeds[next(iter(decoders))]
    for name, row in rows.items():
        row["speedup"] = statistics.median(a / b for a, b in zip(speeds[name], base))
    return rows


def load_any(model_dir: str | Path):
    """``(model, tokenizer)`` of a model folder or of an ``nmtq export`` folder."""
    if export_config(model_dir) is not None:
        return load_exported(model_dir)
    return load_model(model_dir).eval(), load_tokenizer(model_dir)


def markdown(rows: dict[str, dict], header: str, repeats: int, bleu_lost: dict[str, float], measured_on: str) -> str:
    lines = [header, "", f"| model, engine | target tokens/s (median of {repeats}) | min-max | sentences/s | BLEU | "
             "chrF | speed vs fp32 teacher (median of the rounds) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['tokens_per_second']:.0f} | {row['tokens_per_second_min']:.0f}-"
                     f"{row['tokens_per_second_max']:.0f} | {row['sentences_per_second']:.1f} | {row['bleu']:.1f} | "
                     f"{row['chrf']:.1f} | {row['speedup']:.1f}x |")
    lines += ["", f"Measured on: {measured_on}", ""]
    for label, lost in bleu_lost.items():
        lines.append(f"BLEU lost to CTranslate2 int8 by the {label}: {lost:.2f} (target: at most {TARGET_BLEU_LOSS})")
    return "\n".join(lines) + "\n"


def bleu_pairs(absmax: str | None) -> dict[str, tuple[str, str]]:
    """Each student's transformers row and its CTranslate2 int8 row (``absmax``: the absmax student's scheme)."""
    pairs = {"student": ("student, transformers fp32", "student, CTranslate2 int8")}
    if absmax is not None:
        pairs[f"student distilled with {absmax}"] = (f"student ({absmax}), transformers fp32",
                                                     f"student ({absmax}), CTranslate2 int8")
    return pairs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="runs/bible-de-en-teacher")
    parser.add_argument("--student", default="runs/table/transformer/kd", help="any student folder")
    parser.add_argument("--student-absmax", help="a student distilled with absmax per row at 8 or fewer bits "
                                                 "(CTranslate2's kind of int8 scheme): two more rows and its BLEU "
                                                 "lost to the conversion")
    parser.add_argument("--int8-bits", type=int, help="bits of the int8 codes of --student and --teacher (2-8; "
                                                      "default: the widest this CPU multiplies exactly, 8 or 7)")
    parser.add_argument("--data", default="bible:de-en")
    parser.add_argument("--max-length", type=int, default=30, help="keep pairs of at most this many pieces a side")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="decode the whole set this many times (median speed)")
    parser.add_argument("--quick", action="store_true", help="16 sentences: a smoke run")
    parser.add_argument("--markdown", type=Path, help="also write the table here (and the JSON beside it)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: decode at least once")
    absmax = None
    if args.student_absmax:
        bits = student_int8_bits(args.student_absmax)
        if bits is None:
            parser.error(f"--student-absmax {args.student_absmax} is not a student quantized with absmax per row at 8 "
                         "or fewer bits: distill one with --bucket_size row --scaling absmax --bits 8 (or 7)")
        absmax = f"{bits}-bit absmax per row"
    torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(args.student)
    dataset, _ = load_corpus(args.data, "test")
    sources, references = keep_short_pairs(tokenizer, list(dataset["source"]), list(dataset["target"]),
                                           args.max_length)
    if args.quick:
        sources, references = sources[:16], references[:16]
    decoding = dict(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    def transformers_row(model_dir: str):
        model, tok = load_any(model_dir)
        return lambda s: translate(model, tok, s, progress=False, **decoding), tok

    def ct2_row(ct2_dir: Path, compute_type: str, parallel: bool = False):
        translator = (Ct2Translator(ct2_dir, compute_type, intra_threads=1, inter_threads=args.threads) if parallel
                      else Ct2Translator(ct2_dir, compute_type, intra_threads=args.threads))
        return lambda s: translator.translate(s, **decoding), translator.tokenizer

    parallel = f"{args.threads} batches at once" if args.threads > 1 else None
    decoders = {}
    with tempfile.TemporaryDirectory(prefix="bench-ct2-") as tmp:
        try:  # every conversion first: a model CTranslate2 cannot run stops the script before any timing
            student_ct2 = convert_to_ctranslate2(args.student, Path(tmp) / "student", "int8", int8_bits=args.int8_bits)
            teacher_ct2 = convert_to_ctranslate2(args.teacher, Path(tmp) / "teacher", "int8", int8_bits=args.int8_bits)
            student_float32 = convert_to_ctranslate2(args.student, Path(tmp) / "student-float32", "float32")
            absmax_ct2 = (convert_to_ctranslate2(args.student_absmax, Path(tmp) / "absmax", "int8", int8_bits=bits)
                          if args.student_absmax else None)  # its own codes, even where this CPU can saturate them
        except ValueError as err:
            parser.error(str(err))
        decoders["teacher, transformers fp32"] = transformers_row(args.teacher)
        decoders["student, transformers fp32"] = transformers_row(args.student)
        decoders["student, CTranslate2 int8"] = ct2_row(student_ct2, "int8")
        if parallel:
            decoders[f"student, CTranslate2 int8, {parallel}"] = ct2_row(student_ct2, "int8", parallel=True)
        decoders["student, CTranslate2 float32"] = ct2_row(student_float32, "float32")
        decoders["teacher, CTranslate2 int8"] = ct2_row(teacher_ct2, "int8")
        if absmax_ct2 is not None:
            fp32, int8 = bleu_pairs(absmax)[f"student distilled with {absmax}"]
            decoders[fp32] = transformers_row(args.student_absmax)
            decoders[int8] = ct2_row(absmax_ct2, "int8")
            if parallel:
                decoders[f"{int8}, {parallel}"] = ct2_row(absmax_ct2, "int8", parallel=True)
        rows = measure(decoders, sources, references, args.batch_size, args.repeats)

    header = (f"{len(sources)} sentences of {args.data} (test, at most {args.max_length} pieces), beam "
              f"{args.num_beams}, batch {args.batch_size}, {args.threads} threads, {args.repeats} rounds, "
              f"int8 codes of the student and teacher: {args.int8_bits or 8} bits")
    bleu_lost = {label: rows[fp32]["bleu"] - rows[int8]["bleu"] for label, (fp32, int8) in bleu_pairs(absmax).items()}
    env = environment()
    table = markdown(rows, header, args.repeats, bleu_lost, describe_environment(env))
    print(table, end="")
    payload = {"setup": {"teacher": args.teacher, "student": args.student, "student_absmax": args.student_absmax,
                         "data": args.data, "sentences": len(sources), "max_length": args.max_length,
                         "int8_bits": args.int8_bits or 8, "num_beams": args.num_beams,
                         "batch_size": args.batch_size, "threads": args.threads,
                         "repeats": args.repeats},
               "rows": {name: {k: v for k, v in row.items() if k != "hypotheses"} for name, row in rows.items()},
               "bleu_lost_to_int8": bleu_lost, "target_bleu_loss": TARGET_BLEU_LOSS, "environment": env}
    if args.markdown:
        write_text_atomic(args.markdown, table)
        write_json_atomic(args.markdown.with_suffix(".json"), payload)
    return {**payload, "hypotheses": {name: row["hypotheses"] for name, row in rows.items()}}


if __name__ == "__main__":
    main()
