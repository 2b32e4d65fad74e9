"""Distil a full-precision teacher into a shallower student whose weights are quantized (Polino et al., 2018).

    nmtq distill --config recipes/bible-de-en-qd4.yaml [--field value ...]
    accelerate launch --multi_gpu --num_processes 2 -m nmtq distill --config recipes/bible-de-en-qd4.yaml

``--method`` selects what is trained:

* ``fp``: the student alone, cross-entropy on the references (alpha = 0), full precision;
* ``kd``: word-level distillation, full precision;
* ``ptq``: post-training ("post-mortem") quantization of a trained student, no training;
* ``qd``: quantized distillation: the distillation loss through fake-quantized weights, straight-through
  gradients to the full-precision weights;
* ``dq``: differentiable quantization: the weights of a trained student stay fixed and the quantization points
  are learned against the distillation loss.

Apprentice's scheme C (a trained full-precision student fine-tuned at low precision with distillation) is
``--method qd --student_name_or_path DIR``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, TrainerCallback

from .args import DataArguments, NmtTrainingArguments
from .io import write_json_atomic
from .losses import distillation_loss
from .models import load_model
from .quant import Quantizer, QuantizerConfig, SizeReport, size_report
from .quant.size import stored_tensors
from .student import make_student
from .tokenizer import load_tokenizer
from .train import (
    load_splits,
    main_process_logger,
    resolve_checkpoint,
    score_test_split,
    time_budget,
    tokenize,
)

METHODS = ("fp", "kd", "ptq", "qd", "dq")
QUANTIZER_STATE = "quantizer.json"


@dataclass
class DistillArguments:
    """The teacher, the student and the method."""

    teacher: str = field(default="runs/bible-de-en-teacher",
                         metadata={"help": "Directory (or Hub id) of the full-precision teacher and its tokenizer."})
    method: str = field(default="qd", metadata={"help": f"One of {', '.join(METHODS)} (see nmtq.distill)."})
    alpha: float = field(default=0.7, metadata={"help": "Weight of the distillation term (1 - alpha: references)."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the distillation term."})
    student_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from this trained student (needed by ptq and dq)."})
    student_encoder_layers: int | None = field(default=None, metadata={"help": "Student encoder layers."})
    student_decoder_layers: int | None = field(default=None, metadata={"help": "Student decoder layers."})
    student_d_model: int | None = field(default=None, metadata={"help": "Student width (default: the teacher's)."})
    student_ffn_dim: int | None = field(default=None, metadata={"help": "Student feed-forward size."})
    student_type: str = field(default="transformer", metadata={"help": "'transformer' (a shallower copy of the "
                                                                       "teacher) or 'lstm' (nmtq.lstm, from scratch)."})
    student_hidden_size: int = field(default=512, metadata={"help": "LSTM student: hidden size."})
    student_init: str = field(default="teacher", metadata={"help": "'teacher' (its embeddings and a spread of its "
                                                                   "layers) or 'scratch'."})
    mean_bits: float | None = field(
        default=None, metadata={"help": "Spread this many bits per weight over the tensors by gradient norm "
                                        "(instead of --bits for all)."})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: pass one of {', '.join(METHODS)}")
        if self.method in ("ptq", "dq") and not self.student_name_or_path:
            raise ValueError(f"method={self.method} starts from a trained student: pass --student_name_or_path "
                             "(a directory written by nmtq distill --method kd, say)")
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise ValueError(f"need 0 <= alpha <= 1 and temperature > 0, got {self.alpha}, {self.temperature}")
        if self.student_type not in ("transformer", "lstm"):
            raise ValueError(f"student_type={self.student_type!r}: pass 'transformer' or 'lstm'")
        if self.student_init not in ("teacher", "scratch"):
            raise ValueError(f"student_init={self.student_init!r}: pass 'teacher' or 'scratch'")

    @property
    def quantized(self) -> bool:
        return self.method in ("ptq", "qd", "dq")


DISTILL_ARGUMENT_CLASSES = (DataArguments, DistillArguments, QuantizerConfig, NmtTrainingArguments)


class DistillationTrainer(Seq2SeqTrainer):
    """``Seq2SeqTrainer`` whose loss is ``alpha T^2 KL(teacher || student) + (1 - alpha) CE`` per target token.

    The teacher is frozen (``eval()``, ``requires_grad_(False)``, ``no_grad``) and placed on the student's device.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by num_items_in_batch

    def __init__(self, *args, teacher, alpha: float, temperature: float, quantizer: Quantizer | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.requires_grad_(False).eval().to(self.args.device)
        self.alpha, self.temperature, self.quantizer = alpha, temperature, quantizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        features = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**features)
        if self.alpha > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(**features).logits
        else:
            teacher_logits = outputs.logits.detach()  # unused at alpha = 0: skip the teacher's forward pass
        loss = distillation_loss(outputs.logits, teacher_logits, labels, self.alpha, self.temperature,
                                 num_items_in_batch=num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # num_items_in_batch counts every process's tokens
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the distillation loss is {loss.item()} at step {self.state.global_step}: stopping before the "
                f"weights are damaged; the last good checkpoint is kept in {self.args.output_dir}. Lower "
                "learning_rate or raise bits, then resume with --resume_from_checkpoint last")
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.quantizer is not None and self.quantizer.config.learn_points:
            self.quantizer.attach_optimizer(optimizer)  # learned points stay sorted after every step
        return optimizer


