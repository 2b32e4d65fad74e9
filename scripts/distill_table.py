"""Distil and quantize students of a trained teacher with every method; print one table of BLEU against bytes.

    .venv/bin/python scripts/distill_table.py --teacher runs/bible-de-en-teacher --bits 4 2

Runs ``nmtq distill --config RECIPE`` for: a full-precision KD student, then for each bit width PTQ of that
student, quantized distillation (QD) from the teacher, and differentiable quantization (DQ) of the KD
student's points. Every run's metrics come from its own ``test/metrics.json``; the table goes to stdout and
to ``OUTPUT/table.md``. Extra ``--field value`` pairs after ``--`` go to every run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nmtq.cli import main as nmtq
from nmtq.io import write_text_atomic


def run(recipe: str, teacher: str, out: Path, method: str, bits: int | None, extra: list[str],
        student: Path | None = None) -> dict:
    metrics_file = out / "test" / "metrics.json"
    if not metrics_file.exists():  # finished runs are kept: the script can be re-run after an interruption
        argv = ["distill", "--config", recipe, "--teacher", teacher, "--method", method, "--output_dir", str(out),
                *(["--bits", str(bits)] if bits else []), *extra]
        if student is not None:
            argv += ["--student_name_or_path", str(student)]
        if nmtq(argv) != 0:
            raise SystemExit(f"nmtq {' '.join(argv)} failed")
    return json.loads(metrics_file.read_text())


def row(name: str, m: dict) -> str:
    huffman = f"{m['huffman_bytes']:,}" if m.get("huffman_bytes") else "-"
    return (f"| {name} | {m.get('encoder_layers', '')}+{m.get('decoder_layers', '')} | {m['bits']} | {m['bleu']:.1f} "
            f"| {m['chrf']:.1f} | {m['perplexity']:.2f} | {m['bytes']:,} | {m['ratio_vs_fp32_teacher']:.1f}x "
            f"| {huffman} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="runs/bible-de-en-teacher")
    parser.add_argument("--recipe", default="recipes/bible-de-en-student.yaml")
    parser.add_argument("--output", default="runs/students")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    parser.add_argument("extra", nargs="*", help="fields passed to every run, after --")
    args = parser.parse_args()
    out = Path(args.output)
    teacher = json.loads((Path(args.teacher) / "test" / "metrics.json").read_text())
    kd = run(args.recipe, args.teacher, out / "kd", "kd", None, args.extra)
    config = json.loads((Path(args.teacher) / "config.json").read_text())
    layers = {"encoder_layers": config["encoder_layers"], "decoder_layers": config["decoder_layers"]}
    rows = [row("teacher fp32", {**teacher, **layers, "bits": 32, "bytes": kd["teacher_fp32_bytes"],
                                 "ratio_vs_fp32_teacher": 1.0}),
            row("student fp32 (KD)", kd)]
    for bits in args.bits:
        rows.append(row(f"PTQ {bits}-bit", run(args.recipe, args.teacher, out / f"ptq{bits}", "ptq", bits,
                                               args.extra, out / "kd")))
        rows.append(row(f"QD {bits}-bit", run(args.recipe, args.teacher, out / f"qd{bits}", "qd", bits, args.extra)))
        rows.append(row(f"DQ {bits}-bit", run(args.recipe, args.teacher, out / f"dq{bits}", "dq", bits, args.extra,
                                              out / "kd")))
    header = ["| model | layers | bits | BLEU | chrF | perplexity | bytes | vs fp32 teacher | Huffman bytes |",
              "|---|---|---|---|---|---|---|---|---|"]
    table = "\n".join(header + rows)
    print(table)
    write_text_atomic(out / "table.md", table + "\n")


if __name__ == "__main__":
    main()
