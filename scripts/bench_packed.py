"""Packed in memory: bytes, peak RSS and decoding speed of exported students loaded with ``from_pretrained``.

    .venv/bin/python scripts/bench_packed.py --markdown benchmarks/packed-memory.md
    .venv/bin/python scripts/bench_packed.py --repeats 1 --work /tmp/packed  # a quick look; exports kept, reused

A Marian teacher of OPUS-MT's shape (6+6 layers, d_model 512, FFN 2048, an 8,000-piece SentencePiece vocabulary
trained on the Bible's de-en training split) is built with random weights; its 6+1 student (a spread of the
teacher's layers) is quantized as it is (``nmtq distill --method qd``, one step at learning rate 0) at 2, 4 and
8 bits, buckets of 256, and exported (``nmtq export``, codes bit-packed). Speed and memory do not depend on what
the weights learned, so none is trained. Each export is measured twice, each time in a fresh process:

* ``packed``: ``from_pretrained`` after ``import nmtq``, codes packed in memory, each weight decoded when its layer
  runs (every decoder step decodes the decoder's weights and the output projection again);
* ``decoded per generate``: the same model, each ``generate`` call inside ``nmtq.quant.packed.decoded(model)``,
  which decodes every weight once, at its first read, and drops the decoded weights when the call returns.

For each:

* the bytes of the tensors held (:func:`nmtq.hf.resident_bytes`), and of those the file stores (without the
  sinusoidal position tables the model computes), against the tensor bytes of ``model.safetensors``;
* peak RSS of the process while loading and decoding (``VmHWM``, reset after the imports, whose own peak is higher
  than a small model), and that peak above the RSS after the imports: with ``decoded per generate`` it holds the
  decoded weights while a ``generate`` call runs;
* target tokens per second of beam search (beam 4, two batches of Bible verses, 32 new tokens each, the length
  fixed so that every model makes the same number of tokens), median of ``--repeats``, for each of
  ``--batch-sizes`` (16 by default): a weight decoded per read costs the same at any batch size, the matrix
  products grow with it, so the ratio to fp32 rises with the batch;
* what on-the-fly decoding costs: milliseconds to decode every packed weight of the model once (median of
  10), which ``decoded per generate`` pays once per call and ``packed`` pays for the decoder's weights at
  every step.

The fp32 student is the same model with every weight decoded once (:func:`nmtq.hf.decode_weights`): the
architecture and the arithmetic of the fp32 student, in a fresh process too. A markdown table goes to stdout and
``--markdown``, the numbers as JSON beside it, with the environment (:mod:`nmtq.env`). Other processes on the
machine change the speeds: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nmtq.env import describe_environment, environment
from nmtq.io import write_json_atomic, write_text_atomic

MEASURE = r"""
import json, statistics, sys, time
import torch
import nmtq
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from nmtq.hf import decode_weights, resident_bytes
from nmtq.quant.packed import PackedTensor, decoded
def status(field):  # kB fields of /proc/self/status: VmRSS now, VmHWM the peak since the last reset
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))
imported = status("VmRSS")  # torch and transformers, before the model
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the RSS now: importing transformers peaks higher than a small model
torch.set_num_threads(int(sys.argv[4]))
folder, mode, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
if mode == "fp32":
    decode_weights(model)
tokenizer = AutoTokenizer.from_pretrained(folder)
sources, size = json.loads(sys.argv[5]), int(sys.argv[6])
held = resident_bytes(model)
from safetensors import safe_open
with safe_open(folder + "/model.safetensors", framework="pt") as f:
    keys = set(f.keys())
stored = keys | {k.rpartition(".")[0] for k in keys}  # a quantized weight is stored as its parts
storages = {}  # storage -> (bytes, stored under some name): tied weights are one storage
for k, t in model.state_dict().items():
    ptr, named = t.untyped_storage().data_ptr(), k in stored or "_packed." in k
    storages[ptr] = (t.untyped_storage().nbytes(), named or storages.get(ptr, (0, False))[1])
computed = sum(size for size, named in storages.values() if not named)
times = []
with torch.inference_mode():
    for _ in range(repeats):
        start, tokens = time.perf_counter(), 0
        for i in range(0, len(sources), size):
            batch = tokenizer(sources[i:i + size], return_tensors="pt", padding=True)
            if mode == "scope":  # each weight decoded once per call, dropped after it
                with decoded(model):
                    out = model.generate(**batch, num_beams=4, min_new_tokens=32, max_new_tokens=32)
            else:
                out = model.generate(**batch, num_beams=4, min_new_tokens=32, max_new_tokens=32)
            tokens += out.shape[0] * 32
        times.append(tokens / (time.perf_counter() - start))
peak = status("VmHWM")
packed = [m for m in model.modules() if isinstance(m, PackedTensor)]
decoding = []  # after the peak: one weight decoded at a time, each dropped before the next; 10 times (short)
with torch.inference_mode():
    for _ in range(10 if packed else 0):
        start = time.perf_counter()
        for p in packed:
            p.decode()
        decoding.append(1000 * (time.perf_counter() - start))
print(json.dumps({"resident_bytes": held, "computed_bytes": computed, "peak_rss_bytes": peak,
                  "rss_after_imports_bytes": imported, "tokens_per_second": statistics.median(times),
                  "decode_model_ms": statistics.median(decoding) if decoding else None,
                  "packed_weights": sum(p.shape.numel() for p in packed)}))
