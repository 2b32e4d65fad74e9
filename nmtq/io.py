"""Writing files so that no reader ever sees half of one, and clearing what killed runs left half-written.

Every temporary file or folder nmtq makes next to an output is named ``.NAME.nmtq-tmp-HOST-PID-RANDOM[.tmp]``
(:func:`temporary_prefix`, :func:`temporary_name`), so that a run killed with SIGKILL, which cleans nothing up,
leaves entries the next run can recognise and remove: :func:`sweep_temporary_files` deletes those whose process
is no longer alive on this host, and never those of a live process or of another host.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import NmtqError

MARKER = "nmtq-tmp"
_TEMPORARY = re.compile(rf"\..*\.{MARKER}-(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)-[A-Za-z0-9_]+(?:\.tmp)?", re.DOTALL)


@functools.lru_cache(maxsize=1)
def _host() -> str:
    """This host's name in letters, digits and ``_``, with the PID namespace where there is one: two containers
    may share a host name (``--network host``) but not their process ids."""
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:32] or "host"
    with contextlib.suppress(OSError):
        host += f"_{os.stat('/proc/self/ns/pid').st_ino}"
    return host


def temporary_prefix(name: str | os.PathLike) -> str:
    """The prefix for ``tempfile.mkstemp``/``mkdtemp``/``TemporaryDirectory`` of a temporary stand-in for
    ``name`` (a file or folder name, or a path whose last part is used) that :func:`sweep_temporary_files` removes
    once this process is gone: ``.NAME.nmtq-tmp-HOST-PID-``. Pass ``suffix=".tmp"`` or none.

    Example:
        >>> folder = tempfile.mkdtemp(dir="/tmp", prefix=temporary_prefix("/runs/export"))
        >>> Path(folder).name.startswith(f".export.nmtq-tmp-{_host()}-{os.getpid()}-")
        True
        >>> os.rmdir(folder)
    """
    return f".{Path(name).name}.{MARKER}-{_host()}-{os.getpid()}-"


def temporary_name(name: str | os.PathLike) -> str:
    """A fresh file or folder name for a temporary stand-in for ``name``, to create in the same directory:
    :func:`temporary_prefix` plus random characters and ``.tmp``.

    Example:
        >>> temporary_name("vocab.json").startswith(temporary_prefix("vocab.json"))
        True
    """
    return f"{temporary_prefix(name)}{secrets.token_hex(4)}.tmp"


def sweep_temporary_files(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and folders that nmtq processes of this host left in ``directory`` (and its
    subfolders if ``recursive``) when they were killed; return what was removed.

    An entry goes only if its name is one :func:`temporary_prefix` or :func:`temporary_name` makes, its host is
    this one and its process id is not alive (``os.kill(pid, 0)`` finds no such process). A live process's
    entries stay, and so do another host's: its processes cannot be checked from here. A process id reused since
    is taken as alive, so the entry waits for a later sweep. Names that merely contain the marker (an earlier
    export parked as ``NAME.tmp.old``) are kept: they may be the only copy of something. Symbolic links are
    removed, never followed. A missing ``directory`` sweeps nothing, an entry removed meanwhile by someone else is
    fine, and one that cannot be removed is left with a warning. Outside POSIX nothing is swept.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".model.safetensors.nmtq-tmp-otherhost-1-abc.tmp").write_bytes(b"")
        >>> sweep_temporary_files(folder)  # another host's: it may still be running
        []
    """
    if os.name != "posix":
        return []  # os.kill(pid, 0) would terminate the process on Windows
    removed = []
    walk = os.walk(directory) if recursive else itertools.islice(os.walk(directory), 1)
    for parent, dirnames, filenames in walk:
        for name in [*dirnames, *filenames]:
            match = _TEMPORARY.fullmatch(name)
            if match is None:
                continue
            if name in dirnames:
                dirnames.remove(name)  # never descend into a temporary folder: it goes whole or stays whole
            if match["host"] == _host() and not _alive(int(match["pid"])) and _remove(Path(parent, name)):
                removed.append(Path(parent, name))
    return sorted(removed)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may exist on this host; True when unsure."""
    if pid <= 0:
        return True  # os.kill(0, ...) would signal our own process group; no process has such an id
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # PermissionError: it exists but belongs to another user
    return True


def _remove(path: Path) -> bool:
    """Remove the file, link or folder ``path``; True once it is gone."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)  # parts removed meanwhile by another sweep are fine
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        warnings.warn(f"could not remove {path}, left by a killed run: {err}", stacklevel=3)
        return False
    if os.path.lexists(path):
        warnings.warn(f"could not remove all of {path}, left by a killed run; remove it by hand", stacklevel=3)
        return False
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed over ``path`` only if the block succeeds.

    The temporary file is named by :func:`temporary_prefix`: a run killed inside the block leaves it for
    :func:`sweep_temporary_files`.

    Example:
        >>> with atomic_path("/tmp/nmtq-doc.bin") as tmp:
        ...     _ = tmp.write_bytes(b"ok")
        >>> Path("/tmp/nmtq-doc.bin").read_bytes()
        b'ok'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name), suffix=".tmp")
    os.close(fd)
    try:
        yield Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)  # temporary files are created 0600; the result is an ordinary file
        os.replace(name, path)
    except BaseException:
        if os.path.exists(name):
            os.unlink(name)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``.

    Example:
        >>> write_text_atomic("/tmp/nmtq-doc.txt", "hello\\n")
        >>> Path("/tmp/nmtq-doc.txt").read_text()
        'hello\\n'
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """``payload`` as indented JSON, written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json_object(path: str | os.PathLike, fix: str) -> dict:
    """The JSON object in ``path``; a missing, unreadable or non-object file is an :class:`nmtq.errors.NmtqError`
    that ends with ``fix``, what the user can do about it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise NmtqError(f"{path} is missing: {fix}") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise NmtqError(f"{path} is not valid JSON ({err}): {fix}") from err
    if not isinstance(data, dict):
        raise NmtqError(f"{path} does not hold a JSON object: {fix}")
    return data


def write_dir_atomic(out_dir: str | os.PathLike, write) -> None:
    """Run ``write(tmp)`` on a new sibling directory of ``out_dir``, then rename it to ``out_dir``.

    A reader sees the earlier folder or the new one, never half of one; the new folder's permissions follow the
    umask; what killed writers left beside it is removed first (:func:`sweep_temporary_files`)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporary_files(out_dir.parent)  # what killed exports left
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=temporary_prefix(out_dir.name), suffix=".tmp"))
    old = out_dir.parent / f"{tmp.name}.old"
    try:
        write(tmp)
        umask = _umask()  # mkdtemp (and safetensors) create private files; the result is an ordinary folder
        for path in [tmp, *tmp.rglob("*")]:
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if out_dir.exists():
            os.replace(out_dir, old)  # a directory cannot be renamed over a non-empty one
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists():
                os.replace(old, out_dir)  # put the earlier export back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
