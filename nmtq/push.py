"""Pushing a model folder to the Hugging Face Hub (``nmtq push DIR --repo-id NAME``) in one commit, with every
check made before anything is created (:mod:`nmtq.hub`: the Hub answers, the repository id, the token).

Example:
    >>> report = push_folder("exports/bible-de-en-qd4", "alice/bible-de-en-qd4", dry_run=True)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import NmtqError
from .files import CONFIG, MODEL_CARD, WEIGHTS, WEIGHTS_INDEX
from .hub import LOGIN, check_repo_id, require_hub_for, resolve_token

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")  # torch.save / pickle files: loading them runs code


@dataclass(frozen=True)
class PushReport:
    """What :func:`push_folder` pushed, or would push in a dry run (``commit_url`` None)."""

    repo_id: str
    files: tuple[tuple[str, int], ...]  # (path in the repository, bytes), sorted by path
    repo_url: str | None = None
    commit_url: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def listing(self) -> str:
        """One line per file (bytes, then path) and a total line."""
        lines = [f"{size:>15,}  {path}" for path, size in self.files]
        return "\n".join([*lines, f"{self.total_bytes:>15,}  total, {len(self.files)} files"])


def upload_files(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """``(path, bytes)`` of every file under ``folder`` that the Hub client uploads, sorted by path.

    These are all files, hidden ones included, except ``.git`` and ``.cache/huggingface`` (huggingface_hub's
    default ignore patterns).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text("{}")
        >>> (folder / ".git").mkdir()
        >>> _ = (folder / ".git" / "HEAD").write_text("ref")
        >>> upload_files(folder)
        [('config.json', 2)]
    """
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(folder)
    found = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(list(found), ignore_patterns=DEFAULT_IGNORE_PATTERNS)
    return [(path, found[path].stat().st_size) for path in sorted(kept)]


def check_folder(folder: str | os.PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """The files to push from ``folder`` and notes for the user; ``ValueError`` if it should not be pushed.

    ``folder`` must be an ``nmtq export`` folder or at least a ``save_pretrained`` one (``config.json`` and
    ``model.safetensors`` or its shard index) and hold no pickle files (``*.bin``, ``*.pt``, ``*.pkl``, ...).
    A missing model card (``README.md``) gives a note, not an error.
    """
    root = Path(folder)
    again = "export the model with `nmtq export MODEL_DIR OUT_DIR` and push OUT_DIR"
    if not root.is_dir():
        raise NmtqError(f"{root} is not a directory: pass a folder written by `nmtq export` (or save_pretrained)")
    files = upload_files(root)
    paths = {path for path, _ in files}
    weights = {WEIGHTS, WEIGHTS_INDEX} & paths
    if CONFIG not in paths or not weights:
        lacking = " and ".join(n for n, ok in ((CONFIG, CONFIG in paths), (WEIGHTS, weights)) if not ok)
        raise NmtqError(f"{root} lacks {lacking}, so it is not a model folder: {again}")
    pickles = [path for path in sorted(paths) if path.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise NmtqError(f"{root} holds pickle files ({', '.join(pickles[:5])}): loading a pickle runs code, so "
                         f"nmtq pushes safetensors only; remove them from the folder ({WEIGHTS} holds the "
                         f"weights) or {again}")
    notes = [] if MODEL_CARD in paths else [f"{root} has no {MODEL_CARD}, so the repository gets no model card: "
                                            "`nmtq export` writes one"]
    return files, notes


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, dry_run: bool = False,
                token: str | None = None, commit_message: str | None = None) -> PushReport:
    """Create the model repository ``repo_id`` on the Hub if needed and upload ``folder`` to it in one commit.

    Everything is checked before anything is created: the folder (:func:`check_folder`: a model folder, no
    pickles), the repository id (:func:`check_repo_id`), that the Hub answers (within seconds) and that a token
    is found (``token``, else huggingface_hub's order: ``HF_TOKEN``, then the login stored by
    ``hf auth login``). The token is passed to huggingface_hub and never printed or logged.

    All files go in a single ``create_commit``, which the Hub applies whole or not at all, so the repository
    never holds half an upload. (``upload_folder`` is not used: with hf_xet it may split a large folder, or a
    failed commit of over 20 files, into several commits.) ``private`` makes a new repository private; an
    existing one keeps its visibility. ``dry_run`` only checks the folder and the id and lists the files: no
    network, nothing created. Errors raise ``ValueError`` saying what to fix.

    Example:
        >>> report = push_folder("exports/bible-de-en-qd4", "alice/bible-de-en-qd4")  # doctest: +SKIP
        >>> report.commit_url  # doctest: +SKIP
        'https://huggingface.co/alice/bible-de-en-qd4/commit/...'
    """
    files, notes = check_folder(folder)
    check_repo_id(repo_id)
    if dry_run:
        return PushReport(repo_id, tuple(files), notes=tuple(notes))
    what = f"{repo_id} cannot be pushed"
    require_hub_for(what)
    resolved = resolve_token(token, what)
    from huggingface_hub import CommitOperationAdd, HfApi

    api, root = HfApi(), Path(folder)
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(root / path)) for path, _ in files]
    try:
        repo_url = api.create_repo(repo_id, token=resolved, private=True if private else None, repo_type="model",
                                   exist_ok=True)
    except Exception as err:  # httpx/HTTP errors of every kind: say what failed, and that nothing was made
        raise NmtqError(f"creating {repo_id} on the Hub failed ({type(err).__name__}: {err}): "
                         f"{_hint(err)}; nothing was created or uploaded") from err
    try:
        commit = api.create_commit(repo_id, operations, commit_message=commit_message or f"Upload {root.name} with "
                                   "nmtq push", token=resolved, repo_type="model")
    except Exception as err:
        raise NmtqError(f"uploading {root} to {repo_url} failed ({type(err).__name__}: {err}): {_hint(err)}; the "
                         "commit was not made, so the repository holds none of these files; run the push again"
                         ) from err
    return PushReport(repo_id, tuple(files), str(repo_url), commit.commit_url, tuple(notes))


def _hint(err: Exception) -> str:
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        return f"the token was refused or cannot write to this namespace; {LOGIN}"
    return "check the network, the repository id and your access, then try again"
