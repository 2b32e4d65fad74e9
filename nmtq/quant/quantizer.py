"""A quantizer object that holds any ``nn.Module`` and quantizes its weights (torch only).

In its *training state* every selected weight is fake-quantized on the fly: the module's forward sees Q(w),
the full-precision shadow weight receives the gradient (straight-through estimator), or, with learned points,
the points do. In its *quantized state* the weights are replaced by the values their integer codes decode to,
and :meth:`Quantizer.quantized_state` holds the codes; :meth:`Quantizer.restore_full_precision` goes back.

Pruning + quantization (Han et al.'s Deep Compression): :meth:`Quantizer.prune` gives each weight tensor a
magnitude mask m that only shrinks. The forward pass then sees Q(w * m) * m, so pruned weights are exactly 0
and get no gradient; the codes carry the mask, and the size counts a bitmap plus the kept weights' codes.

Why forward hooks on each owning module rather than ``torch.nn.utils.parametrize``: parametrize renames the
parameters in ``state_dict`` (``...parametrizations.weight.original``), which breaks ``save_pretrained``
and tied embeddings; hooks leave the model's parameters, names and checkpoints exactly as they were.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> quantizer = Quantizer(model, bits=4, bucket_size=16)
    >>> y = model(torch.randn(3, 8))          # uses Q(w); gradients reach the float weights
    >>> state = quantizer.quantize()         # integer codes; the model now holds decode(codes)
    >>> quantizer.size().compression_ratio > 1
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from .autograd import (
    bits_by_gradient_norm,
    fake_quantize,
    fake_quantize_activations,
    fake_quantize_to_points,
    init_points,
)
from .config import QuantizerConfig
from .functional import QuantizedTensor, check_weights, encode_tensor, encode_to_points
from .prune import as_mask, magnitude_mask
from .selection import POINTS_SUFFIX, QuantizedParameter, Slot, select_parameters
from .size import SizeReport, size_report, stored_tensors


class _SwapHook:
    """Forward hooks of one module: Q(w) into the slots at or below it that are not swapped yet, then back.

    Bound methods of an object (not closures), so ``copy.deepcopy(model)`` copies the hooks, the slots and
    the quantizer along with the model, and the copy quantizes its own weights.
    """

    def __init__(self, quantizer: Quantizer, slots: list[Slot]) -> None:
        self.quantizer, self.slots = quantizer, slots
        self.swapped: list[list[Slot]] = []  # a stack, in case a module is re-entered

    def pre(self, module: nn.Module, args: tuple) -> None:
        # Q(w) stands in the parameter's own slot for this call only, so names and order never change;
        # RNNs notice the new tensor and rebuild their flat weights
        done, values = [], {}
        for owner, attr, e in self.slots:
            if owner._parameters[attr] is e.param:
                if e not in values:
                    values[e] = self.quantizer._quantized_weight(e, module.training)
                owner._parameters[attr] = values[e]
                done.append((owner, attr, e))
        self.swapped.append(done)

    def post(self, module: nn.Module, args: tuple, output: object) -> None:
        for owner, attr, e in self.swapped.pop() if self.swapped else ():
            owner._parameters[attr] = e.param


class Quantizer:
    """Quantizes the weights of ``model`` (see the module docstring). Keyword arguments override ``config``.

    Raises ``ValueError`` before touching the model when the arguments or the weights are unusable.
    """

    def __init__(self, model: nn.Module, config: QuantizerConfig | None = None, **overrides: object) -> None:
        known = {f.name for f in dataclasses.fields(QuantizerConfig)}
        if set(overrides) - known:
            raise ValueError(f"unknown Quantizer option(s) {sorted(set(overrides) - known)}; valid: {sorted(known)}")
        config = dataclasses.replace(config, **overrides) if config else QuantizerConfig(**overrides)
        if getattr(model, "_nmtq_quantizer", None) is not None:
            raise ValueError("this model already has a Quantizer attached: call .remove() on it first")
        params = select_parameters(model, config)
        for e in params:
            check_weights(e.param.detach(), name=e.name)
        self.model, self.config, self.params = model, config, params
        self._cache: dict[QuantizedParameter, tuple[tuple, torch.Tensor]] = {}
        self._handles: list = []
        self._full_precision: list[torch.Tensor] | None = None
        self._state: dict[str, QuantizedTensor] | None = None
        if config.learn_points:
            for e in params:
                self._set_points(e, init_points(e.param, 2**e.bits, config.bucket_size, config.points_init))
        model._nmtq_quantizer = self
        self._attach_hooks()

    # ------------------------------------------------------------------------------------------ training state
    def _quantized_weight(self, e: QuantizedParameter, training: bool) -> torch.Tensor:
        stochastic = self.config.stochastic and training
        # without autograd (evaluation, generate()) reuse Q(w) until the weights or points change
        cacheable = not torch.is_grad_enabled() and not stochastic
        key = (e.param._version, e.bits, None if e.points is None else e.points._version)
        if cacheable and e in self._cache and self._cache[e][0] == key:
            return self._cache[e][1]
        mask = self._mask(e)
        # Q(w * m) * m: pruned weights are exactly 0 and, through torch.where, get no gradient
        w = e.param if mask is None else torch.where(mask, e.param, 0.0)
        if e.points is not None:
            q = fake_quantize_to_points(w, e.points, self.config.bucket_size)
        else:
            q = fake_quantize(w, e.bits, self.config.bucket_size, self.config.scaling, stochastic)
        if mask is not None:
            q = torch.where(mask, q, 0.0)
        if cacheable:
            self._cache[e] = (key, q)
        return q

    def _attach_hooks(self) -> None:
        """Hook every module that owns a selected weight or contains one that does.

        A parent may read a child's weight without calling the child (``nn.MultiheadAttention`` reads
        ``out_proj.weight``; tied output layers read the embedding), so the outermost module entered swaps
        Q(w) in for everything below it, and restores it on the way out.
        """
        parents: dict[int, list[nn.Module]] = {}
        for module in self.model.modules():
            for child in module.children():
                parents.setdefault(id(child), []).append(module)
        below: dict[int, tuple[nn.Module, list[Slot]]] = {}
        for e in self.params:
            for owner, attr in e.owners:
                todo, seen = [owner], set()
                while todo:
                    m = todo.pop()
                    if id(m) not in seen:
                        seen.add(id(m))
                        below.setdefault(id(m), (m, []))[1].append((owner, attr, e))
                        todo.extend(parents.get(id(m), []))
        for module, slots in below.values():
            hook = _SwapHook(self, slots)
            self._handles.append(module.register_forward_pre_hook(hook.pre))
            self._handles.append(module.register_forward_hook(hook.post, always_call=True))
        if self.config.activation_bits is not None:
            self._attach_activation_hooks(self.config.activation_bits)

    def _attach_activation_hooks(self, bits: int) -> None:
        """Round the input of every ``nn.Linear`` whose weight is quantized (the int8 engines' run-time step)."""
        def pre(module: nn.Module, args: tuple) -> tuple:
            return (fake_quantize_activations(args[0], bits), *args[1:])

        linears = {id(owner): owner for e in self.params for owner, attr in e.owners
                   if isinstance(owner, nn.Linear) and attr == "weight"}
        for module in linears.values():
            self._handles.append(module.register_forward_pre_hook(pre))

    def _detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._cache.clear()

    # ------------------------------------------------------------------------------------------ learned points
    def _set_points(self, e: QuantizedParameter, points: torch.Tensor) -> None:
        module, attr = e.owners[0]
        e.points = nn.Parameter(points.to(e.param.device))
        module.register_parameter(attr + POINTS_SUFFIX, e.points)

    def train_points_only(self) -> list[nn.Parameter]:
        """Differentiable quantization: freeze every parameter of the model but the learned points; return them."""
        if not self.config.learn_points:
            raise ValueError("this quantizer has no learned points: create it with learn_points=True")
        for p in self.model.parameters():
            p.requires_grad_(False)
        points = list(self.point_parameters())
        for p in points:
            p.requires_grad_(True)
        return points

    def point_parameters(self) -> Iterator[nn.Parameter]:
        """The learnable points (``learn_points=True``), for the optimizer of differentiable quantization."""
        return (e.points for e in self.params if e.points is not None)

    @torch.no_grad()
    def sort_points_(self) -> None:
        """Keep every tensor's points sorted and inside [0, 1]; call after each optimizer step."""
        for e in self.params:
            if e.points is not None:
                e.points.copy_(e.points.clamp(0, 1).sort().values)

    def attach_optimizer(self, optimizer: torch.optim.Optimizer):
        """Call :meth:`sort_points_` after every ``optimizer.step()``; returns the removable hook handle."""
        return optimizer.register_step_post_hook(lambda *_: self.sort_points_())

    def gradient_norms(self) -> dict[str, float]:
        """L2 norm of each quantized weight's gradient after a backward pass (what
        :meth:`set_bits_by_gradient_norm` reads)."""
        missing = [e.name for e in self.params if e.param.grad is None]
        if missing:
            raise ValueError(f"no gradient for {missing[:3]}: run loss.backward() before gradient_norms()")
        return {e.name: float(e.param.grad.norm()) for e in self.params}

    def set_bits_by_gradient_norm(self, mean_bits: float, grad_norms: Mapping[str, float] | None = None,
                                  min_bits: int = 1, max_bits: int = 8) -> dict[str, int]:
        """Give each tensor bits in proportion to its gradient norm under a mean of ``mean_bits`` per weight.

        With learned points, each tensor gets ``2**bits`` freshly initialised points: build the optimizer after.
        """
        norms = grad_norms if grad_norms is not None else self.gradient_norms()
        unknown = set(norms) - {e.name for e in self.params}
        if unknown or len(norms) != len(self.params):
            raise ValueError(f"grad_norms must name every quantized parameter once; unexpected: {sorted(unknown)}")
        bits = bits_by_gradient_norm([norms[e.name] for e in self.params], [e.param.numel() for e in self.params],
                                     mean_bits, max(min_bits, 2 if self.config.scaling == "absmax" else 1), max_bits)
        for e, b in zip(self.params, bits):
            e.bits = b
            if e.points is not None:
                self._set_points(e, init_points(e.param, 2**b, self.config.bucket_size, self.config.points_init))
        self._cache.clear()
        return {e.name: e.bits for e in self.params}

    # ------------------------------------------------------------------------------------------ quantized state
    @property
    def is_quantized(self) -> bool:
        """True while the model holds decoded integer codes rather than full-precision weights."""
        return self._state is not None

    def encode(self) -> dict[str, QuantizedTensor]:
        """Integer codes of every selected weight (deterministic rounding), keyed by parameter name."""
        if self._state is not None:
            return dict(self._state)
        return {e.name: self._encode(e) for e in self.params}

    def _encode(self, e: QuantizedParameter) -> QuantizedTensor:
        mask, bucket = self._mask(e), self.config.bucket_size
        w = e.param.detach() if mask is None else torch.where(mask, e.param.detach(), 0.0)
        q = encode_to_points(w, e.points.detach(), bucket) if e.points is not None \
            else encode_tensor(w, e.bits, bucket, self.config.scaling)
        return q if mask is None else dataclasses.replace(q, mask=mask.clone())

    def quantize(self) -> dict[str, QuantizedTensor]:
        """Put the model in its real quantized state: each weight becomes decode(codes). Returns the codes."""
        return self.load_quantized_state(self.encode())

    def load_quantized_state(self, state: Mapping[str, QuantizedTensor]) -> dict[str, QuantizedTensor]:
        """Set the weights from integer codes (e.g. read back from an export); keeps the float weights aside."""
        expected = {e.name: e for e in self.params}
        if set(state) != set(expected):
            raise ValueError(f"quantized state names {sorted(set(state) ^ set(expected))[:5]} do not match "
                             "the quantized parameters of this model")
        for name, q in state.items():
            if tuple(q.shape) != tuple(expected[name].param.shape):
                raise ValueError(f"{name}: codes have shape {tuple(q.shape)}, the model expects "
                                 f"{tuple(expected[name].param.shape)}")
        values = {name: q.dequantize() for name, q in state.items()}  # decode everything before changing anything
        if self._full_precision is None:
            self._full_precision = [e.param.detach().clone() for e in self.params]
        self._detach_hooks()
        with torch.no_grad():
            for e in self.params:
                e.param.copy_(values[e.name])
        self._state = dict(state)
        return dict(state)

    def quantized_state(self) -> dict[str, QuantizedTensor]:
        """The integer codes of the quantized state; raises unless :meth:`quantize` was called."""
        if self._state is None:
            raise ValueError("the model is in its training state: call quantizer.quantize() first")
        return dict(self._state)

    def restore_full_precision(self) -> None:
        """Leave the quantized state: put the full-precision weights back and fake-quantize again."""
        if self._full_precision is None:
            return
        with torch.no_grad():
            for e, w in zip(self.params, self._full_precision):
                e.param.copy_(w)
        self._full_precision, self._state = None, None
        self._attach_hooks()

    def remove(self) -> nn.Module:
        """Detach from the model (hooks and points removed; weights left as they are) and return it."""
        self._detach_hooks()
        for e in self.params:
            if e.points is not None:
                module, attr = e.owners[0]
                del module._parameters[attr + POINTS_SUFFIX]
                e.points = None
        self.model._nmtq_quantizer = None
        return self.model

    # ------------------------------------------------------------------------------------------ pruning
    def _mask(self, e: QuantizedParameter) -> torch.Tensor | None:
        if e.mask is not None and e.mask.device != e.param.device:
            e.mask = e.mask.to(e.param.device)  # masks are not buffers, so they follow model.to() here
        return e.mask

    def _check_training_state(self, action: str) -> None:
        if self._state is not None:
            raise ValueError(f"the model is in its quantized state: call quantizer.restore_full_precision() "
                             f"before {action}")

    @torch.no_grad()
    def prune(self, sparsity: float) -> float:
        """Prune the ``sparsity`` fraction of smallest-magnitude weights of every quantized tensor.

        Each tensor's mask only shrinks (see :func:`~nmtq.quant.prune.magnitude_mask`); the pruned shadow
        weights are set to 0. Call it on a schedule, e.g. every few hundred steps with
        :func:`~nmtq.quant.prune.sparsity_at`. Returns the overall sparsity of the quantized weights.

        Example:
            >>> model = torch.nn.Linear(10, 10, bias=False)
            >>> quantizer = Quantizer(model, bits=4)
            >>> quantizer.prune(0.5), int((model.weight == 0).sum())
            (0.5, 50)
        """
        self._check_training_state("prune()")
        masks = [magnitude_mask(e.param, sparsity, self._mask(e)) for e in self.params]  # checked before changes
        for e, mask in zip(self.params, masks):
            if e.mask is not None or not bool(mask.all()):  # an unpruned tensor stays unmasked: no bitmap
                e.mask = mask
                e.param.masked_fill_(~mask, 0)
        self._cache.clear()
        return self.sparsity()

    def sparsity(self) -> float:
        """Fraction of the quantized weights that are pruned (0.0 before :meth:`prune`)."""
        total = sum(e.param.numel() for e in self.params)
        pruned = sum(int((~e.mask).sum()) for e in self.params if e.mask is not None)
        return pruned / total if total else 0.0

    def mask_state(self) -> dict[str, torch.Tensor]:
        """The masks of the pruned tensors (name -> bool CPU tensor), e.g. for ``safetensors.torch.save_file``."""
        return {e.name: e.mask.to("cpu", copy=True) for e in self.params if e.mask is not None}

    @torch.no_grad()
    def load_mask_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`mask_state` (bool or 0/1 uint8 masks); a tensor without an entry becomes unpruned.

        The pruned shadow weights are set to 0, as :meth:`prune` leaves them.
        """
        self._check_training_state("load_mask_state()")
        params = {e.name: e for e in self.params}
        unknown = sorted(set(state) - set(params))
        if unknown:
            raise ValueError(f"masks {unknown[:5]} name no quantized parameter of this model; quantized "
                             f"parameters are named like {list(params)[:3]}")
        masks = {n: as_mask(m, params[n].param.shape, f"the mask of {n}") for n, m in state.items()}
        for e in self.params:
            e.mask = masks[e.name].to(e.param.device, copy=True) if e.name in masks else None
            if e.mask is not None:
                e.param.masked_fill_(~e.mask, 0)
        self._cache.clear()

    # ------------------------------------------------------------------------------------------ size and state
    def size(self, huffman: bool = True, not_stored: Iterable[str] = ()) -> SizeReport:
        """Exact storage of the quantized model (codes, Huffman codes, bucket scales, full-precision rest).

        ``not_stored`` names state-dict entries that the checkpoint format leaves out because they are
        recomputed on load (transformers' ``_keys_to_ignore_on_save``, e.g. sinusoidal position tables).
        """
        quantized = [e.param for e in self.params] + list(self.point_parameters())
        rest = stored_tensors(self.model, skip=quantized, not_stored=not_stored)
        return size_report(self.encode(), rest, huffman=huffman)

    def state_dict(self) -> dict[str, object]:
        """Bits per tensor, whether points are learned and the sparsity (for the record; masks are in
        :meth:`mask_state`); the points themselves are in the model's state_dict."""
        return {"bits": {e.name: e.bits for e in self.params}, "learn_points": self.config.learn_points,
                "sparsity": self.sparsity()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict` (before loading the model's own state_dict, which holds the points)."""
        bits = dict(state["bits"])  # type: ignore[arg-type]
        names = {e.name for e in self.params}
        if set(bits) != names:
            raise ValueError(f"quantizer state names {sorted(set(bits) ^ names)[:5]} do not match this model")
        if bool(state.get("learn_points")) != self.config.learn_points:
            raise ValueError("the saved quantizer and this one disagree on learn_points")
        for e in self.params:
            if e.bits != bits[e.name] and e.points is not None:
                self._set_points(e, init_points(e.param, 2 ** bits[e.name], self.config.bucket_size, "uniform"))
            e.bits = bits[e.name]
        self._cache.clear()
