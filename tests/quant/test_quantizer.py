"""The Quantizer on tiny real models: conv nets, LSTMs and tied embeddings."""

import copy

import pytest
import torch
from torch import nn

from nmtq.quant import Quantizer, QuantizerConfig, quantize_tensor, quantize_to_points


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))          # (B, 8, 4, 4)
        x = torch.relu(self.conv2(x.flatten(2)))        # (B, 8, 16)
        return self.fc(x.flatten(1))


class TinyLSTMTagger(nn.Module):
    """Embedding -> LSTM -> GRU -> output layer tied to the embedding."""

    def __init__(self, vocab=20, dim=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        h, _ = self.lstm(self.embed(ids))
        h, _ = self.gru(h)
        return self.out(h)


def q_copy(model, quantizer, fn):
    """A deep copy whose quantized weights are replaced by fn(name, w)."""
    clone = copy.deepcopy(model)
    names = {e.name for e in quantizer.params}
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if name in names:
                p.copy_(fn(name, p))
    return clone


def check_roundtrip(model, x, **config):
    torch.manual_seed(0)
    reference = copy.deepcopy(model)
    quantizer = Quantizer(model, **config)
    bucket, bits, scaling = quantizer.config.bucket_size, quantizer.config.bits, quantizer.config.scaling
    expected_model = q_copy(reference, quantizer, lambda n, w: quantize_tensor(w, bits, bucket, scaling)).eval()
    model.eval()
    with torch.no_grad():
        expected = expected_model(x)
        fake = model(x)
        state = quantizer.quantize()
        real = model(x)
        assert quantizer.is_quantized and set(state) == {e.name for e in quantizer.params}
        quantizer.restore_full_precision()
        back = model(x)
    assert torch.equal(fake, expected)
    assert torch.equal(real, expected)
    assert torch.equal(back, expected)
    # training mode (autograd on, batch statistics) sees the same Q(w)
    model.train(), expected_model.train()
    torch.testing.assert_close(model(x), expected_model(x), rtol=0, atol=0)
    model.eval()
    for (name, p), (_, p0) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, p0), f"{name} was not restored to full precision"
    return quantizer


def test_conv_net_train_quantized_and_back():
    torch.manual_seed(0)
    model = TinyConvNet()
    x = torch.randn(4, 3, 4, 4)
    quantizer = check_roundtrip(model, x, bits=3, bucket_size=16)
    assert {e.name for e in quantizer.params} == {"conv1.weight", "conv2.weight", "fc.weight"}
    # training: forward uses Q(w), gradients land on the full-precision weights, BN stays fp
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_lstm_gru_and_tied_embedding_train_quantized_and_back():
    torch.manual_seed(0)
    model = TinyLSTMTagger()
    ids = torch.randint(0, 20, (3, 5))
    quantizer = check_roundtrip(model, ids, bits=4, bucket_size="row", scaling="absmax")
    names = [e.name for e in quantizer.params]
    assert names.count("embed.weight") == 1 and "out.weight" not in names  # tied: once, first name
    tied = next(e for e in quantizer.params if e.name == "embed.weight")
    assert tied.aliases == ("embed.weight", "out.weight") and len(tied.owners) == 2
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l1", "gru.weight_ih_l0"} <= set(names)
    assert not any("bias" in n for n in names)


def test_training_step_sees_quantized_weights_and_updates_shadow_weights():
    torch.manual_seed(0)
    model = nn.Linear(6, 3, bias=False)
    w0 = model.weight.detach().clone()
    Quantizer(model, bits=2, bucket_size=None)
    x = torch.randn(5, 6)
    out = model(x)
    torch.testing.assert_close(out, x @ quantize_tensor(w0, 2, None).T)
    out.pow(2).sum().backward()
    expected_grad = (2 * out.detach()).T @ x  # straight through: dL/dQ(w) applied to w
    torch.testing.assert_close(model.weight.grad, expected_grad)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(model.weight, w0)
    assert isinstance(model.weight, nn.Parameter)


