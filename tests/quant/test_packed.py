"""Packed weights in memory (nmtq.quant.packed): decoding is QuantizedTensor.dequantize bit for bit, embedding rows
decode alone, and the decoded() scope decodes each weight once and drops it after."""

import doctest
import gc
import weakref
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nmtq.quant.packed as packed_module
from nmtq.quant import encode_tensor, encode_to_points
from nmtq.quant.packed import PackedTensor, decoded, pack_module_weight

INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a, b):
    """Equal bit for bit: torch.equal takes -0.0 for 0.0."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.reshape(-1).view(INTS[a.element_size()]), b.reshape(-1).view(INTS[b.element_size()]))


@st.composite
def quantized(draw):
    """A QuantizedTensor of any kind nmtq writes: bits 1-8, linear or absmax scaling, learned points, a pruning
    mask, odd sizes, buckets of any size, per row or one per tensor, half and double precision."""
    shape = draw(st.sampled_from([(1,), (7,), (33,), (5, 13), (16, 64), (3, 4, 5), (40, 24), (64, 8), (2, 200)]))
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    bucket_size = draw(st.sampled_from([None, "row", 1, 3, 8, 24, 64, 1000]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    scale, offset = draw(st.sampled_from([1e-3, 1.0, 100.0])), draw(st.sampled_from([0.0, 5.0, -1e3]))
    w = (torch.randn(shape, generator=g) * scale + offset).to(dtype)
    if draw(st.booleans()):
        w[0] = 0.0  # exact zeros, constant buckets
    bits = draw(st.integers(1, 8))
    if draw(st.integers(0, 3)) == 0:
        count = draw(st.integers(1, 2**bits))
        q = encode_to_points(w, torch.rand(count, generator=g).sort().values, bucket_size)
    else:
        scaling = draw(st.sampled_from(["linear", "absmax"])) if bits > 1 else "linear"
        q = encode_tensor(w, bits, bucket_size, scaling)
    if draw(st.integers(0, 3)) == 0:
        q = replace(q, mask=torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.5, 1.0])))
    return q


def test_doctests():
    assert doctest.testmod(packed_module, extraglobs={"torch": torch}).failed == 0


def test_hand_computed_example():
    # bucket [0, 3] at 2 bits: levels 0, 1, 2, 3; codes 3 0 1 2 pack into 0b10_01_00_11; then bucket [5, 5]
    q = encode_tensor(torch.tensor([3.0, 0.0, 1.1, 1.9, 5.0]), bits=2, bucket_size=4)
    p = PackedTensor(q)
    assert p.codes.tolist() == [0b10_01_00_11, 0] and p().tolist() == [3.0, 0.0, 1.0, 2.0, 5.0]


@settings(max_examples=300, deadline=None)
@given(quantized())
def test_decoding_is_dequantize_bit_for_bit(q):
    assert same_bits(PackedTensor(q)(), q.dequantize())


@settings(max_examples=200, deadline=None)
@given(quantized(), st.integers(0, 2**31))
def test_embedding_rows_are_the_decoded_rows(q, seed):
    if len(q.shape) != 2:  # the same buckets as a matrix: one row (1-D), or rows of the first dimension
        shape = (q.shape[0] if len(q.shape) > 2 else 1, -1)
        q = replace(q, shape=torch.empty(q.shape).reshape(shape).shape,
                    mask=None if q.mask is None else q.mask.reshape(shape))
    ids = torch.randint(0, q.shape[0], (3, 5), generator=torch.Generator().manual_seed(seed))
    layer = torch.nn.Embedding(*q.shape, dtype=q.dtype)
    pack_module_weight(layer, "weight", PackedTensor(q))
    assert same_bits(layer(ids), torch.nn.functional.embedding(ids, q.dequantize()))


@pytest.mark.parametrize("threads", [1, 2])
def test_decoding_on_one_thread_or_more(threads):
    # packed bytes are gathered by index_select on one thread, by take on more: both move bits only
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        w = torch.randn(37, 24, generator=torch.Generator().manual_seed(threads))
        for q in [encode_tensor(w, bits, 16, scaling) for bits in (2, 4, 8) for scaling in ("linear", "absmax")] + [
                encode_to_points(w, torch.tensor([0.0, 0.1, 0.5, 1.0]), "row"), encode_tensor(w.double(), 4, 16)]:
            assert same_bits(PackedTensor(q)(), q.dequantize())
    finally:
        torch.set_num_threads(previous)


def test_embedding_decodes_only_the_rows_it_looks_up():
    q = encode_tensor(torch.randn(100, 16), bits=4, bucket_size=8)
    layer = torch.nn.Embedding(100, 16)
    pack_module_weight(layer, "weight", PackedTensor(q))
    assert layer.weight_packed.rows(torch.tensor([[1, 5]])).shape == (1, 2, 16)
    # a row that shares a bucket with the next, or a pruned weight: decoded whole
    assert PackedTensor(encode_tensor(torch.randn(100, 16), bits=4, bucket_size=24)).rows(torch.tensor([1])) is None
    assert PackedTensor(replace(q, mask=torch.rand(100, 16) > 0.5)).rows(torch.tensor([1])) is None
    with pytest.raises(IndexError):
        layer(torch.tensor([100]))


def tied_model():
    """An embedding tied to the output projection, and a hidden layer, all packed (one PackedTensor for the tied
    pair, as from_pretrained does)."""
    torch.manual_seed(0)
    embed, hidden, out = torch.nn.Embedding(50, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 50, bias=False)
    tied = PackedTensor(encode_tensor(embed.weight.detach(), bits=4, bucket_size=16))
    pack_module_weight(embed, "weight", tied)
    pack_module_weight(out, "weight", tied)
    pack_module_weight(hidden, "weight", PackedTensor(encode_tensor(hidden.weight.detach(), bits=2, bucket_size=16)))
    return torch.nn.Sequential(embed, hidden, torch.nn.Tanh(), out)


def generate(model, steps=6):
    """Greedy decoding, one layer call per step as in a decoder: every weight is read once a step."""
    tokens = torch.tensor([[1, 2], [3, 4]])
    for _ in range(steps):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens, model(tokens)


def counting_decodes(monkeypatch):
    calls = []
    original = PackedTensor.decode
    monkeypatch.setattr(PackedTensor, "decode", lambda self: calls.append(self) or original(self))
    return calls


def test_decoded_scope_gives_the_same_outputs_and_decodes_each_weight_once(monkeypatch):
    model = tied_model()
    tokens, logits = generate(model)
    calls = counting_decodes(monkeypatch)
    with decoded(model) as same:
        assert same is model
        inside_tokens, inside_logits = generate(model)
        assert model[0].weight is model[3].weight  # tied weights: one decoded tensor
    assert torch.equal(inside_tokens, tokens) and same_bits(inside_logits, logits)
    assert len(calls) == 2  # the tied pair and the hidden layer, once each for 7 steps
    calls.clear()
    generate(model, steps=2)
    assert len(calls) == 2 * 3  # outside: both projections at every call (the embedding decodes its rows only)


def test_decoded_weights_are_released_when_the_scope_ends():
    model = tied_model()
    with decoded(model):
        refs = [weakref.ref(m.weight) for m in (model[1], model[3])]
        generate(model)
    gc.collect()
    assert all(ref() is None for ref in refs)
    # at rest the model holds the packed buffers only
    assert all(p._decoded is None for p in model.modules() if isinstance(p, PackedTensor))
    assert {name.rpartition(".")[2] for name, _ in model.named_buffers()} <= {"codes", "ranges", "points", "mask"}


def test_decoded_scopes_nest_and_end_on_errors():
    model = tied_model()
    with decoded(model):
        first = model[1].weight
        with decoded(model[1]):
            assert model[1].weight is first
        assert model[1].weight is first  # the outer scope still holds it
    assert model[1].weight is not model[1].weight
    with pytest.raises(RuntimeError, match="boom"), decoded(model):
        model[1].weight  # noqa: B018  decoded and kept
        raise RuntimeError("boom")
    assert model[1].weight_packed._decoded is None and model[1].weight_packed._scopes == 0


def test_a_copy_or_a_move_inside_the_scope_is_at_rest():
    import copy

    model = tied_model()
    with decoded(model):
        model[1].weight  # noqa: B018
        twin = copy.deepcopy(model)
        assert twin[1].weight_packed._decoded is None and twin[1].weight is not twin[1].weight
        model.to(torch.float32)  # a move or cast drops what the scope kept: decoded again at the next read
        assert model[1].weight_packed._decoded is None
        assert model[1].weight is model[1].weight
