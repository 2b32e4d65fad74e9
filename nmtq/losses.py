"""Knowledge-distillation losses as pure torch functions (no transformers import).

One loss serves both the vision and the translation trainers: logits are ``(batch, vocab)`` for
classification or ``(batch, seq, vocab)`` for a seq2seq decoder, and the loss is computed per item (per
target token), with ``ignore_index`` positions (padding) masked out of both terms.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    >>> float(distillation_loss(logits, logits, torch.tensor([0, 1]), alpha=1.0))
    0.0
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .errors import NmtqError

__all__ = ["TopK", "distillation_loss", "top_k"]


class TopK(NamedTuple):
    """The teacher's ``k`` most likely classes per item and their log-probabilities (Apprentice's scheme B).

    ``ids`` and ``log_probs`` are ``(..., k)`` with ``...`` the logits' shape without the vocabulary: what a
    cache of teacher outputs stores instead of the full ``(..., vocab)`` logits. As the teacher of
    :func:`distillation_loss`, its distribution is its ``k`` most likely classes renormalised at temperature ``T``,
    and the KL divergence is taken over those classes against the student's full softmax; with ``k`` equal to the
    vocabulary size this is the dense loss exactly.
    """

    ids: torch.Tensor
    log_probs: torch.Tensor


def top_k(logits: torch.Tensor, k: int) -> TopK:
    """The ``k`` largest log-probabilities of ``logits`` (at temperature 1) and their class ids.

    Example:
        >>> top_k(torch.tensor([[0.0, 3.0, 1.0]]), 2).ids.tolist()
        [[1, 2]]
    """
    if not 1 <= k <= logits.shape[-1]:
        raise NmtqError(f"k={k} must lie between 1 and the vocabulary size {logits.shape[-1]}")
    values, ids = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1).topk(k, dim=-1)
    return TopK(ids, values)


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopK, labels: torch.Tensor,
           alpha: float, temperature: float) -> None:
    if isinstance(teacher_logits, TopK):
        ids, log_probs = teacher_logits
        if ids.shape != log_probs.shape or ids.shape[:-1] != student_logits.shape[:-1]:
            raise NmtqError(
                f"teacher top-k ids {tuple(ids.shape)} and log-probabilities {tuple(log_probs.shape)} must both be "
                f"{tuple(student_logits.shape[:-1])} + (k,): the cached teacher outputs do not match this batch"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= student_logits.shape[-1]):
            raise NmtqError(
                f"teacher top-k ids reach {int(ids.max())} but the student has {student_logits.shape[-1]} classes: "
                "the cache was written for another vocabulary; delete it and distil again"
            )
    elif student_logits.shape != teacher_logits.shape:
        raise NmtqError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape: the student and the teacher must share the vocabulary (same tokenizer, same "
            "number of classes) and see the same batch"
        )
    if student_logits.dim() < 2:
        raise NmtqError(
            f"logits must be (batch, vocab) or (batch, seq, vocab), got {tuple(student_logits.shape)}"
        )
    if labels.shape != student_logits.shape[:-1]:
        raise NmtqError(
            f"labels have shape {tuple(labels.shape)}; expected {tuple(student_logits.shape[:-1])} "
            "(the logits' shape without the vocabulary dimension)"
        )
    if not 0.0 <= alpha <= 1.0:
        raise NmtqError(f"alpha={alpha!r} must lie in [0, 1] (the weight of the distillation term)")
    if not temperature > 0:
        raise NmtqError(f"temperature={temperature!r} must be positive (1.0 leaves the softmax unchanged)")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopK, labels: torch.Tensor,
                      alpha: float = 0.7, temperature: float = 1.0, ignore_index: int = -100,
                      num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Hinton-style distillation loss averaged over the unmasked items, as a scalar tensor.

    Per item ``i`` (an example, or a target token of a seq2seq batch)::

        loss_i = alpha * T**2 * KL(softmax(teacher_i / T) || softmax(student_i / T))
                 + (1 - alpha) * cross_entropy(student_i, labels_i)

    Items whose label is ``ignore_index`` contribute to neither term. The sum over the other items is divided
    by their number, or by ``num_items_in_batch`` when given (the Hugging Face Trainer passes the item count
    of the whole accumulated batch, so that gradient accumulation gives the same gradient as one big batch).
    The teacher logits are detached: no gradient reaches the teacher. The ``T**2`` factor keeps the
    gradient of the soft term on the same scale whatever the temperature (Hinton et al., 2015).

    Args:
        student_logits: ``(batch, vocab)`` or ``(batch, seq, vocab)``.
        teacher_logits: same shape as ``student_logits`` (the vocabularies must be shared), or a :class:`TopK`
            of cached teacher outputs.
        labels: ``student_logits.shape[:-1]``, integer targets or ``ignore_index``.
        alpha: weight of the distillation term, in [0, 1]; 0 gives plain cross-entropy.
        temperature: softmax temperature ``T > 0`` of both distributions in the distillation term.
        ignore_index: label value of the positions to mask out (padding).
        num_items_in_batch: divide the summed loss by this instead of the number of unmasked items.

    Raises:
        ValueError: if the shapes disagree, ``alpha`` is outside [0, 1] or ``temperature`` is not positive.

    Example:
        >>> import math
        >>> student, teacher = torch.zeros(1, 2), torch.tensor([[0.0, 100.0]])
        >>> loss = distillation_loss(student, teacher, torch.tensor([1]), alpha=0.5)
        >>> round(float(loss), 6) == round(0.5 * math.log(2) + 0.5 * math.log(2), 6)
        True
    """
    _check(student_logits, teacher_logits, labels, alpha, temperature)
    mask = labels != ignore_index
    per_item = _per_item_loss(student_logits, teacher_logits, labels, mask, alpha, temperature)
    total = torch.where(mask, per_item, torch.zeros_like(per_item)).sum()  # NaN-safe, unlike * mask
    if num_items_in_batch is None:
        return total / mask.sum().clamp(min=1)
    return total / torch.as_tensor(num_items_in_batch, device=total.device).to(total.dtype)


def _per_item_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopK, labels: torch.Tensor,
                   mask: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """``loss_i`` of :func:`distillation_loss` for every item, masked ones included (their labels read as 0)."""
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # half precision overflows exp()
    student_logits = student_logits.to(dtype)
    per_item = student_logits.new_zeros(labels.shape)
    if alpha > 0:
        per_item = per_item + alpha * temperature**2 * _kl_per_item(student_logits, teacher_logits, temperature)
    if alpha < 1:
        safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
        ce = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]),
                             safe_labels.reshape(-1), reduction="none").reshape(labels.shape)
        per_item = per_item + (1 - alpha) * ce
    return per_item


def _kl_per_item(student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopK,
                 temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature ``T`` per item, over the teacher's top-k classes for a :class:`TopK`;
    the teacher is detached and brought to the student's dtype."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    if isinstance(teacher_logits, TopK):
        log_p_student = log_p_student.gather(-1, teacher_logits.ids.long())
        log_p_teacher = F.log_softmax(teacher_logits.log_probs.detach().to(student_logits.dtype) / temperature, dim=-1)
    else:
        log_p_teacher = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / temperature, dim=-1)
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)
