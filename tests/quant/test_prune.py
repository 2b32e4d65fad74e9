"""Pruning + quantization: the schedule, magnitude masks, the pruned forward pass, the codes and the size."""

import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nmtq.quant import (
    QuantizedTensor,
    Quantizer,
    encode_tensor,
    magnitude_mask,
    quantize_tensor,
    quantize_to_points,
    size_report,
    sparsity_at,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=32)
# a few repeated magnitudes, so ties are exercised
values = st.lists(st.one_of(finite, st.sampled_from([-2.0, -1.0, 0.0, 1.0, 2.0])), min_size=1, max_size=200)
fractions = st.floats(0, 0.99)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


class TiedLSTM(nn.Module):
    def __init__(self, vocab=20, dim=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(self.lstm(self.embed(ids))[0])


def masked_copy(reference, model, masks, quantize):
    """``reference`` (a plain model) with ``model``'s weights, each masked one replaced by Q(w * m) * m."""
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_quant_points")})
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if name in masks:
                m = masks[name]
                p.copy_(torch.where(m, quantize(name, torch.where(m, p, 0.0)), 0.0))
    return reference


# ---------------------------------------------------------------------------------------------- schedule
def test_schedule_hand_computed():
    # t0 = 10, t1 = 20, s_i = 0.2, s_f = 0.6: halfway, 0.6 - 0.4 * 0.5**3 = 0.55
    assert sparsity_at(15, 0.6, 10, 20, initial_sparsity=0.2) == pytest.approx(0.55)
    assert sparsity_at(9, 0.6, 10, 20, initial_sparsity=0.2) == 0.0  # nothing pruned before t0
    assert sparsity_at(10, 0.6, 10, 20, initial_sparsity=0.2) == 0.2
    assert sparsity_at(20, 0.6, 10, 20, initial_sparsity=0.2) == sparsity_at(10**9, 0.6, 10, 20, 0.2) == 0.6
    assert [sparsity_at(t, 0.5, 5, 5) for t in (4, 5, 6)] == [0.0, 0.5, 0.5]  # start == end: one step


@settings(max_examples=100, deadline=None)
@given(fractions, fractions, st.integers(0, 50), st.integers(0, 300))
def test_schedule_is_monotone_with_exact_ends(a, b, start, length):
    s_i, s_f = min(a, b), max(a, b)
    end = start + length
    curve = [sparsity_at(t, s_f, start, end, s_i) for t in range(start - 3, end + 3)]
    assert all(x <= y for x, y in zip(curve, curve[1:]))
    assert curve[:3] == [0.0] * 3 and curve[-3:] == [s_f] * 3
    assert curve[3] == (s_i if length else s_f)
    assert all(s_i <= x <= s_f for x in curve[3:])


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 1.0, 0, 10), "final_sparsity=1.0"),
        ((0, -0.1, 0, 10), "final_sparsity"),
        ((0, 0.5, 0, 10, 0.6), "initial_sparsity <= final_sparsity"),
        ((0, 0.5, 10, 5), "start_step <= end_step"),
        ((0, 0.5, -1, 5), "0 <= start_step"),
        ((0.5, 0.5, 0, 5), "integer training step"),
    ],
)
def test_schedule_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        sparsity_at(*args)


# ---------------------------------------------------------------------------------------------- masks
def reference_mask(w, sparsity, previous=None):
    """Brute force: rank the entries still alive by (-|w|, index) in Python and keep the first ones."""
    flat, n = w.reshape(-1).tolist(), w.numel()
    alive = [i for i in range(n) if previous is None or bool(previous.reshape(-1)[i])]
    keep = min(n - math.floor(sparsity * n), len(alive))
    chosen = set(sorted(alive, key=lambda i: (-abs(flat[i]), i))[:keep])
    return torch.tensor([i in chosen for i in range(n)]).reshape(w.shape)


def test_mask_hand_computed():
    w = torch.tensor([[0.5, -2.0], [0.1, 1.0]])
    assert magnitude_mask(w, 0.5).tolist() == [[False, True], [False, True]]
    assert magnitude_mask(w, 0.74).tolist() == [[False, True], [False, True]]  # floor(2.96) = 2 pruned
    assert magnitude_mask(torch.tensor([1.0, -1.0, 1.0]), 0.34).tolist() == [True, True, False]  # ties: low index
    # 5.0 was pruned before: it stays pruned, and the two largest of the rest are kept
    assert magnitude_mask(torch.tensor([5.0, 1.0, 4.0, 3.0]), 0.5, torch.tensor([False, True, True, True])).tolist() \
        == [False, False, True, True]


@settings(max_examples=150, deadline=None)
@given(values, fractions)
def test_mask_keeps_exactly_the_largest_magnitudes(xs, sparsity):
    w = torch.tensor(xs)
    mask = magnitude_mask(w, sparsity)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int(mask.sum()) == w.numel() - math.floor(sparsity * w.numel())
    if 0 < int(mask.sum()) < w.numel():
        assert w.abs()[mask].min() >= w.abs()[~mask].max()
    assert torch.equal(mask, reference_mask(w, sparsity))


