"""Reading and writing through fsspec, so every stage works on local paths, s3://, gs:// and memory://."""

from __future__ import annotations

import io
import os
import posixpath
import uuid
from pathlib import Path

import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or a local path, keeping its protocol."""
    uri = str(uri)
    if "://" in uri:
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def split(uri: str) -> tuple[str, str]:
    """A URI's folder and file name (the inverse of join)."""
    uri = str(uri)
    return posixpath.split(uri) if "://" in uri else os.path.split(uri)


def normalize(uri: str) -> str:
    """A local path made absolute and normalized (file:// dropped), a remote URI without a trailing slash:
    what manifests record, so that they stay valid from any working directory."""
    uri = str(uri)
    if "://" in uri and not uri.startswith("file://"):
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def exists(uri: str) -> bool:
    fs, path = url_to_fs(str(uri))
    return fs.exists(path)


def is_dir(uri: str) -> bool:
    fs, path = url_to_fs(str(uri))
    return fs.isdir(path)


def remove(uri: str) -> None:
    """Delete a file or folder (recursively); nothing to do when it is missing."""
    fs, path = url_to_fs(str(uri))
    if fs.exists(path):
        fs.rm(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = url_to_fs(str(uri))
    with fs.open(path, "rb") as handle:
        return handle.read()


OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}
"""Stores where one PUT makes an object appear whole or not at all (and a move is a copy plus a delete)."""


def protocols(fs) -> set[str]:
    return set(fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def is_local(fs) -> bool:
    return "file" in protocols(fs)


def puts_whole(fs) -> bool:
    return bool(OBJECT_STORES & protocols(fs)) or isinstance(fs, MemoryFileSystem)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a file so that no reader ever sees it half-written. On an object store one PUT is already atomic,
    and a move there is a server-side copy plus a delete, so the object is written once, in place; elsewhere
    (a local disk) a hidden temporary name, then a rename."""
    fs, path = url_to_fs(str(uri))
    if puts_whole(fs):
        fs.pipe_file(path, data)
        return
    parent = posixpath.dirname(path) if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    temporary = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    with fs.open(temporary, "wb") as handle:
        handle.write(data)
    fs.mv(temporary, path)


def list_dir(uri: str) -> list[str]:
    """Entry names (not paths) directly under a folder URI, sorted."""
    fs, path = url_to_fs(str(uri))
    return sorted(posixpath.basename(entry.rstrip("/")) for entry in fs.ls(path, detail=False))


def download_dir(uri: str, local_dir: str | Path) -> None:
    fs, path = url_to_fs(str(uri))
    local_dir = Path(local_dir)
    for remote in fs.find(path):
        relative = posixpath.relpath(remote, path)
        if any(part.startswith(".tmp-") for part in relative.split("/")):
            continue
        destination = local_dir / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        with fs.open(remote, "rb") as handle:
            destination.write_bytes(handle.read())


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(uri: str, image: np.ndarray) -> None:
    write_bytes(uri, encode_png(image))
