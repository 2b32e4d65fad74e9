"""nmtq: compress neural machine translation models by distillation and quantization.

``import nmtq`` registers with transformers what ``from_pretrained`` needs to load nmtq's models: the
quantization method ``nmtq`` of exported students (:mod:`nmtq.hf`), the LSTM student (:mod:`nmtq.lstm`) and the
CIFAR ResNets (:mod:`nmtq.vision.models`). Where transformers is not installed, nothing is registered and
:mod:`nmtq.quant`, which needs torch alone, still works.
"""

import importlib.util

from .version import __version__ as __version__

if importlib.util.find_spec("transformers") is not None:
    from . import hf, lstm  # noqa: F401  registrations with transformers' Auto classes and quantizers
    from .vision import models as _vision_models  # noqa: F401
