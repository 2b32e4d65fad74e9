"""Decoding speed at the scale users distil: an OPUS-MT-shaped teacher and its students, transformers and CTranslate2.

    .venv/bin/python scripts/bench_scale.py --markdown benchmarks/scale.md      # about 15 minutes on 2 cores
    .venv/bin/python scripts/bench_scale.py --quick                             # small shapes, to check it runs

The teacher has OPUS-MT's shape (Marian, 6+6 layers, d_model 512, FFN 2048, 8 heads, a 58,101-token vocabulary
with tied embeddings, about 74M parameters), built from its config with random weights: speed and memory do not
depend on what the weights learned, and every row decodes exactly ``--new-tokens`` tokens a sentence
(``min_new_tokens = max_new_tokens`` in transformers, ``min_decoding_length = max_decoding_length`` in
CTranslate2), so random weights do not change how much is decoded. Its vocabulary is a SentencePiece model of the
Bible's German-English training split (8,000 pieces) padded with unused tokens to 58,101 ids; the sources are
Bible test verses, so every source token is real.

Students, each made from the teacher as ``nmtq distill`` makes them (:func:`nmtq.student.make_student`):
6+1, 6+2, 3+1 and 1+1 layers at d_model 512, and a tiny 6+2 one at d_model 256 (FFN 1,536, Bergamot's tiny
width). One more 6+1 student has the trimmed vocabulary of 14,531 tokens that ``--trim_vocabulary`` kept of a
64,203-token multilingual Bible vocabulary for German-English (``benchmarks/trim-bible.md``): the vocabulary
lever. The 6+1 students are also decoded with a lexical shortlist (:mod:`nmtq.shortlist`, 50 target tokens a
source token and the 100 most frequent, from the Bible training split): the shortlist lever, one batch a call
with the map reset before each (as :class:`nmtq.ct2.Ct2Translator` does; CTranslate2 4.8.5 otherwise keeps the
previous batch's shortlist).

Engines, each model in a fresh process: transformers fp32 (``generate``), CTranslate2 int8 (``nmtq export
--ctranslate2``: absmax codes per row, as wide as this CPU multiplies exactly) one batch at a time on every
thread, and CTranslate2 int8 with one batch per thread at once (``inter_threads``). Decoding: greedy and beam 4,
two batches of ``--batch-size`` sentences, median of ``--repeats`` after a warm-up batch. Reported: target
tokens per second, the ratio to the teacher in transformers fp32 and to the teacher in CTranslate2 int8 (same
decoding, same run), peak RSS (``VmHWM``, reset after the imports) and the bytes of the model's weights file.
A second table gives the 6+1 student's bytes on disk exported at 8, 4 and 2 bits (``nmtq export``, bit-packed,
and ``--huffman``): the codes of random weights, whose Huffman gain is smaller than a trained model's.

A markdown table goes to stdout and ``--markdown``, the numbers as JSON beside it, with the environment
(:mod:`nmtq.env`). Other processes on the machine change the speeds: measure on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from nmtq.env import describe_environment, environment
from nmtq.io import write_json_atomic, write_text_atomic

OPUS_MT_VOCAB = 58101
TRIMMED_VOCAB = 14531  # benchmarks/trim-bible.md: the tokens --trim_vocabulary kept for German-English
# name -> (encoder layers, decoder layers, d_model, FFN, vocabulary)
MODELS = {
    "teacher 6+6": (6, 6, 512, 2048, OPUS_MT_VOCAB),
    "student 6+1": (6, 1, 512, 2048, OPUS_MT_VOCAB),
    "student 6+2": (6, 2, 512, 2048, OPUS_MT_VOCAB),
    "student 3+1": (3, 1, 512, 2048, OPUS_MT_VOCAB),
    "student 1+1": (1, 1, 512, 2048, OPUS_MT_VOCAB),
    "tiny 6+2, d_model 256": (6, 2, 256, 1536, OPUS_MT_VOCAB),
    "student 6+1, trimmed vocabulary": (6, 1, 512, 2048, TRIMMED_VOCAB),
}
QUICK = {"teacher 6+6": (2, 2, 64, 128, 2000), "student 6+1": (2, 1, 64, 128, 2000)}
ENGINES = ("transformers fp32", "CTranslate2 int8", "CTranslate2 int8, batches at once")
SHORTLIST = "CTranslate2 int8, shortlist"  # the 6+1 students only

MEASURE = r"""
import json, statistics, sys, time
import torch
from nmtq.tokenizer import load_tokenizer
def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))
imported = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # peak (VmHWM) reset to the RSS now: the imports peak higher than a small model
folder, engine, beams, size, new, repeats, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:8])
sources = json.loads(sys.argv[8])
torch.set_num_threads(threads)
tokenizer = load_tokenizer(folder)
if engine == "transformers fp32":
    from transformers import AutoModelForSeq2SeqLM
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    batches = [tokenizer(sources[i:i + size], return_tensors="pt", padding=True) for i in range(0, len(sources), size)]
    def decode(batches):
        with torch.inference_mode():
            return new * sum(model.generate(**b, num_beams=beams, min_new_tokens=new, max_new_tokens=new,
                                            do_sample=False).shape[0] for b in batches)
    run = lambda: decode(batches)
    warm = lambda: decode(batches[:1])