@settings(max_examples=100, deadline=None)
@given(values, st.lists(fractions, min_size=1, max_size=5))
def test_masks_never_revive(xs, schedule):
    w, mask = torch.tensor(xs), None
    for sparsity in schedule:  # in any order, even decreasing
        new = magnitude_mask(w, sparsity, mask)
        assert torch.equal(new, reference_mask(w, sparsity, mask))
        if mask is not None:
            assert not bool((new & ~mask).any())
            assert int(new.sum()) == min(int(mask.sum()), w.numel() - math.floor(sparsity * w.numel()))
        mask = new


def test_mask_bad_arguments():
    w = torch.randn(4, 4)
    for sparsity in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="0 <= sparsity < 1"):
            magnitude_mask(w, sparsity)
    with pytest.raises(ValueError, match="shape"):
        magnitude_mask(w, 0.5, torch.ones(16, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        magnitude_mask(w, 0.5, torch.ones(4, 4))


# ---------------------------------------------------------------------------------------------- the quantizer
def test_forward_sees_quantized_pruned_weights_and_pruned_weights_get_no_gradient():
    model = mlp()
    reference = copy.deepcopy(model)
    quantizer = Quantizer(model, bits=3, bucket_size=32)
    assert quantizer.prune(0.5) == 0.5 and quantizer.sparsity() == 0.5
    masks = quantizer.mask_state()
    assert set(masks) == {"0.weight", "2.weight"} and all(int(m.sum()) * 2 == m.numel() for m in masks.values())
    params = dict(model.named_parameters())
    assert all(not bool(params[n][~m].any()) for n, m in masks.items())  # pruned shadow weights are zero
    with torch.no_grad():
        params["0.weight"].add_(0.25)  # as momentum could: the forward pass must still see exact zeros
    expected = masked_copy(reference, model, masks, lambda n, w: quantize_tensor(w, 3, 32))
    x = torch.randn(5, 12)
    out = model(x)
    torch.testing.assert_close(out, expected(x), rtol=0, atol=0)
    out.pow(2).sum().backward()
    expected(x).pow(2).sum().backward()
    reference_params = dict(expected.named_parameters())
    for name, m in masks.items():  # straight through on the kept weights, nothing on the pruned ones
        torch.testing.assert_close(params[name].grad, torch.where(m, reference_params[name].grad, 0.0))
        assert not bool(params[name].grad[~m].any())


def test_learned_points_with_masks():
    model = mlp()
    reference = copy.deepcopy(model)
    quantizer = Quantizer(model, bits=2, bucket_size=8, learn_points=True)
    quantizer.prune(0.3)
    masks = quantizer.mask_state()
    points = {e.name: e.points.detach() for e in quantizer.params}
    expected = masked_copy(reference, model, masks, lambda n, w: quantize_to_points(w, points[n], 8))
    x = torch.randn(5, 12)
    out = model(x)
    torch.testing.assert_close(out, expected(x), rtol=0, atol=0)
    out.sum().backward()
    assert all(not bool(dict(model.named_parameters())[n].grad[~m].any()) for n, m in masks.items())
    state = quantizer.quantize()
    assert all(torch.equal(state[n].mask, m) for n, m in masks.items())
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected(x), rtol=0, atol=0)


def test_quantize_and_restore_round_trip_with_masks():
    model = mlp().eval()
    reference = copy.deepcopy(model)
    quantizer = Quantizer(model, bits=4, bucket_size=16, scaling="absmax")
    quantizer.prune(0.4)
    quantizer.prune(0.7)
    masks = quantizer.mask_state()
    shadow = {k: v.clone() for k, v in model.state_dict().items()}
    expected = masked_copy(reference, model, masks, lambda n, w: quantize_tensor(w, 4, 16, "absmax"))
    x = torch.randn(5, 12)
    with torch.no_grad():
        fake = model(x)
        state = quantizer.quantize()
        real = model(x)
        with pytest.raises(ValueError, match="restore_full_precision"):
            quantizer.prune(0.8)
        quantizer.restore_full_precision()
        back = model(x)
        quantizer.load_quantized_state(state)  # codes read back from an export carry their masks
        again = model(x)
        quantizer.restore_full_precision()
    for out in (fake, real, back, again):
        torch.testing.assert_close(out, expected(x), rtol=0, atol=0)
    for name, q in state.items():
        assert torch.equal(q.mask, masks[name]) and not bool(q.dequantize()[~q.mask].any())
    assert all(torch.equal(v, shadow[k]) for k, v in model.state_dict().items())


def test_prune_leaves_unpruned_tensors_unmasked():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(1, 1))
    quantizer = Quantizer(model, bits=4)
    assert quantizer.prune(0.0) == 0.0 and quantizer.mask_state() == {}
    assert quantizer.prune(0.5) == 32 / 65  # floor(0.5 * 1) = 0: the 1x1 weight keeps its only value
    assert set(quantizer.mask_state()) == {"0.weight"}
    assert quantizer.state_dict()["sparsity"] == 32 / 65


