"""The Hugging Face Hub: whether it (or any host) can be reached, decided in seconds rather than after retries; the
checks of a repository id and a token that a push (:mod:`nmtq.push`, ``--push_to_hub``) makes before anything."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from .errors import NmtqError


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


LOGIN = "run `hf auth login` or set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens)"


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


def require_hub_for(what: str) -> None:
    """A one-line :class:`NmtqError` saying ``what`` cannot be done, unless the Hub answers (offline mode off)."""
    """``ValueError`` within seconds when ``what`` cannot reach the Hub (offline mode, or no connection)."""
    from huggingface_hub import constants

    if _offline():
        raise NmtqError(f"HF_HUB_OFFLINE is set, so {what}: unset HF_HUB_OFFLINE (nothing was uploaded)")
    if not reachable(constants.ENDPOINT):
        raise NmtqError(f"the Hub is unreachable ({constants.ENDPOINT} did not answer within 5 s), so {what}: check "
                         "the network or proxy (HTTPS_PROXY) and try again; nothing was uploaded")


def resolve_token(token: str | None, what: str) -> str:
    """``token``, else the stored login or HF_TOKEN; a one-line error naming ``what`` where there is none."""
    """``token``, else huggingface_hub's own resolution (HF_TOKEN, then the stored login); never shown."""
    from huggingface_hub import get_token

    resolved = token or get_token()
    if not resolved:
        raise NmtqError(f"no Hugging Face token was found, so {what}: {LOGIN}; nothing was uploaded")
    return resolved


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
    require_hub_for(what)
    resolve_token(training_args.hub_token, what)
