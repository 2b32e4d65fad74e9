"""Seq2seq Transformers built from arguments (Marian, FSMT or BART configs), or loaded from a checkpoint.

Example:
    >>> model = build_model(Architecture(d_model=16, encoder_layers=1, decoder_layers=1, attention_heads=2,
    ...                                  ffn_dim=32, max_position_embeddings=32), vocab_size=10,
    ...                     pad_token_id=9, eos_token_id=0)
    >>> type(model).__name__, model.config.decoder_start_token_id
    ('MarianMTModel', 9)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import files
from .errors import NmtqError
from .guard import check_finite
from .hub import require_hub


@dataclass(frozen=True)
class Architecture:
    """The shape of a new Transformer: its family (marian, fsmt or bart) and sizes
    (:meth:`nmtq.args.ModelArguments.architecture` builds it from the command line's fields)."""

    model_type: str = "marian"
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    attention_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    max_position_embeddings: int = 512
    scale_embedding: bool = True


def build_model(args: Architecture, vocab_size: int, pad_token_id: int, eos_token_id: int,
                source_lang: str = "de", target_lang: str = "en"):
    """A new, randomly initialised seq2seq Transformer of ``args.model_type`` over a shared vocabulary.

    Marian starts decoding from ``<pad>`` (as OPUS-MT does); BART and FSMT from ``</s>`` (as fairseq does).
    Source and target embeddings are shared (one joint vocabulary).
    """
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        FSMTConfig,
        FSMTForConditionalGeneration,
        MarianConfig,
        MarianMTModel,
    )

    sizes = dict(d_model=args.d_model, encoder_layers=args.encoder_layers, decoder_layers=args.decoder_layers,
                 encoder_attention_heads=args.attention_heads, decoder_attention_heads=args.attention_heads,
                 encoder_ffn_dim=args.ffn_dim, decoder_ffn_dim=args.ffn_dim, dropout=args.dropout,
                 max_position_embeddings=args.max_position_embeddings, scale_embedding=args.scale_embedding,
                 pad_token_id=pad_token_id, eos_token_id=eos_token_id, forced_eos_token_id=eos_token_id)
    if args.model_type == "marian":
        config = MarianConfig(vocab_size=vocab_size, decoder_start_token_id=pad_token_id,
                              share_encoder_decoder_embeddings=True, **sizes)
        return MarianMTModel(config)
    if args.model_type == "bart":
        config = BartConfig(vocab_size=vocab_size, bos_token_id=eos_token_id, decoder_start_token_id=eos_token_id,
                            **sizes)
        return BartForConditionalGeneration(config)
    config = FSMTConfig(langs=[source_lang, target_lang], src_vocab_size=vocab_size, tgt_vocab_size=vocab_size,
                        bos_token_id=eos_token_id, decoder_start_token_id=eos_token_id, tie_word_embeddings=True,
                        **sizes)
    return FSMTForConditionalGeneration(config)


def check_model_source(name_or_path: str | os.PathLike | None, what: str, tokenizer_only: bool = False) -> None:
    """One-line :class:`NmtqError`, before any data are read, unless ``name_or_path`` can be loaded: a local folder
    with ``config.json`` and complete safetensors weights (a tokenizer folder for ``tokenizer_only``), or a valid
    Hub id (which is fetched when loaded)."""
    if name_or_path is None:
        return
    from .checkpoints import weights_problem

    name, path = str(name_or_path), Path(name_or_path).expanduser()
    if path.is_dir():
        if tokenizer_only:
            return
        if not (path / files.CONFIG).is_file():
            raise NmtqError(f"the {what} {name} is not a model folder (no {files.CONFIG}): pass a folder written by "
                            "save_pretrained")
        problem = weights_problem(path)
        if problem:
            raise NmtqError(f"the {what} {name} cannot be loaded: {problem}; pass a folder with complete "
                            f"{files.WEIGHTS} weights")
        return
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name:
        raise NmtqError(f"the {what} {name} is {'a file' if path.exists() else 'missing'}: pass an existing folder "
                        "written by save_pretrained, or a Hub id (NAMESPACE/NAME)")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise NmtqError(f"the {what} {name!r} is neither a local folder nor a Hub id (NAMESPACE/NAME): check the "
                        f"path (relative paths start at {Path.cwd()})") from None


def load_model(name_or_path: str | os.PathLike):
    """``AutoModelForSeq2SeqLM.from_pretrained`` from safetensors only, with a clear error when it fails."""
    from safetensors import SafetensorError
    from transformers import AutoModelForSeq2SeqLM

    from . import lstm  # noqa: F401  registers the LSTM student with the Auto classes

    require_hub(str(name_or_path), "model")
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(name_or_path), use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as err:  # a truncated or corrupt model.safetensors included
        raise NmtqError(
            f"could not load a seq2seq model from {str(name_or_path)!r}: pass a directory written by "
            f"save_pretrained with a complete {files.WEIGHTS}, or a Hub id when online ({err})"
        ) from err
    check_finite(model, str(name_or_path))
    freeze_fixed_tables(model)
    enable_generation_cache(model)
    return model