def test_mask_state_round_trip_through_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model = mlp()
    quantizer = Quantizer(model, bits=4, bucket_size=16)
    quantizer.prune(0.6)
    safetensors.save_file(quantizer.mask_state(), tmp_path / "masks.safetensors")
    weights = copy.deepcopy(model.state_dict())
    resumed = mlp()
    restored = Quantizer(resumed, bits=4, bucket_size=16)
    resumed.load_state_dict(weights)
    restored.load_mask_state(safetensors.load_file(tmp_path / "masks.safetensors"))
    assert restored.sparsity() == quantizer.sparsity()
    x = torch.randn(3, 12)
    with torch.no_grad():
        torch.testing.assert_close(resumed(x), model(x), rtol=0, atol=0)
    restored.load_mask_state({k: v.to(torch.uint8) for k, v in quantizer.mask_state().items()})
    assert all(torch.equal(restored.mask_state()[k], v) for k, v in quantizer.mask_state().items())


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"encoder.weight": torch.ones(16, 12, dtype=torch.bool)}, r"masks \['encoder.weight'\] name no quantized"),
        ({"0.weight": torch.ones(12, 16, dtype=torch.bool)}, r"has shape \(12, 16\), the weight has shape \(16, 12\)"),
        ({"0.weight": torch.ones(16, 12)}, "bool tensor"),
        ({"0.weight": torch.full((16, 12), 2, dtype=torch.uint8)}, "bool tensor"),
    ],
)
def test_load_mask_state_rejects_bad_masks_and_changes_nothing(bad, match):
    model = mlp()
    quantizer = Quantizer(model, bits=4)
    quantizer.prune(0.5)
    masks, weights = quantizer.mask_state(), copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        quantizer.load_mask_state(bad)
    assert quantizer.mask_state().keys() == masks.keys()
    assert all(torch.equal(quantizer.mask_state()[k], m) for k, m in masks.items())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_deepcopy_of_a_pruned_model_masks_its_own_weights():
    torch.manual_seed(0)
    model = TiedLSTM()
    quantizer = Quantizer(model, bits=2, bucket_size=16)
    quantizer.prune(0.5)
    masks = quantizer.mask_state()
    clone = copy.deepcopy(model)
    assert clone._nmtq_quantizer is not quantizer and clone._nmtq_quantizer.model is clone
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(1.0)  # the copy's weights differ, pruned ones included: its forward must still zero them
    clone._nmtq_quantizer.prune(0.8)  # and its masks are its own
    assert all(torch.equal(quantizer.mask_state()[k], m) for k, m in masks.items())
    expected = masked_copy(TiedLSTM(), clone, clone._nmtq_quantizer.mask_state(),
                           lambda n, w: quantize_tensor(w, 2, 16))
    ids = torch.randint(0, 20, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(clone(ids), expected(ids), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- size
def test_pruned_tensor_costs_a_bitmap_and_the_kept_codes():
    model = nn.Linear(64, 64, bias=False)
    quantizer = Quantizer(model, bits=4, bucket_size=None)
    full = quantizer.size(huffman=False)
    quantizer.prune(0.5)
    pruned = quantizer.size(huffman=False)
    t = pruned.tensors[0]
    assert (t.kept, t.mask_bits, t.code_bits) == (2048, 4096, 2048 * 4 + 4096)
    assert full.code_bits == 4096 * 4 and full.tensors[0].mask_bits == 0
    assert pruned.total_bits == full.total_bits - 4096 * 4 + 2048 * 4 + 4096 < full.total_bits
    assert pruned.fp32_bits == full.fp32_bits and pruned.mask_bits == 4096
    assert "50.0%" in pruned.table() and "mask bitmaps 512 B" in pruned.table()


def test_huffman_codes_only_the_kept_weights_hand_counted():
    mask = torch.tensor([True, True, True, True, False, False, False, False])
    q = QuantizedTensor(torch.tensor([0, 0, 0, 1, 15, 15, 15, 15], dtype=torch.uint8), torch.tensor([[0.0, 1.0]]),
                        4, None, "linear", torch.Size([8]), torch.float32, mask=mask)
    t = size_report({"w": q}, {}).tensors[0]
    # kept codes 0, 0, 0, 1: one bit each; a 16-entry length table of 8 bits; the 8-bit bitmap
    assert t.huffman_bits == 4 + 16 * 8 + 8 and t.code_bits == 4 * 4 + 8
    assert t.entropy == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert size_report({"w": q}, {}).entropy_bits == pytest.approx(t.entropy * 4 + 8)
    assert q.dequantize()[4:].tolist() == [0.0] * 4


def test_fully_pruned_tensor_and_bad_masks():
    w = torch.randn(10)
    q = dataclasses.replace(encode_tensor(w, 4, None), mask=torch.zeros(10, dtype=torch.bool))
    t = size_report({"w": q}, {}).tensors[0]
    assert t.kept == 0 and t.code_bits == t.huffman_bits == 10
    assert torch.equal(q.dequantize(), torch.zeros(10))
    with pytest.raises(ValueError, match="shape"):
        dataclasses.replace(q, mask=torch.ones(5, dtype=torch.bool))
