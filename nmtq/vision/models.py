"""CIFAR-style ResNets as Hugging Face image classifiers: the teachers and students of the vision experiments.

``architecture="resnet"`` is He et al. (2016)'s CIFAR ResNet: post-activation basic blocks, depth 6n+2, a 1x1
conv + BN shortcut where the shape changes (option B). ``architecture="wide_resnet"`` is Zagoruyko & Komodakis
(2016)'s WRN-d-k: pre-activation basic blocks, depth 6n+4, dropout between the two convolutions of each block.
Both have a 3x3 stem conv to ``base_width`` channels, three stages of n blocks (stride 1, 2, 2) with widths
``base_width * (1, 2, 4) * widen_factor``, global average pooling (so 8x8, 28x28 and 32x32 images all work) and
a linear classifier. ``image_mean``/``image_std`` normalise inside ``forward``, so a saved model takes raw
pixels in [0, 1]; they are constants of the config, not parameters or buffers.

Importing this module registers ``nmtq_cifar_resnet`` with ``AutoConfig`` and ``AutoModelForImageClassification``.

Example:
    >>> import torch
    >>> model = build_classifier(depth=8, num_channels=1, num_labels=10, base_width=4).eval()
    >>> out = model(pixel_values=torch.rand(2, 1, 8, 8), labels=torch.tensor([3, 7]))
    >>> tuple(out.logits.shape), bool(out.loss > 0)
    ((2, 10), True)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from .. import files
from ..errors import NmtqError

__all__ = ["CifarResNetConfig", "CifarResNetForImageClassification", "build_classifier"]

# architecture -> (extra layers in depth = 6n + extra, a few valid depths for the error message)
ARCHITECTURES = {"resnet": (2, "8, 14, 20, 32, 44, 56 or 110"), "wide_resnet": (4, "10, 16, 22, 28 or 40")}


class CifarResNetConfig(PreTrainedConfig):
    """Shape of a CIFAR ResNet or Wide ResNet; checked when built (``ValueError`` saying what to pass).

    ``num_labels`` defaults to 10. ``dropout`` is only used by ``wide_resnet`` (inside each block, as WRN).

    Example:
        >>> config = CifarResNetConfig(architecture="wide_resnet", depth=16, widen_factor=4)
        >>> config.num_labels, config.blocks_per_stage, config.widths
        (10, 2, [64, 128, 256])
    """

    model_type = "nmtq_cifar_resnet"

    architecture: str = "resnet"
    depth: int = 20
    widen_factor: int = 1
    base_width: int = 16
    num_channels: int = 3
    dropout: float = 0.0
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.id2label is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = 10
        for name in ("image_mean", "image_std"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        super().__post_init__(**kwargs)
        self.check()

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - ARCHITECTURES[self.architecture][0]) // 6

    @property
    def widths(self) -> list[int]:
        return [self.base_width * m * self.widen_factor for m in (1, 2, 4)]

    def validate(self) -> None:
        """Hugging Face's validation, run by ``save_pretrained``, plus :meth:`check`."""
        super().validate()
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the first wrong field and what to pass instead."""
        if self.architecture not in ARCHITECTURES:
            raise NmtqError(f"architecture={self.architecture!r} is unknown: pass one of {sorted(ARCHITECTURES)}")
        for name in ("depth", "widen_factor", "base_width", "num_channels"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise NmtqError(f"{name}={value!r} must be a positive integer")
        extra, valid = ARCHITECTURES[self.architecture]
        if self.depth < 6 + extra or (self.depth - extra) % 6:
            raise NmtqError(f"depth={self.depth} is not 6n+{extra} for architecture={self.architecture!r}: "
                             f"pass {valid}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise NmtqError(f"dropout={self.dropout!r} must lie in [0, 1)")
        if self.dropout and self.architecture != "wide_resnet":
            raise NmtqError(f"dropout={self.dropout} is only used by architecture='wide_resnet': pass dropout=0.0")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.num_channels:
                raise NmtqError(f"{name} has {len(value)} values but num_channels={self.num_channels}: pass one "
                                 "value per channel")
        if (self.image_mean is None) != (self.image_std is None):
            raise NmtqError("pass both image_mean and image_std, or neither")
        if self.image_std is not None and min(self.image_std) <= 0:
            raise NmtqError(f"image_std={self.image_std} must be positive in every channel")
        if not _is_int(self.num_labels) or self.num_labels < 2:
            raise NmtqError(f"num_labels={self.num_labels!r}: a classifier needs at least 2 classes")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation block of He et al.: conv-BN-ReLU-conv-BN, add the shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class WideBlock(nn.Module):
    """Pre-activation block of WRN: BN-ReLU-conv-BN-ReLU-dropout-conv plus the (1x1 conv) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), _conv3x3(cin, cout, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), _conv3x3(cout, cout)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class CifarResNetBackbone(nn.Module):
    """Stem, three stages and global average pooling: images to ``(batch, widths[-1])`` features."""

    def __init__(self, config: CifarResNetConfig) -> None:
        super().__init__()
        wide = config.architecture == "wide_resnet"
        self.stem = nn.Sequential(_conv3x3(config.num_channels, config.base_width))
        if not wide:
            self.stem.extend([nn.BatchNorm2d(config.base_width), nn.ReLU()])
        cin, stages = config.base_width, []
        for i, width in enumerate(config.widths):
            blocks = []
            for j in range(config.blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(WideBlock(cin, width, stride, config.dropout) if wide else BasicBlock(cin, width, stride))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU()) if wide else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.norm(self.stages(self.stem(x)))).flatten(1)


