"""The Hugging Face Hub: whether it (or any host) can be reached, decided in seconds rather than after retries, and
pushing a model folder to it (``nmtq push DIR --repo-id NAME``) with every check made before anything is created."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import NmtqError
from .files import CONFIG, MODEL_CARD, WEIGHTS, WEIGHTS_INDEX


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``url``'s host (or proxy) opens in ``timeout`` s (DNS lookup included).

    Example:
        >>> reachable("http://127.0.0.1:9", timeout=0.5)
        False
    """
    parts = urlsplit(urllib.request.getproxies().get(urlsplit(url).scheme) or url)
    address = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)  # the DNS lookup itself has no timeout
    thread.start()
    thread.join(timeout)
    return bool(opened)


def require_hub(name: str, what: str) -> None:
    """Raise a ``ValueError`` naming ``name`` when it is not a local path and the Hub cannot be reached.

    In offline mode (``HF_HUB_OFFLINE=1``) nothing is checked: the cache answers, or transformers says it
    is not cached.
    """
    if os.path.exists(os.path.expanduser(name)) or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true"):
        return
    from huggingface_hub import constants

    if not reachable(constants.ENDPOINT):
        raise NmtqError(f"{name!r} is not a local directory and the Hugging Face Hub ({constants.ENDPOINT}) "
                         f"could not be reached to download the {what}: pass a local directory written by "
                         "save_pretrained, or set HF_HUB_OFFLINE=1 to use a cached copy")


# ---------------------------------------------------------------------------------------------- pushing
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")  # torch.save / pickle files: loading them runs code
_LOGIN = "run `hf auth login` or set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)"


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


def check_repo_id(repo_id: str, option: str = "--repo-id") -> None:
    """``ValueError`` saying what is wrong when ``repo_id`` is not a Hub repository id (``NAME`` or
    ``NAMESPACE/NAME``).

    Example:
        >>> check_repo_id("alice/bible-de-en-qd4")
        >>> check_repo_id("alice/de en")
        Traceback (most recent call last):
        ...
        nmtq.errors.NmtqError: --repo-id 'alice/de en' is not a Hub repository id ...
    """
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as err:  # HFValidationError
        raise NmtqError(f"{option} {repo_id!r} is not a Hub repository id ({err}): use NAME or NAMESPACE/NAME "
                         "with letters, digits, '-', '_' and '.', at most 96 characters, no '--' or '..', not "
                         "ending in .git, e.g. alice/bible-de-en-qd4") from None


def _require_hub_for(what: str) -> None:
    """``ValueError`` within seconds when ``what`` cannot reach the Hub (offline mode, or no connection)."""
    from huggingface_hub import constants

    if _offline():
        raise NmtqError(f"HF_HUB_OFFLINE is set, so {what}: unset HF_HUB_OFFLINE (nothing was uploaded)")
    if not reachable(constants.ENDPOINT):
        raise NmtqError(f"the Hub is unreachable ({constants.ENDPOINT} did not answer within 5 s), so {what}: check "
                         "the network or proxy (HTTPS_PROXY) and try again; nothing was uploaded")


def _resolve_token(token: str | None, what: str) -> str:
    """``token``, else huggingface_hub's own resolution (HF_TOKEN, then the stored login); never shown."""
    from huggingface_hub import get_token

    resolved = token or get_token()
    if not resolved:
        raise NmtqError(f"no Hugging Face token was found, so {what}: {_LOGIN}; nothing was uploaded")
    return resolved


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
    _require_hub_for(what)
    resolved = _resolve_token(token, what)
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
        return f"the token was refused or cannot write to this namespace; {_LOGIN}"
    return "check the network, the repository id and your access, then try again"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true")


def check_push_to_hub(training_args) -> None:
    """Before any training, ``ValueError`` if ``training_args.push_to_hub`` is set but pushing cannot work.

    transformers' ``Trainer`` creates the repository only when it is built, after the data (and, in
    distillation, the teacher's outputs) are prepared, and fails then with a bare connection error. This checks
    the same things at once: ``hub_model_id`` (or the output_dir's name, the Trainer's default) is a valid id, the
    Hub answers within seconds, and a token is found (``hub_token``, ``HF_TOKEN`` or the stored login). Does
    nothing when ``push_to_hub`` is off.

    Example:
        >>> from types import SimpleNamespace
        >>> check_push_to_hub(SimpleNamespace(push_to_hub=False))
    """
    if not getattr(training_args, "push_to_hub", False):
        return
    repo_id = training_args.hub_model_id or Path(training_args.output_dir).absolute().name
    check_repo_id(repo_id, "--hub_model_id" if training_args.hub_model_id else "the output_dir's name, the default "
                  "--hub_model_id,")
    what = f"--push_to_hub cannot push to {repo_id} (checked before training)"
    _require_hub_for(what)
    _resolve_token(training_args.hub_token, what)
