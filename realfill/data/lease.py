"""One run at a time per output: a lease file in OUT, created exclusively and renewed while the run lives.

Two runs writing one output would replace each other's manifest parts while both report done. A second run
on a leased output stops before any work and says who holds it. A run that died without releasing its
lease (SIGKILL, a lost node) does not block the output for long: its lease is taken over once it has not
been renewed for `stale_s` seconds, or at once when it was held by a process of this host that is gone.
Exclusive creation is atomic on local disks and on s3://, gs:// and memory:// (fsspec's "xb" mode).

A run presumed dead may only have been paused (SIGSTOP, a frozen VM). So the lease is a fence as well: each
commit to OUT (a manifest record or fold, a delivered photo) first calls `fence(OUT)`, which checks that
the lease file still carries this run's token; a run that finds it replaced or gone raises LeaseLost and
writes nothing more (what it recorded before stays valid: every record is whole).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import warnings

from realfill.data import storage

LOG = logging.getLogger(__name__)

LEASE = ".realfill-lease.json"
HELD: dict[str, OutputLease] = {}
"""The leases this process holds, by output: what fence checks."""


class OutputBusy(RuntimeError):
    """Another run holds the output's lease; the message names it."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (or removed): it must write nothing more to the output."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def lease_problem(held) -> str | None:
    """What makes a lease file's contents not a lease of a live-able run, or None when it is one."""
    if not isinstance(held, dict):
        return f"not a JSON object (got {type(held).__name__})"
    for name, kind in (("token", str), ("host", str), ("pid", int), ("started", (int, float)),
                       ("renewed", (int, float))):
        value = held.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"its {name!r} is missing or not a {'number' if name in ('started', 'renewed') else kind.__name__}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"its {name!r} is not a finite number"
    if held["renewed"] > time.time() + 3600:
        return "it was renewed more than an hour in the future"
    return None


def fence(out_uri: str) -> None:
    """Before a commit to out_uri: raise LeaseLost when this process held its lease and no longer does."""
    lease = HELD.get(storage.normalize(out_uri))
    if lease is not None:
        lease.check()


def holder_text(held: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(held.get("started", 0)))
    return f"pid {held.get('pid')} on {held.get('host')}, since {since}"


class OutputLease:
    """Hold OUT's lease for a `with` block: acquire (or raise OutputBusy), renew every heartbeat_s, release."""

    def __init__(self, out_uri: str, stale_s: float = 120.0, heartbeat_s: float = 20.0):
        self.out = storage.normalize(out_uri)
        self.uri = storage.join(self.out, LEASE)
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.record = {"token": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.time(), "renewed": time.time()}
        self.lost: str | None = None
        """Why this run no longer holds the lease, once it has found out."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OutputLease:
        self.acquire()
        HELD[self.out] = self
        self._thread = threading.Thread(target=self._renew, name="realfill-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if HELD.get(self.out) is self:
            del HELD[self.out]
        if self.lost is None and self._holder() == self.record["token"]:
            storage.remove(self.uri)

    def acquire(self) -> None:
        storage.prepare_output(self.out)
        fs, path = storage.filesystem(self.uri)
        for _ in range(2):
            try:
                with storage.naming("creating", self.uri), fs.open(path, "xb") as handle:
                    handle.write(json.dumps(self.record).encode())
                return
            except FileExistsError:
                held = self._read()
                if held is not None and not self._is_stale(held):
                    raise OutputBusy(
                        f"{self.out}: in use by another realfill run ({holder_text(held)}); wait for it to end or "
                        f"use another --out (a lease not renewed for {self.stale_s:.0f}s is taken over)") from None
                if held is None or self._read() == held:  # still the same dead holder: take it over
                    storage.remove(self.uri)
        raise OutputBusy(f"{self.uri}: another run took over this output's lease at the same moment")

    def _is_stale(self, held: dict) -> bool:
        pid = held.get("pid")
        if held.get("host") == socket.gethostname() and pid > 0 and not _process_alive(pid):
            return True
        return time.time() - held["renewed"] > self.stale_s

    def _read(self) -> dict | None:
        """The lease file's record; None when there is none, or when it is not a lease (then said once, and
        taken over like a dead run's: no run of realfill can be renewing it)."""
        try:
            held = json.loads(storage.read_bytes(self.uri))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            held, problem = None, f"not JSON ({exc})"
        else:
            problem = lease_problem(held)
        if problem is not None:
            warnings.warn(f"{self.uri}: not a realfill lease ({problem}); it is taken over", stacklevel=3)
            return None
        return held

    def _holder(self) -> str | None:
        held = self._read()
        return held["token"] if held else None

    def check(self) -> None:
        """Raise LeaseLost unless the lease file still carries this run's token."""
        if self.lost is None:
            held = self._read()
            if held is None:
                self.lost = f"{self.uri}: this run's lease is gone (was the output deleted?)"
            elif held["token"] != self.record["token"]:
                self.lost = (f"{self.out}: this run's lease was taken over by another run ({holder_text(held)}): "
                             f"this run was presumed dead (paused, or not renewed for {self.stale_s:.0f}s)")
        if self.lost is not None:
            raise LeaseLost(f"{self.lost}; it stops and writes nothing more, keeping what it recorded")

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.check()
            except LeaseLost:
                return  # taken over: leave the new holder alone (the next commit stops the run)
            self.record["renewed"] = time.time()
            try:
                storage.write_bytes(self.uri, json.dumps(self.record).encode())
            except OSError as exc:  # the store is down for now: the next heartbeat tries again
                LOG.warning("renewing the lease: %s", exc)
