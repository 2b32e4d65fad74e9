"""Train (or reuse) a teacher, distil and quantize students with every method, and print one table.

    nmtq table --config recipes/bible-de-en-quick.yaml          # the README's main command
    nmtq table --config recipes/bible-de-en-table.yaml          # the full 2/4/8-bit Transformer and LSTM table

A table recipe names a teacher recipe (``nmtq train``) and one or more students (a ``nmtq distill`` recipe and
fields that override it, one per student type), plus the bit widths and methods. For each student the runs are:
``kd`` (the full-precision student, distilled word by word), then for each bit width ``ptq`` and ``dq`` of that
student and ``qd`` from the teacher. Each run is an ordinary ``nmtq train`` or ``nmtq distill`` call, in its
own directory under ``output_dir``; a finished run (its ``test/metrics.json`` exists) is reused and an
interrupted one resumes from its last checkpoint, so the command can simply be started again. The table (BLEU,
chrF, perplexity, bytes on disk, compression against the fp32 teacher, wall time) goes to stdout, ``table.md``
and ``table.json``, and BLEU against bytes to ``bleu-vs-bytes.png``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .io import atomic_path, write_json_atomic, write_text_atomic

TABLE_METHODS = ("kd", "ptq", "qd", "dq")
RUN_TIME = "table-run.json"  # the wall time of the call that finished a run, so a reused run keeps it


@dataclass
class TableArguments:
    """What to train and compare; every field is also a command-line argument."""

    teacher_recipe: str = field(
        default="recipes/bible-de-en-teacher.yaml",
        metadata={"help": "Recipe of `nmtq train` for the teacher; trained unless its output_dir already holds "
                          "test/metrics.json."})
    teacher_args: str = field(default="", metadata={"help": "Fields overriding the teacher recipe, e.g. "
                                                           "'--max_steps 700 --output_dir runs/quick/teacher'."})
    students: list[str] = field(
        default_factory=lambda: ["recipes/bible-de-en-student.yaml"],
        metadata={"help": "One entry per student type: a `nmtq distill` recipe and the fields that override it, "
                          "e.g. 'recipes/bible-de-en-student.yaml --student_type lstm' (method, bits, teacher and "
                          "output_dir are set for each run)."})
    student_args: str = field(default="", metadata={"help": "Fields overriding every student recipe."})
    bits: list[int] = field(default_factory=lambda: [4], metadata={"help": "Bit widths of ptq, qd and dq."})
    methods: list[str] = field(default_factory=lambda: list(TABLE_METHODS),
                               metadata={"help": f"Methods to run, among {', '.join(TABLE_METHODS)} (kd, the "
                                                 "full-precision student, always runs: ptq and dq start from it)."})
    output_dir: str = field(default="runs/table", metadata={"help": "Where every run and the table go."})
    plot: bool = field(default=True, metadata={"help": "Draw BLEU against bytes on disk (needs matplotlib)."})

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(TABLE_METHODS))
        if unknown:
            raise ValueError(f"methods {unknown}: pass some of {', '.join(TABLE_METHODS)}")
        if not self.bits or any(not 1 <= int(b) <= 8 for b in self.bits):
            raise ValueError(f"bits={self.bits}: pass one or more widths between 1 and 8")
        self.bits = [int(b) for b in self.bits]
        if not self.students:
            raise ValueError("students is empty: name at least one `nmtq distill` recipe")


@dataclass
class Run:
    """One ``nmtq`` call of the table."""

    name: str
    student: str
    method: str
    bits: int
    argv: list[str]
    output_dir: Path


def plan(args: TableArguments) -> tuple[list[str], Path, list[Run]]:
    """The teacher's argv and directory and the student runs; every recipe is parsed, so errors come first."""
    from .args import TRAIN_ARGUMENT_CLASSES, parse_train_args
    from .distill import DISTILL_ARGUMENT_CLASSES

    teacher_argv = ["train", "--config", args.teacher_recipe, *shlex.split(args.teacher_args)]
    teacher_dir = Path(parse_train_args(teacher_argv[1:], TRAIN_ARGUMENT_CLASSES)[-1].output_dir)
    runs, out = [], Path(args.output_dir)
    for student in args.students:
        recipe, *fields = shlex.split(student)
        base = ["distill", "--config", recipe, *shlex.split(args.student_args), *fields, "--teacher", str(teacher_dir)]
        student_type = parse_train_args(base[1:], DISTILL_ARGUMENT_CLASSES)[1].student_type
        if any(r.student == student_type for r in runs):
            raise ValueError(f"two students are of type {student_type!r}: give each type one entry")
        kd_dir = out / student_type / "kd"
        runs.append(Run(f"{student_type} KD fp32", student_type, "kd", 32, base, kd_dir))
        for bits in args.bits:
            for method in ("ptq", "qd", "dq"):
                if method in args.methods:
                    start = ["--student_name_or_path", str(kd_dir)] if method in ("ptq", "dq") else []
                    runs.append(Run(f"{student_type} {method.upper()} {bits}-bit", student_type, method, bits,
                                    [*base, *start, "--bits", str(bits)], out / student_type / f"{method}{bits}"))
    for run in runs:
        run.argv += ["--method", run.method, "--output_dir", str(run.output_dir)]
        parse_train_args(run.argv[1:], DISTILL_ARGUMENT_CLASSES)  # a bad field fails now, not an hour in
    return teacher_argv, teacher_dir, runs


