"""Which weights a :class:`~nmtq.quant.quantizer.Quantizer` quantizes: every parameter once (tied ones under all
their names), filtered by the config's glob patterns, size and kind.

Example:
    >>> import torch
    >>> from nmtq.quant import QuantizerConfig
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    >>> [e.name for e in select_parameters(model, QuantizerConfig(bits=4, min_size=1))]
    ['0.weight', '1.weight']
"""

from __future__ import annotations

import dataclasses
import fnmatch

import torch
from torch import nn

from .config import QuantizerConfig

POINTS_SUFFIX = "_quant_points"
"""The learned points of weight ``NAME`` are the owner's parameter ``NAME_quant_points``."""


@dataclasses.dataclass(eq=False)
class QuantizedParameter:
    """One selected tensor: its names (tied weights have several), owners, bits, learned points and pruning
    mask (bool, True = kept; None until :meth:`Quantizer.prune` prunes something)."""

    name: str
    aliases: tuple[str, ...]
    param: nn.Parameter
    owners: list[tuple[nn.Module, str]]
    bits: int
    points: nn.Parameter | None = None
    mask: torch.Tensor | None = None


Slot = tuple[nn.Module, str, QuantizedParameter]  # where a selected weight lives: (owner, attribute, entry)


def _collect(model: nn.Module) -> dict[int, QuantizedParameter]:
    """Every parameter once, with all its names and owning (module, attribute) pairs, in module order."""
    found: dict[int, QuantizedParameter] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is None or attr.endswith(POINTS_SUFFIX):
                continue
            name = f"{prefix}.{attr}" if prefix else attr
            entry = found.setdefault(id(p), QuantizedParameter(name, (), p, [], 0))
            entry.aliases += (name,)
            if not any(m is module and a == attr for m, a in entry.owners):
                entry.owners.append((module, attr))
    return found


def select_parameters(model: nn.Module, config: QuantizerConfig) -> list[QuantizedParameter]:
    """The parameters ``config`` selects, tied parameters once; raises ``ValueError`` if a pattern is unused."""
    entries = list(_collect(model).values())
    for kind, patterns in (("include", config.include), ("exclude", config.exclude)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(a, pattern) for e in entries for a in e.aliases):
                raise ValueError(
                    f"{kind} pattern {pattern!r} matches no parameter of {type(model).__name__}; parameter "
                    f"names look like {[e.name for e in entries[:3]]}"
                )

    def wanted(e: QuantizedParameter) -> bool:
        def hit(patterns: list[str]) -> bool:
            return any(fnmatch.fnmatchcase(a, p) for a in e.aliases for p in patterns)

        return (hit(config.include) and not hit(config.exclude) and e.param.is_floating_point()
                and e.param.numel() >= config.min_size and (e.param.dim() >= 2 or config.quantize_vectors)
                and (e.param.requires_grad or config.quantize_frozen))

    chosen = [e for e in entries if wanted(e)]
    if config.keep_first_last:
        chosen = chosen[1:-1]
    if not chosen:
        raise ValueError(
            f"no parameter of {type(model).__name__} is selected for quantization: check include/exclude, "
            "min_size, quantize_vectors, quantize_frozen and keep_first_last"
        )
    for e in chosen:
        e.bits = config.bits
    return chosen
