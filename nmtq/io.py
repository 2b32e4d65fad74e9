"""Writing files so that no reader ever sees half of one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; renamed over ``path`` only if the block succeeds.

    Example:
        >>> with atomic_path("/tmp/nmtq-doc.bin") as tmp:
        ...     _ = tmp.write_bytes(b"ok")
        >>> Path("/tmp/nmtq-doc.bin").read_bytes()
        b'ok'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