def enable_generation_cache(model) -> None:
    """Decode with the key/value cache. The Trainer sets ``config.use_cache = False`` (its ``use_cache``
    argument defaults to False) and a model saved after training keeps it, so ``generate`` would rerun the whole
    prefix at every step: several times slower, with the same output."""
    model.config.use_cache = True
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True


def freeze_fixed_tables(model) -> None:
    """Sinusoidal position tables are fixed, but loading makes them trainable again: freeze them, so they are
    neither trained nor quantized (the quantizer skips frozen parameters), whichever way the model was made."""
    for module in model.modules():
        if "Sinusoidal" in type(module).__name__:
            module.requires_grad_(False)


def decoder_inputs_from_labels(model, labels):
    """Teacher-forcing decoder inputs for ``labels`` (-100 where ignored), as ``model`` itself shifts them.

    The model's own ``prepare_decoder_input_ids_from_labels`` where it has one (Marian, BART, mBART, FSMT, T5,
    nmtq's LSTM; FSMT would shift the *source* if given only labels); otherwise (M2M100, NLLB) the labels
    shifted right behind ``config.decoder_start_token_id``, with -100 read as ``config.pad_token_id``, which is
    what such a model's ``forward`` does with ``labels`` alone.

    Example:
        >>> import torch
        >>> from transformers import M2M100Config, M2M100ForConditionalGeneration
        >>> model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=20, d_model=8, encoder_layers=1,
        ...     decoder_layers=1, encoder_attention_heads=1, decoder_attention_heads=1, encoder_ffn_dim=8,
        ...     decoder_ffn_dim=8, pad_token_id=1, decoder_start_token_id=2))
        >>> decoder_inputs_from_labels(model, torch.tensor([[5, 6, -100]])).tolist()
        [[2, 5, 6]]
    """
    from .lstm import shift_tokens_right  # the plain shift, which the LSTM student uses too

    if hasattr(model, "prepare_decoder_input_ids_from_labels"):
        return model.prepare_decoder_input_ids_from_labels(labels=labels.clone())
    return shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)


def check_model_dir(model_dir: Path) -> None:
    """A one-line :class:`NmtqError` unless ``model_dir`` is a saved model: config.json and safetensors weights."""
    if not model_dir.is_dir():
        raise NmtqError(f"model directory {str(model_dir)!r} does not exist: pass a directory written by "
                         f"nmtq or save_pretrained ({files.CONFIG}, {files.WEIGHTS} and the tokenizer files)")
    if not (model_dir / files.CONFIG).is_file():
        raise NmtqError(f"{str(model_dir)!r} has no {files.CONFIG}: pass a directory written by save_pretrained")
    weights = (files.WEIGHTS, files.WEIGHTS_INDEX)
    if not any((model_dir / name).is_file() for name in weights):
        found = sorted(p.name for p in model_dir.iterdir())
        raise NmtqError(
            f"{str(model_dir)!r} holds no safetensors weights ({' or '.join(weights)}; found {found}): "
            f"save the model with save_pretrained, or convert a {files.PICKLED_WEIGHTS} you trust by loading it with "
            f"use_safetensors=False and saving it again")


def not_stored(model) -> set[str]:
    """State-dict entries that ``save_pretrained`` leaves out (recomputed on load): not counted in any size."""
    return set(getattr(model, "_keys_to_ignore_on_save", None) or ())


def teacher_card(name: str, config, fp32_bytes: int | None = None) -> str:
    """The teacher as a model card names it: a Hub id as it is; a local folder, whose path means nothing to a
    reader, by its architecture and size.

    Example:
        >>> from types import SimpleNamespace
        >>> teacher_card("/no/such/runs/teacher", SimpleNamespace(model_type="marian", encoder_layers=6,
        ...     decoder_layers=6, d_model=512), 297_000_000)
        'a marian model trained locally (6+6 layers, d_model 512, 297,000,000 bytes in fp32)'
        >>> teacher_card("Helsinki-NLP/opus-mt-de-en", None)
        'Helsinki-NLP/opus-mt-de-en'
    """
    from pathlib import Path

    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1
    if not (Path(name).expanduser().exists() or looks_local):
        return name
    parts = []
    encoder = getattr(config, "encoder_layers", getattr(config, "num_layers", None))
    decoder = getattr(config, "decoder_layers", getattr(config, "num_decoder_layers", None))
    if encoder is not None and decoder is not None:
        parts.append(f"{encoder}+{decoder} layers")
    if getattr(config, "d_model", None):
        parts.append(f"d_model {config.d_model}")
    if fp32_bytes:
        parts.append(f"{fp32_bytes:,} bytes in fp32")
    kind = getattr(config, "model_type", None) or "seq2seq"
    return f"a {kind} model trained locally" + (f" ({', '.join(parts)})" if parts else "")
