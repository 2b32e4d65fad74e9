"""``from_pretrained`` and ``save_pretrained`` of an nmtq export: the quantization method ``nmtq``, registered
with transformers.

``import nmtq`` registers :class:`NmtqConfig` and :class:`NmtqHfQuantizer` through transformers' public API
(``register_quantization_config``, ``register_quantizer``), and nmtq's own model types (the LSTM student, the
CIFAR ResNets). Then ``AutoModelForSeq2SeqLM.from_pretrained(folder_or_hub_id)`` (or
``AutoModelForImageClassification``) loads a folder written by ``nmtq export``, whose ``config.json`` says
``quant_method: nmtq``, into the student with exactly the weights :func:`nmtq.exported.load_exported` gives:

* before the weights load, the quantizer reads the codes of the checkpoint file (:func:`nmtq.codes.read_codes`)
  and tells transformers that the quantized weights are not missing (it sets them) and that their stored parts
  are not unexpected;
* after, each quantized weight stays packed in memory (:mod:`nmtq.quant.packed`), decoded when its layer reads it;
  LSTM weights, which the LSTM keeps in flat buffers, are decoded once.

``save_pretrained`` (and ``push_to_hub``, which calls it) writes the codes the model holds in the file's own storage
through the same writer as ``nmtq export`` (:func:`nmtq.codes.codes_tensors`): a model loaded from an export saves
a ``model.safetensors`` identical to it, byte for byte. Without nmtq, transformers refuses the folder (see
:mod:`nmtq.codes`).

Example:
    >>> import nmtq  # doctest: +SKIP
    >>> from transformers import AutoModelForSeq2SeqLM
    >>> model = AutoModelForSeq2SeqLM.from_pretrained("exports/bible-de-en-qd4")  # doctest: +SKIP
    >>> model.push_to_hub("user/bible-de-en-qd4")  # doctest: +SKIP
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
    """The ``quantization_config`` of an exported nmtq student, as ``nmtq export`` writes it: the format and
    storage of its codes, the bits of each quantized weight, the quantizer's settings and the size accounting (the
    decoding details of each tensor are in the file's header). Every field is kept as it was read, so a saved
    config.json says what the loaded one said."""

    def __init__(self, format: str | None = None, storage: str = "packed", **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD
        self.format, self.storage = format, storage
        for key, value in kwargs.items():
            if key != "quant_method":
                setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if not key.startswith("_")}


@register_quantizer(QUANT_METHOD)
class NmtqHfQuantizer(HfQuantizer):
    """Loads an nmtq export in ``from_pretrained``: its quantized weights decoded from the packed codes."""

    requires_calibration = True  # only pre-quantized checkpoints: nmtq quantizes by distillation, not at load

    def __init__(self, quantization_config: NmtqConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.quantized: dict = {}  # while loading: name -> QuantizedTensor
        self.packed: dict = {}  # once loaded: name -> PackedTensor, what save_pretrained writes
        self.plain_names: list[str] = []  # the other tensors of the file
        self.storage = "packed"

    def validate_environment(self, *args, **kwargs) -> None:
        if not self.pre_quantized:
            raise ValueError("quant_method 'nmtq' loads students exported by `nmtq export`; to quantize a model, "
                             "distil it with `nmtq distill`")

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs) -> None:
        from .codes import HEADER_KEY, PARTS, read_codes

        files = [f for f in checkpoint_files or [] if str(f).endswith(".safetensors")]
        if len(files) != 1:
            raise ValueError(f"an nmtq export has one model.safetensors; found {files or 'none'}")
        with torch.device("cpu"):  # transformers builds the model under a meta-device context; decoding is real
            stored = read_codes(files[0])
        self.quantized, self.plain_names, self.storage = stored.quantized, list(stored.plain), stored.storage
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
            rf"^{name}\.({'|'.join(PARTS)})$" for name in escaped} | {rf"^{re.escape(HEADER_KEY)}$"}

    def _process_model_after_weight_loading(self, model, **kwargs):
        from .quant.packed import PackedTensor, pack_module_weight

        for name, q in self.quantized.items():
            module, _, attr = name.rpartition(".")
            placeholder = model.get_submodule(module)._parameters[attr]
            holders = [(m, a) for m in model.modules() for a, p in list(m._parameters.items()) if p is placeholder]
            device = placeholder.device
            packed = PackedTensor(q).to(device)  # tied weights share it
            self.packed[name] = packed
            if not any(isinstance(m, torch.nn.RNNBase) for m, _ in holders):
                for holder, holder_attr in holders:
                    pack_module_weight(holder, holder_attr, packed)
            else:  # an LSTM caches its weights in flat buffers: decoded once, its codes kept for save_pretrained
                decoded = torch.nn.Parameter(q.dequantize().to(device), requires_grad=False)
                for holder, holder_attr in holders:
                    holder._parameters[holder_attr] = decoded
                for holder, _ in holders:
                    if isinstance(holder, torch.nn.RNNBase):
                        holder._init_flat_weights()
        self.quantized = {}
        return model

    def is_serializable(self) -> bool:
        return True

    def get_state_dict_and_metadata(self, model):
        """The tensors of the file ``save_pretrained`` writes: the codes the model holds, in the storage they were
        read in, and the other tensors, through the writer of ``nmtq export``. A quantized weight that no longer
        decodes from its codes (changed after :func:`decode_weights`) is refused, never written as stale codes."""
        from .codes import codes_tensors
        from .errors import NmtqError

        state = model.state_dict()
        for name, packed in self.packed.items():
            module, _, attr = name.rpartition(".")
            owner = model.get_submodule(module)
            if owner._modules.get(f"{attr}_packed") is packed:
                continue  # still read from its codes
            if not torch.equal(getattr(owner, attr).detach().cpu(), packed().cpu()):
                raise NmtqError(f"{name} was changed after loading, so its codes no longer hold it: nmtq saves only "
                                "the codes it loaded; to quantize new weights, distil them with `nmtq distill`")
        missing = [n for n in self.plain_names if n not in state]
        if missing:
            raise NmtqError(f"the model no longer has the tensors {missing[:3]} it was loaded with: save it before "
                            "changing its architecture")
        quantized = {name: packed.quantized() for name, packed in self.packed.items()}
        return codes_tensors(quantized, {n: state[n] for n in self.plain_names}, self.storage), {}

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
                    decoded[id(child)] = torch.nn.Parameter(child.decode(), requires_grad=False)
                del module._modules[name]
                module.__class__ = module.__class__.__mro__[1]  # the class it had before it was packed
                module._parameters[attr] = decoded[id(child)]
    return model
