"""Distil a full-precision teacher into a shallower student whose weights are quantized (Polino et al., 2018).

    nmtq distill --config recipes/bible-de-en-qd4.yaml [--field value ...]
    accelerate launch --multi_gpu --num_processes 2 -m nmtq distill --config recipes/bible-de-en-qd4.yaml

``--method`` (fp, kd, ptq, qd, dq), the alternation of ``dq`` and pruning (PQK) are those of
:mod:`nmtq.methods`, shared with the image trainer. This module trains the student (:func:`train_student`); the
command (:func:`nmtq.commands.distill`) then quantizes it for real, saves it and scores the test split.

What the student learns from:

* word level (the default): the teacher's distribution at every target token of the references, computed live;
* ``--sequence_kd 1``: sequence-level KD (Kim & Rush, 2016), the teacher's beam translations of the training
  sources as targets, generated once and cached; between 0 and 1 it weights the two losses (interpolation);
* ``--teacher_top_k K``: Apprentice's scheme B, the teacher's top-K log-probabilities per target token computed
  once and cached in shards (``nmtq.teacher_cache``), so training never runs the teacher.

Apprentice's scheme C (a trained full-precision student fine-tuned at low precision with distillation) is
``--method qd --student_name_or_path DIR``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from transformers import Seq2SeqTrainer

from . import files
from .args import DataArguments, NmtTrainingArguments
from .conventions import apply_conventions, resolve_conventions
from .errors import NmtqError
from .losses import TopK
from .methods import MethodArguments, fp32_size, method_callbacks, prepare_quantizer
from .models import check_model_source, enable_generation_cache, load_model, teacher_card
from .quant import Quantizer, QuantizerConfig, SizeReport
from .runs import start_run, time_budget
from .student import check_student_shape, depth, make_student
from .teacher_cache import (
    DistillationCollator,
    TopKCache,
    cache_directory,
    cache_top_k,
    cache_translations,
    fingerprint,
    teacher_fingerprint,
)
from .tokenizer import encode_targets, load_tokenizer
from .train import check_ids_fit, load_splits, tokenize, with_prefix
from .trainer import DistillationTrainer, TargetStream
from .vocab import (
    TrimmedTeacher,
    VocabularyTrim,
    check_trimmable,
    load_trim,
    plan_trim,
    save_trim,
    trim_model,
    trim_tokenizer,
)

logger = logging.getLogger(__name__)


@dataclass
class DistillArguments(MethodArguments):
    """The teacher, the student, the method (:class:`nmtq.methods.MethodArguments`) and the teacher's targets."""

    teacher: str = field(default="runs/bible-de-en-teacher",
                         metadata={"help": "Directory (or Hub id) of the full-precision teacher and its tokenizer."})
    student_encoder_layers: int | None = field(default=None, metadata={"help": "Student encoder layers."})
    student_decoder_layers: int | None = field(default=None, metadata={"help": "Student decoder layers."})
    student_d_model: int | None = field(default=None, metadata={"help": "Student width (default: the teacher's)."})
    student_ffn_dim: int | None = field(default=None, metadata={"help": "Student feed-forward size."})
    student_type: str = field(default="transformer", metadata={"help": "'transformer' (a shallower copy of the "
                                                                       "teacher) or 'lstm' (nmtq.lstm, from scratch)."})
    student_hidden_size: int = field(default=512, metadata={"help": "LSTM student: hidden size."})
    student_init: str = field(default="teacher", metadata={"help": "'teacher' (its embeddings and a spread of its "
                                                                   "layers) or 'scratch'."})
    sequence_kd: float = field(
        default=0.0, metadata={"help": "Weight of sequence-level KD: the loss on the teacher's beam translations of "
                                       "the training sources (made once, cached); 0: references only, 1: "
                                       "translations only, between: both losses, interpolated."})
    teacher_top_k: int = field(
        default=0, metadata={"help": "Train from the teacher's top-k log-probabilities per target token, computed "
                                     "once and cached on disk in shards (Apprentice's scheme B); 0: run the "
                                     "teacher live."})
    teacher_cache_dir: str | None = field(
        default=None, metadata={"help": f"Where the teacher caches go (default: {files.TEACHER_CACHE_DIR} beside "
                                        "OUTPUT_DIR, shared by the students of one folder; never inside the "
                                        "teacher)."})
    cache_shard_size: int = field(default=2048, metadata={"help": "Examples per teacher-cache shard (each shard is "
                                                                  "written atomically: the unit of resumption)."})
    source_lang_code: str | None = field(
        default=None, metadata={"help": "The teacher tokenizer's code of the source language: NLLB deu_Latn, "
                                        "mBART-50 de_DE, M2M100 de (default: the code of source_lang)."})
    target_lang_code: str | None = field(
        default=None, metadata={"help": "The code of the target language, also forced as the first generated token "
                                        "(default: the code of target_lang)."})
    trim_vocabulary: bool = field(
        default=False, metadata={"help": "Keep only the vocabulary the training data uses (plus the specials and "
                                         "language codes): a much smaller student of a multilingual teacher (NLLB, "
                                         "mBART-50, M2M100); the teacher's distribution is renormalised over the "
                                         "kept tokens."})
    source_prefix: str | None = field(
        default=None, metadata={"help": "Text put before every source: T5's task prefix, e.g. 'translate German to "
                                        "English: ' (default: the teacher's task_specific_params for the pair)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.student_type not in ("transformer", "lstm"):
            raise NmtqError(f"student_type={self.student_type!r}: pass 'transformer' or 'lstm'")
        if self.student_init not in ("teacher", "scratch"):
            raise NmtqError(f"student_init={self.student_init!r}: pass 'teacher' or 'scratch'")
        if not 0 <= self.sequence_kd <= 1:
            raise NmtqError(f"sequence_kd={self.sequence_kd}: pass a weight between 0 (references) and 1 "
                             "(teacher translations)")
        for name in ("student_encoder_layers", "student_decoder_layers", "student_d_model", "student_ffn_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise NmtqError(f"--{name} {getattr(self, name)}: pass at least 1 (or leave it out: the teacher's)")
        if self.student_hidden_size < 1:
            raise NmtqError(f"--student_hidden_size {self.student_hidden_size}: pass at least 1")
        if self.teacher_top_k < 0 or self.cache_shard_size < 1:
            raise NmtqError("teacher_top_k must be 0 (live teacher) or a positive k, and cache_shard_size positive")
        if self.method == "fp" and self.teacher_top_k:
            raise NmtqError("method=fp trains on the references alone, without the teacher's distribution: drop "
                             "teacher_top_k, or use method kd")


DISTILL_ARGUMENT_CLASSES = (DataArguments, DistillArguments, QuantizerConfig, NmtTrainingArguments)


def translation_streams(batch: dict, sequence_kd: float = 0.0) -> list[TargetStream]:
    """A batch of :class:`DistillationCollator` as the trainer's target streams: the references, with the teacher's
    cached top-k where the batch carries it (``teacher_ids``, ``teacher_log_probs``), then, for interpolated
    sequence-level KD (``sequence_*``), the teacher's translations of the same sources, weighted ``sequence_kd``
    and the references ``1 - sequence_kd``."""
    sequence = {k.removeprefix("sequence_"): batch.pop(k) for k in list(batch) if k.startswith("sequence_")}
    references = _stream(batch)
    if not sequence:
        return [references]
    source = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    references.weight = 1 - sequence_kd
    return [references, _stream({**source, **sequence}, sequence_kd)]


def _stream(inputs: dict, weight: float = 1.0) -> TargetStream:
    labels = inputs.pop("labels")
    top_k = TopK(inputs.pop("teacher_ids"), inputs.pop("teacher_log_probs")) if "teacher_ids" in inputs else None
    return TargetStream(inputs, labels, top_k, weight)


def build_student(distill_args: DistillArguments, teacher):
    """The trained student to start from, or a shallower copy of the teacher."""
    if distill_args.student_name_or_path:
        student = load_model(distill_args.student_name_or_path)
    elif distill_args.student_type == "lstm":
        from .lstm import LstmForConditionalGeneration, LstmSeq2SeqConfig

        config = teacher.config
        student = LstmForConditionalGeneration(LstmSeq2SeqConfig(
            vocab_size=teacher.get_output_embeddings().weight.shape[0], d_model=distill_args.student_d_model or 256,
            hidden_size=distill_args.student_hidden_size, encoder_layers=distill_args.student_encoder_layers or 1,
            decoder_layers=distill_args.student_decoder_layers or 1, pad_token_id=config.pad_token_id,
            eos_token_id=config.eos_token_id, decoder_start_token_id=config.decoder_start_token_id,
            max_position_embeddings=config.max_position_embeddings))
    else:
        student = make_student(teacher, distill_args.student_encoder_layers, distill_args.student_decoder_layers,
                               distill_args.student_d_model, distill_args.student_ffn_dim, distill_args.student_init)
    rows, teacher_rows = (m.get_output_embeddings().weight.shape[0] for m in (student, teacher))
    trimmed = Path(distill_args.student_name_or_path or "") / files.TRIMMED_VOCABULARY
    if distill_args.student_name_or_path and trimmed.is_file():
        trim = load_trim(trimmed)
        if not distill_args.trim_vocabulary:
            raise NmtqError(f"the student {distill_args.student_name_or_path} has a trimmed vocabulary "
                             f"({trimmed.name}): pass --trim_vocabulary to distil it again")
        if (trim.old_size, trim.size) != (teacher_rows, rows):
            raise NmtqError(f"the student {distill_args.student_name_or_path} was trimmed from a {trim.old_size:,}-"
                             f"token teacher to {trim.size:,} tokens, but this teacher has {teacher_rows:,} and the "
                             f"student {rows:,}: distil it from the teacher it was trimmed from")
    elif rows != teacher_rows:
        raise NmtqError(
            f"the student's vocabulary ({student.get_output_embeddings().weight.shape[0]}) differs from the "
            f"teacher's ({teacher.get_output_embeddings().weight.shape[0]}): word-level distillation needs one "
            "shared target vocabulary; build the student from the teacher or with the teacher's tokenizer")
    return student


def _check_models(distill_args: DistillArguments) -> None:
    """The teacher and the student exist, and the student's shape fits the teacher's, before anything is loaded."""
    check_model_source(distill_args.teacher, "teacher")
    check_model_source(distill_args.student_name_or_path, "student")
    if not distill_args.student_name_or_path and distill_args.student_type == "transformer":
        from transformers import AutoConfig

        check_student_shape(AutoConfig.from_pretrained(distill_args.teacher), distill_args.student_encoder_layers,
                            distill_args.student_decoder_layers, distill_args.student_d_model)


@dataclass
class TrainedStudent:
    """A student at the end of :func:`train_student`, before it is quantized for real, saved and scored
    (:func:`nmtq.trainer.save_and_score`), with what its folder and its metrics.json record beside it."""

    model: Any
    tokenizer: Any
    quantizer: Quantizer | None
    test_set: Any
    teacher_size: SizeReport
    card_teacher: str | None = None
    trim: VocabularyTrim | None = None
    vocabulary: dict = field(default_factory=dict)

    def save_beside(self, output_dir: Path) -> None:
        """Write the tokenizer (and the kept ids of a trimmed vocabulary) beside the saved student."""
        self.tokenizer.save_pretrained(output_dir)
        if self.trim is not None:
            save_trim(self.trim, output_dir / files.TRIMMED_VOCABULARY)


def train_student(data_args: DataArguments, distill_args: DistillArguments, quant_config: QuantizerConfig,
                  training_args: NmtTrainingArguments) -> TrainedStudent:
    """Distil and/or quantize a student as ``distill_args.method`` says; ``nmtq distill``
    (:func:`nmtq.commands.distill`) then saves it and scores it on the test split."""
    if training_args.push_to_hub:
        raise NmtqError("nmtq distill does not push: the Trainer would upload fp32 checkpoints, not the quantized "
                         "student. Run `nmtq export OUTPUT_DIR EXPORT_DIR`, then `nmtq push EXPORT_DIR --repo-id "
                         "NAME`")
    checkpoint = start_run(training_args, [distill_args.teacher, distill_args.student_name_or_path],
                           data_args.local_paths(), distill_args.checkpoint_last_file)
    _check_models(distill_args)
    splits = load_splits(data_args)
    teacher, tokenizer, student, conventions = _teacher_and_student(data_args, distill_args)
    splits = {name: with_prefix(split, conventions) for name, split in splits.items()}
    logger.info(f"teacher {sum(p.numel() for p in teacher.parameters()):,} parameters; {type(student).__name__} "
                f"student {'+'.join(map(str, depth(student.config)))} layers, "
                f"{sum(p.numel() for p in student.parameters()):,} parameters; method {distill_args.method}; "
                f"processes: {training_args.world_size} ({training_args.distributed_state.distributed_type})")
    teacher_size = fp32_size(teacher)
    card_teacher = teacher_card(distill_args.teacher, teacher.config, teacher_size.fp32_bits // 8)
    train_set, teacher, tokenizer, student, trim, vocabulary = _training_set(
        splits["train"], teacher, tokenizer, student, data_args, distill_args, training_args)

    # --mean_bits measures gradients on ids and labels only
    quantizer = prepare_quantizer(student, distill_args, quant_config, teacher,
                                  train_set.select_columns([c for c in ("input_ids", "attention_mask", "labels")
                                                            if c in train_set.column_names]),
                                  DistillationCollator(tokenizer, student))
    if distill_args.method != "ptq":
        train_set, top_k = teacher_top_k(train_set, teacher, tokenizer, student, trim, distill_args, training_args)
        streams = {"labels", "teacher_labels"} & set(train_set.column_names)
        if top_k and (distill_args.effective_alpha == 0 or set(top_k) >= streams):
            teacher = None  # every batch carries the teacher's outputs: it need not even be on the device
        _train(student, teacher, tokenizer, train_set, top_k, quantizer, distill_args, training_args, checkpoint)
    enable_generation_cache(student)
    return TrainedStudent(student, tokenizer, quantizer, splits["test"], teacher_size, card_teacher, trim, vocabulary)


def _teacher_and_student(data_args: DataArguments, distill_args: DistillArguments) -> tuple:
    """The teacher, its tokenizer, the student to train and the family's conventions, which both models carry."""
    teacher, tokenizer = load_model(distill_args.teacher), load_tokenizer(distill_args.teacher)
    if distill_args.trim_vocabulary:
        check_trimmable(tokenizer)  # before the teacher caches are written
    conventions = resolve_conventions(tokenizer, teacher.config, teacher.generation_config, data_args.source_lang,
                                      data_args.target_lang, distill_args.source_lang_code,
                                      distill_args.target_lang_code, distill_args.source_prefix)
    student = build_student(distill_args, teacher)
    apply_conventions(conventions, tokenizer, teacher, student)  # the student carries them when saved
    return teacher, tokenizer, student, conventions


def _training_set(train_split, teacher, tokenizer, student, data_args: DataArguments,
                  distill_args: DistillArguments, training_args: NmtTrainingArguments) -> tuple:
    """The tokenized training set with the teacher's translations for sequence-level KD, and, with
    ``--trim_vocabulary``, in the kept ids. Returns it, the teacher, tokenizer and student to train with (trimmed
    with the vocabulary), the trim (or None) and the vocabulary sizes for metrics.json."""
    keep = ("source",) if distill_args.sequence_kd else ()
    train_set = tokenize(train_split, tokenizer, data_args.max_source_length, data_args.max_target_length, keep)
    check_ids_fit(teacher, train_set, f"the teacher {distill_args.teacher}")
    if distill_args.method != "ptq" and distill_args.sequence_kd:
        train_set = teacher_translations(train_set, teacher, tokenizer, data_args, distill_args, training_args)
    trim, vocabulary = None, {}
    if distill_args.trim_vocabulary:
        trim, student, vocabulary = trim_student(student, tokenizer, train_set, distill_args)
        tokenizer, teacher = trim_tokenizer(tokenizer, trim), TrimmedTeacher(teacher, trim)
        train_set = remap_columns(train_set, trim)
    return train_set, teacher, tokenizer, student, trim, vocabulary


def _cache_settings(distill_args: DistillArguments, training_args: NmtTrainingArguments):
    """Where the teacher caches go, the teacher's fingerprint, and how processes share the work."""
    default = Path(training_args.output_dir).absolute().parent / files.TEACHER_CACHE_DIR
    root = Path(distill_args.teacher_cache_dir or default)
    shared = {"shard_size": distill_args.cache_shard_size, "process_index": training_args.process_index,
              "num_processes": training_args.world_size, "wait": training_args.distributed_state.wait_for_everyone}
    return root, teacher_fingerprint(distill_args.teacher), shared


def teacher_translations(train_set, teacher, tokenizer, data_args: DataArguments, distill_args: DistillArguments,
                         training_args: NmtTrainingArguments):
    """Sequence-level KD: the teacher's beam translations of the training sources, made once and cached, as the
    targets (``labels``, at ``sequence_kd`` 1) or as a second target stream (``teacher_labels``)."""
    root, teacher_id, shared = _cache_settings(distill_args, training_args)
    teacher.to(training_args.device)
    sources = train_set["source"]
    directory = cache_directory(root, "translations", teacher_id, sources, training_args.num_beams,
                                training_args.max_new_tokens)
    translations = cache_translations(teacher, tokenizer, sources, directory, num_beams=training_args.num_beams,
                                      max_new_tokens=training_args.max_new_tokens,
                                      batch_size=training_args.per_device_eval_batch_size, **shared)
    targets = encode_targets(tokenizer, translations, truncation=True, max_length=data_args.max_target_length)
    column = "labels" if distill_args.sequence_kd == 1 else "teacher_labels"
    train_set = train_set.remove_columns([c for c in ("source", column) if c in train_set.column_names])
    train_set = train_set.add_column(column, targets["input_ids"])
    logger.info(f"sequence-level KD: {len(translations):,} teacher translations (beam {training_args.num_beams}) "
                f"as {'the targets' if column == 'labels' else f'a second target, weight {distill_args.sequence_kd}'}")
    return train_set


def teacher_top_k(train_set, teacher, tokenizer, student, trim: VocabularyTrim | None,
                  distill_args: DistillArguments, training_args: NmtTrainingArguments):
    """Apprentice's scheme B: the teacher's top-k log-probabilities at every token of each target stream, cached
    in shards (over the kept ids of a trimmed vocabulary). Returns the training set with ``example_id`` and the
    caches by target column; ``({}, train_set)`` without ``--teacher_top_k``."""
    if not distill_args.teacher_top_k:
        return train_set, {}
    root, teacher_id, shared = _cache_settings(distill_args, training_args)
    teacher.to(training_args.device)
    kind = f"top{distill_args.teacher_top_k}" + (f"-trim{fingerprint(trim.kept)}" if trim else "")
    caches: dict[str, TopKCache] = {}
    inputs = train_set["input_ids"]
    for column in ("labels", "teacher_labels"):
        if column in train_set.column_names:
            targets = train_set[column]
            caches[column] = cache_top_k(
                teacher, [{"input_ids": i, "labels": t} for i, t in zip(inputs, targets)],
                DistillationCollator(tokenizer, student), cache_directory(root, kind, teacher_id, inputs, targets),
                k=distill_args.teacher_top_k, batch_size=training_args.per_device_eval_batch_size, **shared)
    logger.info(f"training from the teacher's cached top-{distill_args.teacher_top_k} log-probabilities")
    return train_set.add_column("example_id", list(range(len(train_set)))), caches


def trim_student(student, tokenizer, train_set, distill_args: DistillArguments):
    """``--trim_vocabulary``: the kept ids (those of the training sources and targets, plus what the tokenizer
    needs) and the student trimmed to them, or a student trimmed before (``--student_name_or_path`` of a run with
    ``--trim_vocabulary``) with its kept ids. Returns the trim, the student and the sizes for metrics.json."""
    saved = Path(distill_args.student_name_or_path or "") / files.TRIMMED_VOCABULARY
    if distill_args.student_name_or_path and saved.is_file():
        trim = load_trim(saved)
        logger.info(f"the student from {distill_args.student_name_or_path} keeps {trim.size:,} of the teacher's "
                    f"{trim.old_size:,} tokens")
        return trim, student, {"teacher_tokens": trim.old_size, "kept_tokens": trim.size}
    columns = [c for c in ("input_ids", "labels", "teacher_labels") if c in train_set.column_names]
    trim = plan_trim(tokenizer, student, (ids for c in columns for ids in train_set[c]))
    before = fp32_size(student).fp32_bits // 8
    trim_model(student, trim)
    saved_bytes = before - fp32_size(student).fp32_bits // 8
    logger.info(f"vocabulary trimmed to the training data's tokens: {trim.size:,} of {trim.old_size:,} kept, "
                f"{saved_bytes:,} bytes of fp32 embeddings saved")
    return trim, student, {"teacher_tokens": trim.old_size, "kept_tokens": trim.size, "fp32_bytes_saved": saved_bytes}


def remap_columns(train_set, trim: VocabularyTrim):
    """The token-id columns of ``train_set`` in the trimmed vocabulary's ids."""
    columns = [c for c in ("input_ids", "labels", "teacher_labels") if c in train_set.column_names]
    return train_set.map(lambda batch: {c: [trim.remap(ids) for ids in batch[c]] for c in columns}, batched=True,
                         desc="trimmed ids")


def _train(student, teacher, tokenizer, train_set, top_k, quantizer, distill_args, training_args, checkpoint):
    callbacks = time_budget(training_args) + method_callbacks(quantizer, distill_args, checkpoint)
    training_args.remove_unused_columns = False  # the collator reads example_id and teacher_labels
    if training_args.generation_config is not None:  # as Seq2SeqTrainer does: the saved student decodes with it
        student.generation_config = Seq2SeqTrainer.load_generation_config(training_args.generation_config)
    sequence_kd = distill_args.sequence_kd if "teacher_labels" in train_set.column_names else 0.0
    trainer = DistillationTrainer(
        model=student, args=training_args, train_dataset=train_set,
        data_collator=DistillationCollator(tokenizer, student, top_k), processing_class=tokenizer,
        callbacks=callbacks, teacher=teacher, alpha=distill_args.effective_alpha,
        temperature=distill_args.temperature, quantizer=quantizer,
        target_streams=partial(translation_streams, sequence_kd=sequence_kd),
        alternate_every=distill_args.alternate_every,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    training_args.distributed_state.wait_for_everyone()
