"""CIFAR ResNets: published parameter counts, shapes, validation, save/load, normalisation, training, quantization."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForImageClassification

from nmtq.quant import Quantizer
from nmtq.vision.models import CifarResNetConfig, CifarResNetForImageClassification, build_classifier


def tiny(**kwargs) -> CifarResNetForImageClassification:
    torch.manual_seed(0)
    return build_classifier(**{"depth": 8, "base_width": 4, **kwargs})


def n_params(**kwargs) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_classifier(**kwargs).parameters())


@pytest.mark.parametrize("kwargs, published", [
    ({"depth": 20}, 0.27e6),  # He et al. 2016, Table 6
    ({"depth": 8}, 78e3),
    ({"depth": 110}, 1.7e6),
    ({"architecture": "wide_resnet", "depth": 16, "widen_factor": 4}, 2.75e6),  # Zagoruyko & Komodakis 2016
    ({"architecture": "wide_resnet", "depth": 28, "widen_factor": 10}, 36.5e6),
])
def test_parameter_counts_match_the_papers(kwargs, published):
    assert n_params(**kwargs) == pytest.approx(published, rel=0.03)


@pytest.mark.parametrize("architecture, depth", [("resnet", 8), ("wide_resnet", 10)])
@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32), (3, 16)])
def test_forward_shapes_and_loss(architecture, depth, channels, size):
    model = tiny(architecture=architecture, depth=depth, num_channels=channels, num_labels=5).eval()
    labels = torch.tensor([0, 4, 2])
    out = model(pixel_values=torch.rand(3, channels, size, size), labels=labels)
    assert out.logits.shape == (3, 5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    out2 = model(pixel_values=torch.rand(3, channels, size, size), labels=labels, num_items_in_batch=torch.tensor(6))
    torch.testing.assert_close(out2.loss, F.cross_entropy(out2.logits, labels, reduction="sum") / 6)
    assert model(torch.rand(3, channels, size, size)).loss is None
    assert isinstance(model(torch.rand(1, channels, size, size), return_dict=False), tuple)


def test_config_defaults_and_auto_resolution(tmp_path):
    config = CifarResNetConfig()
    assert (config.architecture, config.depth, config.num_labels, config.num_channels) == ("resnet", 20, 10, 3)
    assert isinstance(AutoConfig.for_model("nmtq_cifar_resnet", depth=8), CifarResNetConfig)
    CifarResNetConfig(depth=14, num_labels=4, image_mean=[0.5], image_std=[0.25], num_channels=1).save_pretrained(
        tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CifarResNetConfig)
    assert (loaded.depth, loaded.num_labels, loaded.image_mean, loaded.image_std) == (14, 4, [0.5], [0.25])
    loaded.depth = 15
    with pytest.raises(ValueError, match="depth=15 is not 6n"):
        loaded.save_pretrained(tmp_path)  # save_pretrained validates


def test_save_and_load_round_trip(tmp_path):
    model = tiny(architecture="wide_resnet", depth=10, num_channels=1, image_mean=[0.1], image_std=[0.3],
                 dropout=0.3)
    model.train()(torch.rand(4, 1, 8, 8))  # move the BN running statistics away from their initial values
    model.eval().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is CifarResNetForImageClassification and isinstance(loaded.config, CifarResNetConfig)
    assert loaded.config.to_diff_dict() == model.config.to_diff_dict()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 21}, "depth=21 is not 6n\\+2.*pass 8, 14, 20"),
    ({"architecture": "wide_resnet", "depth": 20}, "depth=20 is not 6n\\+4.*pass 10, 16"),
    ({"architecture": "densenet"}, "architecture='densenet' is unknown"),
    ({"widen_factor": 0}, "widen_factor=0 must be a positive integer"),
    ({"image_mean": [0.5], "image_std": [0.5]}, "image_mean has 1 values but num_channels=3"),
    ({"image_mean": [0.5] * 3, "image_std": [0.5, 0.0, 0.5]}, "image_std=.* must be positive"),
    ({"num_labels": 1}, "at least 2 classes"),
    ({"dropout": 0.3}, "only used by architecture='wide_resnet'"),
])
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CifarResNetConfig(**kwargs)


@pytest.mark.parametrize("pixels, labels, message", [
    (torch.rand(2, 1, 8, 8), None, "has 1 channel but the model expects 3: convert the images \\(grayscale to RGB"),
    (torch.rand(3, 8, 8), None, "shape \\(3, 8, 8\\) but the model expects 4 dimensions.*unsqueeze"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, "dtype torch.uint8"),
    (torch.rand(2, 3, 8, 8), torch.tensor([1, 10]), "label 10 is out of range.*num_labels=10"),
    (torch.rand(2, 3, 8, 8), torch.tensor([-1, 0]), "label -1 is out of range"),
    (torch.rand(2, 3, 8, 8), torch.tensor([1, 2, 3]), "labels must be integer class ids of shape \\(2,\\)"),
])
def test_input_errors(pixels, labels, message):
    with pytest.raises(ValueError, match=message):
        tiny()(pixel_values=pixels, labels=labels)


def test_normalisation_inside_forward_matches_normalised_inputs():
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    plain, normalising = tiny().eval(), tiny(image_mean=mean, image_std=std).eval()
    normalising.load_state_dict(plain.state_dict())
    assert set(plain.state_dict()) == set(normalising.state_dict())  # constants, not buffers or parameters
    x = torch.rand(2, 3, 8, 8)
    normalised = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normalising(x).logits, plain(normalised).logits)


@pytest.mark.parametrize("architecture, depth", [("resnet", 8), ("wide_resnet", 10)])
def test_a_few_adam_steps_fit_random_data(architecture, depth):
    model = tiny(architecture=architecture, depth=depth, num_channels=1).train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(pixel_values=x, labels=y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]


def test_initialisation():
    model = tiny()
    conv = model.resnet.stages[2][0].conv2
    assert conv.weight.std().item() == pytest.approx((2 / (9 * conv.out_channels)) ** 0.5, rel=0.2)  # fan_out
    assert torch.all(model.classifier.bias == 0) and model.classifier.weight.std().item() < 0.02
    bn = model.resnet.stem[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_quantizer_quantizes_conv_and_linear_weights_only():
    model = tiny(num_channels=1)
    model.train()(torch.rand(8, 1, 8, 8))  # non-trivial BN statistics
    reference = copy.deepcopy(model)
    q = Quantizer(model, bits=4, bucket_size=64)
    assert {e.name for e in q.params} == {n for n, p in model.named_parameters() if p.dim() > 1}
    x = torch.rand(4, 1, 8, 8)
    model(pixel_values=x, labels=torch.tensor([1, 2, 3, 4])).loss.backward()  # fake-quantized training forward
    with torch.no_grad():
        fake = model.eval()(x).logits
        q.quantize()
        torch.testing.assert_close(model(x).logits, fake)
    for name, p in model.named_parameters():
        full = dict(reference.named_parameters())[name]
        if p.dim() == 1:
            assert torch.equal(p, full), f"{name} (1-D) should stay in full precision"
        else:
            flat = p.detach().reshape(-1)
            buckets = [flat[i:i + 64] for i in range(0, flat.numel(), 64)]
            assert max(b.unique().numel() for b in buckets) <= 2**4, name
            assert not torch.equal(p, full), name


def test_the_export_knows_the_image_model_type():
    from nmtq.exported import IMAGE_MODEL_TYPE

    assert CifarResNetConfig.model_type == IMAGE_MODEL_TYPE
