"""Bad inputs to every command: one line that says how to fix it, exit 2, and nothing written.

The issue's contract for user errors, table-driven: "A user error is one line that says how to fix it, exit 2 ...
Every argument is validated before any file is written." Each case builds its argv (and the bad files it needs)
in a fresh ``tmp_path``, runs ``nmtq`` in-process and checks:

* the exit status is 2 (argparse's ``SystemExit`` counts; an uncaught exception does not);
* stderr, read at the file descriptor so that progress bars and library warnings count too, holds exactly one
  non-empty line, ``nmtq COMMAND: error: ...``, naming what is wrong; a progress bar before it means the input
  was validated late, after work had started;
* no file or folder appeared, changed or vanished in ``tmp_path`` (also the working directory) or in the shared
  models and data the case reads.

The shared models are built once per module and kept tiny: a 1+2-layer teacher (conftest's ``small_teacher``), a
4-bit student distilled from it in 2 steps, and a ResNet-8 image teacher trained for 2 steps on synthetic images.
Cases that could write into a model if a check were missing point at a copy of it in ``tmp_path``.
"""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from conftest import ENGLISH, GERMAN, TINY
from safetensors.torch import load_file
from test_distill import distill_argv

from nmtq.cli import main

PAIRS = "".join(f"{de}\t{en}\n" for de, en in zip(GERMAN, ENGLISH))
THREE_COLUMNS = "ein Haus\ta house\tla maison\n"
IMAGES = ["--data", "synthetic:80", "--split_seed", "0", "--depth", "8", "--base_width", "4",
          "--per_device_train_batch_size", "16", "--learning_rate", "1e-2", "--report_to", "none",
          "--disable_tqdm", "true", "--seed", "0", "--bucket_size", "16", "--save_strategy", "no"]


@pytest.fixture(scope="module")
def quantized_student(small_teacher, corpus, tmp_path_factory):
    """A 1+2-layer student of the small teacher, distilled with 4-bit QD for 2 steps: what `nmtq export` takes."""
    out = tmp_path_factory.mktemp("bad-inputs-student") / "qd4"
    assert main(distill_argv(corpus, small_teacher, out, "--method", "qd", "--max_steps", "2",
                             "--save_strategy", "no")) == 0
    return out


@pytest.fixture(scope="module")
def image_teacher(tmp_path_factory):
    """A ResNet-8 (base width 4) trained for 2 steps on 80 synthetic images, 3 channels, 10 classes."""
    out = tmp_path_factory.mktemp("bad-inputs-images") / "teacher"
    assert main(["distill-images", *IMAGES, "--method", "fp", "--max_steps", "2", "--output_dir", str(out)]) == 0
    return out


