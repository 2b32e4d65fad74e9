"""The one distributed engine nmtq trains with: DDP, one whole copy of the model per process.

A quantized student keeps a float shadow of each weight and quantizes it bucket by bucket on every process, so
each process must hold every weight whole. FSDP shards weights across processes (and loads the model on the meta
device on ranks above 0); DeepSpeed's ZeRO partitions them (stage 3) or their gradients and optimizer state;
Megatron-LM, and an accelerate ``parallelism_config`` with ``tp_size`` or ``dp_shard_size`` above 1, split them.
Under any of them the quantizer would see slices or empty tensors, so ``check_distributed_engine`` refuses them
before a model is loaded or a file is written. It reads only the environment that ``accelerate launch`` sets and
fields of Hugging Face's TrainingArguments, so it costs nothing and imports nothing heavy.

    accelerate launch --config_file recipes/accelerate/cpu.yaml -m nmtq distill --config RECIPE.yaml   # DDP

Example:
    >>> check_distributed_engine(environ={})  # one process, or DDP: nothing to say
    >>> check_distributed_engine(environ={"ACCELERATE_USE_FSDP": "true"})
    Traceback (most recent call last):
    ...
    nmtq.errors.NmtqError: accelerate launch with FSDP (ACCELERATE_USE_FSDP=true): ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .errors import NmtqError

SUPPORTED = "nmtq trains with DDP only (one whole copy of the model per process): quantization needs every weight whole"
LAUNCH_FIX = "launch with recipes/accelerate/cpu.yaml or multi-gpu.yaml (distributed_type: MULTI_GPU) instead"
# how each engine breaks up what DDP keeps whole on every process
SPLITS = {"FSDP": "FSDP shards them",
          "DeepSpeed": "DeepSpeed's ZeRO partitions them (stage 3) or their gradients and optimizer state",
          "Megatron-LM": "Megatron-LM splits them", "tensor parallelism": "tensor parallelism splits them"}

# what `accelerate launch` puts in each process's environment for such an engine: "true"
# (accelerate/utils/launch.py), or "True" when accelerate sets it itself (accelerate/utils/fsdp_utils.py)
LAUNCH_VARIABLES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                    "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}
# sizes of an accelerate parallelism_config (ACCELERATE_USE_PARALLELISM_CONFIG) that break weights up above 1
PARALLEL_SIZES = {"dp_shard_size": "FSDP", "tp_size": "tensor parallelism"}
# fields of TrainingArguments that hand the model to such an engine
TRAINING_FIELDS = {"fsdp": "FSDP", "fsdp_config": "FSDP", "deepspeed": "DeepSpeed"}


def check_distributed_engine(training_args: Any = None, environ: Mapping[str, str] | None = None) -> None:
    """Raise ``NmtqError`` if an engine that breaks up weights (FSDP, DeepSpeed, Megatron-LM, tensor parallelism)
    is asked for, by ``accelerate launch`` (the variables it sets in ``environ``, default ``os.environ``) or by
    ``training_args`` (its ``fsdp``, ``fsdp_config``, ``deepspeed`` or ``parallelism_config`` field); return
    ``None`` for one process or DDP.

    Call it before any model is loaded: under FSDP, ranks above 0 load the model on the meta device.

    Example:
        >>> from types import SimpleNamespace
        >>> check_distributed_engine(SimpleNamespace(fsdp=None, fsdp_config=None, deepspeed=None), environ={})
        >>> check_distributed_engine(SimpleNamespace(deepspeed="ds.json"), environ={})
        Traceback (most recent call last):
        ...
        nmtq.errors.NmtqError: --deepspeed ds.json: ...
    """
    environ = os.environ if environ is None else environ
    for variable, engine in LAUNCH_VARIABLES.items():
        if _true(environ.get(variable, "")):
            raise NmtqError(f"accelerate launch with {engine} ({variable}={environ[variable]}): {SUPPORTED}, and "
                            f"{SPLITS[engine]}; {LAUNCH_FIX}")
    if _true(environ.get("ACCELERATE_USE_PARALLELISM_CONFIG", "")):
        for size, engine in PARALLEL_SIZES.items():
            variable = f"PARALLELISM_CONFIG_{size.upper()}"
            if _more_than_one(environ.get(variable)):
                raise NmtqError(f"accelerate launch with a parallelism_config of {size} {environ[variable]}: "
                                f"{SUPPORTED}, and {SPLITS[engine]}; {LAUNCH_FIX}")
    for name, engine in TRAINING_FIELDS.items():
        value = getattr(training_args, name, None)
        if value:  # None, "", False, {} and [] leave it off
            raise NmtqError(f"--{name} {_shown(value)}: {SUPPORTED}, and {SPLITS[engine]}; leave out --{name} (and "
                            f"the recipe's {name} field) and {LAUNCH_FIX}")
    parallelism = getattr(training_args, "parallelism_config", None)
    for size, engine in PARALLEL_SIZES.items():
        if _more_than_one(getattr(parallelism, size, None)):
            raise NmtqError(f"parallelism_config with {size} {getattr(parallelism, size)}: {SUPPORTED}, and "
                            f"{SPLITS[engine]}; leave out parallelism_config and {LAUNCH_FIX}")


def _true(value: str) -> bool:
    """accelerate's reading of a flag (``str_to_bool``); a value it would reject counts as set, to be safe."""
    return value.strip().lower() not in ("", "0", "false", "f", "no", "n", "off")


def _more_than_one(size: Any) -> bool:
    try:
        return int(size) > 1
    except (TypeError, ValueError):
        return False  # unset; accelerate itself rejects a size that is not a number


def _shown(value: Any) -> str:
    """A field's value as the user would have typed it, kept short."""
    text = " ".join(map(str, value)) if isinstance(value, list) else "true" if value is True else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
