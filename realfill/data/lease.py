"""One run at a time per output: a lease file in OUT, created exclusively and renewed while the run lives.

Two runs writing one output would replace each other's manifest parts while both report done. A second run
on a leased output stops before any work and says who holds it. A run that died without releasing its
lease (SIGKILL, a lost node) does not block the output for long: its lease is taken over once it has not
been renewed for `stale_s` seconds, or at once when it was held by a process of this host that is gone.
Exclusive creation is atomic on local disks and on s3://, gs:// and memory:// (fsspec's "xb" mode).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from fsspec.core import url_to_fs

from realfill.data import storage

LEASE = ".realfill-lease.json"


class OutputBusy(RuntimeError):
    """Another run holds the output's lease; the message names it."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class OutputLease:
    """Hold OUT's lease for a `with` block: acquire (or raise OutputBusy), renew every heartbeat_s, release."""

    def __init__(self, out_uri: str, stale_s: float = 120.0, heartbeat_s: float = 20.0):
        self.out = storage.normalize(out_uri)
        self.uri = storage.join(self.out, LEASE)
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.record = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.time(), "renewed": time.time()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OutputLease:
        self.acquire()
        self._thread = threading.Thread(target=self._renew, name="realfill-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._holder() == self.record["token"]:
            storage.remove(self.uri)

    def acquire(self) -> None:
        fs, path = url_to_fs(self.uri)
        try:
            fs.makedirs(url_to_fs(self.out)[1], exist_ok=True)
        except PermissionError as exc:
            raise PermissionError(f"{self.out}: cannot write here ({exc.strerror or exc})") from None
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(f"{self.out}: is a file, not an output folder") from None
        for _ in range(2):
            try:
                with fs.open(path, "xb") as handle:
                    handle.write(json.dumps(self.record).encode())
                return
            except FileExistsError:
                held = self._read()
                if held is not None and not self._is_stale(held):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("started", 0)))
                    raise OutputBusy(
                        f"{self.out}: in use by another realfill run "
                        f"(pid {held.get('pid')} on {held.get('host')}, since {since}); wait for it to end or "
                        f"use another --out (a lease not renewed for {self.stale_s:.0f}s is taken over)") from None
                if held is None or self._read() == held:  # still the same dead holder: take it over
                    storage.remove(self.uri)
        raise OutputBusy(f"{self.uri}: another run took over this output's lease at the same moment")

    def _is_stale(self, held: dict) -> bool:
        pid = held.get("pid")
        if held.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0 and not _process_alive(pid):
            return True
        return time.time() - float(held.get("renewed", 0)) > self.stale_s

    def _read(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.uri))
        except (FileNotFoundError, ValueError):
            return None

    def _holder(self) -> str | None:
        held = self._read()
        return held.get("token") if held else None

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self._holder() != self.record["token"]:
                return  # taken over (this run was presumed dead): leave the new holder alone
            self.record["renewed"] = time.time()
            storage.write_bytes(self.uri, json.dumps(self.record).encode())