@dataclass
class Ctx:
    """What a case's argv is built from: its own ``tmp`` folder and the shared inputs, built on first use (each
    one used is snapshotted with ``tmp``)."""

    tmp: Path
    request: pytest.FixtureRequest
    inputs: set[Path] = field(default_factory=set)

    def _shared(self, name: str, folder: Callable[[Path], Path] = lambda p: p) -> Path:
        path = self.request.getfixturevalue(name)
        self.inputs.add(folder(path))
        return path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def data(self) -> Path:
        return self._shared("corpus", lambda p: p.parent)

    @property
    def teacher(self) -> Path:
        return self._shared("small_teacher")

    @property
    def student(self) -> Path:
        return self._shared("quantized_student")

    @property
    def images(self) -> Path:
        return self._shared("image_teacher")

    def copy(self, source: Path, name: str, drop: tuple[str, ...] = ()) -> Path:
        """A copy of the model folder ``source`` in ``tmp``, without the files in ``drop``."""
        target = self.tmp / name
        shutil.copytree(source, target, ignore=lambda _, names: [n for n in names if n in drop])
        return target

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def truncated_teacher(self) -> Path:
        """The teacher with its model.safetensors cut in half, as a copy interrupted while it was written."""
        folder = self.copy(self.teacher, "truncated-teacher")
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return folder

    def pickled_model(self, source: Path, name: str, keep_safetensors: bool = False) -> Path:
        """``source`` with its weights as pytorch_model.bin (a pickle), instead of model.safetensors or beside it."""
        folder = self.copy(source, name, drop=() if keep_safetensors else ("model.safetensors",))
        torch.save(load_file(source / "model.safetensors"), folder / "pytorch_model.bin")
        return folder

    def gray_images(self) -> Path:
        """Twenty 8x8 grayscale images of two classes, saved with ``datasets``' save_to_disk (1 channel, where the
        image teacher has 3)."""
        import datasets
        import numpy as np
        from PIL import Image

        pixels = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=2)})
        folder = self.tmp / "gray"
        datasets.Dataset.from_dict({"image": [Image.fromarray(p, mode="L") for p in pixels],
                                    "label": [i % 2 for i in range(20)]}, features=features).save_to_disk(folder)
        return folder

    def table_recipe(self) -> Path:
        """A valid table recipe (teacher and student recipes of tiny models) whose runs go under ``tmp``."""
        teacher = self.write("teacher.yaml", f"data: tsv:{self.data}\n" + "".join(
            f"{k[2:]}: {v}\n" for k, v in zip(TINY[::2], TINY[1::2]))
            + f"max_steps: 2\nsave_strategy: 'no'\noutput_dir: {self.tmp / 'table' / 'teacher'}\n")
        student = self.write("student.yaml", f"data: tsv:{self.data}\nstudent_encoder_layers: 1\n"
                             "student_decoder_layers: 1\nbucket_size: 16\nmax_steps: 2\nsave_strategy: 'no'\n"
                             "report_to: none\ndisable_tqdm: true\nnum_beams: 2\nmax_new_tokens: 8\n")
        return self.write("table.yaml", f"teacher_recipe: {teacher}\nstudents:\n  - {student}\nbits: [2]\n"
                          f"plot: false\noutput_dir: {self.tmp / 'table'}\n")


Arg = str | Callable[[Ctx], str]


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    expected: str  # a part of the one error line

    @property
    def command(self) -> str:
        return self.id.split("/")[0]


def _resolve(c: Ctx, args: tuple[Arg, ...]) -> list[str]:
    return [a(c) if callable(a) else a for a in args]


def train(*extra: Arg) -> Callable[[Ctx], list[str]]:
    """`nmtq train` of a tiny teacher for 2 steps, then ``extra`` (a later field overrides an earlier one)."""
    return lambda c: ["train", "--data", f"tsv:{c.data}", "--output_dir", str(c.out), *TINY, "--max_steps", "2",
                      "--save_strategy", "no", *_resolve(c, extra)]


def distill(*extra: Arg) -> Callable[[Ctx], list[str]]:
    """`nmtq distill` of a 1+2-layer 4-bit QD student of the small teacher for 2 steps, then ``extra``."""
    return lambda c: distill_argv(c.data, c.teacher, c.out, "--max_steps", "2", "--save_strategy", "no",
                                  *_resolve(c, extra))


def images(*extra: Arg) -> Callable[[Ctx], list[str]]:
    """`nmtq distill-images` of a ResNet-8 on synthetic images with --method fp (no teacher), then ``extra``."""
    return lambda c: ["distill-images", *IMAGES, "--method", "fp", "--max_steps", "2", "--output_dir", str(c.out),
                      *_resolve(c, extra)]


def evaluate(*extra: Arg, model: Callable[[Ctx], Path] = lambda c: c.teacher) -> Callable[[Ctx], list[str]]:
    """`nmtq evaluate` of the small teacher on the corpus, output under ``tmp``, then ``extra``."""
    return lambda c: ["evaluate", str(model(c)), "--data", f"tsv:{c.data}", "--num-beams", "1",
                      "--max-new-tokens", "4", "--output-dir", str(c.out), *_resolve(c, extra)]


def command(name: str, *args: Arg) -> Callable[[Ctx], list[str]]:
    return lambda c: [name, *_resolve(c, args)]


def table(*extra: Arg) -> Callable[[Ctx], list[str]]:
    """`nmtq table` of a valid recipe of tiny models, then ``extra``."""
    return lambda c: ["table", "--config", str(c.table_recipe()), *_resolve(c, extra)]


def missing(name: str) -> Callable[[Ctx], str]:
    return lambda c: str(c.tmp / name)