class CifarResNetForImageClassification(PreTrainedModel):
    """A CIFAR ResNet/WRN classifier: ``forward(pixel_values, labels)`` gives logits and the cross-entropy loss."""

    config: CifarResNetConfig
    config_class = CifarResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["BasicBlock", "WideBlock"]

    def __init__(self, config: CifarResNetConfig) -> None:
        super().__init__(config)
        config.check()
        self.resnet = CifarResNetBackbone(config)
        self.classifier = nn.Linear(config.widths[-1], config.num_labels)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=0.01)
            init.zeros_(module.bias)

    def _check_inputs(self, pixel_values: torch.Tensor | None, labels: torch.Tensor | None) -> None:
        expected = self.config.num_channels
        if pixel_values is None:
            raise NmtqError("pass pixel_values: a float tensor of shape (batch, channels, height, width)")
        if pixel_values.dim() != 4:
            hint = ": add a batch dimension with pixel_values.unsqueeze(0)" if pixel_values.dim() == 3 else ""
            raise NmtqError(f"pixel_values has shape {tuple(pixel_values.shape)} but the model expects 4 dimensions "
                             f"(batch, channels={expected}, height, width){hint}")
        if not pixel_values.is_floating_point():
            raise NmtqError(f"pixel_values has dtype {pixel_values.dtype}: pass floats in [0, 1], "
                             "e.g. images.float() / 255")
        channels = pixel_values.shape[1]
        if channels != expected:
            kind = " (grayscale to RGB)" if (channels, expected) == (1, 3) else ""
            raise NmtqError(f"pixel_values has {channels} channel{'s' * (channels != 1)} but the model expects "
                             f"{expected}: convert the images{kind} or build the model with num_channels={channels}")
        if labels is None:
            return
        if labels.dtype.is_floating_point or labels.shape != pixel_values.shape[:1]:
            raise NmtqError(f"labels must be integer class ids of shape ({pixel_values.shape[0]},), got "
                             f"{labels.dtype} of shape {tuple(labels.shape)}")
        bad = labels[(labels < 0) | (labels >= self.config.num_labels)]
        if bad.numel():
            raise NmtqError(f"label {int(bad[0])} is out of range: the model has num_labels="
                             f"{self.config.num_labels}, so labels must lie in [0, {self.config.num_labels})")

    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs: Any) -> ImageClassifierOutput | tuple:
        """Logits for images of shape ``(batch, num_channels, height, width)``, raw pixels if the config
        normalises; the loss is the mean cross-entropy when ``labels`` are given (the sum over
        ``num_items_in_batch`` if passed in ``kwargs``, as the Trainer does; other ``kwargs`` are ignored)."""
        self._check_inputs(pixel_values, labels)
        x = pixel_values.to(self.dtype)
        if self.config.image_mean is not None:
            mean = torch.tensor(self.config.image_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.config.image_std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        logits = self.classifier(self.resnet(x))
        loss, items = None, kwargs.get("num_items_in_batch")
        if labels is not None:  # the Trainer passes num_items_in_batch so accumulated batches weigh by size
            loss = F.cross_entropy(logits, labels, reduction="mean" if items is None else "sum")
            loss = loss if items is None else loss / items
        output = ImageClassifierOutput(loss=loss, logits=logits)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


def build_classifier(architecture: str = "resnet", depth: int = 20, widen_factor: int = 1, num_channels: int = 3,
                     num_labels: int = 10, **kwargs: Any) -> CifarResNetForImageClassification:
    """A freshly initialised classifier; ``kwargs`` are further :class:`CifarResNetConfig` fields."""
    config = CifarResNetConfig(architecture=architecture, depth=depth, widen_factor=widen_factor,
                               num_channels=num_channels, num_labels=num_labels, **kwargs)
    return CifarResNetForImageClassification(config)


def read_classifier_config(path: str | Path, what: str = "model") -> CifarResNetConfig:
    """The config of a classifier directory, with a one-line error when it is not one (no weights are read)."""
    config_file = Path(path) / files.CONFIG
    if not config_file.is_file():
        raise NmtqError(f"{what} {str(path)!r} is not a model directory (no {files.CONFIG}): pass a directory "
                         "written by nmtq distill-images")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        model_type = None
    if model_type != CifarResNetConfig.model_type:
        raise NmtqError(f"{what} {str(path)!r} is a {model_type or 'unreadable'} model, not an image classifier: "
                        "pass a directory written by nmtq distill-images (translation models go to nmtq distill)")
    return CifarResNetConfig.from_pretrained(path)


def load_classifier(path: str | Path, what: str = "model") -> CifarResNetForImageClassification:
    """A trained classifier from a directory (safetensors only), with a clear error when it is not one."""
    read_classifier_config(path, what)
    from safetensors import SafetensorError

    from ..guard import check_finite

    try:
        model = AutoModelForImageClassification.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError, SafetensorError) as err:  # a truncated or corrupt model.safetensors included
        raise NmtqError(f"could not load the {what} from {str(path)!r}: it needs a complete {files.WEIGHTS}, as "
                        f"nmtq distill-images writes ({' '.join(str(err).split())})") from err
    check_finite(model, f"{what} {str(path)!r}")
    return model


AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig, exist_ok=True)
AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification, exist_ok=True)
