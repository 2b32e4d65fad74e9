"""Where a run may write: never over a model it did not make, never into one of its inputs, never unwritable.

:func:`check_output_dir` runs before anything is loaded or written (the data, the teacher, the tokenizer):

* an ``output_dir`` that is an input (the teacher, the starting student, a tokenizer, the data's folder) or lies
  inside a model input is refused;
* an ``output_dir`` that holds a model (``config.json``, weights) or checkpoints is refused unless this run
  resumes it (``--resume_from_checkpoint``) or replaces it (``--overwrite_output_dir true``, which also removes
  the old ``checkpoint-*`` folders, so that a later ``--resume_from_checkpoint last`` cannot pick one of them);
* an ``output_dir`` that cannot be created or written is refused.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "student"
    >>> (out.parent / "teacher").mkdir()
    >>> check_output_dir(out, model_inputs=[out.parent / "teacher"])  # the temporary files it swept
    []
    >>> check_output_dir(out.parent / "teacher" / "x", model_inputs=[out.parent / "teacher"])
    Traceback (most recent call last):
    ...
    nmtq.errors.NmtqError: --output_dir ... lies inside the input ... choose an output_dir of its own
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from . import files
from .errors import NmtqError
from .io import sweep_temporary_files, temporary_prefix


def holds_model(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a model's files (see :data:`nmtq.files.MODEL_FILES`)."""
    return any((Path(directory) / name).is_file() for name in files.MODEL_FILES)


def check_output_dir(output_dir: str | os.PathLike, *, model_inputs: Iterable[str | os.PathLike | None] = (),
                     data_files: Iterable[str | os.PathLike] = (), resuming: bool = False,
                     overwrite: bool = False, main_process: bool = True) -> list[Path]:
    """One-line :class:`NmtqError` unless a run may write into ``output_dir`` (see the module docstring).

    ``model_inputs`` are the local directories (or Hub ids, ignored) the run reads models and tokenizers from;
    ``data_files`` its local data files or folders. Once the checks pass, the ``main_process`` (one per machine)
    removes the temporary files that killed runs left in ``output_dir`` and, with ``overwrite`` on a directory
    that holds a model or checkpoints, the old checkpoints. Returns the temporary files removed.
    """
    out = Path(output_dir).expanduser().resolve()
    for given in model_inputs:
        if given is None or not Path(given).expanduser().exists():
            continue
        source = Path(given).expanduser().resolve()
        if out == source or source in out.parents:
            raise NmtqError(f"--output_dir {output_dir} lies inside the input {given}: a run never writes into a "
                            "model it reads; choose an output_dir of its own")
    for given in data_files:
        path = Path(given).expanduser()
        if not path.exists():
            continue
        folder = path.resolve() if path.is_dir() else path.resolve().parent
        if out == folder or (path.is_dir() and folder in out.parents):
            raise NmtqError(f"--output_dir {output_dir} is the folder of the data {given}: choose an output_dir "
                            "of its own, so that the data are never written over")
    check_writable(out, "--output_dir")
    found = [p.name for p in files.checkpoint_dirs(out)]
    if not resuming and (holds_model(out) or found) and not overwrite:
        what = "a model" if holds_model(out) else f"checkpoints ({', '.join(found[-2:])})"
        raise NmtqError(f"--output_dir {output_dir} already holds {what}: choose another output_dir, resume it "
                        "with --resume_from_checkpoint last, or replace it with --overwrite_output_dir true")
    if not main_process:
        return []
    if not resuming and overwrite:
        for checkpoint in files.checkpoint_dirs(out):
            shutil.rmtree(checkpoint, ignore_errors=True)  # another machine's main process may remove it too
    return sweep_temporary_files(out, recursive=True)


def check_writable(out: str | os.PathLike, option: str = "--output_dir") -> None:
    """One-line :class:`NmtqError` unless the folder ``out`` exists and is writable, or can be made: its nearest
    existing ancestor must be a writable folder (tried with a temporary file, which root's permissions would not
    show)."""
    given, out = out, Path(out).expanduser().absolute()
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NmtqError(f"{option} {given}: {existing} is a file, not a folder; choose another folder")
    try:
        probe, name = tempfile.mkstemp(dir=existing, prefix=temporary_prefix("nmtq-write-probe"))
        os.close(probe)
        os.unlink(name)
    except OSError as err:
        raise NmtqError(f"{option} {given}: cannot write in {existing} ({err.strerror}); choose another folder "
                        "or fix its permissions") from None
