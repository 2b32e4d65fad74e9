"""Arguments of the translation commands: dataclasses with help text, read from a flat YAML recipe and the
command line (command-line fields override the recipe), validated before anything is written.

Example:
    >>> data, model, training = parse_train_args(["--data", "bible", "--output_dir", "/tmp/x",
    ...                                           "--max_steps", "3"])
    >>> data.data, model.model_type, training.max_steps
    ('bible', 'marian', 3)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers import HfArgumentParser, Seq2SeqTrainingArguments

from .errors import NmtqError
from .models import Architecture
from .runs import CpuFriendlyTrainingArguments

MODEL_TYPES = ("marian", "fsmt", "bart")


@dataclass
class DataArguments:
    """Where the parallel text comes from and which pairs are kept."""

    data: str = field(default="bible", metadata={"help": "Data spec of the corpus (see nmtq.data_spec): bible, "
                                                 "bible:de-en, hf:wmt16:de-en, tsv:PATH, jsonl:PATH, text:SRC,TGT."})
    train_data: str | None = field(
        default=None, metadata={"help": "Data spec of the training split (default: data)."})
    validation_data: str | None = field(
        default=None, metadata={"help": "Data spec of the validation split (default: data)."})
    test_data: str | None = field(default=None, metadata={"help": "Data spec of the test split (default: data)."})
    source_lang: str = field(default="de", metadata={"help": "Source language code."})
    target_lang: str = field(default="en", metadata={"help": "Target language code."})
    max_words: int = field(
        default=250, metadata={"help": "Cleaning: drop pairs with a side longer than this many words."})
    max_source_length: int = field(
        default=128, metadata={"help": "Drop training pairs whose source has more tokenizer pieces than this."})
    max_target_length: int = field(
        default=128, metadata={"help": "Drop training pairs whose target has more tokenizer pieces than this."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training pairs."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many validation and test pairs."})
    test_max_length: int | None = field(
        default=None, metadata={"help": "Score only test pairs with at most this many pieces on each side."})

    def __post_init__(self) -> None:
        from .data_spec import check_data_spec

        for name in ("data", "train_data", "validation_data", "test_data"):
            if getattr(self, name) is not None:
                check_data_spec(getattr(self, name))  # a malformed spec or a missing file fails before any writing
        for name in ("max_words", "max_source_length", "max_target_length"):
            if getattr(self, name) < 1:
                raise NmtqError(f"{name}={getattr(self, name)}: pass a positive number")

    def spec(self, split: str) -> str:
        """The data spec of ``split`` (train, validation or test)."""
        return getattr(self, f"{split}_data") or self.data

    def local_paths(self) -> list[str]:
        """The local files and folders the data specs read (what a run must never write over)."""
        from .data_spec import parse_data_spec

        paths = []
        for split in ("train", "validation", "test"):
            spec = parse_data_spec(self.spec(split))
            paths += [*spec.paths, *([spec.name] if spec.kind == "hf" and spec.name else [])]
        return paths


@dataclass
class ModelArguments:
    """The model to train: a fairseq-style Transformer built from a config, or an existing checkpoint."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from this AutoModelForSeq2SeqLM directory or Hub id instead of a new model."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Reuse this tokenizer (default: the model's, or train a SentencePiece one)."})
    model_type: str = field(
        default="marian", metadata={"help": f"Architecture of a new model: {', '.join(MODEL_TYPES)}."})
    vocab_size: int = field(default=8000, metadata={"help": "Joint SentencePiece vocabulary size of a new tokenizer."})
    d_model: int = field(default=512, metadata={"help": "Hidden size."})
    encoder_layers: int = field(default=6, metadata={"help": "Encoder layers."})
    decoder_layers: int = field(default=6, metadata={"help": "Decoder layers."})
    attention_heads: int = field(default=8, metadata={"help": "Attention heads (encoder and decoder)."})
    ffn_dim: int = field(default=2048, metadata={"help": "Feed-forward inner size."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout."})
    max_position_embeddings: int = field(default=512, metadata={"help": "Longest sequence in pieces."})
    scale_embedding: bool = field(
        default=True, metadata={"help": "Scale embeddings by sqrt(d_model); without it a model trained from scratch "
                                        "ignores the source (see ../shared/DATA.md)."})

    def __post_init__(self) -> None:
        if self.vocab_size < 8:
            raise NmtqError(f"--vocab_size {self.vocab_size}: pass at least 8 (typical: 4000-32000)")
        if self.model_type not in MODEL_TYPES:
            raise NmtqError(f"model_type={self.model_type!r}: pass one of {', '.join(MODEL_TYPES)}")
        if self.d_model % self.attention_heads:
            raise NmtqError(f"d_model={self.d_model} must be divisible by attention_heads={self.attention_heads}")

    def architecture(self) -> Architecture:
        """The new model's shape, as :func:`nmtq.models.build_model` takes it."""
        return Architecture(**{f.name: getattr(self, f.name) for f in fields(Architecture)})


@dataclass
class NmtTrainingArguments(CpuFriendlyTrainingArguments, Seq2SeqTrainingArguments):
    """Seq2SeqTrainingArguments with a time budget, plus generation settings for the test set."""

    num_beams: int = field(default=4, metadata={"help": "Beam size for the test-set translation."})
    max_new_tokens: int = field(default=128, metadata={"help": "Longest translation, in pieces."})

    def __post_init__(self) -> None:
        for name in ("num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise NmtqError(f"--{name} {getattr(self, name)}: pass at least 1")
        super().__post_init__()


TRAIN_ARGUMENT_CLASSES = (DataArguments, ModelArguments, NmtTrainingArguments)


def _known_fields(classes: tuple[type, ...]) -> set[str]:
    return {f.name for cls in classes for f in fields(cls)}


def read_recipe(path: str | Path, classes: tuple[type, ...] = TRAIN_ARGUMENT_CLASSES) -> dict:
    """A flat YAML recipe as a dict, with a clear error for a missing file or an unknown field."""
    path = Path(path)
    if not path.is_file():
        raise NmtqError(
            f"recipe {str(path)!r} does not exist: pass a YAML file such as recipes/bible-de-en-teacher.yaml")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise NmtqError(f"recipe {str(path)!r} is not valid YAML{line} ({getattr(err, 'problem', None) or err}): "
                        "fix the recipe, one 'field: value' a line") from None
    if not isinstance(recipe, dict):
        raise NmtqError(f"recipe {str(path)!r} must be a flat YAML mapping of argument fields to values")
    known = _known_fields(classes)
    for key in recipe:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise NmtqError(f"recipe {str(path)!r}: unknown field {key!r}{hint}")
    return recipe


class _FieldParser(HfArgumentParser):
    """``HfArgumentParser`` whose errors (a value of the wrong type, a missing value) are one-line
    :class:`NmtqError` s instead of the whole usage, and which never completes an abbreviated field."""

    def __init__(self, classes: tuple[type, ...], command: str) -> None:
        super().__init__(classes, allow_abbrev=False, prog=f"nmtq {command}")
        self.command = command

    def error(self, message: str):
        raise NmtqError(f"{message} (run `nmtq {self.command} --help` for the fields)")


def parse_train_args(argv: list[str] | None = None, classes: tuple[type, ...] = TRAIN_ARGUMENT_CLASSES,
                     output_dir: str = "runs/teacher", command: str = "train"):
    """Parse ``[--config RECIPE.yaml] [--field value ...]`` into the argument dataclasses."""
    argv = list(argv or [])
    recipe: dict = {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise NmtqError("--config needs a YAML recipe path")
        recipe = read_recipe(argv[i + 1], classes)
        argv = argv[:i] + argv[i + 2:]
    parser = _FieldParser(classes, command)
    defaults = {"report_to": "auto", "logging_steps": 50, "save_total_limit": 2, "output_dir": output_dir}
    parser.set_defaults(**{**defaults, **recipe})
    parsed, unknown = parser.parse_known_args(argv)
    if unknown:
        known = ["--" + name for name in sorted(_known_fields(classes))]
        close = difflib.get_close_matches("--" + unknown[0].lstrip("-").replace("-", "_"), known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise NmtqError(f"unknown argument {unknown[0]!r}{hint} (run `nmtq {command} --help` for the fields)")
    outputs = []
    for cls in classes:
        names = {f.name for f in fields(cls) if f.init}
        try:
            outputs.append(cls(**{k: v for k, v in vars(parsed).items() if k in names}))
        except NmtqError:
            raise
        except (ValueError, TypeError) as err:  # transformers' own checks of its arguments: still the user's to fix
            raise NmtqError(f"{' '.join(str(err).split())}") from err
    return tuple(outputs)
