"""Train (or reuse) a teacher, distil and quantize students with every method, and print one table.

    nmtq table --config recipes/bible-de-en-quick.yaml          # the README's main command
    nmtq table --config recipes/bible-de-en-table.yaml          # the full 2/4/8-bit Transformer and LSTM table
    nmtq table --config recipes/digits-table.yaml               # images: CIFAR ResNets on the embedded digits

A table recipe names a teacher recipe (``nmtq train``) and one or more students (a ``nmtq distill`` recipe and
fields that override it, one per student type), plus the bit widths and methods. For each student the runs are:
``kd`` (the full-precision student, distilled word by word), then for each bit width ``ptq`` and ``dq`` of that
student and ``qd`` from the teacher. Each run is an ordinary ``nmtq train`` or ``nmtq distill`` call, in its
own directory under ``output_dir``; a finished run (its ``test/metrics.json`` exists) is reused and an
interrupted one resumes from its last checkpoint, so the command can simply be started again. The table (BLEU,
chrF, perplexity, bytes on disk, compression against the fp32 teacher, wall time) goes to stdout, ``table.md``
and ``table.json`` (with the machine and versions it was measured on: :mod:`nmtq.env`), and BLEU against bytes to
``bleu-vs-bytes.png``.

With ``task: images`` every run is an ``nmtq distill-images`` call (the teacher one with ``--method fp``), the
student key is its architecture and depth, and the table gives top-1 accuracy (plot: ``accuracy-vs-bytes.png``).
``fp`` in ``methods`` adds the student trained on the labels alone, to show what distillation adds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .commands import parse_recipe, run_recipe
from .env import describe_environment, environment
from .errors import NmtqError
from .io import atomic_path, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

TABLE_METHODS = ("fp", "kd", "ptq", "qd", "dq")


@dataclass(frozen=True)
class Task:
    """What differs between translation and image tables: the commands, the metrics and the model's shape."""

    teacher_command: str
    command: str
    metrics: tuple[tuple[str, str, str], ...]  # (column, metrics key, format)
    shape_column: str


TASKS = {
    "translation": Task("train", "distill", (("BLEU", "bleu", ".1f"), ("chrF", "chrf", ".1f"),
                                             ("perplexity", "perplexity", ".2f")), "layers"),
    "images": Task("distill-images", "distill-images", (("top-1 %", "accuracy", ".2f"),), "architecture"),
}


@dataclass
class TableArguments:
    """What to train and compare; every field is also a command-line argument."""

    task: str = field(default="translation", metadata={"help": f"One of {', '.join(TASKS)}."})
    teacher_recipe: str = field(
        default="recipes/bible-de-en-teacher.yaml",
        metadata={"help": "Recipe of `nmtq train` for the teacher; trained unless its output_dir already holds "
                          f"{files.TEST_DIR}/{files.METRICS}."})
    teacher_args: str = field(default="", metadata={"help": "Fields overriding the teacher recipe, e.g. "
                                                           "'--max_steps 700 --output_dir runs/quick/teacher'."})
    students: list[str] = field(
        default_factory=lambda: ["recipes/bible-de-en-student.yaml"],
        metadata={"help": "One entry per student type: a `nmtq distill` recipe and the fields that override it, "
                          "e.g. 'recipes/bible-de-en-student.yaml --student_type lstm' (method, bits, teacher and "
                          "output_dir are set for each run)."})
    student_args: str = field(default="", metadata={"help": "Fields overriding every student recipe."})
    bits: list[int] = field(default_factory=lambda: [4], metadata={"help": "Bit widths of ptq, qd and dq."})
    methods: list[str] = field(default_factory=lambda: ["kd", "ptq", "qd", "dq"],
                               metadata={"help": f"Methods to run, among {', '.join(TABLE_METHODS)} (kd, the "
                                                 "full-precision student, always runs: ptq and dq start from it; "
                                                 "fp: the student on the labels alone)."})
    output_dir: str = field(default="runs/table", metadata={"help": "Where every run and the table go."})
    plot: bool = field(default=True, metadata={"help": "Draw BLEU against bytes on disk (needs matplotlib)."})

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise NmtqError(f"task={self.task!r}: pass one of {', '.join(TASKS)}")
        unknown = sorted(set(self.methods) - set(TABLE_METHODS))
        if unknown:
            raise NmtqError(f"methods {unknown}: pass some of {', '.join(TABLE_METHODS)}")
        if not self.bits or any(not 1 <= int(b) <= 8 for b in self.bits):
            raise NmtqError(f"bits={self.bits}: pass one or more widths between 1 and 8")
        self.bits = [int(b) for b in self.bits]
        if not self.students:
            raise NmtqError("students is empty: name at least one `nmtq distill` recipe")


