"""`nmtq distill`: the distillation trainer, students built from a teacher, every method end to end."""

import copy
import importlib.metadata
import json
from pathlib import Path

import pytest
import torch
from conftest import ENGLISH, GERMAN, TINY
from transformers import DataCollatorForSeq2Seq

from nmtq.args import parse_train_args
from nmtq.checkpoints import last_complete_checkpoint
from nmtq.cli import main
from nmtq.distill import DISTILL_ARGUMENT_CLASSES, DistillationTrainer, translation_streams
from nmtq.models import load_model
from nmtq.quant import Quantizer, quantize_tensor
from nmtq.student import make_student, spread_layers
from nmtq.tokenizer import load_tokenizer

# TINY without the architecture fields, which a student takes from its teacher
TRAINING = [a for pair in zip(TINY[::2], TINY[1::2]) if pair[0] not in (
    "--vocab_size", "--d_model", "--encoder_layers", "--decoder_layers", "--attention_heads", "--ffn_dim",
    "--max_position_embeddings") for a in pair]


@pytest.fixture(scope="module")
def teacher_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", "--data", f"tsv:{corpus}", "--output_dir", str(out), *TINY, "--encoder_layers", "3",
                 "--decoder_layers", "3", "--max_steps", "40", "--save_strategy", "no"]) == 0
    return out


def distill_argv(corpus, teacher_dir, out, *extra):
    return ["distill", "--data", f"tsv:{corpus}", "--teacher", str(teacher_dir), "--output_dir", str(out),
            "--student_encoder_layers", "1", "--student_decoder_layers", "2", "--bits", "4", "--bucket_size", "16",
            *TRAINING, *extra]


def test_spread_layers():
    assert spread_layers(6, 3) == [0, 3, 5] and spread_layers(6, 1) == [5] and spread_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="between 1 and 6"):
        spread_layers(6, 7)


def test_student_copies_embeddings_and_a_spread_of_layers(teacher_dir):
    teacher = load_model(teacher_dir)
    student = make_student(teacher, encoder_layers=1, decoder_layers=2)
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["model.shared.weight"], t["model.shared.weight"])
    assert torch.equal(s["model.encoder.layers.0.fc1.weight"], t["model.encoder.layers.2.fc1.weight"])
    assert torch.equal(s["model.decoder.layers.1.fc1.weight"], t["model.decoder.layers.2.fc1.weight"])
    assert student.lm_head.weight is student.model.shared.weight  # still tied
    scratch = make_student(teacher, encoder_layers=1, decoder_layers=1, init="scratch")
    assert not torch.equal(scratch.state_dict()["model.shared.weight"], t["model.shared.weight"])


def trainer_for(teacher_dir, corpus, tmp_path, student, quantizer=None, alpha=0.7):
    data, distill_args, _, training = parse_train_args(
        ["--data", f"tsv:{corpus}", "--teacher", str(teacher_dir), "--output_dir", str(tmp_path), *TRAINING,
         "--max_steps", "3", "--save_strategy", "no"], DISTILL_ARGUMENT_CLASSES)
    tokenizer = load_tokenizer(teacher_dir)
    features = tokenizer(GERMAN, text_target=ENGLISH)
    rows = [{k: features[k][i] for k in features} for i in range(len(GERMAN))]
    trainer = DistillationTrainer(model=student, args=training, train_dataset=rows,
                                  data_collator=DataCollatorForSeq2Seq(tokenizer, model=student),
                                  processing_class=tokenizer, teacher=load_model(teacher_dir), alpha=alpha,
                                  temperature=2.0, quantizer=quantizer, target_streams=translation_streams)
    return trainer, trainer.data_collator(rows[:4])


def test_gradients_reach_only_the_student(teacher_dir, corpus, tmp_path):
    student = make_student(load_model(teacher_dir), 1, 1)
    trainer, batch = trainer_for(teacher_dir, corpus, tmp_path, student)
    loss = trainer.compute_loss(student, batch, num_items_in_batch=int((batch["labels"] != -100).sum()))
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher.parameters())
    assert not trainer.teacher.training


