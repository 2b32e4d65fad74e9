"""Sizes on disk of distilled students: each exported bit-packed and Huffman-coded, beside the size accounting.

    .venv/bin/python scripts/bench_export.py --teacher runs/bible-de-en-teacher runs/students/qd4 runs/students/qd2 \\
        --markdown benchmarks/export-sizes.md

Each RUN is the output_dir of a quantized ``nmtq distill`` (qd, dq or ptq), which holds the exact integer codes
(``quantized.safetensors``). Every run is checked before anything is exported. Each student is exported twice with
``nmtq.export.export_model``, into ``OUT/<name>-packed`` and ``OUT/<name>-huffman``, and measured:

* bits and method, and BLEU from the run's ``test/metrics.json``;
* the accounted bytes (``nmtq.quant.size``: codes at their bits, bucket scales and points, the full-precision rest;
  Huffman: the codes Huffman-coded, with their code tables) against the real bytes of each export's
  ``model.safetensors`` (``os.path.getsize``), and their relative difference (the issue's target: within 2%);
* the Huffman-coded codes against the entropy bound, "within one bit per weight of the entropy, plus the scale
  overhead": the codeword bits of the stored streams (the code lengths stored in the export times the counts of the
  codes) must be at most ``entropy + 1`` bit per coded weight, the entropy being ``sum over tensors of kept * H``
  with ``H`` the entropy of the tensor's code histogram (``SizeReport``'s per-tensor ``entropy``). What the bound
  leaves out is reported beside it: code tables, bucket scales and points, mask bitmaps of pruned weights;
* the whole export folder (model card, config, tokenizer files included), a separate column;
* the ratio of the fp32 teacher's ``model.safetensors`` to each export's.

The teacher gets a row too: its ``model.safetensors`` on disk against ``nmtq.distill.fp32_size``. A markdown table
goes to stdout (and to ``--markdown``), with the CPU, threads and versions under it, the numbers as JSON next to it
(``--markdown`` with ``.json``, else ``OUT/bench-export.json``), with the whole ``environment`` (:mod:`nmtq.env`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from nmtq.codes import HEADER_KEY, read_codes
from nmtq.distill import fp32_size
from nmtq.env import describe_environment, environment
from nmtq.export import export_model
from nmtq.files import CODES, QUANTIZATION, WEIGHTS, metrics_file
from nmtq.io import write_json_atomic, write_text_atomic
from nmtq.models import load_model
from nmtq.quant import size_report
from nmtq.quant.huffman import symbol_counts

TARGET_DIFF = 0.02  # the target: the file within 2% of the accounting


def check_runs(teacher: Path, runs: list[Path]) -> None:
    """Refuse, before anything is exported, a teacher without weights or a run without exact codes."""
    if not (teacher / WEIGHTS).is_file():
        raise ValueError(f"{teacher} has no {WEIGHTS}: pass the fp32 teacher's directory with --teacher")
    for run in runs:
        if not run.is_dir():
            raise ValueError(f"{run} is not a directory: pass output_dirs of `nmtq distill`")
        if not (run / CODES).is_file():
            why = ("it predates the exact codes that `nmtq distill` now saves" if (run / QUANTIZATION).is_file()
                   else "it is not a quantized student (a full-precision fp or kd run, or not a distill output_dir)")
            raise ValueError(f"{run} has no {CODES} ({why}): re-run `nmtq distill` with a quantized method "
                             "(--method qd, dq or ptq) to write the codes, then benchmark its output_dir")


def export_names(runs: list[Path]) -> list[str]:
    """The shortest path suffixes that tell the runs apart ("qd4"; "transformer-qd", "lstm-qd" for two "qd")."""
    parts = [run.resolve().parts for run in runs]
    for k in range(1, max(map(len, parts)) + 1):
        names = ["-".join(p[-k:]).lstrip("/-") or "root" for p in parts]
        if len(set(names)) == len(names):
            return names
    raise ValueError(f"the same run is given twice: {[str(r) for r in runs]}")


def read_metrics(model_dir: Path) -> dict:
    path = metrics_file(model_dir)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def folder_bytes(folder: Path) -> int:
    return sum(os.path.getsize(p) for p in folder.rglob("*") if p.is_file())


def huffman_check(weights_file: Path, codes: dict, report) -> dict:
    """The Huffman-coded codes of an export against the entropy of the codes, and what the bound leaves out.

    The entropy comes from ``report`` (:func:`nmtq.quant.size_report` of ``codes``): ``entropy_bits`` counts the
    codes' entropy and the mask bitmaps, so the bitmaps are taken off. The codeword bits are those of the streams
    in ``weights_file``: the stored code lengths times the counts of the kept codes (``symbol_counts``).
    """
    from safetensors import safe_open

    payload = stream_bytes = table_bytes = coded = 0
    with safe_open(str(weights_file), framework="pt") as f:
        header = json.loads(bytes(f.get_tensor(HEADER_KEY).tolist()))["tensors"]  # the decoding header
        for name, info in header.items():
            q = codes[name]
            kept = q.codes if q.mask is None else q.codes[q.mask.reshape(-1)]
            lengths = f.get_tensor(f"{name}.huffman_lengths").long()
            stream = math.prod(f.get_slice(f"{name}.huffman_stream").get_shape())
            bits = int(symbol_counts(kept, lengths.numel()) @ lengths) if kept.numel() else 0
            if info["stored_codes"] != kept.numel() or math.ceil(bits / 8) != stream:
                raise RuntimeError(f"{weights_file}: the Huffman stream of {name} ({stream} bytes, "
                                   f"{info['stored_codes']} codes) does not hold the {kept.numel()} codes of the run")
            payload, stream_bytes, coded = payload + bits, stream_bytes + stream, coded + kept.numel()
            table_bytes += lengths.numel()
    entropy = report.entropy_bits - report.mask_bits
    return {"codeword_bits": payload, "stream_bytes": stream_bytes, "coded_weights": coded,
            "entropy_bits": entropy, "bound_bits": entropy + coded, "within_bound": payload <= entropy + coded,
            "bits_per_weight": payload / coded if coded else 0.0,
            "entropy_per_weight": entropy / coded if coded else 0.0,
            "left_out_bytes": {"code_tables": table_bytes, "scales_and_points": math.ceil(report.overhead_bits / 8),
                               "mask_bitmaps": math.ceil(report.mask_bits / 8)}}


def bits_label(codes: dict) -> tuple[str, float]:
    """"4", or "2-8 (mean 3.52)" where the tensors differ; and the mean bits per weight."""
    numel = sum(q.codes.numel() for q in codes.values())
    mean = sum(q.bits * q.codes.numel() for q in codes.values()) / numel
    low, high = min(q.bits for q in codes.values()), max(q.bits for q in codes.values())
    return (str(low) if low == high else f"{low}-{high} (mean {mean:.2f})"), mean


def file_row(accounted: int, file: Path) -> dict:
    on_disk = os.path.getsize(file)
    return {"accounted_bytes": accounted, "file_bytes": on_disk, "diff": on_disk / accounted - 1,
            "within_target": abs(on_disk / accounted - 1) <= TARGET_DIFF}


def measure_student(run: Path, name: str, out: Path, teacher_bytes: int) -> dict:
    metrics, codes = read_metrics(run), read_codes(run / CODES).quantized
    report = size_report(codes, {})  # per-tensor entropy, scales, points, masks; the totals come from the exports
    label, mean_bits = bits_label(codes)
    row = {"name": name, "run": str(run), "method": metrics.get("method"), "bits": label, "mean_bits": mean_bits,
           "bleu": metrics.get("bleu")}
    for storage in ("packed", "huffman"):
        export = export_model(run, out / f"{name}-{storage}", huffman=storage == "huffman")
        weights = export.out_dir / WEIGHTS
        row[storage] = {"dir": str(export.out_dir), **file_row(export.size.accounted_bytes, weights),
                        "folder_bytes": folder_bytes(export.out_dir)}
        row[storage]["vs_fp32_teacher"] = teacher_bytes / row[storage]["file_bytes"]
    row["huffman"]["entropy"] = huffman_check(out / f"{name}-huffman" / WEIGHTS, codes, report)
    return row


def measure_teacher(teacher: Path) -> dict:
    metrics = read_metrics(teacher)
    row = {"name": "teacher (fp32)", "run": str(teacher), "method": "fp32", "bits": "32", "mean_bits": 32.0,
           "bleu": metrics.get("bleu")}
    row["packed"] = file_row(fp32_size(load_model(teacher)).total_bytes, teacher / WEIGHTS)
    row["packed"]["vs_fp32_teacher"] = 1.0
    return row


def markdown(teacher: dict, students: list[dict], out: Path, measured_on: str) -> str:
    def num(x) -> str:
        return f"{x:,}"

    def diff(d: dict) -> str:
        return f"{d['diff']:+.2%}"

    lines = [f"Sizes on disk of the distilled students (exports in `{out}`); bytes; diff = {WEIGHTS} against "
             f"the accounting (target: within {TARGET_DIFF:.0%}).", "",
             f"| model | method | bits | BLEU | accounted | {WEIGHTS} | diff | Huffman accounted | Huffman "
             f"{WEIGHTS} | diff | Huffman b/w (entropy) | within entropy + 1 b/w | export folder (packed / "
             "Huffman) | vs fp32 teacher (packed / Huffman) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    def bleu(row: dict) -> str:
        return "—" if row["bleu"] is None else f"{row['bleu']:.2f}"

    p = teacher["packed"]
    lines.append(f"| {teacher['name']} | {teacher['method']} | 32 | {bleu(teacher)} | {num(p['accounted_bytes'])} | "
                 f"{num(p['file_bytes'])} | {diff(p)} | — | — | — | — | — | — | 1.00x |")
    for r in students:
        p, h, e = r["packed"], r["huffman"], r["huffman"]["entropy"]
        lines.append(
            f"| {r['name']} | {r['method'] or '—'} | {r['bits']} | {bleu(r)} | {num(p['accounted_bytes'])} | "
            f"{num(p['file_bytes'])} | {diff(p)} | {num(h['accounted_bytes'])} | {num(h['file_bytes'])} | {diff(h)} "
            f"| {e['bits_per_weight']:.3f} ({e['entropy_per_weight']:.3f}) | {'yes' if e['within_bound'] else 'NO'} "
            f"| {num(p['folder_bytes'])} / {num(h['folder_bytes'])} "
            f"| {p['vs_fp32_teacher']:.2f}x / {h['vs_fp32_teacher']:.2f}x |")
    lines += ["", f"Measured on: {measured_on}", "",
              "Accounted: `nmtq.quant.size` (codes at their bits or Huffman-coded with their tables, bucket scales "
              "and points, mask bitmaps, the full-precision rest); the file adds the safetensors header. Huffman b/w: "
              "codeword bits of the stored streams per coded weight, beside the entropy of the codes; the bound "
              "leaves out the code tables, scales and points and mask bitmaps (in the JSON)."]
    for r in students:
        left = r["huffman"]["entropy"]["left_out_bytes"]
        lines.append(f"- {r['name']}: code tables {num(left['code_tables'])} B, scales and points "
                     f"{num(left['scales_and_points'])} B, mask bitmaps {num(left['mask_bitmaps'])} B")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="output_dirs of quantized `nmtq distill`")
    parser.add_argument("--teacher", type=Path, default=Path("runs/bible-de-en-teacher"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-export"), help="where the exports go")
    parser.add_argument("--markdown", type=Path, help="also write the table here (and the JSON beside it)")
    args = parser.parse_args(argv)
    try:
        check_runs(args.teacher, args.runs)
        names = export_names(args.runs)
        teacher = measure_teacher(args.teacher)
        students = [measure_student(run, name, args.out, teacher["packed"]["file_bytes"])
                    for run, name in zip(args.runs, names)]
    except ValueError as err:
        parser.error(str(err))
    env = environment()
    table = markdown(teacher, students, args.out, describe_environment(env))
    print(table, end="")
    payload = {"teacher": teacher, "students": students, "target_diff": TARGET_DIFF, "environment": env}
    json_path = args.markdown.with_suffix(".json") if args.markdown else args.out / "bench-export.json"
    if args.markdown:
        write_text_atomic(args.markdown, table)
    write_json_atomic(json_path, payload)
    return payload


if __name__ == "__main__":
    main()