def test_eval_without_grad_caches_until_weights_change():
    model = nn.Linear(4, 4)
    quantizer = Quantizer(model, bits=2)
    with torch.no_grad():
        a = model(torch.ones(1, 4))
        assert len(quantizer._cache) == 1
        model.weight.add_(1.0)  # bumps the version: the cache must not be reused
        b = model(torch.ones(1, 4))
    torch.testing.assert_close(b - a, torch.full((1, 4), 4.0))


def test_selection_patterns_min_size_first_last():
    model = TinyConvNet()
    q = Quantizer(model, include=("conv*",), exclude=("conv2.*",))
    assert [e.name for e in q.params] == ["conv1.weight"]
    q.remove()
    q = Quantizer(model, min_size=200)
    assert [e.name for e in q.params] == ["conv1.weight", "fc.weight"]  # conv2 has 192 weights
    q.remove()
    q = Quantizer(model, keep_first_last=True)
    assert [e.name for e in q.params] == ["conv2.weight"]
    q.remove()
    q = Quantizer(model, quantize_vectors=True, include=("bn.*",))
    assert [e.name for e in q.params] == ["bn.weight", "bn.bias"]
    q.remove()
    model.conv2.weight.requires_grad_(False)  # a fixed table, like sinusoidal positions
    q = Quantizer(model)
    assert [e.name for e in q.params] == ["conv1.weight", "fc.weight"]
    q.remove()
    assert "conv2.weight" in [e.name for e in Quantizer(model, quantize_frozen=True).params]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"include": ("encoder.*",)}, "include pattern 'encoder.*' matches no parameter"),
        ({"exclude": ("nothing*",)}, "exclude pattern"),
        ({"include": ("bn.*",)}, "no parameter .* is selected"),
        ({"bits": 0}, "bits"),
        ({"bucket_size": -1}, "bucket_size"),
        ({"learn_points": True, "scaling": "absmax"}, "learn_points"),
        ({"include": "conv*"}, "list of glob patterns"),
        ({"bit": 4}, r"unknown Quantizer option\(s\) \['bit'\]"),
    ],
)
def test_bad_configs_raise_and_leave_model_untouched(kwargs, match):
    model = TinyConvNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        Quantizer(model, **kwargs)
    assert not model.conv1._forward_pre_hooks and getattr(model, "_nmtq_quantizer", None) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_weights_raise_before_any_change():
    model = TinyConvNet()
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc.weight contains NaN"):
        Quantizer(model)
    assert not model.conv1._forward_pre_hooks


def test_second_quantizer_is_refused():
    model = nn.Linear(4, 4)
    Quantizer(model)
    with pytest.raises(ValueError, match="already has a Quantizer"):
        Quantizer(model)


def test_learned_points_train_and_weights_stay_fixed():
    torch.manual_seed(0)
    teacher, student = nn.Linear(8, 4), nn.Linear(8, 4)
    quantizer = Quantizer(student, QuantizerConfig(bits=2, bucket_size=8, learn_points=True))
    points0 = [p.detach().clone() for p in quantizer.point_parameters()]
    w0 = student.weight.detach().clone()
    opt = torch.optim.SGD(list(quantizer.point_parameters()), lr=0.05)
    quantizer.attach_optimizer(opt)
    x = torch.randn(64, 8)
    for _ in range(20):
        opt.zero_grad()
        loss = (student(x) - teacher(x).detach()).pow(2).mean()
        loss.backward()
        opt.step()
    points = list(quantizer.point_parameters())
    assert not torch.equal(points[0], points0[0])
    assert torch.all(points[0][1:] >= points[0][:-1]) and points[0].min() >= 0 and points[0].max() <= 1
    assert torch.equal(student.weight, w0)
    # the points are in the model's own state_dict, so checkpoints carry them
    assert "weight_quant_points" in dict(student.named_parameters())
    expected = quantize_to_points(w0, points[0].detach(), 8)
    state = quantizer.quantize()
    torch.testing.assert_close(student.weight.detach(), expected, rtol=0, atol=0)
    assert state["weight"].points is not None