class SaveQuantizerState(TrainerCallback):
    """Write the quantizer's bit allocation into every checkpoint (its points are in the model's weights)."""

    def __init__(self, quantizer: Quantizer) -> None:
        self.quantizer = quantizer

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / QUANTIZER_STATE
            write_json_atomic(path, self.quantizer.state_dict())


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
    if student.get_output_embeddings().weight.shape[0] != teacher.get_output_embeddings().weight.shape[0]:
        raise ValueError(
            f"the student's vocabulary ({student.get_output_embeddings().weight.shape[0]}) differs from the "
            f"teacher's ({teacher.get_output_embeddings().weight.shape[0]}): word-level distillation needs one "
            "shared target vocabulary; build the student from the teacher or with the teacher's tokenizer")
    return student


def not_stored(model) -> set[str]:
    """State-dict entries that ``save_pretrained`` leaves out (recomputed on load): not counted in any size."""
    return set(getattr(model, "_keys_to_ignore_on_save", None) or ())


def fp32_size(model) -> SizeReport:
    """Size of ``model`` with every stored tensor in full precision, each tied tensor once."""
    return size_report({}, stored_tensors(model, not_stored=not_stored(model)))


def allocate_bits_by_gradient(quantizer: Quantizer, student, teacher, batches, mean_bits: float, alpha: float,
                              temperature: float) -> dict[str, int]:
    """Polino et al.'s heuristic: bits per tensor in proportion to the norm of the distillation loss gradient."""
    student.train()
    for batch in batches:
        labels = batch.pop("labels")
        with torch.no_grad():
            teacher_logits = teacher(**batch).logits
        distillation_loss(student(**batch).logits, teacher_logits, labels, alpha, temperature).backward()
    bits = quantizer.allocate_bits(mean_bits, max_bits=8)
    student.zero_grad(set_to_none=True)
    return bits