@dataclass
class Run:
    """One ``nmtq`` call of the table."""

    name: str
    student: str
    method: str
    bits: int
    argv: list[str]
    output_dir: Path


def _student_key(parsed: tuple, task: str) -> str:
    """What tells two students of a table apart: the student type, or the image model's architecture and depth."""
    if task == "translation":
        return parsed[1].student_type
    return shape(dataclasses.asdict(parsed[1]))


def plan(args: TableArguments) -> tuple[list[str], Path, list[Run]]:
    """The teacher's argv and directory and the student runs; every recipe is parsed, so errors come first."""
    task = TASKS[args.task]
    teacher_argv = [task.teacher_command, "--config", args.teacher_recipe, *shlex.split(args.teacher_args)]
    if args.task == "images":
        teacher_argv += ["--method", "fp"]
    teacher_dir = Path(parse_recipe(task.teacher_command, teacher_argv[1:])[-1].output_dir)
    runs, out = [], Path(args.output_dir)
    for student in args.students:
        recipe, *fields = shlex.split(student)
        base = [task.command, "--config", recipe, *shlex.split(args.student_args), *fields,
                "--teacher", str(teacher_dir)]
        key = _student_key(parse_recipe(task.command, base[1:]), args.task)
        if any(r.student == key for r in runs):
            raise NmtqError(f"two students are {key!r}: give each one entry")
        kd_dir = out / key / "kd"
        if "fp" in args.methods:
            runs.append(Run(f"{key} FP fp32", key, "fp", 32, list(base), out / key / "fp"))
        runs.append(Run(f"{key} KD fp32", key, "kd", 32, list(base), kd_dir))
        for bits in args.bits:
            for method in ("ptq", "qd", "dq"):
                if method in args.methods:
                    start = ["--student_name_or_path", str(kd_dir)] if method in ("ptq", "dq") else []
                    runs.append(Run(f"{key} {method.upper()} {bits}-bit", key, method, bits,
                                    [*base, *start, "--bits", str(bits)], out / key / f"{method}{bits}"))
    for run in runs:
        run.argv += ["--method", run.method, "--output_dir", str(run.output_dir)]
        parse_recipe(task.command, run.argv[1:])  # a bad field fails now, not an hour in
    return teacher_argv, teacher_dir, runs


def _log(started: float, message: str) -> None:
    """A message of the table, tagged with the seconds since it ``started``: ``[nmtq table    12 s] message``."""
    logger.info(message, extra={"tag": f"nmtq table {time.monotonic() - started:6.0f} s"})


def _call(argv: list[str], output_dir: Path, what: str, started: float) -> tuple[dict, float | None]:
    """Run ``nmtq ARGV`` in this process (:func:`nmtq.commands.run_recipe`) unless it has finished before; resume it
    from its last checkpoint if it was cut off.

    Returns the run's test metrics and its wall time in seconds (that of the call that finished it, kept in
    :data:`nmtq.files.RUN_TIME`; None for a run finished by another command)."""
    from .checkpoints import last_complete_checkpoint

    metrics_file, time_file = files.metrics_file(output_dir), output_dir / files.RUN_TIME
    if metrics_file.is_file():
        _log(started, f"{what}: finished before, reusing {output_dir}")
        seconds = json.loads(time_file.read_text())["seconds"] if time_file.is_file() else None
        return json.loads(metrics_file.read_text()), seconds
    if last_complete_checkpoint(str(output_dir)):
        argv = [*argv, "--resume_from_checkpoint", "last"]
    start = time.monotonic()
    try:
        run_recipe(argv[0], argv[1:])
    except NmtqError as err:
        raise NmtqError(f"{what} failed: nmtq {argv[0]}: {err} (nmtq {shlex.join(argv)})") from err
    seconds = time.monotonic() - start
    write_json_atomic(time_file, {"seconds": round(seconds, 1), "hardware": describe_environment(environment())})
    return json.loads(metrics_file.read_text()), seconds