def test_set_bits_by_gradient_norm_and_state_dict_roundtrip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    quantizer = Quantizer(model, bits=4, learn_points=True)
    model(torch.randn(4, 16)).sum().backward()
    bits = quantizer.set_bits_by_gradient_norm(3, grad_norms={"0.weight": 1.0, "1.weight": 3.0})
    assert bits == {"0.weight": 1, "1.weight": 5}
    assert [p.numel() for p in quantizer.point_parameters()] == [2, 32]
    saved, weights = quantizer.state_dict(), copy.deepcopy(model.state_dict())
    other = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    restored = Quantizer(other, bits=4, learn_points=True)
    restored.load_state_dict(saved)
    other.load_state_dict(weights)
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    assert set(quantizer.gradient_norms()) == {"0.weight", "1.weight"}


def test_remove_restores_a_plain_model():
    model = TinyLSTMTagger()
    keys = set(model.state_dict())
    quantizer = Quantizer(model, learn_points=True)
    assert set(model.state_dict()) != keys
    quantizer.remove()
    assert set(model.state_dict()) == keys and not model.lstm._forward_pre_hooks
    Quantizer(model)  # a new quantizer may attach after remove()


def test_weights_read_by_a_parent_are_quantized_too():
    # nn.MultiheadAttention reads out_proj.weight without calling out_proj; nn.TransformerEncoderLayer too
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
    reference = copy.deepcopy(layer).eval()
    quantizer = Quantizer(layer, bits=2, bucket_size=32)
    assert "self_attn.out_proj.weight" in {e.name for e in quantizer.params}
    expected = q_copy(reference, quantizer, lambda n, w: quantize_tensor(w, 2, 32)).eval()
    x = torch.randn(2, 5, 16)
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected(x), rtol=0, atol=0)
        # a submodule called on its own (like generate() calling the encoder) is quantized as well
        torch.testing.assert_close(layer.linear1(x), expected.linear1(x), rtol=0, atol=0)
    assert isinstance(layer.self_attn.out_proj.weight, nn.Parameter)


def test_deepcopy_of_a_quantized_model_quantizes_its_own_weights():
    torch.manual_seed(0)
    model = TinyLSTMTagger()
    quantizer = Quantizer(model, bits=2, bucket_size=16)
    clone = copy.deepcopy(model)
    assert clone._nmtq_quantizer is not quantizer and clone._nmtq_quantizer.model is clone
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(-1)  # the copy's weights differ from the original's from here on
    reference = q_copy(TinyLSTMTagger(), quantizer, lambda n, w: w)
    reference.load_state_dict(clone.state_dict())
    reference = q_copy(reference, quantizer, lambda n, w: quantize_tensor(w, 2, 16))
    ids = torch.randint(0, 20, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(clone(ids), reference(ids), rtol=0, atol=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        clone(ids)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    clone._nmtq_quantizer.remove()
    assert model.lstm._forward_pre_hooks and not clone.lstm._forward_pre_hooks


def test_activation_bits_round_each_linear_input_per_row_like_an_int8_engine():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    reference = copy.deepcopy(model)
    quantizer = Quantizer(model, bits=8, bucket_size="row", scaling="absmax", activation_bits=8)
    x = torch.randn(4, 2, 6, requires_grad=True)

    def int8_rows(t):  # by hand: scale = max|row| / 127, round to the nearest level
        scale = t.abs().amax(dim=-1, keepdim=True) / 127
        return torch.round(t / scale) * scale

    weights = [quantize_tensor(layer.weight.detach(), 8, "row", "absmax") for layer in (reference[0], reference[2])]
    hidden = torch.relu(nn.functional.linear(int8_rows(x.detach()), weights[0], reference[0].bias))
    expected = nn.functional.linear(int8_rows(hidden), weights[1], reference[2].bias)
    out = model(x)
    assert torch.allclose(out, expected, atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()  # straight through to the input
    quantizer.remove()  # weights and activations back to full precision
    assert torch.equal(model(x), reference(x))
    with pytest.raises(ValueError, match="bits"):
        QuantizerConfig(activation_bits=1)