else:
    import ctranslate2
    at_once, vmap = engine.endswith("at once"), engine.endswith("shortlist")
    translator = ctranslate2.Translator(folder + ("/ct2-vmap" if vmap else "/ct2"), device="cpu", compute_type="int8",
                                        intra_threads=1 if at_once else threads,
                                        inter_threads=threads if at_once else 1)
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(sources)["input_ids"]]
    def decode(tokens):
        # with a vocabulary map, one call a batch, each after a reset (nmtq.ct2.Ct2Translator._forget_vocabulary_map:
        # CTranslate2 4.8.5 keeps the previous batch's shortlist positions)
        parts = [tokens[i:i + size] for i in range(0, len(tokens), size)] if vmap else [tokens]
        results = []
        for part in parts:
            if vmap:
                translator.translate_batch([[tokenizer.unk_token]], beam_size=1, max_decoding_length=1)
            results += translator.translate_batch(part, beam_size=beams, max_batch_size=size, max_input_length=0,
                                                  max_decoding_length=new, min_decoding_length=new, use_vmap=vmap)
        assert all(len(r.hypotheses[0]) == new for r in results), "a hypothesis ended early"
        return sum(len(r.hypotheses[0]) for r in results)
    run = lambda: decode(tokens)
    warm = lambda: decode(tokens[:size])
warm()
speeds = []
for _ in range(repeats):
    start = time.perf_counter()
    tokens_decoded = run()
    speeds.append(tokens_decoded / (time.perf_counter() - start))
print(json.dumps({"tokens_per_second": statistics.median(speeds), "speeds": speeds,
                  "peak_rss_bytes": status("VmHWM"), "rss_after_imports_bytes": imported}))
