"""Shallower students of a Transformer teacher, initialised from it (embeddings and a spread of its layers).

Every family nmtq distils from names its depth and its layers its own way; :data:`LAYOUTS` says how, by
``config.model_type``. Marian (OPUS-MT), BART, mBART, M2M100 and NLLB (``m2m_100``) and FSMT count
``encoder_layers``/``decoder_layers`` and keep ``encoder.layers.N``; T5 and mT5 count ``num_layers``/
``num_decoder_layers`` and keep ``encoder.block.N``, whose first block alone holds the relative-attention bias.

Example:
    >>> from transformers import MarianConfig, MarianMTModel
    >>> teacher = MarianMTModel(MarianConfig(vocab_size=50, d_model=16, encoder_layers=6, decoder_layers=6,
    ...     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
    ...     max_position_embeddings=32, pad_token_id=49, decoder_start_token_id=49))
    >>> student = make_student(teacher, encoder_layers=6, decoder_layers=1)  # Bergamot's deep-encoder shape
    >>> depth(student.config)
    (6, 1)
    >>> spread_layers(6, 3)
    [0, 3, 5]
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch

from .errors import NmtqError


@dataclass(frozen=True)
class LayerLayout:
    """How a family's config counts its layers and how its state dict names them."""

    encoder_field: str  # the config field of the encoder's depth
    decoder_field: str
    ffn_fields: tuple[str, ...]  # the config fields of the feed-forward width
    layer_key: re.Pattern  # groups: prefix up to the index, side (encoder/decoder), index, rest
    first_layer_only: tuple[str, ...] = ()  # parameters that only layer 0 of a side holds, taken from layer 0


_BART_LIKE = LayerLayout("encoder_layers", "decoder_layers", ("encoder_ffn_dim", "decoder_ffn_dim"),
                         re.compile(r"^(.*\b(encoder|decoder)\.layers\.)(\d+)(\..*)$"))
_T5_LIKE = LayerLayout("num_layers", "num_decoder_layers", ("d_ff",),
                       re.compile(r"^(.*\b(encoder|decoder)\.block\.)(\d+)(\..*)$"), ("relative_attention_bias",))
LAYOUTS: dict[str, LayerLayout] = {
    "marian": _BART_LIKE, "bart": _BART_LIKE, "mbart": _BART_LIKE, "m2m_100": _BART_LIKE, "fsmt": _BART_LIKE,
    "t5": _T5_LIKE, "mt5": _T5_LIKE,
}


def layout_of(config) -> LayerLayout:
    """The :class:`LayerLayout` of ``config.model_type``; a one-line ``ValueError`` for a family nmtq lacks."""
    layout = LAYOUTS.get(getattr(config, "model_type", None))
    if layout is None:
        raise NmtqError(f"nmtq cannot make a student of a {getattr(config, 'model_type', '?')!r} model: it knows "
                         f"{', '.join(sorted(LAYOUTS))} (NLLB is m2m_100); pass --student_name_or_path with a "
                         "student you built")
    return layout


def depth(config) -> tuple[int, int]:
    """``(encoder layers, decoder layers)`` of any family in :data:`LAYOUTS`, or of a config with
    ``encoder_layers`` and ``decoder_layers`` (nmtq's LSTM).

    Example:
        >>> from transformers import T5Config
        >>> depth(T5Config(num_layers=6, num_decoder_layers=2))
        (6, 2)
    """
    if getattr(config, "model_type", None) not in LAYOUTS and hasattr(config, "encoder_layers"):
        return config.encoder_layers, config.decoder_layers
    layout = layout_of(config)
    return getattr(config, layout.encoder_field), getattr(config, layout.decoder_field)


