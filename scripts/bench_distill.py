"""Speed of distillation on this machine: training steps by method and teacher source, and decoding speed.

    .venv/bin/python scripts/bench_distill.py --teacher runs/bible-de-en-teacher --student runs/students/kd
    .venv/bin/python scripts/bench_distill.py --quick     # a tiny run, to check that it works

Prints markdown tables to record in the README:

1. One training step (forward, backward, AdamW step) of a student on one batch of Bible pairs, the same batch
   and teacher for every row: full-precision KD with the live teacher; quantized distillation (QD) with the live
   teacher; and both again reading the teacher's cached top-k log-probabilities instead of running it
   (Apprentice's scheme B, ``nmtq.teacher_cache``). The cache is written once to a temporary directory, and its
   construction time is reported beside it. Medians over repeats, the rows interleaved so drift hits all alike.
2. Decoding: teacher and student translate the same test sentences with the same beam and batch; sentences
   per second and target tokens per second, and the speed ratio next to the depth ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq

from nmtq.data import load_corpus
from nmtq.distill import DistillationCollator
from nmtq.env import describe_environment, environment
from nmtq.evaluation import keep_short_pairs, translate
from nmtq.losses import TopK, distillation_loss
from nmtq.methods import fp32_size
from nmtq.models import load_model
from nmtq.quant import Quantizer
from nmtq.student import make_student
from nmtq.teacher_cache import cache_top_k
from nmtq.tokenizer import load_tokenizer


def step_fn(student, teacher, batch, quantizer_bits: int | None, cached: bool):
    """A closure doing one training step of ``student`` (a fresh copy per configuration)."""
    model = copy.deepcopy(student).train()
    if quantizer_bits:
        Quantizer(model, bits=quantizer_bits, bucket_size=256)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    features = {k: v for k, v in batch.items() if k not in ("labels", "teacher_ids", "teacher_log_probs")}

    def step() -> None:
        outputs = model(**features)
        if cached:
            target = TopK(batch["teacher_ids"], batch["teacher_log_probs"])
        else:
            with torch.no_grad():
                target = teacher(**features).logits
        distillation_loss(outputs.logits, target, batch["labels"], alpha=0.7).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_steps(teacher, tokenizer, pairs, student, batch_size: int, k: int, repeats: int) -> list[str]:
    features = tokenizer(pairs["source"][:batch_size], text_target=pairs["target"][:batch_size])
    rows = [{"input_ids": features["input_ids"][i], "labels": features["labels"][i], "example_id": i}
            for i in range(batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cache = cache_top_k(teacher.eval(), rows, DataCollatorForSeq2Seq(tokenizer, model=student), tmp, k=k,
                            batch_size=batch_size)
        cache_seconds = time.perf_counter() - start
        batch = DistillationCollator(tokenizer, student, {"labels": cache})(rows)
        configs = {
            "KD, fp32 student, live teacher": step_fn(student, teacher, batch, None, False),
            "QD 4-bit, live teacher": step_fn(student, teacher, batch, 4, False),
            f"KD, fp32 student, cached top-{k}": step_fn(student, teacher, batch, None, True),
            f"QD 4-bit, cached top-{k}": step_fn(student, teacher, batch, 4, True),
        }
        for fn in configs.values():
            fn()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(repeats):
            for name, fn in configs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    base = median["KD, fp32 student, live teacher"]
    tokens = int((batch["labels"] != -100).sum())
    lines = [f"Batch of {batch_size} pairs ({tokens} target tokens); median of {repeats} steps each.", "",
             "| training step | ms | vs fp32 KD with live teacher |", "|---|---|---|"]
    lines += [f"| {name} | {1000 * t:.0f} | {t / base:.2f}x |" for name, t in median.items()]
    qd_live, qd_cached = median["QD 4-bit, live teacher"], median[f"QD 4-bit, cached top-{k}"]
    lines += ["", f"QD step / fp32 step (live teacher): **{qd_live / base:.2f}x**; live / cached teacher: "
                  f"**{base / median[f'KD, fp32 student, cached top-{k}']:.2f}x** (fp32), "
                  f"**{qd_live / qd_cached:.2f}x** (QD). Writing the cache for this batch took "
                  f"{1000 * cache_seconds:.0f} ms, once."]
    return lines


def bench_decoding(teacher, student, tokenizer, sources: list[str], num_beams: int, batch_size: int,
                   repeats: int) -> list[str]:
    results = {}
    for name, model in (("teacher", teacher), ("student", student)):
        translate(model, tokenizer, sources[:batch_size], num_beams=num_beams, batch_size=batch_size, progress=False)
        seconds, outputs = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            outputs = translate(model, tokenizer, sources, num_beams=num_beams, batch_size=batch_size,
                                progress=False)
            seconds.append(time.perf_counter() - start)
        tokens = sum(len(ids) for ids in tokenizer(text_target=outputs)["input_ids"])
        results[name] = (statistics.median(seconds), tokens, model.config)
    (t_sec, _, t_cfg), (s_sec, _, s_cfg) = results["teacher"], results["student"]
    lines = [f"{len(sources)} test sentences, beam {num_beams}, batch {batch_size}, median of {repeats} runs.", "",
             "| model | layers | sentences/s | target tokens/s |", "|---|---|---|---|"]
    for name, (sec, tok, cfg) in results.items():
        lines.append(f"| {name} | {cfg.encoder_layers}+{cfg.decoder_layers} | {len(sources) / sec:.1f} | "
                     f"{tok / sec:,.0f} |")
    depth = (t_cfg.encoder_layers + t_cfg.decoder_layers) / (s_cfg.encoder_layers + s_cfg.decoder_layers)
    lines += ["", f"Student / teacher decoding speed: **{t_sec / s_sec:.2f}x** sentences/s for a "
                  f"{depth:.1f}x shallower model ({t_cfg.decoder_layers} -> {s_cfg.decoder_layers} decoder layers)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="runs/bible-de-en-teacher")
    parser.add_argument("--student", default=None, help="a trained student directory (default: a 1+1 copy)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--top_k", type=int, default=8)
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="few sentences and repeats")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.repeats = 8, 2
    torch.manual_seed(0)
    teacher, tokenizer = load_model(args.teacher).eval(), load_tokenizer(args.teacher)
    student = load_model(args.student) if args.student else make_student(teacher, 1, 1)
    print(f"Measured on: {describe_environment(environment())}; teacher {Path(args.teacher).name} "
          f"({fp32_size(teacher).total_bytes:,} B fp32), "
          f"student {student.config.encoder_layers}+{student.config.decoder_layers} layers\n")
    train, _ = load_corpus("bible:de-en", "train")
    train = train.filter(lambda s, t: len(s.split()) <= 25 and len(t.split()) <= 25, input_columns=["source", "target"])
    print("\n".join(bench_steps(teacher, tokenizer, train.shuffle(seed=0), student, args.batch_size, args.top_k,
                                args.repeats)))
    test, _ = load_corpus("bible:de-en", "test")
    sources, _ = keep_short_pairs(tokenizer, list(test["source"]), list(test["target"]), 30)
    sources = sources[:16] if args.quick else sources
    print()
    print("\n".join(bench_decoding(teacher, student, tokenizer, sources, args.num_beams, 32,
                                   1 if args.quick else 3)))


if __name__ == "__main__":
    main()