CASES = [
    # ------------------------------------------------------------------------------------------------ nmtq train
    Case("train/unknown-field", train("--max_stepz", "3"), "--max_stepz"),
    Case("train/abbreviated-field", train("--max_step", "3"), "--max_step"),  # not silently read as --max_steps
    Case("train/malformed-data-spec", train("--data", "csv:x.csv"), "csv"),
    Case("train/malformed-train-data-spec", train("--train_data", "text:only-one.txt"), "text:"),
    Case("train/missing-data-file", train("--data", lambda c: f"tsv:{c.tmp / 'missing.tsv'}"), "missing.tsv"),
    Case("train/tsv-with-three-columns", train("--data", lambda c: f"tsv:{c.write('bad.tsv', THREE_COLUMNS)}"),
         "tab-separated"),
    Case("train/missing-recipe", train("--config", missing("missing.yaml")), "missing.yaml"),
    Case("train/recipe-yaml-syntax-error", train("--config", lambda c: str(c.write("r.yaml", "data: [bible\n"))),
         "YAML"),
    Case("train/recipe-unknown-field",
         train("--config", lambda c: str(c.write("r.yaml", "learning_rat: 0.1\n"))), "learning_rat"),
    Case("train/recipe-not-a-mapping", train("--config", lambda c: str(c.write("r.yaml", "- a\n- b\n"))),
         "mapping"),
    Case("train/config-without-a-path", train("--config"), "--config"),
    Case("train/train-batch-size-0", train("--per_device_train_batch_size", "0"), "per_device_train_batch_size"),
    Case("train/eval-batch-size-0", train("--per_device_eval_batch_size", "0"), "per_device_eval_batch_size"),
    Case("train/gradient-accumulation-0", train("--gradient_accumulation_steps", "0"), "gradient_accumulation_steps"),
    Case("train/negative-learning-rate", train("--learning_rate", "-1"), "learning_rate"),
    Case("train/negative-weight-decay", train("--weight_decay", "-0.1"), "weight_decay"),
    Case("train/negative-max-steps", train("--max_steps", "-5"), "max_steps"),
    Case("train/zero-max-steps", train("--max_steps", "0"), "max_steps"),
    Case("train/zero-epochs", train("--max_steps", "-1", "--num_train_epochs", "0"), "num_train_epochs"),
    Case("train/zero-beams", train("--num_beams", "0"), "num_beams"),
    Case("train/zero-max-new-tokens", train("--max_new_tokens", "0"), "max_new_tokens"),
    Case("train/zero-max-train-minutes", train("--max_train_minutes", "0"), "max_train_minutes"),
    Case("train/negative-stop-grad-norm", train("--stop_grad_norm", "-1"), "stop_grad_norm"),
    Case("train/zero-max-source-length", train("--max_source_length", "0"), "max_source_length"),
    Case("train/vocab-size-3", train("--vocab_size", "3"), "vocab_size"),
    Case("train/unknown-model-type", train("--model_type", "foo"), "model_type"),
    Case("train/heads-do-not-divide-d-model", train("--d_model", "30", "--attention_heads", "4"), "attention_heads"),
    Case("train/not-a-number", train("--d_model", "big"), "d_model"),
    Case("train/not-a-boolean", train("--scale_embedding", "maybe"), "scale_embedding"),
    Case("train/output-dir-is-the-data-folder",
         train("--data", lambda c: f"tsv:{c.write('data/pairs.tsv', PAIRS)}",
               "--output_dir", lambda c: str(c.tmp / "data")), "--output_dir"),
    Case("train/output-dir-holds-a-model",
         train("--output_dir", lambda c: str(c.copy(c.teacher, "finished"))), "--overwrite_output_dir"),
    Case("train/output-dir-holds-checkpoints",
         train("--output_dir", lambda c: str(c.write("out/checkpoint-1/trainer_state.json", "{}").parent.parent)),
         "--overwrite_output_dir"),
    Case("train/output-dir-under-a-file",
         train("--output_dir", lambda c: str(c.write("afile", "not a folder\n") / "out")), "--output_dir"),
    Case("train/resume-last-without-checkpoints", train("--resume_from_checkpoint", "last"), "checkpoint"),
    Case("train/resume-from-a-missing-folder",
         train("--resume_from_checkpoint", missing("nowhere/checkpoint-3")), "checkpoint-3"),
    Case("train/resume-from-an-empty-checkpoint",
         train("--resume_from_checkpoint",
               lambda c: str(c.write("out/checkpoint-3/note.txt", "cut off\n").parent)), "checkpoint-3"),
    Case("train/missing-model", train("--model_name_or_path", missing("no-model")), "no-model"),
    Case("train/missing-tokenizer", train("--tokenizer_name_or_path", missing("no-tokenizer")), "no-tokenizer"),
    Case("train/fsdp", train("--fsdp", "full_shard"), "DDP"),
    Case("train/deepspeed", train("--deepspeed", "ds.json"), "DDP"),
    Case("train/push-to-hub-offline", train("--push_to_hub", "true", "--hub_model_id", "me/x"), "push"),
    # ---------------------------------------------------------------------------------------------- nmtq distill
    Case("distill/unknown-field", distill("--bitz", "3"), "--bitz"),
    Case("distill/malformed-data-spec", distill("--data", "text:only-one.txt"), "text:"),
    Case("distill/missing-data-file", distill("--data", lambda c: f"tsv:{c.tmp / 'missing.tsv'}"), "missing.tsv"),
    Case("distill/recipe-unknown-field",
         distill("--config", lambda c: str(c.write("r.yaml", "student_layers: 1\n"))), "student_layers"),
    Case("distill/unknown-method", distill("--method", "foo"), "method"),
    Case("distill/bits-0", distill("--bits", "0"), "bits"),
    Case("distill/bits-17", distill("--bits", "17"), "bits"),
    Case("distill/bits-1-with-absmax", distill("--bits", "1", "--scaling", "absmax"), "absmax"),
    Case("distill/bucket-size-0", distill("--bucket_size", "0"), "bucket_size"),
    Case("distill/unknown-scaling", distill("--scaling", "log"), "scaling"),
    Case("distill/unknown-points-init", distill("--points_init", "random"), "points_init"),
    Case("distill/learned-points-with-absmax", distill("--learn_points", "true", "--scaling", "absmax"),
         "learn_points"),
    Case("distill/activation-bits-1", distill("--activation_bits", "1"), "activation_bits"),
    Case("distill/negative-min-size", distill("--min_size", "-1"), "min_size"),
    Case("distill/alpha-2", distill("--alpha", "2"), "alpha"),
    Case("distill/temperature-0", distill("--temperature", "0"), "temperature"),
    Case("distill/sequence-kd-2", distill("--sequence_kd", "2"), "sequence_kd"),
    Case("distill/negative-teacher-top-k", distill("--teacher_top_k", "-1"), "teacher_top_k"),
    Case("distill/fp-with-teacher-top-k", distill("--method", "fp", "--teacher_top_k", "4"), "teacher_top_k"),
    Case("distill/cache-shard-size-0", distill("--cache_shard_size", "0"), "cache_shard_size"),
    Case("distill/unknown-student-type", distill("--student_type", "foo"), "student_type"),
    Case("distill/unknown-student-init", distill("--student_init", "foo"), "student_init"),
    Case("distill/student-deeper-than-teacher", distill("--student_encoder_layers", "9"), "student_encoder_layers"),
    Case("distill/student-without-decoder-layers", distill("--student_decoder_layers", "0"),
         "student_decoder_layers"),
    Case("distill/student-width-not-divisible-by-heads", distill("--student_d_model", "15"), "student_d_model"),
    Case("distill/ptq-without-a-student", distill("--method", "ptq"), "--student_name_or_path"),
    Case("distill/dq-without-a-student", distill("--method", "dq"), "--student_name_or_path"),
    Case("distill/missing-student", distill("--method", "ptq", "--student_name_or_path", missing("no-student")),
         "no-student"),
    Case("distill/alternation-with-qd", distill("--alternate_every", "3"), "alternate_every"),
    Case("distill/alternation-not-a-number", distill("--method", "dq", "--alternate_every", "soon"),
         "alternate_every"),
    Case("distill/sparsity-1", distill("--sparsity", "1"), "sparsity"),
    Case("distill/sparsity-with-kd", distill("--method", "kd", "--sparsity", "0.5"), "sparsity"),
    Case("distill/mean-bits-with-kd", distill("--method", "kd", "--mean_bits", "3"), "mean_bits"),
    Case("distill/pruning-ends-before-it-starts",
         distill("--sparsity", "0.5", "--prune_start_step", "5", "--prune_end_step", "2"), "prune_end_step"),
    Case("distill/push-to-hub", distill("--push_to_hub", "true"), "nmtq push"),
    Case("distill/fsdp", distill("--fsdp", "full_shard"), "DDP"),
    Case("distill/negative-learning-rate", distill("--learning_rate", "-1"), "learning_rate"),
    Case("distill/missing-teacher", distill("--teacher", missing("no-teacher")), "no-teacher"),
    Case("distill/truncated-teacher", distill("--teacher", lambda c: str(c.truncated_teacher())),
         "model.safetensors"),
    Case("distill/pickle-only-teacher",
         distill("--teacher", lambda c: str(c.pickled_model(c.teacher, "pickled-teacher"))), "safetensors"),
    Case("distill/output-dir-is-the-teacher",
         distill("--teacher", lambda c: str(c.copy(c.teacher, "teacher")), "--output_dir",
                 lambda c: str(c.tmp / "teacher")), "--output_dir"),
    Case("distill/output-dir-inside-the-teacher",
         distill("--teacher", lambda c: str(c.copy(c.teacher, "teacher")), "--output_dir",
                 lambda c: str(c.tmp / "teacher" / "student")), "--output_dir"),
    Case("distill/output-dir-holds-a-model",
         distill("--output_dir", lambda c: str(c.copy(c.student, "finished"))), "--overwrite_output_dir"),
    Case("distill/output-dir-under-a-file",
         distill("--output_dir", lambda c: str(c.write("afile", "not a folder\n") / "out")), "--output_dir"),
    Case("distill/resume-last-without-checkpoints", distill("--resume_from_checkpoint", "last"), "checkpoint"),
    Case("distill/resume-from-a-missing-folder",
         distill("--resume_from_checkpoint", missing("nowhere/checkpoint-3")), "checkpoint-3"),
    # --------------------------------------------------------------------------------------- nmtq distill-images
    Case("distill-images/unknown-field", images("--depht", "8"), "--depht"),
    Case("distill-images/abbreviated-field", images("--dept", "8"), "--dept"),  # not silently read as --depth
    Case("distill-images/malformed-data-spec", images("--data", "cifar11"), "cifar11"),
    Case("distill-images/no-synthetic-images", images("--data", "synthetic:0"), "synthetic:0"),
    Case("distill-images/depth-9", images("--depth", "9"), "depth"),
    Case("distill-images/unknown-architecture", images("--architecture", "vgg"), "architecture"),
    Case("distill-images/validation-fraction-1.5", images("--validation_fraction", "1.5"), "validation_fraction"),
    Case("distill-images/negative-crop-padding", images("--crop_padding", "-1"), "crop_padding"),
    Case("distill-images/bits-0", images("--bits", "0"), "bits"),
    Case("distill-images/zero-max-steps", images("--max_steps", "0"), "max_steps"),
    Case("distill-images/kd-without-a-teacher", images("--method", "kd"), "--teacher"),
    Case("distill-images/ptq-without-a-student", images("--method", "ptq"), "--student_name_or_path"),
    Case("distill-images/missing-teacher", images("--method", "qd", "--teacher", missing("no-teacher")),
         "no-teacher"),
    Case("distill-images/translation-teacher", images("--method", "qd", "--teacher", lambda c: str(c.teacher)),
         "distill-images"),
    Case("distill-images/teacher-of-other-images",
         images("--method", "qd", "--teacher", lambda c: str(c.images), "--data", lambda c: f"hf:{c.gray_images()}"),
         "channels"),
    Case("distill-images/output-dir-is-the-teacher",
         images("--method", "qd", "--teacher", lambda c: str(c.copy(c.images, "teacher")), "--output_dir",
                lambda c: str(c.tmp / "teacher")), "--output_dir"),
    Case("distill-images/push-to-hub", images("--push_to_hub", "true"), "nmtq push"),
    Case("distill-images/fsdp", images("--fsdp", "full_shard"), "DDP"),
    # --------------------------------------------------------------------------------------------- nmtq evaluate
    Case("evaluate/missing-model", evaluate(model=lambda c: c.tmp / "no-model"), "no-model"),
    Case("evaluate/not-a-model-folder", evaluate(model=lambda c: c.data.parent), "config.json"),
    Case("evaluate/pickle-only-model", evaluate(model=lambda c: c.pickled_model(c.teacher, "pickled")),
         "safetensors"),
    Case("evaluate/truncated-model", evaluate(model=lambda c: c.truncated_teacher()), "model.safetensors"),
    Case("evaluate/zero-beams", evaluate("--num-beams", "0"), "--num-beams"),
    Case("evaluate/zero-max-new-tokens", evaluate("--max-new-tokens", "0"), "--max-new-tokens"),
    Case("evaluate/malformed-data-spec", evaluate("--data", "csv:x.csv"), "csv"),
    Case("evaluate/missing-data-file", evaluate("--data", lambda c: f"tsv:{c.tmp / 'missing.tsv'}"), "missing.tsv"),
    Case("evaluate/no-data", lambda c: ["evaluate", str(c.teacher), "--output-dir", str(c.out)], "--data"),
    Case("evaluate/unknown-engine", evaluate("--engine", "foo"), "--engine"),
    Case("evaluate/unknown-split", evaluate("--split", "dev"), "--split"),
    Case("evaluate/inter-threads-with-transformers", evaluate("--inter-threads", "2"), "ctranslate2"),
    Case("evaluate/ctranslate2-with-language-codes",
         evaluate("--engine", "ctranslate2", "--source-lang-code", "deu_Latn"), "--source-lang-code"),
    Case("evaluate/output-dir-under-a-file",
         evaluate("--output-dir", lambda c: str(c.write("afile", "not a folder\n") / "eval")), "afile"),
    # ----------------------------------------------------------------------------------------------- nmtq export
    Case("export/missing-model", command("export", missing("no-model"), missing("export")), "no-model"),
    Case("export/full-precision-model", command("export", lambda c: str(c.teacher), missing("export")),
         "quantization.json"),
    Case("export/model-without-codes",
         command("export", lambda c: str(c.copy(c.student, "student", drop=("quantized.safetensors",))),
                 missing("export")), "quantized.safetensors"),
    Case("export/int8-bits-without-ctranslate2",
         command("export", lambda c: str(c.student), missing("export"), "--int8-bits", "5"), "--ctranslate2"),
    Case("export/out-dir-is-the-model-dir",
         command("export", lambda c: str(c.copy(c.student, "student")), missing("student")), "OUT_DIR"),
    Case("export/out-dir-is-a-file",
         command("export", lambda c: str(c.student), lambda c: str(c.write("afile", "not a folder\n"))), "afile"),
    Case("export/out-dir-holds-other-files",
         command("export", lambda c: str(c.student), lambda c: str(c.write("mine/notes.txt", "keep\n").parent)),
         "mine"),
    Case("export/unknown-ctranslate2-quantization",
         command("export", lambda c: str(c.student), missing("ct2"), "--ctranslate2", "int3"), "int3"),
    Case("export/ctranslate2-int8-bits-1",
         command("export", lambda c: str(c.student), missing("ct2"), "--ctranslate2", "--int8-bits", "1"),
         "int8"),
    Case("export/ctranslate2-over-the-model-dir",
         command("export", lambda c: str(c.copy(c.student, "student")), missing("student"), "--ctranslate2",
                 "--force"), "model folder"),
    Case("export/unknown-flag", command("export", lambda c: str(c.student), missing("export"), "--hufman"),
         "--hufman"),
    # ------------------------------------------------------------------------------------------------- nmtq push
    Case("push/missing-folder", command("push", missing("nowhere"), "--repo-id", "alice/tiny"), "nowhere"),
    Case("push/not-a-model-folder", command("push", lambda c: str(c.data.parent), "--repo-id", "alice/tiny"),
         "config.json"),
    Case("push/bad-repo-id", command("push", lambda c: str(c.student), "--repo-id", "bad id"), "bad id"),
    Case("push/empty-repo-id", command("push", lambda c: str(c.student), "--repo-id", ""), "--repo-id"),
    Case("push/no-repo-id", command("push", lambda c: str(c.student)), "--repo-id"),
    Case("push/folder-with-a-pickle",
         command("push", lambda c: str(c.pickled_model(c.student, "pickled", keep_safetensors=True)), "--repo-id",
                 "alice/tiny"),
         "pytorch_model.bin"),
    Case("push/offline", command("push", lambda c: str(c.student), "--repo-id", "alice/tiny"), "HF_HUB_OFFLINE"),
    # ------------------------------------------------------------------------------------------------ nmtq table
    Case("table/unknown-field", table("--bitz", "2"), "--bitz"),
    Case("table/missing-recipe", command("table", "--config", missing("missing.yaml")), "missing.yaml"),
    Case("table/recipe-unknown-field",
         command("table", "--config", lambda c: str(c.write("t.yaml", "student: x.yaml\n"))), "student"),
    Case("table/missing-teacher-recipe", table("--teacher_recipe", missing("no-teacher.yaml")), "no-teacher.yaml"),
    Case("table/unknown-task", table("--task", "speech"), "task"),
    Case("table/unknown-method", table("--methods", "kd", "int4"), "int4"),
    Case("table/bits-9", table("--bits", "9"), "bits"),
    Case("table/bad-teacher-field", table("--teacher_args", "--max_steps 0"), "max_steps"),
    Case("table/bad-student-field", table("--student_args", "--alpha 2"), "alpha"),
    Case("table/student-recipe-unknown-field",
         table("--students", lambda c: str(c.write("bad-student.yaml", "student_layers: 1\n"))), "student_layers"),
    # -------------------------------------------------------------------------------------------------- nmtq env
    Case("env/unknown-flag", command("env", "--jsn"), "--jsn"),
]


