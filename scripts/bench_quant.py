"""Benchmark of nmtq.quant on this machine's CPU; prints a markdown table to record in the README.

    .venv/bin/python scripts/bench_quant.py            # about a minute on 2 CPU cores
    .venv/bin/python scripts/bench_quant.py --quick    # smaller sizes, to check that it runs

1. ``quantize_tensor`` of a 64M-element fp32 tensor at 4 bits, bucket 256, as a ratio to ``torch.clone`` of
   the same tensor in the same run: clone is the physical floor (one read, one write of fresh memory).
2. The backward pass of a ~10M-parameter Transformer encoder whose weights are quantized onto learned points
   (differentiable quantization), as a ratio to the plain backward of an identical copy; the same for the
   straight-through (quantized distillation) backward, and the forward passes beside them.
Timings are medians over repeats, the runs of each pair interleaved so drift hits both alike.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from nmtq.env import describe_environment, environment
from nmtq.quant import Quantizer, quantize_tensor


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_quantize_tensor(numel: int, repeats: int) -> dict[str, float]:
    w = torch.randn(numel, generator=torch.Generator().manual_seed(0))
    clone, quant = [], []
    for _ in range(repeats):  # interleaved pairs
        clone.append(median_time(lambda: w.clone(), 1))
        quant.append(median_time(lambda: quantize_tensor(w, 4, 256), 1))
    c, q = statistics.median(clone), statistics.median(quant)
    return {"clone_s": c, "quantize_s": q, "ratio": q / c, "gb_per_s": numel * 4 / q / 1e9}


class Encoder(nn.Module):
    """A Transformer encoder with an output layer: about 10M parameters at the default sizes."""

    def __init__(self, vocab: int, d_model: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, 8, 4 * d_model, dropout=0.0, batch_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(ids)))


def time_passes(model: nn.Module, ids: torch.Tensor, repeats: int) -> tuple[list[float], list[float]]:
    forward, backward = [], []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        middle = time.perf_counter()
        loss.backward()
        forward.append(middle - start)
        backward.append(time.perf_counter() - middle)
    return forward, backward


def bench_backward(vocab: int, d_model: int, layers: int, batch: int, seq: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    plain = Encoder(vocab, d_model, layers).train()
    dq, qd = copy.deepcopy(plain), copy.deepcopy(plain)
    Quantizer(dq, bits=4, bucket_size=256, learn_points=True)
    Quantizer(qd, bits=4, bucket_size=256)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    times = {name: ([], []) for name in ("plain", "dq", "qd")}
    for _ in range(repeats + 1):  # interleaved; the first round is a warm-up
        for name, model in (("plain", plain), ("dq", dq), ("qd", qd)):
            f, b = time_passes(model, ids, 1)
            times[name][0].extend(f)
            times[name][1].extend(b)
    med = {k: (statistics.median(f[1:]), statistics.median(b[1:])) for k, (f, b) in times.items()}
    params = sum(p.numel() for p in plain.parameters())
    rows = []
    for name, label in (("dq", "differentiable quantization (learned points)"), ("qd", "quantized distillation (STE)")):
        rows.append({"method": label, "params": params, "tokens": batch * seq,
                     "plain_backward_s": med["plain"][1], "backward_s": med[name][1],
                     "backward_ratio": med[name][1] / med["plain"][1],
                     "forward_ratio": med[name][0] / med["plain"][0]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that the script runs")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    numel = 2**20 if args.quick else 64 * 2**20
    sizes = dict(vocab=1000, d_model=128, layers=1, batch=4, seq=16) if args.quick else \
        dict(vocab=1000, d_model=512, layers=3, batch=16, seq=64)
    print(f"Measured on: {describe_environment(environment())}\n")
    q = bench_quantize_tensor(numel, args.repeats)
    print("| tensor | clone | quantize_tensor (4 bits, bucket 256) | ratio (target <= 4x) |")
    print("|---|---|---|---|")
    print(f"| {numel / 2**20:.0f}M fp32 | {q['clone_s'] * 1e3:.0f} ms | {q['quantize_s'] * 1e3:.0f} ms "
          f"({q['gb_per_s']:.2f} GB/s) | {q['ratio']:.2f}x |\n")
    rows = bench_backward(repeats=args.repeats, **sizes)
    print("| method | parameters | tokens/batch | plain backward | quantized backward | backward ratio "
          "| forward ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['params'] / 1e6:.1f}M | {r['tokens']} | {r['plain_backward_s'] * 1e3:.0f} ms | "
              f"{r['backward_s'] * 1e3:.0f} ms | {r['backward_ratio']:.2f}x | {r['forward_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