"""


def nmtq_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "nmtq", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def padded_tokenizer(base: Path, out: Path, vocab_size: int) -> None:
    """The Marian tokenizer of ``base`` with unused tokens after its own up to ``vocab_size`` ids (``<pad>`` keeps its
    id, which the saved tokenizer config names)."""
    shutil.copytree(base, out)
    vocab = json.loads((base / "vocab.json").read_text(encoding="utf-8"))
    size = len(vocab)
    vocab.update({f"<unused_{i}>": size + i for i in range(vocab_size - size)})
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


def build(work: Path, models: dict[str, tuple]) -> dict[str, Path]:
    """Every model of ``models`` saved with its tokenizer under ``work``, and its CTranslate2 int8 conversion in
    ``<folder>/ct2`` (the 6+1 students' also with a shortlist of the training split, in ``<folder>/ct2-vmap``);
    reused when present."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    from nmtq.ct2 import convert_to_ctranslate2
    from nmtq.data import load_corpus, load_pairs
    from nmtq.shortlist import build_shortlist
    from nmtq.student import make_student
    from nmtq.tokenizer import load_tokenizer, train_tokenizer

    folders = {name: work / name.replace(" ", "_").replace(",", "").replace("+", "-") for name in models}
    if all((f / "ct2" / "model.bin").exists() for f in folders.values()):
        return folders
    base = work / "tokenizer-8000"
    if not (base / "vocab.json").exists():
        train = load_pairs("bible:de-en", "train").to_dict()
        train_tokenizer((t for pair in zip(train["source"], train["target"]) for t in pair), base, 8000)
    teachers = {}
    pairs, _ = load_corpus("bible:de-en", "train")  # the shortlists' training pairs
    for name, (encoder, decoder, width, ffn, vocab) in models.items():
        tokenizer_dir = work / f"tokenizer-{vocab}"
        if not tokenizer_dir.exists():
            padded_tokenizer(base, tokenizer_dir, vocab)
        tokenizer = load_tokenizer(tokenizer_dir)
        if vocab not in teachers:  # a teacher per vocabulary: each student is made from one of its size
            torch.manual_seed(0)
            e, d, w, f = next(iter(models.values()))[:4]
            teachers[vocab] = MarianMTModel(MarianConfig(
                vocab_size=len(tokenizer), d_model=w, encoder_layers=e, decoder_layers=d, encoder_ffn_dim=f,
                decoder_ffn_dim=f, encoder_attention_heads=8, decoder_attention_heads=8,
                max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                decoder_start_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                forced_eos_token_id=None, share_encoder_decoder_embeddings=True)).eval()
        teacher = teachers[vocab]
        model = teacher if name == next(iter(models)) else make_student(
            teacher, encoder, decoder, d_model=None if width == teacher.config.d_model else width,
            ffn_dim=None if ffn == teacher.config.encoder_ffn_dim else ffn)
        shutil.rmtree(folders[name], ignore_errors=True)
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
        convert_to_ctranslate2(folders[name], folders[name] / "ct2", "int8")
        if name.startswith("student 6+1"):
            shortlist = build_shortlist(tokenizer, pairs["source"], pairs["target"])
            convert_to_ctranslate2(folders[name], folders[name] / "ct2-vmap", "int8", shortlist=shortlist)
    return folders


def measure(folder: Path, engine: str, beams: int, args: argparse.Namespace, sources: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(folder), engine, str(beams), str(args.batch_size),
                          str(args.new_tokens), str(args.repeats), str(args.threads), json.dumps(sources)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{folder.name}, {engine}, beam {beams} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_sizes(work: Path, teacher: Path, student_layers: tuple[int, int], bits: list[int]) -> list[dict]:
    """Bytes of the student's ``model.safetensors`` exported bit-packed and Huffman-coded at each of ``bits``
    (``nmtq distill --method qd`` one step at learning rate 0: the teacher-initialised student, quantized)."""
    rows = []
    for b in bits:
        run = work / f"qd{b}"
        if not (run / "quantized.safetensors").exists():
            shutil.rmtree(run, ignore_errors=True)
            nmtq_cli("distill", "--data", "bible", "--teacher", str(teacher), "--output_dir", str(run),
                     "--method", "qd", "--max_steps", "1", "--learning_rate", "0", "--per_device_train_batch_size",
                     "2", "--save_strategy", "no", "--student_encoder_layers", str(student_layers[0]),
                     "--student_decoder_layers", str(student_layers[1]), "--bits", str(b), "--bucket_size", "256",
                     "--max_eval_samples", "2", "--max_new_tokens", "2", "--num_beams", "1", "--report_to", "none")
        sizes = {}
        for kind, flags in (("packed", []), ("huffman", ["--huffman"])):
            out = work / f"export{b}-{kind}"
            shutil.rmtree(out, ignore_errors=True)
            nmtq_cli("export", str(run), str(out), *flags)
            sizes[kind] = (out / "model.safetensors").stat().st_size
        rows.append({"bits": b, **sizes})
    return rows


def speed_table(rows: list[dict], names: list[str]) -> list[str]:
    lines = ["| model | engine | greedy tokens/s | vs teacher fp32 | vs teacher CT2 int8 | beam 4 tokens/s | "
             "vs teacher fp32 | vs teacher CT2 int8 | peak RSS (MB) | weights file (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    speed = {(r["model"], r["engine"], r["beams"]): r["tokens_per_second"] for r in rows}
    teacher = names[0]
    for name in names:
        for engine in [e for e in (*ENGINES, SHORTLIST) if (name, e, 1) in speed]:
            cells = []
            for beams in (1, 4):
                s = speed[name, engine, beams]
                cells += [f"{s:,.0f}", f"{s / speed[teacher, ENGINES[0], beams]:.1f}x",
                          f"{s / speed[teacher, ENGINES[1], beams]:.2f}x"]
            r = next(r for r in rows if (r["model"], r["engine"]) == (name, engine))
            peak = max(x["peak_rss_bytes"] for x in rows if (x["model"], x["engine"]) == (name, engine))
            lines.append(f"| {name} | {engine} | {' | '.join(cells)} | {peak / 2**20:,.0f} | "
                         f"{r['weights_bytes'] / 1e6:,.1f} |")
    return lines


# each lever, applied in this order to the fp32 teacher: (lever, model, engine) after it is pulled
LEVERS = (("depth: 6+6 -> 6+1 layers", "student 6+1", ENGINES[0]),
          ("int8 in CTranslate2", "student 6+1", ENGINES[1]),
          ("trimmed vocabulary: 58,101 -> 14,531", "student 6+1, trimmed vocabulary", ENGINES[1]),
          ("lexical shortlist", "student 6+1, trimmed vocabulary", SHORTLIST))


def lever_table(rows: list[dict], teacher: str) -> list[str]:
    """Each lever's factor on the way from the fp32 teacher to the fastest 6+1 student, and its share of the
    whole speed-up (its factor's logarithm over the total's, so the shares add up to 100%)."""
    speed = {(r["model"], r["engine"], r["beams"]): r["tokens_per_second"] for r in rows}
    if not all((m, e, 1) in speed for _, m, e in LEVERS):
        return []
    lines = ["| lever, pulled in this order | greedy: factor | cumulative | share | beam 4: factor | cumulative | "
             "share |", "|---|---:|---:|---:|---:|---:|---:|"]
    cells: dict[str, list[str]] = {name: [] for name, _, _ in LEVERS}
    for beams in (1, 4):
        before = speed[teacher, ENGINES[0], beams]
        total = speed[LEVERS[-1][1], LEVERS[-1][2], beams] / before
        for name, model, engine in LEVERS:
            after = speed[model, engine, beams]
            factor = after / before
            cells[name] += [f"{factor:.2f}x", f"{after / speed[teacher, ENGINES[0], beams]:.1f}x",
                            f"{math.log(factor) / math.log(total):.0%}"]
            before = after
    lines += [f"| {name} | {' | '.join(c)} |" for name, c in cells.items()]
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per batch (two batches a repeat)")
    parser.add_argument("--new-tokens", type=int, default=32, help="target tokens decoded per sentence")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per row (median)")
    parser.add_argument("--threads", type=int, default=2, help="threads (and batches at once)")
    parser.add_argument("--bits", default="8,4,2", help="bit widths of the 6+1 student's exports")
    parser.add_argument("--markdown", type=Path, help="also write the tables here (.md), and the JSON beside it")
    parser.add_argument("--work", type=Path, help="build the models here and keep them (reused when present); "
                                                   "default: a temporary folder")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and one repeat, to check that it runs")
    args = parser.parse_args(argv)
    if min(args.batch_size, args.new_tokens, args.repeats, args.threads) < 1:
        parser.error("--batch-size, --new-tokens, --repeats and --threads take positive numbers")
    if args.markdown is not None and args.markdown.suffix != ".md":
        parser.error(f"--markdown {args.markdown}: pass a .md path (the JSON goes beside it)")
    models = QUICK if args.quick else MODELS
    bits = [int(b) for b in args.bits.split(",")]
    from nmtq.data import load_pairs

    sources = load_pairs("bible:de-en", "test")["source"][: 2 * args.batch_size]
    rows = []
    with tempfile.TemporaryDirectory(prefix="nmtq-bench-scale-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        folders = build(work, models)
        for name, folder in folders.items():
            for engine in (*ENGINES, SHORTLIST) if (folder / "ct2-vmap").exists() else ENGINES:
                weights = folder / ("ct2/model.bin" if engine.startswith("CTranslate2") else "model.safetensors")
                for beams in (1, 4):
                    result = measure(folder, engine, beams, args, sources)
                    rows.append({"model": name, "engine": engine, "beams": beams,
                                 "weights_bytes": weights.stat().st_size, **result})
                    print(f"{name}, {engine}, beam {beams}: {result['tokens_per_second']:,.0f} tokens/s",
                          file=sys.stderr)
        student = next(n for n in models if n.startswith("student 6+1"))
        sizes = export_sizes(work, folders[next(iter(models))], models[student][:2], bits)
    env = {**environment(), "torch_threads": args.threads}
    fp32 = next(r for r in rows if r["model"] == student and r["engine"] == ENGINES[0])["weights_bytes"]
    lines = [f"Two batches of {args.batch_size} Bible test verses, {args.new_tokens} target tokens each, "
             f"{args.threads} threads, median of {args.repeats}.", "", *speed_table(rows, list(folders)), "",
             "The 6+1 student on disk (`model.safetensors`; fp32: "
             f"{fp32:,} bytes):", "", "| bits | bit-packed (bytes) | vs fp32 | Huffman-coded (bytes) | vs fp32 |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['bits']} | {r['packed']:,} | {fp32 / r['packed']:.1f}x smaller | {r['huffman']:,} | "
              f"{fp32 / r['huffman']:.1f}x smaller |" for r in sizes]
    levers = lever_table(rows, next(iter(folders)))
    if levers:
        lines += ["", "Each lever's share of the 6+1 student's speed-up over the fp32 teacher (tokens/s of the rows "
                      "above):", "", *levers]
    lines += ["", f"Measured on {describe_environment(env)}.", ""]
    table = "\n".join(lines)
    print(table)
    payload = {"rows": rows, "export_sizes": sizes, "models": {n: dict(zip(
        ("encoder_layers", "decoder_layers", "d_model", "ffn_dim", "vocab_size"), m)) for n, m in models.items()},
        "setup": {k: v for k, v in vars(args).items() if k not in ("markdown", "work")}, "environment": env}
    if args.markdown is not None:
        write_text_atomic(args.markdown, table)
        write_json_atomic(args.markdown.with_suffix(".json"), payload)
    return payload


if __name__ == "__main__":
    main()