def call(argv: list[str]) -> int | str | None:
    """``nmtq ARGV`` in-process: its exit status (argparse exits too), or a description of what escaped it, whose
    traceback goes to stderr (a user error must never show one)."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code
    except Exception as err:  # reported, not swallowed: the test fails with its traceback on stderr
        traceback.print_exc()
        return f"uncaught {type(err).__name__}"


def snapshot(roots: list[Path]) -> dict[Path, tuple[int, int] | None]:
    """Every file (size, mtime) and folder (None) under ``roots``."""
    state: dict[Path, tuple[int, int] | None] = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            stat = path.lstat()
            state[path] = None if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return state


def changes(before: dict, after: dict) -> list[str]:
    return ([f"created {p}" for p in sorted(after.keys() - before.keys())]
            + [f"removed {p}" for p in sorted(before.keys() - after.keys())]
            + [f"modified {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]])


def test_the_table_covers_every_command():
    assert len(CASES) >= 45 and len({case.id for case in CASES}) == len(CASES)
    assert {case.command for case in CASES} >= {"train", "distill", "distill-images", "evaluate", "export", "push",
                                                "table"}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_is_one_line_with_exit_2_and_writes_nothing(case, request, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hub id fails at once instead of waiting for the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.chdir(tmp_path)  # relative default paths (runs/...) land in tmp_path
    ctx = Ctx(tmp_path, request)
    argv = case.argv(ctx)
    roots = [tmp_path, *sorted(ctx.inputs)]
    before = snapshot(roots)
    capfd.readouterr()  # what building the shared models printed
    status = call(argv)
    err = capfd.readouterr().err
    written = changes(before, snapshot(roots))
    lines = [line for line in err.splitlines() if line.strip()]
    prefix = f"nmtq {case.command}: error: "
    problems = [f"exit status {status!r}, not 2"] if status != 2 else []
    if len(lines) != 1:
        problems.append(f"{len(lines)} non-empty lines on stderr, not 1")
    elif not lines[0].startswith(prefix):
        problems.append(f"the line does not start with {prefix!r}")
    elif case.expected not in lines[0]:
        problems.append(f"the line does not name {case.expected!r}")
    if written:
        problems.append(f"{len(written)} changes on disk: {written[:6]}")
    shown = lines if len(lines) <= 8 else [*lines[:4], "...", *lines[-4:]]
    assert not problems, "; ".join(problems) + "\nstderr:\n" + "\n".join(shown) + f"\nargv: {argv}"
