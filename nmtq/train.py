"""Train a full-precision translation teacher with ``Seq2SeqTrainer`` (the training of ``nmtq train``).

    nmtq train --config recipes/bible-de-en-teacher.yaml [--field value ...]
    accelerate launch --multi_gpu --num_processes 2 -m nmtq train --config recipes/bible-de-en-teacher.yaml

Steps: load and clean the corpus (nmtq.data), train or reuse a joint SentencePiece tokenizer (saved in
``output_dir``), build a Marian/FSMT/BART Transformer from the arguments or load a checkpoint, train
(checkpoints in ``output_dir``; ``--resume_from_checkpoint last`` resumes) and save the model
(:func:`fit_teacher`). The command (:func:`nmtq.commands.train_teacher`) then translates the test split with beam
search and prints sacreBLEU BLEU and chrF and the perplexity: scoring is evaluation's, a layer above training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, TrainerCallback

from . import files
from .args import DataArguments, ModelArguments, NmtTrainingArguments
from .errors import NmtqError
from .guard import GuardedTrainingMixin
from .models import build_model, check_model_source, enable_generation_cache, load_model
from .runs import start_run, time_budget
from .tokenizer import encode_targets, load_tokenizer, train_tokenizer

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class TeacherTrainer(GuardedTrainingMixin, Seq2SeqTrainer):
    """``Seq2SeqTrainer`` with the finite-check guard of :mod:`nmtq.guard`."""


class EpochsThisRun(TrainerCallback):
    """Epochs covered by this run alone (a resumed run starts past zero), for the throughput."""

    def __init__(self) -> None:
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = state.epoch or 0.0

    def covered(self, state) -> float:
        return (state.epoch or 0.0) - self.start


def load_splits(data_args: DataArguments) -> dict:
    """Cleaned train/validation/test datasets (columns ``source``, ``target``); cleaning reports are logged."""
    from .data import load_corpus

    splits = {}
    for split in SPLITS:
        dataset, report = load_corpus(data_args.spec(split), split, data_args.source_lang, data_args.target_lang,
                                      data_args.max_words)
        limit = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        if limit is not None and len(dataset) > limit:
            dataset = dataset.select(range(limit))
        logger.info(f"{split}: {data_args.spec(split)}: {report}" + (f"; using {len(dataset):,}" if limit else ""))
        splits[split] = dataset
    return splits


def get_tokenizer(model_args: ModelArguments, data_args: DataArguments, train_set, output_dir: str,
                  resuming: bool = False):
    """The tokenizer named by the arguments, the model's own, the resumed run's own in ``output_dir``, or a new one
    (a run that starts afresh trains its tokenizer again, with this run's ``--vocab_size``)."""
    name = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if name:
        return load_tokenizer(name)
    if resuming and (Path(output_dir) / files.TOKENIZER_CONFIG).exists():
        return load_tokenizer(output_dir)  # a resumed run must keep its vocabulary
    texts = (text for row in train_set for text in (row["source"], row["target"]))
    return train_tokenizer(texts, output_dir, model_args.vocab_size, data_args.source_lang, data_args.target_lang)


def tokenize(dataset, tokenizer, max_source_length: int, max_target_length: int, keep_columns: tuple[str, ...] = ()):
    """Token ids and labels (and the ``keep_columns`` asked for); pairs longer than the limits are dropped, never
    truncated."""
    def encode(batch):
        return {**tokenizer(batch["source"]), "labels": encode_targets(tokenizer, batch["target"])["input_ids"]}

    drop = [name for name in dataset.column_names if name not in keep_columns]
    encoded = dataset.map(encode, batched=True, remove_columns=drop, desc="tokenizing")
    return encoded.filter(
        lambda ids, labels: len(ids) <= max_source_length and len(labels) <= max_target_length,
        input_columns=["input_ids", "labels"], desc="length filter")


def with_prefix(dataset, conventions):
    """``dataset`` with the conventions' prefix (T5's task prefix) put before every ``source``."""
    if not conventions.prefix:
        return dataset
    return dataset.map(lambda batch: {"source": conventions.prefixed(batch["source"])}, batched=True,
                       desc="source prefix")


def check_ids_fit(model, dataset, name: str) -> None:
    """One-line errors for token ids ``model`` has no row for: a source id beyond its input embeddings (a tokenizer
    that is not the model's), or a label beyond its output layer (targets encoded in another vocabulary than the
    one it predicts, as FSMT's tokenizer does with separate source and target dictionaries)."""
    checks = (("input_ids", "source", model.get_input_embeddings().weight.shape[0], "input embeddings"),
              ("labels", "target", model.get_output_embeddings().weight.shape[0], "output ids"))
    for column, side, rows, what in checks:
        top = max((max(ids) for ids in dataset[column] if ids), default=-1)
        if top >= rows:
            raise NmtqError(f"the tokenizer encodes a {side} token as id {top}, but {name} has {rows:,} {what}: "
                             f"the tokenizer does not match the model's {side} vocabulary (or its language "
                             "codes); use the model's own tokenizer and codes")


@dataclass
class TrainedTeacher:
    """A teacher trained and saved by :func:`fit_teacher`, with what scoring it needs: the trainer (its ``model``),
    the tokenizer, the cleaned test split, and the training time and throughput that metrics.json records."""

    trainer: TeacherTrainer
    tokenizer: Any
    test_set: Any
    runtime_seconds: float
    target_tokens_per_second: float


def fit_teacher(data_args: DataArguments, model_args: ModelArguments,
                training_args: NmtTrainingArguments) -> TrainedTeacher:
    """Train (or resume) a teacher and save it, with its tokenizer, in ``output_dir``; ``nmtq train``
    (:func:`nmtq.commands.train_teacher`) then scores it on the test split."""
    checkpoint = _start_teacher_run(data_args, model_args, training_args)
    splits = load_splits(data_args)
    with training_args.main_process_first(desc="tokenizer"):
        tokenizer = get_tokenizer(model_args, data_args, splits["train"], training_args.output_dir,
                                  resuming=checkpoint is not None)
    logger.info(f"tokenizer: {len(tokenizer):,} ids")
    train_set, eval_set = _tokenized_splits(splits, tokenizer, data_args)
    model = _teacher_model(model_args, data_args, tokenizer)
    logger.info(f"model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters; "
        f"processes: {training_args.world_size} ({training_args.distributed_state.distributed_type})")
    epochs = EpochsThisRun()
    callbacks = [epochs, *time_budget(training_args)]
    trainer = TeacherTrainer(
        model=model, args=training_args, train_dataset=train_set,
        eval_dataset=eval_set if training_args.eval_strategy != "no" else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer,
        callbacks=callbacks,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    enable_generation_cache(model)
    trainer.save_model(training_args.output_dir)
    runtime = result.metrics["train_runtime"]
    target_tokens = sum(len(labels) for labels in train_set["labels"]) * epochs.covered(trainer.state)
    throughput = target_tokens / max(runtime, 1e-9)
    logger.info(f"trained {trainer.state.global_step} steps in {runtime:.0f} s: {throughput:,.0f} target tokens/s")
    return TrainedTeacher(trainer, tokenizer, splits["test"], runtime, throughput)


def _start_teacher_run(data_args: DataArguments, model_args: ModelArguments, training_args: NmtTrainingArguments):
    """:func:`nmtq.runs.start_run`, then the model, tokenizer and Hub checks, all before the data is prepared;
    returns the checkpoint to resume (None: start afresh)."""
    from .hub import check_push_to_hub

    checkpoint = start_run(training_args, [model_args.model_name_or_path, model_args.tokenizer_name_or_path],
                           data_args.local_paths())
    check_model_source(model_args.model_name_or_path, "model")
    check_model_source(model_args.tokenizer_name_or_path, "tokenizer", tokenizer_only=True)
    check_push_to_hub(training_args)  # fail now, not after the data is prepared
    return checkpoint


def _tokenized_splits(splits: dict, tokenizer, data_args: DataArguments) -> tuple:
    """The training and validation splits tokenized within the length limits; NmtqError if no training pair fits."""
    train_set = tokenize(splits["train"], tokenizer, data_args.max_source_length, data_args.max_target_length)
    eval_set = tokenize(splits["validation"], tokenizer, data_args.max_source_length,
                        data_args.max_target_length)
    logger.info(f"training pairs within {data_args.max_source_length}/{data_args.max_target_length} pieces: "
        f"{len(train_set):,} of {len(splits['train']):,}")
    if len(train_set) == 0:
        raise NmtqError("no training pair is short enough: raise max_source_length / max_target_length")
    return train_set, eval_set


def _teacher_model(model_args: ModelArguments, data_args: DataArguments, tokenizer):
    """The checkpoint the arguments name, or a new Transformer of their architecture for ``tokenizer``."""
    if model_args.model_name_or_path:
        return load_model(model_args.model_name_or_path)
    return build_model(model_args.architecture(), len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id,
                       data_args.source_lang, data_args.target_lang)
