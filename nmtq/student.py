"""Shallower students of a Transformer teacher, initialised from it (embeddings and a spread of its layers).

Example:
    >>> from transformers import MarianConfig, MarianMTModel
    >>> teacher = MarianMTModel(MarianConfig(vocab_size=50, d_model=16, encoder_layers=6, decoder_layers=6,
    ...     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
    ...     max_position_embeddings=32, pad_token_id=49, decoder_start_token_id=49))
    >>> student = make_student(teacher, encoder_layers=3, decoder_layers=2)
    >>> student.config.encoder_layers, student.config.decoder_layers
    (3, 2)
    >>> spread_layers(6, 3)
    [0, 3, 5]
"""

from __future__ import annotations

import copy
import re

import torch

_LAYER_KEY = re.compile(r"^(.*\b(encoder|decoder)\.layers\.)(\d+)(\..*)$")


def spread_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer indices for each student layer, evenly spread, first and last included."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs between 1 and {teacher_layers} layers (the teacher's), "
                         f"got {student_layers}")
    if student_layers == 1:
        return [teacher_layers - 1]
    return [int(i * (teacher_layers - 1) / (student_layers - 1) + 0.5) for i in range(student_layers)]


def make_student(teacher, encoder_layers: int | None = None, decoder_layers: int | None = None,
                 d_model: int | None = None, ffn_dim: int | None = None, init: str = "teacher"):
    """A model of the teacher's class with fewer layers (and optionally narrower), sharing its vocabulary.

    With ``init="teacher"`` and the teacher's width, the student copies the teacher's embeddings, norms,
    output layer and an even spread of its encoder and decoder layers (a tensor whose shape differs, such as
    the feed-forward layers of a student with a smaller ``ffn_dim``, keeps its random initialisation);
    ``init="scratch"`` or a different ``d_model`` leaves the whole student randomly initialised.
    """
    if init not in ("teacher", "scratch"):
        raise ValueError(f"student_init={init!r}: pass 'teacher' or 'scratch'")
    config = copy.deepcopy(teacher.config)
    layers = {"encoder": encoder_layers or config.encoder_layers, "decoder": decoder_layers or config.decoder_layers}
    config.encoder_layers, config.decoder_layers = layers["encoder"], layers["decoder"]
    if d_model is not None:
        config.d_model = d_model
    if ffn_dim is not None:
        config.encoder_ffn_dim = config.decoder_ffn_dim = ffn_dim
    picks = {side: spread_layers(getattr(teacher.config, f"{side}_layers"), layers[side]) for side in layers}
    student = teacher.__class__(config)
    if init == "teacher" and config.d_model == teacher.config.d_model:
        student.load_state_dict(_student_state(teacher.state_dict(), student.state_dict(), picks), strict=True)
    student.tie_weights()
    return student


def _student_state(teacher_state: dict[str, torch.Tensor], student_state: dict[str, torch.Tensor],
                   picks: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The student's state dict filled from the teacher's: layer j of a side takes teacher layer picks[side][j]."""
    state = {}
    for key, value in student_state.items():
        match = _LAYER_KEY.match(key)
        source = key
        if match:
            prefix, side, index, rest = match.groups()
            source = f"{prefix}{picks[side][int(index)]}{rest}"
        teacher_value = teacher_state.get(source)
        state[key] = teacher_value.clone() if teacher_value is not None and teacher_value.shape == value.shape \
            else value
    return state