def check_student_shape(config, encoder_layers: int | None, decoder_layers: int | None,
                        d_model: int | None = None) -> None:
    """One-line :class:`NmtqError` for a student the teacher's ``config`` cannot give: more layers than the
    teacher's, or a width its attention heads do not divide (BART-like families)."""
    teacher = dict(zip(("encoder", "decoder"), depth(config)))
    for side, layers in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        if layers is not None and not 1 <= layers <= teacher[side]:
            raise NmtqError(f"--student_{side}_layers {layers}: the teacher has {teacher[side]} {side} layers; pass "
                            f"1 to {teacher[side]}")
    heads = {getattr(config, name, None) for name in ("encoder_attention_heads", "decoder_attention_heads")} - {None}
    if d_model is not None and any(d_model % h for h in heads):
        raise NmtqError(f"--student_d_model {d_model}: the teacher's {max(heads)} attention heads must divide it; pass "
                        f"a multiple of {max(heads)}")


def spread_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer indices for each student layer, evenly spread, first and last included."""
    if not 1 <= student_layers <= teacher_layers:
        raise NmtqError(f"a student needs between 1 and {teacher_layers} layers (the teacher's), "
                         f"got {student_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    return [int(i * (teacher_layers - 1) / (student_layers - 1) + 0.5) for i in range(student_layers)]


def make_student(teacher, encoder_layers: int | None = None, decoder_layers: int | None = None,
                 d_model: int | None = None, ffn_dim: int | None = None, init: str = "teacher"):
    """A model of the teacher's class with fewer layers (and optionally narrower), sharing its vocabulary.

    With ``init="teacher"`` and the teacher's width, the student copies the teacher's embeddings, norms,
    output layer and an even spread of its encoder and decoder layers (a tensor whose shape differs, such as
    the feed-forward layers of a student with a smaller ``ffn_dim``, keeps its random initialisation); T5's
    relative-attention bias comes from the teacher's first block. ``init="scratch"`` or a different ``d_model``
    leaves the whole student randomly initialised. The student takes the teacher's generation config (decoder
    start, forced BOS/EOS, bad words, beams, lengths), so that its ``generate`` behaves as the teacher's does.
    """
    if init not in ("teacher", "scratch"):
        raise NmtqError(f"student_init={init!r}: pass 'teacher' or 'scratch'")
    layout = layout_of(teacher.config)
    teacher_depth = dict(zip(("encoder", "decoder"), depth(teacher.config)))
    requested = {"encoder": encoder_layers, "decoder": decoder_layers}
    layers = {side: requested[side] or teacher_depth[side] for side in teacher_depth}
    picks = {side: spread_layers(teacher_depth[side], layers[side]) for side in layers}
    config = copy.deepcopy(teacher.config)
    setattr(config, layout.encoder_field, layers["encoder"])
    setattr(config, layout.decoder_field, layers["decoder"])
    if d_model is not None:
        config.d_model = d_model
    if ffn_dim is not None:
        for name in layout.ffn_fields:
            setattr(config, name, ffn_dim)
    student = teacher.__class__(config)
    if init == "teacher" and config.d_model == teacher.config.d_model:
        state = _student_state(teacher.state_dict(), student.state_dict(), picks, layout)
        student.load_state_dict(state, strict=True)
    student.tie_weights()
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    return student


def _student_state(teacher_state: dict[str, torch.Tensor], student_state: dict[str, torch.Tensor],
                   picks: dict[str, list[int]], layout: LayerLayout) -> dict[str, torch.Tensor]:
    """The student's state dict filled from the teacher's: layer j of a side takes teacher layer picks[side][j]."""
    state = {}
    for key, value in student_state.items():
        match = layout.layer_key.match(key)
        source = key
        if match:
            prefix, side, index, rest = match.groups()
            first_only = any(name in rest for name in layout.first_layer_only)
            source = f"{prefix}{0 if first_only else picks[side][int(index)]}{rest}"
        teacher_value = teacher_state.get(source)
        state[key] = teacher_value.clone() if teacher_value is not None and teacher_value.shape == value.shape \
            else value
    return state
