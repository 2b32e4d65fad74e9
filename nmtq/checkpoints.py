"""Which ``checkpoint-N`` directory a run may resume from: only a whole one, with safetensors weights.

A run killed while saving, a copy cut short or a full disk leaves a checkpoint that looks like one but is not:
``trainer_state.json`` truncated (the Trainer writes it last and not atomically), a callback's state file missing,
or ``model.safetensors`` shorter than its header says. Resuming from it would crash with a traceback, or worse
continue from garbage. So a checkpoint counts as complete only if its state files are whole JSON and its weights
are whole safetensors files (:func:`weights_are_complete`); ``--resume_from_checkpoint last`` takes the newest
complete one and says which newer ones it skipped and why.

Weights in ``pytorch_model.bin`` (or any ``.pt``/``.bin`` file) are never resumed from: they are pickles, which
can run code when loaded. A checkpoint that holds only those is skipped, and naming it explicitly is an error.

Example:
    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> import torch
    >>> run = Path(tempfile.mkdtemp())
    >>> for step in (2, 4):
    ...     (run / f"checkpoint-{step}").mkdir()
    ...     save_file({"w": torch.zeros(4)}, str(run / f"checkpoint-{step}" / "model.safetensors"))
    ...     _ = (run / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    >>> _ = os.truncate(run / "checkpoint-4" / "model.safetensors", 20)  # a copy cut short
    >>> Path(last_complete_checkpoint(str(run))).name
    'checkpoint-2'
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import files
from .errors import NmtqError

if TYPE_CHECKING:
    from transformers import TrainingArguments

logger = logging.getLogger(__name__)

_MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header's length


def weights_are_complete(directory: str | os.PathLike) -> bool:
    """True if ``directory`` holds whole safetensors weights: ``model.safetensors`` or a
    ``model.safetensors.index.json`` whose every shard is there, and every top-level ``*.safetensors`` file is as
    long as its header says (checked without reading the tensors) and opens with ``safetensors.safe_open``.
    ``pytorch_model.bin`` and ``.pt`` files never count.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> import torch
        >>> folder = Path(tempfile.mkdtemp())
        >>> save_file({"w": torch.ones(8)}, str(folder / "model.safetensors"))
        >>> weights_are_complete(folder)
        True
        >>> _ = os.truncate(folder / "model.safetensors", 40)
        >>> weights_are_complete(folder)
        False
    """
    return weights_problem(directory) is None


def weights_problem(directory: str | os.PathLike) -> str | None:
    """Why ``directory`` holds no whole safetensors weights, in a few words (None if it does).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "pytorch_model.bin").write_bytes(b"...")
        >>> weights_problem(folder)
        'it has no model.safetensors, only pytorch_model.bin (a pickle, which nmtq does not load)'
    """
    directory = Path(directory)
    required = [directory / files.WEIGHTS]
    if (directory / files.WEIGHTS_INDEX).is_file() and not (directory / files.WEIGHTS).exists():
        try:
            weight_map = json.loads((directory / files.WEIGHTS_INDEX).read_text(encoding="utf-8"))["weight_map"]
            required = [directory / shard for shard in sorted(set(weight_map.values()))]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"its {files.WEIGHTS_INDEX} is not whole JSON with a weight_map"
        if not required:
            return f"its {files.WEIGHTS_INDEX} lists no shard"
    for path in required:
        if not path.is_file():
            if path.name != files.WEIGHTS:
                return f"{path.name}, listed in its {files.WEIGHTS_INDEX}, is missing"
            if (directory / files.PICKLED_WEIGHTS).exists():
                return f"it has no {files.WEIGHTS}, only {files.PICKLED_WEIGHTS} (a pickle, which nmtq does not load)"
            return f"it has no {files.WEIGHTS}"
    others = sorted(p for p in directory.glob("*.safetensors") if not p.name.startswith(".") and p not in required)
    for path in [*required, *others]:
        problem = safetensors_problem(path)
        if problem is not None:
            return f"its {path.name} {problem}"
    return None


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with the safetensors file at ``path`` (``"is truncated (...)"``), or None if it is whole.

    Reads the 8-byte little-endian header length and the JSON header only: a whole file is exactly 8 bytes, the
    header, and the tensors' bytes up to the largest ``data_offsets`` end. Then ``safe_open`` must accept it.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> import torch
        >>> path = Path(tempfile.mkdtemp()) / "w.safetensors"
        >>> save_file({"w": torch.ones(8)}, str(path))  # 32 bytes of data after the header
        >>> size = path.stat().st_size
        >>> _ = os.truncate(path, size - 2)
        >>> safetensors_problem(path) == f"is truncated ({size - 2:,} of {size:,} bytes)"
        True
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > min(size - 8, _MAX_HEADER):
                return f"is truncated ({size:,} bytes, too short for its header)"
            header = json.loads(f.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        expected = 8 + length + max(ends, default=0)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "is not a safetensors file (its header is not whole JSON with data_offsets)"
    if size < expected:
        return f"is truncated ({size:,} of {expected:,} bytes)"
    if size > expected:
        return f"has {size - expected:,} bytes more than its header accounts for"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt"):
            pass
    except Exception as err:  # any refusal by the library means the file cannot be resumed from
        return "is refused by safetensors: " + " ".join(str(err).split())
    return None


def checkpoint_problem(directory: str | os.PathLike, last_file: str = files.TRAINER_STATE) -> str | None:
    """Why a run cannot resume from ``directory``, in a few words (None if it can): ``trainer_state.json`` and
    ``last_file`` must be whole JSON, and the weights whole safetensors files (:func:`weights_problem`).

    Example:
        >>> import tempfile
        >>> checkpoint_problem(tempfile.mkdtemp())
        'its trainer_state.json is missing or not whole JSON (not a checkpoint, or its save was cut off)'
    """
    directory = Path(directory)
    for name in dict.fromkeys((files.TRAINER_STATE, last_file)):
        if not _readable_json(directory / name):
            return f"its {name} is missing or not whole JSON (not a checkpoint, or its save was cut off)"
    return weights_problem(directory)


def last_complete_checkpoint(output_dir: str, last_file: str = files.TRAINER_STATE,
                             report_skipped: bool = False) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that a run can resume from (see :func:`checkpoint_problem`),
    or None. ``last_file`` is the state file written last: ``trainer_state.json`` by default, which the Trainer
    writes after the weights; callbacks write after the Trainer (``on_save``), so a run whose callbacks save state
    names the file they write last. With ``report_skipped``, each newer checkpoint passed over is logged with the
    reason.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> (run / "checkpoint-6").mkdir()
        >>> _ = (run / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6}')
        >>> last_complete_checkpoint(str(run)) is None
        True
        >>> checkpoint_problem(run / "checkpoint-6")
        'it has no model.safetensors'
    """
    for path in reversed(files.checkpoint_dirs(output_dir)):
        problem = checkpoint_problem(path, last_file)
        if problem is None:
            return str(path)
        if report_skipped:
            logger.info(f"skipping {path.name}: {problem}")
    return None


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def resolve_checkpoint(training_args: TrainingArguments, last_file: str = files.TRAINER_STATE) -> str | None:
    """The checkpoint ``--resume_from_checkpoint`` names, checked before anything is loaded, or None.

    ``last`` (or ``true``) means the newest complete checkpoint in ``output_dir`` (see
    :func:`last_complete_checkpoint`; the newer ones it skips are logged, with the checkpoint it takes). A
    directory named explicitly must be complete: otherwise a one-line :class:`NmtqError` says why.

    Example:
        >>> from types import SimpleNamespace
        >>> resolve_checkpoint(SimpleNamespace(resume_from_checkpoint=None, output_dir="runs/x")) is None
        True
    """
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    if str(value).lower() in ("last", "true"):
        last = last_complete_checkpoint(training_args.output_dir, last_file, report_skipped=True)
        if last is None:
            raise NmtqError(f"--resume_from_checkpoint {value}: no complete {files.CHECKPOINT_PREFIX}* directory in "
                             f"{training_args.output_dir!r}; start without it")
        logger.info(f"resuming from {last}")
        return last
    if not os.path.isdir(value):
        raise NmtqError(f"--resume_from_checkpoint {value!r} is not a directory; pass --resume_from_checkpoint "
                         f"last (the newest complete checkpoint) or a {files.CHECKPOINT_PREFIX}* directory")
    problem = checkpoint_problem(value, last_file)
    if problem is not None:
        raise NmtqError(f"--resume_from_checkpoint {value!r} cannot be resumed from: {problem}; pass "
                         "--resume_from_checkpoint last (the newest complete checkpoint) or another checkpoint")
    return value

