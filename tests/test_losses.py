"""Tests of nmtq.losses against hand-computed values and a brute-force reference in plain Python."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nmtq.losses import TopK, distillation_loss, top_k


def _log_softmax(row: list[float], temperature: float) -> list[float]:
    scaled = [x / temperature for x in row]
    top = max(scaled)
    log_z = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - log_z for x in scaled]


def _reference_item(student: list[float], teacher: list[float], label: int, alpha: float,
                    temperature: float) -> float:
    """One item's loss, written out with math.log/exp."""
    log_ps, log_pt = _log_softmax(student, temperature), _log_softmax(teacher, temperature)
    kl = sum(math.exp(t) * (t - s) for t, s in zip(log_pt, log_ps, strict=True))
    ce = -_log_softmax(student, 1.0)[label]
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def test_hand_computed_value():
    # student (1, 0), teacher (0, 2), label 0, T = 2, alpha = 0.5
    # p_teacher = softmax(0, 1) = (1, e) / (1 + e);  log p_student = (0.5, 0) - log(1 + e**0.5)
    # CE at T = 1: -log softmax(1, 0)[0] = log(1 + e**-1)
    e = math.e
    p_t = [1 / (1 + e), e / (1 + e)]
    log_ps = [0.5 - math.log(1 + e**0.5), -math.log(1 + e**0.5)]
    kl = sum(p * (math.log(p) - s) for p, s in zip(p_t, log_ps, strict=True))
    ce = math.log(1 + math.exp(-1))
    expected = 0.5 * 4 * kl + 0.5 * ce
    loss = distillation_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([0]),
                             alpha=0.5, temperature=2.0)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_ignore_index_positions_are_masked_out_of_both_terms():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 4], [-100, -100, 0]])
    loss = distillation_loss(student, teacher, labels, alpha=0.3, temperature=1.5)
    kept = [(0, 0), (0, 2), (1, 2)]
    rows, teacher_rows = student.tolist(), teacher.tolist()
    expected = sum(_reference_item(rows[b][s], teacher_rows[b][s], int(labels[b, s]), 0.3, 1.5)
                   for b, s in kept) / len(kept)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.all(student.grad[0, 1] == 0) and torch.all(student.grad[1, :2] == 0)
    # whatever the logits at masked positions, the loss is the same
    changed = student.detach().clone()
    changed[0, 1] += 100.0
    again = distillation_loss(changed, teacher, labels, 0.3, 1.5)
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_alpha_zero_is_cross_entropy():
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 6, 7), torch.randn(4, 6, 7)
    labels = torch.randint(0, 7, (4, 6))
    labels[0, 3:] = -100
    expected = F.cross_entropy(student.transpose(1, 2), labels, ignore_index=-100)
    loss = distillation_loss(student, teacher, labels, alpha=0.0, temperature=3.0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_alpha_one_with_equal_logits_is_zero():
    logits = torch.randn(3, 4, 9)
    loss = distillation_loss(logits, logits.clone(), torch.randint(0, 9, (3, 4)), alpha=1.0, temperature=2.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_temperature_squared_scaling():
    torch.manual_seed(2)
    student, teacher, labels = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    for temperature in (0.5, 1.0, 4.0):
        loss = distillation_loss(student, teacher, labels, alpha=1.0, temperature=temperature)
        kl = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                      reduction="batchmean", log_target=True)
        assert float(loss) == pytest.approx(temperature**2 * float(kl), rel=1e-5)


def test_no_gradient_reaches_the_teacher():
    student = torch.randn(2, 3, requires_grad=True)
    teacher = torch.randn(2, 3, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([0, 2]), alpha=0.7, temperature=2.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_num_items_in_batch_divides_the_sum():
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    labels = torch.randint(0, 6, (2, 4))
    labels[1, 1:] = -100  # 5 items kept
    mean = distillation_loss(student, teacher, labels, alpha=0.5)
    for n in (20, torch.tensor(20)):
        summed_over_20 = distillation_loss(student, teacher, labels, alpha=0.5, num_items_in_batch=n)
        assert float(summed_over_20) == pytest.approx(float(mean) * 5 / 20, rel=1e-6)


def test_all_positions_masked_gives_zero_not_nan():
    loss = distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([-100, -100]))
    assert float(loss) == 0.0


@pytest.mark.parametrize(
    "student_shape, teacher_shape, labels_shape, kwargs, match",
    [
        ((2, 5), (2, 6), (2,), {}, "vocabulary"),
        ((2, 3, 5), (2, 4, 5), (2, 3), {}, "vocabulary"),
        ((2, 5), (2, 5), (3,), {}, "labels"),
        ((2, 5), (2, 5), (2,), {"alpha": -0.1}, "alpha"),
        ((2, 5), (2, 5), (2,), {"alpha": 1.5}, "alpha"),
        ((2, 5), (2, 5), (2,), {"temperature": 0.0}, "temperature"),
        ((2, 5), (2, 5), (2,), {"temperature": -1.0}, "temperature"),
    ],
)
def test_invalid_arguments_raise(student_shape, teacher_shape, labels_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(torch.zeros(student_shape), torch.zeros(teacher_shape),
                          torch.zeros(labels_shape, dtype=torch.long), **kwargs)


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.lists(st.floats(-5, 5), min_size=3, max_size=3), min_size=2, max_size=2),
    teacher_rows=st.lists(st.lists(st.floats(-5, 5), min_size=3, max_size=3), min_size=2, max_size=2),
    labels=st.lists(st.sampled_from([0, 1, 2, -100]), min_size=2, max_size=2),
    alpha=st.floats(0, 1),
    temperature=st.floats(0.25, 8),
)
def test_matches_the_reference(rows, teacher_rows, labels, alpha, temperature):
    loss = distillation_loss(torch.tensor(rows, dtype=torch.float64),
                             torch.tensor(teacher_rows, dtype=torch.float64), torch.tensor(labels),
                             alpha=alpha, temperature=temperature)
    kept = [i for i, label in enumerate(labels) if label != -100]
    expected = sum(_reference_item(rows[i], teacher_rows[i], labels[i], alpha, temperature) for i in kept)
    expected /= max(len(kept), 1)
    assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    if alpha == 1.0:
        assert float(loss) >= -1e-6  # a KL divergence is never negative


def test_top_k_with_the_whole_vocabulary_is_the_dense_loss():
    torch.manual_seed(4)
    student, teacher = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 3, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 3))
    labels[0, 2] = -100
    for temperature in (1.0, 2.5):
        dense = distillation_loss(student, teacher, labels, alpha=0.6, temperature=temperature)
        cached = top_k(teacher, 7)
        sparse = distillation_loss(student, cached, labels, alpha=0.6,
                                   temperature=temperature)
        assert float(sparse) == pytest.approx(float(dense), rel=1e-9)


def test_top_k_renormalises_the_kept_classes_by_hand():
    student = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    teacher = TopK(torch.tensor([[2, 0]]), torch.log(torch.tensor([[0.6, 0.2]])))
    loss = distillation_loss(student, teacher, torch.tensor([2]), alpha=1.0)
    p = torch.tensor([0.75, 0.25])  # 0.6 and 0.2 renormalised
    expected = float((p * (p.log() - math.log(0.25))).sum())
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_top_k_that_does_not_fit_the_batch_is_refused():
    student = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="do not match this batch"):
        distillation_loss(student, TopK(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 2)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="another vocabulary"):
        distillation_loss(student, TopK(torch.full((2, 2), 9), torch.zeros(2, 2)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="between 1 and"):
        top_k(student, 6)