"""


def nmtq_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nmtq", *args], check=True, stdout=subprocess.DEVNULL)


def build(work: Path, bits: list[int]) -> dict[int, Path]:
    """The teacher, its tokenizer, and one exported PTQ student per bit width."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    from nmtq.data import load_pairs
    from nmtq.tokenizer import train_tokenizer

    if all((work / f"export{b}" / "model.safetensors").exists() for b in bits):  # built by an earlier run
        return {b: work / f"export{b}" for b in bits}
    train = load_pairs("bible:de-en", "train").to_dict()
    teacher = work / "teacher"
    tokenizer = train_tokenizer((t for pair in zip(train["source"], train["target"]) for t in pair), teacher, 8000)
    pad = tokenizer.pad_token_id
    torch.manual_seed(0)
    MarianMTModel(MarianConfig(
        vocab_size=len(tokenizer), d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
        pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=tokenizer.eos_token_id,
        share_encoder_decoder_embeddings=True)).save_pretrained(teacher)
    exports = {}
    for b in bits:
        run = work / f"ptq{b}"
        shutil.rmtree(run, ignore_errors=True)
        # one step at learning rate 0: the teacher-initialised student as it is, quantized (PTQ needs a student
        # trained before)
        nmtq_cli("distill", "--data", "bible", "--teacher", str(teacher), "--output_dir", str(run), "--method", "qd",
                 "--max_steps", "1", "--learning_rate", "0", "--per_device_train_batch_size", "4",
                 "--save_strategy", "no", "--student_encoder_layers", "6", "--student_decoder_layers", "1",
                 "--bits", str(b), "--bucket_size", "256", "--max_eval_samples", "8", "--max_new_tokens", "8",
                 "--num_beams", "1", "--report_to", "none")
        exports[b] = work / f"export{b}"
        nmtq_cli("export", str(run), str(exports[b]))
    return exports


def measure(folder: Path, mode: str, repeats: int, threads: int, sources: list[str], batch_size: int) -> dict:
    """One model in a fresh process: ``mode`` is fp32 (decoded once at load), packed, or scope (decoded per
    generate call); ``sources`` in batches of ``batch_size``."""
    out = subprocess.run([sys.executable, "-c", MEASURE, str(folder), mode, str(repeats),
                          str(threads), json.dumps(sources), str(batch_size)], check=True, capture_output=True,
                         text=True)
    return {"batch_size": batch_size, **json.loads(out.stdout.strip().splitlines()[-1])}


def tensor_bytes(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(f.get_tensor(k).nbytes for k in f.keys())


def markdown(rows: list[dict], machine: str) -> str:
    lines = ["| student | batch | file tensors (bytes) | held in memory (bytes) | of which stored weights | "
             "stored / file | peak RSS (MB) | peak RSS above the imports (MB) | tokens/s | vs fp32 | "
             "decode the model (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fp32 = {r["batch_size"]: r["tokens_per_second"] for r in rows if r["name"] == "fp32"}
    for r in rows:
        stored, weights = r.get("file_tensor_bytes"), r["resident_bytes"] - r["computed_bytes"]
        ratio = f"{weights / stored:.3f}x" if stored else "-"
        decode = f"{r['decode_model_ms']:.0f}" if r.get("decode_model_ms") is not None else "-"
        lines.append(f"| {r['name']} | {r['batch_size']} x 4 | {f'{stored:,}' if stored else '-'} | "
                     f"{r['resident_bytes']:,} | {weights:,} | "
                     f"{ratio} | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{(r['peak_rss_bytes'] - r['rss_after_imports_bytes']) / 2**20:.0f} | "
                     f"{r['tokens_per_second']:.0f} | "
                     f"{r['tokens_per_second'] / fp32[r['batch_size']]:.2f}x | {decode} |")
    return "\n".join([*lines, "", f"Measured on {machine}.", ""])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", default="2,4,8", help="comma-separated bit widths of the students")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per model (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--batch-sizes", default="16", help="comma-separated sentences per batch (beam 4 each); "
                                                            "two batches each")
    parser.add_argument("--markdown", type=Path, help="also write the table here (.md), and the JSON beside it")
    parser.add_argument("--work", type=Path, help="build the exports here and keep them (reused when present); "
                                                   "default: a temporary folder")
    args = parser.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if not all(1 <= b <= 8 for b in bits) or args.repeats < 1 or args.threads < 1 or min(sizes) < 1:
        parser.error("--bits takes widths from 1 to 8; --repeats, --threads and --batch-sizes at least 1")
    if args.markdown is not None and args.markdown.suffix != ".md":
        parser.error(f"--markdown {args.markdown}: pass a .md path (the JSON goes beside it)")
    from nmtq.data import load_pairs

    test = load_pairs("bible:de-en", "test")["source"]
    with tempfile.TemporaryDirectory(prefix="nmtq-bench-packed-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        exports = build(work, bits)
        rows = []
        for size in sizes:
            sources = test[:2 * size]
            rows.append({"name": "fp32", **measure(exports[max(bits)], "fp32", args.repeats, args.threads, sources,
                                                   size)})
            for b in bits:
                file_bytes = tensor_bytes(exports[b] / "model.safetensors")
                for mode, name in (("packed", f"{b}-bit packed"), ("scope", f"{b}-bit packed, decoded per generate")):
                    rows.append({"name": name, "mode": mode, "file_tensor_bytes": file_bytes,
                                 **measure(exports[b], mode, args.repeats, args.threads, sources, size)})
    env = {**environment(), "torch_threads": args.threads}  # the threads of the measuring processes
    table = markdown(rows, describe_environment(env))
    print(table)
    if args.markdown is not None:
        write_text_atomic(args.markdown, table)
        write_json_atomic(args.markdown.with_suffix(".json"), {"rows": rows, "environment": env})
    return rows


if __name__ == "__main__":
    main()