def make_table(args: TableArguments) -> dict:
    """Run everything the arguments ask for (reusing finished runs) and write the table; return its rows."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as err:
            raise NmtqError("plot=true needs matplotlib: pip install 'nmtq[plot]', or pass --plot false") from err
    teacher_argv, teacher_dir, runs = plan(args)
    from .methods import fp32_size
    from .models import load_model
    from .runs import show_messages
    from .student import depth

    out = Path(args.output_dir)
    started, total = time.monotonic(), len(runs) + 1
    show_messages()
    task = TASKS[args.task]
    keys = [key for _, key, _ in task.metrics]
    _log(started, f"1/{total}: teacher ({teacher_dir})")
    teacher, seconds = _call(teacher_argv, teacher_dir, "teacher", started)
    if args.task == "translation":  # nmtq train's metrics carry no size: measure the saved teacher
        model = load_model(teacher_dir)
        encoder_layers, decoder_layers = depth(model.config)
        teacher = {**teacher, "bytes": fp32_size(model).total_bytes, "encoder_layers": encoder_layers,
                   "decoder_layers": decoder_layers}
    rows = [{"name": "teacher fp32", "student": "teacher", "method": "teacher", "bits": 32, "shape": shape(teacher),
             "bytes": teacher["bytes"], "ratio_vs_fp32_teacher": 1.0, "seconds": seconds,
             **{k: teacher[k] for k in keys}}]
    for i, run in enumerate(runs, start=2):
        _log(started, f"{i}/{total}: {run.name} ({run.output_dir})")
        metrics, seconds = _call(run.argv, run.output_dir, run.name, started)
        rows.append({"name": run.name, "student": run.student, "method": run.method, "bits": metrics["bits"],
                     "seconds": seconds, "shape": shape(metrics), **{k: metrics.get(k) for k in (
                         *keys, "bytes", "huffman_bytes", "ratio_vs_fp32_teacher")}})
    wall = time.monotonic() - started
    env = environment()
    result = {"arguments": dataclasses.asdict(args), "hardware": describe_environment(env),
              "wall_seconds": round(wall, 1), "rows": rows, "environment": env}
    markdown = format_table(result, task)
    write_json_atomic(out / files.TABLE_JSON, result)
    write_text_atomic(out / files.TABLE_MD, markdown + "\n")
    chart = files.plot_file(out, task.metrics[0][1])
    if args.plot:
        plot(rows, chart, task)
    print(markdown, flush=True)
    _log(started, f"done: {out / files.TABLE_MD}" + (f", {chart}" if args.plot else ""))
    return result


def shape(metrics: dict) -> str:
    """The model's shape from its metrics: encoder+decoder layers, or architecture-depth (x widen factor)."""
    if "encoder_layers" in metrics:
        return f"{metrics['encoder_layers']}+{metrics['decoder_layers']}"
    widen = metrics.get("widen_factor", 1)
    return f"{metrics['architecture']}-{metrics['depth']}" + (f"x{widen}" if widen > 1 else "")


def format_table(result: dict, task: Task = TASKS["translation"]) -> str:
    """The rows as a markdown table, then the hardware and the wall time."""
    columns = ["model", task.shape_column, "bits", *(c for c, _, _ in task.metrics), "bytes", "vs fp32 teacher",
               "Huffman bytes", "minutes"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in result["rows"]:
        huffman = f"{r['huffman_bytes']:,}" if r.get("huffman_bytes") else "-"
        minutes = f"{r['seconds'] / 60:.1f}" if r.get("seconds") is not None else "-"
        scores = [format(r[key], spec) for _, key, spec in task.metrics]
        lines.append("| " + " | ".join([r["name"], r["shape"], str(r["bits"]), *scores, f"{r['bytes']:,}",
                                        f"{r['ratio_vs_fp32_teacher']:.1f}x", huffman, minutes]) + " |")
    lines += ["", f"Measured on: {result['hardware']}; this command took {result['wall_seconds'] / 60:.1f} minutes "
                  "(runs finished by an earlier call are reused, with the minutes they took then)."]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, task: Task = TASKS["translation"]) -> None:
    """The first metric (BLEU, accuracy) against bytes on disk (log scale), one point per model, teacher included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column, key, _ = task.metrics[0]
    markers = {"teacher": "*", "fp": "v", "kd": "o", "ptq": "s", "qd": "^", "dq": "D"}
    students = sorted({r["student"] for r in rows if r["student"] != "teacher"})
    colors = {"teacher": "black", **{s: f"C{i}" for i, s in enumerate(students)}}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for r in rows:
        label = f"{r['student']} {r['method'].upper()}" if r["method"] != "teacher" else "teacher fp32"
        ax.scatter(r["bytes"], r[key], marker=markers[r["method"]], color=colors[r["student"]], s=80,
                   label=label)
        ax.annotate(f"{r['bits']}b" if r["bits"] < 32 else "fp32", (r["bytes"], r[key]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("bytes on disk (log scale)")
    ax.set_ylabel(f"{column} (test)")
    ax.set_title(f"{column} against size: teacher and distilled, quantized students")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
