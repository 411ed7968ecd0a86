"""Models from the Hugging Face hub or its local cache (safetensors only), and where realfill keeps the models
it builds or copies."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from realfill.data.runlog import InputError, first_line


class ModelError(InputError, RuntimeError):
    """The base model cannot be found or loaded; the message says how to provide it."""


def cache_dir() -> Path:
    """Where built and downloaded models live: $REALFILL_CACHE, else ~/.cache/realfill."""
    return Path(os.environ.get("REALFILL_CACHE", Path.home() / ".cache" / "realfill"))


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick connect to the hub, so an offline machine fails in seconds instead of minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def hub_snapshot(repo_id: str, allow_patterns: list[str]) -> Path:
    """A hub repo's files from the local Hugging Face cache, else downloaded; ModelError when neither works."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, local_files_only=True))
    except Exception:  # not cached (the hub client raises several types for this)
        pass
    if not hub_reachable():
        raise ModelError(f"'{repo_id}' is not in the local Hugging Face cache and the hub is unreachable")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as exc:  # gated, missing, network errors: one line is enough
        raise ModelError(f"'{repo_id}' could not be downloaded ({first_line(exc)})") from None