def _call(argv: list[str], output_dir: Path, what: str, log) -> tuple[dict, float | None]:
    """Run ``nmtq ARGV`` unless it has finished before; resume it from its last checkpoint if it was cut off.

    Returns the run's test metrics and its wall time in seconds (that of the call that finished it, kept in
    ``RUN_TIME``; None for a run finished by another command)."""
    from .cli import main
    from .train import last_complete_checkpoint

    metrics_file, time_file = output_dir / "test" / "metrics.json", output_dir / RUN_TIME
    if metrics_file.is_file():
        log(f"{what}: finished before, reusing {output_dir}")
        seconds = json.loads(time_file.read_text())["seconds"] if time_file.is_file() else None
        return json.loads(metrics_file.read_text()), seconds
    if last_complete_checkpoint(str(output_dir)):
        argv = [*argv, "--resume_from_checkpoint", "last"]
    start = time.monotonic()
    if main(argv) != 0:
        raise ValueError(f"{what} failed (see the error above): nmtq {shlex.join(argv)}")
    seconds = time.monotonic() - start
    write_json_atomic(time_file, {"seconds": round(seconds, 1), "hardware": hardware()})
    return json.loads(metrics_file.read_text()), seconds


def hardware() -> str:
    """This machine, in one line."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def make_table(args: TableArguments) -> dict:
    """Run everything the arguments ask for (reusing finished runs) and write the table; return its rows."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as err:
            raise ValueError("plot=true needs matplotlib: pip install 'nmtq[plot]', or pass --plot false") from err
    teacher_argv, teacher_dir, runs = plan(args)
    from .methods import fp32_size
    from .models import load_model

    out = Path(args.output_dir)
    started, total = time.monotonic(), len(runs) + 1

    def log(message: str) -> None:
        print(f"[nmtq table {time.monotonic() - started:6.0f} s] {message}", flush=True)

    log(f"1/{total}: teacher ({teacher_dir})")
    teacher, seconds = _call(teacher_argv, teacher_dir, "teacher", log)
    model = load_model(teacher_dir)
    teacher_row = {"name": "teacher fp32", "student": "teacher", "method": "teacher", "bits": 32,
                   "encoder_layers": model.config.encoder_layers, "decoder_layers": model.config.decoder_layers,
                   "bytes": fp32_size(model).total_bytes, "ratio_vs_fp32_teacher": 1.0, "seconds": seconds,
                   **{k: teacher[k] for k in ("bleu", "chrf", "perplexity")}}
    rows = [teacher_row]
    for i, run in enumerate(runs, start=2):
        log(f"{i}/{total}: {run.name} ({run.output_dir})")
        metrics, seconds = _call(run.argv, run.output_dir, run.name, log)
        rows.append({"name": run.name, "student": run.student, "method": run.method, "bits": metrics["bits"],
                     "seconds": seconds, **{k: metrics.get(k) for k in (
                         "encoder_layers", "decoder_layers", "bleu", "chrf", "perplexity", "bytes", "huffman_bytes",
                         "ratio_vs_fp32_teacher")}})
    wall = time.monotonic() - started
    result = {"arguments": dataclasses.asdict(args), "hardware": hardware(), "wall_seconds": round(wall, 1),
              "rows": rows}
    markdown = format_table(result)
    write_json_atomic(out / "table.json", result)
    write_text_atomic(out / "table.md", markdown + "\n")
    if args.plot:
        plot(rows, out / "bleu-vs-bytes.png")
    print(markdown, flush=True)
    log(f"done: {out / 'table.md'}" + (f", {out / 'bleu-vs-bytes.png'}" if args.plot else ""))
    return result


def format_table(result: dict) -> str:
    """The rows as a markdown table, then the hardware and the wall time."""
    lines = ["| model | layers | bits | BLEU | chrF | perplexity | bytes | vs fp32 teacher | Huffman bytes | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        huffman = f"{r['huffman_bytes']:,}" if r.get("huffman_bytes") else "-"
        minutes = f"{r['seconds'] / 60:.1f}" if r.get("seconds") is not None else "-"
        lines.append(f"| {r['name']} | {r['encoder_layers']}+{r['decoder_layers']} | {r['bits']} | {r['bleu']:.1f} "
                     f"| {r['chrf']:.1f} | {r['perplexity']:.2f} | {r['bytes']:,} | {r['ratio_vs_fp32_teacher']:.1f}x "
                     f"| {huffman} | {minutes} |")
    lines += ["", f"{result['hardware']}; this command took {result['wall_seconds'] / 60:.1f} minutes (runs "
                  "finished by an earlier call are reused, with the minutes they took then)."]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """BLEU against bytes on disk (log scale), one point per model, the teacher included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"teacher": "*", "kd": "o", "ptq": "s", "qd": "^", "dq": "D"}
    students = sorted({r["student"] for r in rows if r["student"] != "teacher"})
    colors = {"teacher": "black", **{s: f"C{i}" for i, s in enumerate(students)}}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r in rows:
        label = f"{r['student']} {r['method'].upper()}" if r["method"] != "teacher" else "teacher fp32"
        ax.scatter(r["bytes"], r["bleu"], marker=markers[r["method"]], color=colors[r["student"]], s=80,
                   label=label)
        ax.annotate(f"{r['bits']}b" if r["bits"] < 32 else "fp32", (r["bytes"], r["bleu"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("bytes on disk (log scale)")
    ax.set_ylabel("BLEU (sacreBLEU, test)")
    ax.set_title("BLEU against size: teacher and distilled, quantized students")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
