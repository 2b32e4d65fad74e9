"""``from_pretrained`` on an nmtq export: the quantization method ``nmtq``, registered with transformers.

``import nmtq`` registers :class:`NmtqConfig` and :class:`NmtqHfQuantizer` through transformers' public API
(``register_quantization_config``, ``register_quantizer``), and nmtq's own model types (the LSTM student, the
CIFAR ResNets). Then ``AutoModelForSeq2SeqLM.from_pretrained(folder_or_hub_id)`` (or
``AutoModelForImageClassification``) loads a folder written by ``nmtq export``, whose ``config.json`` says
``quant_method: nmtq``, into the student with exactly the weights :func:`nmtq.export.load_exported` gives:

* before the weights load, the quantizer reads the packed codes of the checkpoint file and tells transformers
  that the quantized weights are not missing (it sets them) and that their packed parts are not unexpected;
* after, it sets each quantized weight to its decoded codes (:meth:`QuantizedTensor.dequantize`).

The weights are decoded once, at load: the model in memory is the fp32 student. Without nmtq, transformers
refuses the folder (see :func:`nmtq.export._loud_without_nmtq`).

Example:
    >>> import nmtq  # doctest: +SKIP
    >>> from transformers import AutoModelForSeq2SeqLM
    >>> model = AutoModelForSeq2SeqLM.from_pretrained("exports/bible-de-en-qd4")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

logger = logging.getLogger(__name__)

QUANT_METHOD = "nmtq"


@register_quantization_config(QUANT_METHOD)
class NmtqConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of an exported nmtq student: how its codes are stored (the decoding details of
    each tensor are in the safetensors file's header)."""

    def __init__(self, format: str | None = None, storage: str = "packed", load_with: str | None = None,
                 **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.format, self.storage, self.load_with = format, storage, load_with

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": self.quant_method, "format": self.format, "storage": self.storage,
                "load_with": self.load_with}


@register_quantizer(QUANT_METHOD)
class NmtqHfQuantizer(HfQuantizer):
    """Loads an nmtq export in ``from_pretrained``: its quantized weights decoded from the packed codes."""

    requires_calibration = True  # only pre-quantized checkpoints: nmtq quantizes by distillation, not at load

    def __init__(self, quantization_config: NmtqConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.quantized: dict = {}

    def validate_environment(self, *args, **kwargs) -> None:
        if not self.pre_quantized:
            raise ValueError("quant_method 'nmtq' loads students exported by `nmtq export`; to quantize a model, "
                             "distil it with `nmtq distill`")

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs) -> None:
        from .export import NOTICE_KEY, QUANTIZED_PARTS, read_packed

        files = [f for f in checkpoint_files or [] if str(f).endswith(".safetensors")]
        if len(files) != 1:
            raise ValueError(f"an nmtq export has one model.safetensors; found {files or 'none'}")
        with torch.device("cpu"):  # transformers builds the model under a meta-device context; decoding is real
            self.quantized, _ = read_packed(files[0])
        parameters = dict(model.named_parameters(remove_duplicate=False))
        for name, q in self.quantized.items():
            if name not in parameters or tuple(parameters[name].shape) != tuple(q.shape):
                raise ValueError(f"{files[0]}: the quantized tensor {name} {tuple(q.shape)} is not a weight of "
                                 f"{type(model).__name__}; export the student again")
            module, _, attr = name.rpartition(".")
            owner = model.get_submodule(module)  # an empty weight until it is decoded: the file's placeholder
            owner._parameters[attr] = torch.nn.Parameter(
                torch.empty(0, dtype=q.dtype, device=owner._parameters[attr].device), requires_grad=False)
        escaped = [re.escape(name) for name in self.quantized]
        model._keys_to_ignore_on_load_missing = set(model._keys_to_ignore_on_load_missing or ()) | {
            rf"^{name}$" for name in escaped}
        model._keys_to_ignore_on_load_unexpected = set(model._keys_to_ignore_on_load_unexpected or ()) | {
            rf"^{name}\.({'|'.join(QUANTIZED_PARTS)})$" for name in escaped} | {rf"^{re.escape(NOTICE_KEY)}$"}

    def _process_model_after_weight_loading(self, model, **kwargs):
        from .quant.packed import PackedTensor, pack_module_weight

        for name, q in self.quantized.items():
            module, _, attr = name.rpartition(".")
            placeholder = model.get_submodule(module)._parameters[attr]
            holders = [(m, a) for m in model.modules() for a, p in list(m._parameters.items()) if p is placeholder]
            device = placeholder.device
            if not any(isinstance(m, torch.nn.RNNBase) for m, _ in holders):
                packed = PackedTensor(q).to(device)  # tied weights share it
                for holder, holder_attr in holders:
                    pack_module_weight(holder, holder_attr, packed)
            else:  # decoded once (or an LSTM, which caches its weights in flat buffers)
                decoded = torch.nn.Parameter(q.dequantize().to(device), requires_grad=False)
                for holder, holder_attr in holders:
                    holder._parameters[holder_attr] = decoded
                if any(isinstance(m, torch.nn.RNNBase) for m, _ in holders):
                    for holder, _ in holders:
                        holder._init_flat_weights()
        self.quantized = {}
        return model

    def is_serializable(self) -> bool:
        return False

    @property
    def is_trainable(self) -> bool:
        return False


def resident_bytes(model: torch.nn.Module, persistent_only: bool = False) -> int:
    """Bytes of the tensors ``model`` holds (each storage once): parameters and buffers, packed codes included;
    with ``persistent_only``, those its state dict saves (what a file stores), without computed tables."""
    tensors = model.state_dict().values() if persistent_only else [*model.parameters(), *model.buffers()]
    seen: dict[int, int] = {}
    for t in tensors:
        if t.numel():
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def decode_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Decode every packed weight of ``model`` once, in place (tied weights stay tied): the fp32 student, faster to
    run and as large as it; returns ``model``."""
    from .quant.packed import PackedTensor

    decoded: dict[int, torch.nn.Parameter] = {}
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, PackedTensor) and name.endswith("_packed"):
                attr = name.removesuffix("_packed")
                if id(child) not in decoded:
                    decoded[id(child)] = torch.nn.Parameter(child(), requires_grad=False)
                del module._modules[name]
                module.__class__ = module.__class__.__mro__[1]  # the class it had before it was packed
                module._parameters[attr] = decoded[id(child)]
    return model