def test_quantized_marian_student_outputs_equal_a_copy_holding_q_of_w(teacher_dir):
    student = make_student(load_model(teacher_dir), 1, 1).eval()
    reference = copy.deepcopy(student)
    quantizer = Quantizer(student, bits=3, bucket_size=16)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name in {e.name for e in quantizer.params}:
                p.copy_(quantize_tensor(p, 3, 16))
    ids = torch.tensor([[5, 6, 7, 0]])
    decoder = torch.tensor([[student.config.decoder_start_token_id, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids, decoder_input_ids=decoder).logits,
                                   reference(input_ids=ids, decoder_input_ids=decoder).logits, rtol=0, atol=0)
        assert torch.equal(student.generate(ids, num_beams=2, max_new_tokens=5),
                           reference.generate(ids, num_beams=2, max_new_tokens=5))
    # tied embedding and output layer are one quantized tensor
    assert sum(e.name.endswith("shared.weight") for e in quantizer.params) == 1


def test_dq_changes_points_and_not_weights(teacher_dir, corpus, tmp_path):
    student = make_student(load_model(teacher_dir), 1, 1)
    quantizer = Quantizer(student, bits=2, bucket_size=16, learn_points=True)
    quantizer.train_points_only()
    weights = {k: v.clone() for k, v in student.state_dict().items() if not k.endswith("_quant_points")}
    points = [p.detach().clone() for p in quantizer.point_parameters()]
    trainer, _ = trainer_for(teacher_dir, corpus, tmp_path, student, quantizer)
    trainer.args.learning_rate = 1e-2
    trainer.train()
    after = student.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    moved = [not torch.equal(p, q) for p, q in zip(quantizer.point_parameters(), points)]
    assert any(moved)
    assert all(torch.all(p[1:] >= p[:-1]) for p in quantizer.point_parameters())


@pytest.mark.parametrize("method", ["fp", "kd", "qd"])
def test_methods_from_scratch_run_end_to_end(method, corpus, teacher_dir, tmp_path):
    out = tmp_path / method
    assert main(distill_argv(corpus, teacher_dir, out, "--method", method, "--max_steps", "3",
                             "--save_strategy", "no")) == 0
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["encoder_layers"] == 1 and metrics["decoder_layers"] == 2
    assert metrics["bits"] == (4 if method == "qd" else 32)
    assert metrics["environment"]["torch"] == importlib.metadata.version("torch")
    assert (out / "quantization.json").is_file() == (method == "qd")
    assert load_model(out).config.encoder_layers == 1
    # the Trainer turns the key/value cache off; a saved student must decode with it
    assert json.loads((out / "generation_config.json").read_text())["use_cache"] is True


def test_an_lstm_student_is_distilled_and_quantized(corpus, teacher_dir, tmp_path):
    out = tmp_path / "lstm"
    assert main(distill_argv(corpus, teacher_dir, out, "--method", "qd", "--student_type", "lstm",
                             "--student_d_model", "16", "--student_hidden_size", "16", "--max_steps", "3",
                             "--save_strategy", "no")) == 0
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["num_sentences"] == 12 and metrics["bits"] == 4
    assert type(load_model(out)).__name__ == "LstmForConditionalGeneration"


def test_ptq_and_dq_start_from_a_trained_student_and_shrink_it(corpus, teacher_dir, tmp_path):
    kd = tmp_path / "kd"
    assert main(distill_argv(corpus, teacher_dir, kd, "--method", "kd", "--max_steps", "3",
                             "--save_strategy", "no")) == 0
    sizes = {}
    for method in ("ptq", "dq"):
        out = tmp_path / method
        assert main(distill_argv(corpus, teacher_dir, out, "--method", method, "--student_name_or_path", str(kd),
                                 "--bits", "2", "--max_steps", "2", "--save_strategy", "no")) == 0
        sizes[method] = json.loads((out / "test" / "metrics.json").read_text())
    fp = json.loads((kd / "test" / "metrics.json").read_text())
    # 2-bit codes + (min, max) in fp32 per bucket of 16 = 6 bits a weight, under a third of fp32 with the biases
    assert sizes["ptq"]["bytes"] < fp["bytes"] / 3 and sizes["dq"]["bytes"] > sizes["ptq"]["bytes"]  # + points
    # the saved weights are the decoded codes: at most 4 distinct values per bucket of 16
    weight = load_model(tmp_path / "ptq").model.encoder.layers[0].fc1.weight.detach().reshape(-1, 16)
    assert max(len(torch.unique(row)) for row in weight) <= 4


def test_resume_restores_the_quantizer_state(corpus, teacher_dir, tmp_path):
    out = tmp_path / "qd"
    argv = distill_argv(corpus, teacher_dir, out, "--method", "qd", "--mean_bits", "3", "--save_steps", "2")
    assert main([*argv, "--max_steps", "2"]) == 0
    saved = json.loads((out / "checkpoint-2" / "quantizer.json").read_text())
    assert set(saved["bits"].values()) <= set(range(1, 9)) and len(set(saved["bits"].values())) > 1
    assert main([*argv, "--max_steps", "4", "--resume_from_checkpoint", "last"]) == 0
    assert json.loads((out / "checkpoint-4" / "quantizer.json").read_text()) == saved


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "ptq"], "pass --student_name_or_path"),
        (["--method", "int4"], "method='int4'"),
        (["--alpha", "1.5"], "alpha"),
        (["--bits", "0"], "bits"),
    ],
)
def test_bad_distill_arguments(extra, message, corpus, teacher_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(distill_argv(corpus, teacher_dir, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_student_with_another_vocabulary_is_refused(corpus, teacher_dir, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", "--data", f"tsv:{corpus}", "--output_dir", str(other), *TINY, "--vocab_size", "40",
                 "--max_steps", "1", "--save_strategy", "no"]) == 0
    assert main(distill_argv(corpus, teacher_dir, tmp_path / "never", "--method", "ptq", "--student_name_or_path",
                             str(other))) == 2
    assert "shared target vocabulary" in capsys.readouterr().err


def test_loaded_and_built_students_quantize_the_same_tensors(teacher_dir):
    loaded = load_model(teacher_dir)
    assert not loaded.model.encoder.embed_positions.weight.requires_grad  # fixed sinusoidal table
    built = make_student(loaded, 3, 3)
    assert [e.name for e in Quantizer(loaded).params] == [e.name for e in Quantizer(built).params]


def test_sizes_count_only_what_save_pretrained_stores(teacher_dir):
    from safetensors import safe_open

    from nmtq.methods import fp32_size
    from nmtq.models import not_stored

    teacher = load_model(teacher_dir)
    with safe_open(str(teacher_dir / "model.safetensors"), "pt") as f:
        stored = sum(f.get_slice(k).get_shape()[0] * (f.get_slice(k).get_shape() + [1])[1] for k in f.keys())
    assert not_stored(teacher) and fp32_size(teacher).fp32_bits == stored * 32
    quantizer = Quantizer(teacher, bits=4)
    assert quantizer.size(not_stored=not_stored(teacher)).fp32_bits == stored * 32


def test_sequence_level_kd_caches_the_teachers_translations_once(corpus, teacher_dir, tmp_path):
    cache = tmp_path / "cache"
    argv = distill_argv(corpus, teacher_dir, tmp_path / "seq", "--method", "kd", "--sequence_kd", "1",
                        "--teacher_cache_dir", str(cache), "--cache_shard_size", "5", "--max_steps", "2",
                        "--save_strategy", "no")
    assert main(argv) == 0
    shards = sorted(cache.glob("translations-*/seq-*.jsonl"))
    assert len(shards) == 3  # 12 pairs in shards of 5
    translations = [json.loads(line) for shard in shards for line in shard.read_text().splitlines()]
    teacher, tokenizer = load_model(teacher_dir), load_tokenizer(teacher_dir)
    from nmtq.evaluation import translate

    assert translations == translate(teacher, tokenizer, GERMAN, num_beams=2, max_new_tokens=8, progress=False)
    stamps = [s.stat().st_mtime_ns for s in shards]
    shards[1].unlink()  # as if killed before writing it: only that shard is made again
    assert main([*argv[:-4], "--output_dir", str(tmp_path / "mixed"), "--sequence_kd", "0.5", "--max_steps", "2",
                 "--save_strategy", "no"]) == 0
    assert [s.stat().st_mtime_ns for s in (shards[0], shards[2])] == [stamps[0], stamps[2]]
    assert shards[1].is_file()
    assert json.loads((tmp_path / "mixed" / "test" / "metrics.json").read_text())["sequence_kd"] == 0.5


def test_cache_fingerprints_read_whole_dataset_columns():
    # a datasets Column prints its first five items only: corpora that begin alike must still get two caches
    from datasets import Dataset

    from nmtq.teacher_cache import fingerprint

    def column(last: str):
        return Dataset.from_dict({"source": [*GERMAN[:10], last]})["source"]

    assert fingerprint(column("a")) == fingerprint(column("a")) == fingerprint([*GERMAN[:10], "a"])
    assert fingerprint(column("a")) != fingerprint(column("b"))
    assert fingerprint(torch.tensor([1, 2])) == fingerprint([1, 2])


def test_cached_top_k_with_the_whole_vocabulary_gives_the_live_teachers_loss(corpus, teacher_dir, tmp_path):
    from nmtq.distill import DistillationCollator
    from nmtq.teacher_cache import cache_top_k

    teacher, tokenizer = load_model(teacher_dir), load_tokenizer(teacher_dir)
    student = make_student(teacher, 1, 1).eval()  # no dropout: both losses see the same student
    vocab = student.config.vocab_size
    features = tokenizer(GERMAN, text_target=ENGLISH)
    rows = [{"input_ids": features["input_ids"][i], "labels": features["labels"][i], "example_id": i}
            for i in range(len(GERMAN))]
    cache = cache_top_k(teacher, rows, DataCollatorForSeq2Seq(tokenizer, model=student), tmp_path / "topk",
                        k=vocab, batch_size=5, shard_size=7)
    live, _ = trainer_for(teacher_dir, corpus, tmp_path, student)
    batch = DistillationCollator(tokenizer, student, {"labels": cache})([rows[i] for i in (3, 0, 11, 8)])
    assert batch["teacher_ids"].shape == (*batch["labels"].shape, vocab)
    with torch.no_grad():
        cached_loss = live.compute_loss(student, batch)
        live_loss = live.compute_loss(student, {k: v for k, v in batch.items() if not k.startswith("teacher_")})
    assert float(cached_loss) == pytest.approx(float(live_loss), rel=1e-3)  # log-probabilities kept in fp16


def test_training_from_cached_top_k_runs_without_the_teacher(corpus, teacher_dir, tmp_path, monkeypatch):
    import nmtq.distill

    seen = {}
    original = nmtq.distill.DistillationTrainer.__init__

    def spy(self, *args, teacher, **kwargs):
        seen["teacher"] = teacher
        original(self, *args, teacher=teacher, **kwargs)

    monkeypatch.setattr(nmtq.distill.DistillationTrainer, "__init__", spy)
    out = tmp_path / "topk"
    assert main(distill_argv(corpus, teacher_dir, out, "--method", "qd", "--teacher_top_k", "4",
                             "--teacher_cache_dir", str(tmp_path / "cache"), "--max_steps", "3",
                             "--save_strategy", "no")) == 0
    assert seen["teacher"] is None
    assert len(list((tmp_path / "cache").glob("top4-*/topk-00000.safetensors"))) == 1
    assert json.loads((out / "test" / "metrics.json").read_text())["teacher_top_k"] == 4


def test_alternation_updates_weights_then_points(teacher_dir, corpus, tmp_path):
    student = make_student(load_model(teacher_dir), 1, 1)
    quantizer = Quantizer(student, bits=2, bucket_size=16, learn_points=True)
    trainer, batch = trainer_for(teacher_dir, corpus, tmp_path, student, quantizer)
    trainer.alternate_every, trainer.args.max_steps, trainer.args.learning_rate = 1, 1, 1e-2

    def snapshot():
        return ([p.detach().clone() for p in quantizer.point_parameters()],
                {k: v.clone() for k, v in student.state_dict().items() if not k.endswith("_quant_points")})

    points, weights = snapshot()
    trainer.train()  # step 0: the weights
    points_1, weights_1 = snapshot()
    assert all(torch.equal(a, b) for a, b in zip(points, points_1))
    assert any(not torch.equal(weights[k], weights_1[k]) for k in weights)
    student.zero_grad()
    trainer.training_step(student, batch)  # step 1: the points only
    assert all(p.grad is not None for p in quantizer.point_parameters())
    assert all(p.grad is None for n, p in student.named_parameters() if not n.endswith("_quant_points"))


def test_dq_alternating_from_the_teachers_copy_runs_end_to_end(corpus, teacher_dir, tmp_path):
    out = tmp_path / "dq"
    assert main(distill_argv(corpus, teacher_dir, out, "--method", "dq", "--alternate_every", "1", "--bits", "2",
                             "--max_steps", "4", "--save_strategy", "no")) == 0
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["alternate_every"] == 1 and metrics["bits"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "qd", "--alternate_every", "2"], "method dq only"),
        (["--method", "dq", "--alternate_every", "often"], "positive number of optimizer steps"),
        (["--method", "dq"], "--alternate_every"),
        (["--sequence_kd", "1.5"], "between 0"),
        (["--method", "fp", "--teacher_top_k", "4"], "use method kd"),
        (["--method", "kd", "--sparsity", "0.5"], "use method qd, dq or ptq"),
        (["--method", "qd", "--push_to_hub", "true"], "nmtq push EXPORT_DIR"),
        (["--method", "qd", "--sparsity", "1.0"], "sparsity < 1"),
    ],
)
def test_bad_teacher_target_arguments(extra, message, corpus, teacher_dir, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(distill_argv(corpus, teacher_dir, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_pruning_with_quantized_distillation_shrinks_the_student_and_resumes(corpus, teacher_dir, tmp_path):
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    assert main(distill_argv(corpus, teacher_dir, dense, "--method", "qd", "--max_steps", "2",
                             "--save_strategy", "no")) == 0
    argv = distill_argv(corpus, teacher_dir, pruned, "--method", "qd", "--sparsity", "0.5", "--prune_every", "1",
                        "--prune_end_step", "2", "--save_steps", "2")
    assert main([*argv, "--max_steps", "2"]) == 0
    from safetensors.torch import load_file

    masks = load_file(str(pruned / "checkpoint-2" / "quantizer-masks.safetensors"))
    assert masks and all(0.2 < 1 - m.float().mean() <= 0.5 for m in masks.values())  # halfway up the schedule
    assert main([*argv, "--max_steps", "4", "--resume_from_checkpoint", "last"]) == 0
    after = load_file(str(pruned / "checkpoint-4" / "quantizer-masks.safetensors"))
    assert all(torch.all(after[n] <= m) for n, m in masks.items())  # resumed masks only shrink
    metrics = {d.name: json.loads((d / "test" / "metrics.json").read_text()) for d in (dense, pruned)}
    assert metrics["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.01) and metrics["dense"]["sparsity"] == 0
    assert metrics["pruned"]["bytes"] < metrics["dense"]["bytes"]
    weight = load_model(pruned).model.encoder.layers[0].fc1.weight
    assert float((weight == 0).float().mean()) >= 0.5  # pruned weights are exact zeros on disk


def test_ptq_prunes_at_once(corpus, teacher_dir, tmp_path):
    kd = tmp_path / "kd"
    assert main(distill_argv(corpus, teacher_dir, kd, "--method", "kd", "--max_steps", "1",
                             "--save_strategy", "no")) == 0
    out = tmp_path / "ptq"
    assert main(distill_argv(corpus, teacher_dir, out, "--method", "ptq", "--student_name_or_path", str(kd),
                             "--sparsity", "0.75")) == 0
    assert json.loads((out / "test" / "metrics.json").read_text())["sparsity"] == pytest.approx(0.75, abs=0.01)


def test_a_killed_pruned_qd_run_resumes_and_finishes(corpus, teacher_dir, tmp_path):
    import subprocess
    import sys

    from conftest import kill_after_checkpoint
    from safetensors.torch import load_file

    out = tmp_path / "pqk"
    argv = [sys.executable, "-m", "nmtq", *distill_argv(corpus, teacher_dir, out, "--method", "qd", "--sparsity",
                                                        "0.5", "--prune_every", "1", "--prune_end_step", "6",
                                                        "--save_steps", "2")]
    kill_after_checkpoint([*argv, "--max_steps", "100000"], out, 2, last_file="quantizer.json")
    # the kill may land after the Trainer's files and before the quantizer's: resuming takes the last whole one
    resumed = Path(last_complete_checkpoint(str(out), "quantizer.json"))
    last = int(resumed.name.split("-")[1])
    killed = load_file(str(resumed / "quantizer-masks.safetensors"))
    result = subprocess.run([*argv, "--max_steps", str(last + 8), "--resume_from_checkpoint", "last"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    final = load_file(str(out / f"checkpoint-{last + 8}" / "quantizer-masks.safetensors"))
    assert set(final) == set(killed) and all(torch.all(final[n] <= m) for n, m in killed.items())
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_a_checkpoint_without_the_quantizers_state_is_not_resumed_from(tmp_path):
    from safetensors.torch import save_file

    for step, files in ((2, ("trainer_state.json", "quantizer.json")), (4, ("trainer_state.json",))):
        (tmp_path / f"checkpoint-{step}").mkdir()
        save_file({"w": torch.zeros(2)}, str(tmp_path / f"checkpoint-{step}" / "model.safetensors"))
        for name in files:
            (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    assert last_complete_checkpoint(str(tmp_path), "quantizer.json").endswith("checkpoint-2")


def test_a_saved_quantized_student_translates_exactly_as_before_saving(corpus, teacher_dir, tmp_path):
    from nmtq.evaluation import translate

    out = tmp_path / "qd"
    assert main(distill_argv(corpus, teacher_dir, out, "--method", "qd", "--bits", "3", "--max_steps", "4",
                             "--save_strategy", "no")) == 0
    before = (out / "test" / "hypotheses.txt").read_text(encoding="utf-8").splitlines()  # the in-memory student's
    loaded = load_model(out)
    assert translate(loaded, load_tokenizer(out), GERMAN, num_beams=2, max_new_tokens=8, progress=False) == before
    weight = loaded.model.encoder.layers[0].fc1.weight.detach().reshape(-1, 16)
    assert max(len(torch.unique(row)) for row in weight) <= 8  # 3-bit codes, decoded
    from nmtq.codes import read_codes

    codes = read_codes(out / "quantized.safetensors").quantized  # the exact codes behind the saved weights
    weights = dict(loaded.named_parameters())
    assert codes and all(torch.equal(q.dequantize(), weights[name]) for name, q in codes.items())


def test_two_processes_share_the_teacher_caches_and_distil(corpus, teacher_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "cpu.yaml"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
              "--main_process_port", "29519", "-m", "nmtq"]
    cache, out = tmp_path / "cache", tmp_path / "ddp"
    argv = distill_argv(corpus, teacher_dir, out, "--method", "qd", "--sequence_kd", "0.5", "--teacher_top_k", "4",
                        "--teacher_cache_dir", str(cache), "--cache_shard_size", "3", "--max_steps", "2",
                        "--save_strategy", "no")
    result = subprocess.run([*launch, *argv], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(cache.glob("translations-*/seq-*.jsonl"))) == 4  # 12 pairs in shards of 3, split by rank
    assert len(list(cache.glob("top4-*/topk-*.safetensors"))) == 8  # references and translations
    assert json.loads((out / "test" / "metrics.json").read_text())["teacher_top_k"] == 4


def test_a_bit_budget_works_with_sequence_level_kd(corpus, teacher_dir, tmp_path):
    out = tmp_path / "budget"
    assert main(distill_argv(corpus, teacher_dir, out, "--method", "qd", "--mean_bits", "3", "--sequence_kd", "0.5",
                             "--teacher_cache_dir", str(tmp_path / "cache"), "--max_steps", "2",
                             "--save_strategy", "no")) == 0
    assert len(set(json.loads((out / "quantization.json").read_text())["bits"].values())) > 1