def distill(data_args: DataArguments, distill_args: DistillArguments, quant_config: QuantizerConfig,
            training_args: NmtTrainingArguments) -> dict:
    """Distil and/or quantize a student as ``distill_args.method`` says; return its test metrics and size."""
    log = main_process_logger(training_args)
    checkpoint = resolve_checkpoint(training_args)
    splits = load_splits(data_args, log)
    teacher, tokenizer = load_model(distill_args.teacher), load_tokenizer(distill_args.teacher)
    student = build_student(distill_args, teacher)
    log(f"teacher {sum(p.numel() for p in teacher.parameters()):,} parameters; {type(student).__name__} student "
        f"{student.config.encoder_layers}+{student.config.decoder_layers} layers, "
        f"{sum(p.numel() for p in student.parameters()):,} parameters; method {distill_args.method}")
    train_set = tokenize(splits["train"], tokenizer, data_args.max_source_length, data_args.max_target_length)
    quantizer = None
    if distill_args.quantized:
        config = dataclasses.replace(quant_config, learn_points=distill_args.method == "dq")
        quantizer = Quantizer(student, config)
        if distill_args.mean_bits is not None:
            collator = DataCollatorForSeq2Seq(tokenizer, model=student)
            batches = [collator([train_set[i] for i in range(j, min(j + 32, len(train_set)))])
                       for j in range(0, min(len(train_set), 128), 32)]
            bits = allocate_bits_by_gradient(quantizer, student, teacher, batches, distill_args.mean_bits,
                                             distill_args.alpha, distill_args.temperature)
            log(f"bits by gradient norm (mean {distill_args.mean_bits}): {sorted(set(bits.values()))}")
        if distill_args.method == "dq":
            quantizer.train_points_only()
    alpha = 0.0 if distill_args.method == "fp" else distill_args.alpha
    if distill_args.method != "ptq":
        _train(student, teacher, tokenizer, train_set, quantizer, alpha, distill_args, training_args, checkpoint)
    return _finish(student, teacher, tokenizer, quantizer, splits["test"], data_args, distill_args, training_args,
                   log)


def _train(student, teacher, tokenizer, train_set, quantizer, alpha, distill_args, training_args, checkpoint):
    if checkpoint and quantizer is not None and (Path(checkpoint) / QUANTIZER_STATE).is_file():
        quantizer.load_state_dict(json.loads((Path(checkpoint) / QUANTIZER_STATE).read_text()))
    callbacks = time_budget(training_args)
    if quantizer is not None:
        callbacks.append(SaveQuantizerState(quantizer))
    trainer = DistillationTrainer(
        model=student, args=training_args, train_dataset=train_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=student), processing_class=tokenizer,
        callbacks=callbacks, teacher=teacher, alpha=alpha, temperature=distill_args.temperature, quantizer=quantizer,
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    training_args.distributed_state.wait_for_everyone()


def _finish(student, teacher, tokenizer, quantizer, test_set, data_args, distill_args, training_args, log) -> dict:
    """Quantize for real, measure the size, save the student (weights = decoded codes) and score it."""
    student = student.module if hasattr(student, "module") else student
    if quantizer is not None:
        quantizer.quantize()
        size = quantizer.size(not_stored=not_stored(student))
        quantization = {"config": dataclasses.asdict(quantizer.config), **quantizer.state_dict()}
        quantizer.remove()  # hooks and points go; the weights now hold Q(w)
    else:
        size, quantization = fp32_size(student), None
    teacher_size = fp32_size(teacher)
    metrics: dict = {}
    if training_args.process_index == 0:
        output_dir = Path(training_args.output_dir)
        student.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        if quantization is not None:
            write_json_atomic(output_dir / "quantization.json", quantization)
        metrics = score_test_split(student, tokenizer, test_set, data_args, training_args, log)
        metrics.update(method=distill_args.method, bits=quantizer.config.bits if quantizer else 32,
                       bytes=size.total_bytes, huffman_bytes=size.total_huffman_bytes if quantizer else None,
                       teacher_fp32_bytes=teacher_size.total_bytes,
                       ratio_vs_fp32_teacher=round(teacher_size.total_bits / size.total_bits, 2),
                       encoder_layers=student.config.encoder_layers, decoder_layers=student.config.decoder_layers)
        write_json_atomic(output_dir / "test" / "metrics.json", metrics)
        log(f"size: {size.total_bytes:,} bytes ({metrics['ratio_vs_fp32_teacher']}x smaller than the fp32 teacher's "
            f"{teacher_size.total_bytes:,})" + (f"; Huffman-coded {size.total_huffman_bytes:,}" if quantizer else ""))
    training_args.distributed_state.wait_for_everyone()
    return metrics

