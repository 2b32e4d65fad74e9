"""Whether the Hugging Face Hub (or any host) can be reached, decided in seconds rather than after retries."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from urllib.parse import urlsplit


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
        raise ValueError(f"{name!r} is not a local directory and the Hugging Face Hub ({constants.ENDPOINT}) "
                         f"could not be reached to download the {what}: pass a local directory written by "
                         "save_pretrained, or set HF_HUB_OFFLINE=1 to use a cached copy")
