"""Reading and writing through fsspec, so every stage works on local paths, s3://, gs:// and memory://.

Every call names what it did and on which object when it fails (StorageError: "writing URI: No space left on
device"), and a local path is always a local path: `::` in a folder name is a character, not fsspec's URL
chaining (which is still there for a URI that starts with one: `simplecache::s3://...`).
"""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import numpy as np
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import get_filesystem_class
from PIL import Image


class StorageError(OSError):
    """A storage call failed: the message names the operation and the object, then the store's reason."""

    def __str__(self) -> str:
        return self.args[0]


class StorageNotFound(StorageError, FileNotFoundError):
    """The object (or its folder) does not exist."""


class StoragePermission(StorageError, PermissionError):
    """The store refused the call."""


class StorageExists(StorageError, FileExistsError):
    """An exclusive creation found the object there already."""


class StorageIsADirectory(StorageError, IsADirectoryError):
    """A folder where a file was expected."""


KINDS = ((FileNotFoundError, StorageNotFound), (PermissionError, StoragePermission), (FileExistsError, StorageExists),
         (IsADirectoryError, StorageIsADirectory))
"""The OSErrors that callers tell apart, each as the StorageError of the same kind."""


def reason(exc: BaseException) -> str:
    """What the store said, in one line (an OSError's text without its [Errno N])."""
    text = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__
    return text.splitlines()[0]


@contextmanager
def naming(operation: str, uri: str):
    """Turn the OSError of a storage call into a StorageError that names the operation and the object."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        kind = next((named for plain, named in KINDS if isinstance(exc, plain)), StorageError)
        error = kind(f"{operation} {uri}: {reason(exc)}")
        error.errno = exc.errno
        raise error from exc


def filesystem(uri: str):
    """The filesystem of a URI or a local path, and the path in it. Only a URI that starts with a chain
    (`PROTOCOL::...`) is parsed as one: a local path or a single-protocol URI is taken as it is written."""
    uri = str(uri)
    protocol, _ = split_protocol(uri)
    if protocol is None:
        return LocalFileSystem(), LocalFileSystem._strip_protocol(uri)
    if "::" in protocol:
        return url_to_fs(uri)
    kind = get_filesystem_class(protocol)
    return fsspec.filesystem(protocol, **kind._get_kwargs_from_urls(uri)), kind._strip_protocol(uri)


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
    with naming("looking up", uri):
        fs, path = filesystem(uri)
        return fs.exists(path)


def is_dir(uri: str) -> bool:
    with naming("looking up", uri):
        fs, path = filesystem(uri)
        return fs.isdir(path)


def remove(uri: str) -> None:
    """Delete a file or folder (recursively); nothing to do when it is missing."""
    with naming("removing", uri):
        fs, path = filesystem(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    with naming("reading", uri):
        fs, path = filesystem(uri)
        with fs.open(path, "rb") as handle:
            return handle.read()


T = TypeVar("T")
IN_FLIGHT = 16
"""Requests kept in flight at once when many small objects are read or written (each is a round trip)."""
ChunkMap = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]
"""How chunks of work over many objects are run, results in the chunks' order: the builtin map, one after another
in this process, or pipeline.fanout.ray_map, as Ray tasks on the run's cluster."""


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """items cut into consecutive runs of size (the last may be shorter): the chunks a ChunkMap runs."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def read_each(uris: list[str]) -> dict[str, bytes]:
    """Small files read IN_FLIGHT at a time; a missing one is left out (any other failure is raised)."""
    def read(uri: str) -> bytes | None:
        try:
            return read_bytes(uri)
        except FileNotFoundError:
            return None

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        return {uri: data for uri, data in zip(uris, pool.map(read, uris)) if data is not None}


def write_each(files: dict[str, bytes]) -> None:
    """Small files written IN_FLIGHT at a time, each as write_bytes writes it."""
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(write_bytes, files, files.values()))


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
    (a local disk) a hidden temporary name, then a rename. A write that fails leaves no temporary behind, and a
temporary ends in .tmp, so a reader's glob of *.parquet never matches one."""
    with naming("writing", uri):
        fs, path = filesystem(uri)
        if puts_whole(fs):
            fs.pipe_file(path, data)
            return
        parent = posixpath.dirname(path) if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        temporary = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}.tmp")
        try:
            with fs.open(temporary, "wb") as handle:
                handle.write(data)
            fs.mv(temporary, path)
        except BaseException:
            if fs.exists(temporary):
                fs.rm_file(temporary)
            raise


def prepare_output(uri: str) -> None:
    """Make an output folder ready: created on a local disk; on an object store, where folders need no
    making, its bucket must exist already (a mistyped bucket is an error, never a new bucket)."""
    fs, path = filesystem(uri)
    if not puts_whole(fs):
        try:
            fs.makedirs(path, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(f"{uri}: is a file, not an output folder") from None
        except PermissionError as exc:
            raise StoragePermission(f"{uri}: cannot write here ({reason(exc)})") from None
        return
    with naming("looking up the bucket of", uri):
        bucket = path.strip("/").split("/")[0]
        if not isinstance(fs, MemoryFileSystem) and bucket and not fs.exists(bucket):
            raise StorageNotFound(f"{uri}: the bucket {fs.unstrip_protocol(bucket)} does not exist "
                                  f"(realfill creates no bucket: check its name, or create it first)")


def list_dir(uri: str) -> list[str]:
    """Entry names (not paths) directly under a folder URI, sorted."""
    with naming("listing", uri):
        fs, path = filesystem(uri)
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in fs.ls(path, detail=False))


def stamp(entry: dict) -> str:
    """What identifies a listed file's contents: its size, and the ETag its store gives (which changes with the
    contents), else its modification time."""
    changed = next((entry[name] for name in ("ETag", "etag", "mtime", "LastModified", "updated", "created")
                    if entry.get(name)), "")
    return f"{entry.get('size')}:{changed}"


def stamped(uri: str) -> dict[str, str]:
    """A folder's entries by name, each with its stamp, from one listing (none when the folder is not there)."""
    with naming("listing", uri):
        fs, path = filesystem(uri)
        try:
            entries = fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
    return {posixpath.basename(entry["name"].rstrip("/")): stamp(entry) for entry in entries}


def files_under(uri: str, patterns: list[str] | None = None) -> dict[str, str]:
    """A folder's files by relative path (those matching one of patterns, if given; build temporaries left out),
    each with its stamp, from one listing: what identifies the folder's contents without reading them."""
    with naming("listing", uri):
        fs, path = filesystem(uri)
        entries = fs.find(path, detail=True)
    files = {}
    for remote, entry in entries.items():
        relative = posixpath.relpath(remote, path)
        if any(part.startswith(".tmp-") for part in relative.split("/")):
            continue
        if patterns is None or any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns):
            files[relative] = stamp(entry)
    return files


def download_files(uri: str, relatives: list[str], local_dir: str | Path) -> None:
    """Copy the given files of a folder to local_dir in one `get` (concurrent on object stores), each streamed
    to disk, never held whole in memory."""
    with naming("downloading", uri):
        fs, path = filesystem(uri)
        destinations = [Path(local_dir) / relative for relative in relatives]
        for destination in destinations:
            destination.parent.mkdir(parents=True, exist_ok=True)
        fs.get([posixpath.join(path, relative) for relative in relatives], [str(d) for d in destinations])


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(uri: str, image: np.ndarray) -> None:
    write_bytes(uri, encode_png(image))
