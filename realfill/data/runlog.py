"""The run's log: OUT/logs/run-TIME-PID.log, with the full traceback of every failure that is not one of
realfill's own input errors (those are one clear line in the manifest and the summary, and a line here).

Every module logs to its own logger; a RunLog attaches to the packages' loggers a file for one command's run (and stderr
too with --verbose). On an object store the log is written locally as the run goes and put under OUT when
the run ends, however it ends (a PUT is the only write an object store has).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from realfill.data import storage
from realfill.data.layout import Output

LOG = logging.getLogger(__name__)
PACKAGES = ("realfill", "pipeline", "jobs")
"""Every module logs to its own logger (logging.getLogger(__name__)); a run's log takes the packages' loggers."""
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class InputError(Exception):
    """One of realfill's own errors about its input or setup: its message says all there is to say (one line,
    naming the file or setting and what is wrong), so no traceback is logged for it."""


def first_line(exc: BaseException) -> str:
    """An error's message in one line (its type's name when it has none)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def describe(exc: BaseException) -> str:
    """One line: the message alone for our own input errors, the type too for anything else."""
    if isinstance(exc, InputError) or not str(exc):
        return first_line(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"


def log_failure(label: str, exc: BaseException, cause: BaseException | None = None) -> str:
    """A failure's one line (returned, for the manifest and the summary), and in the run's log that line with,
    unless it is one of our own input errors, exc's full traceback (a Ray error's includes the worker's).
    cause is the error the line describes when exc wraps it (a stage's error inside Ray's)."""
    cause = cause or exc
    line = describe(cause)
    if isinstance(cause, InputError):
        LOG.warning("%s failed: %s", label, line)
    else:
        LOG.error("%s failed: %s", label, line, exc_info=exc)
    return line


class LazyFile(logging.FileHandler):
    """A log file made (folder, header line) only when the first record comes: a command stopped by bad input
    before it started its work leaves nothing under OUT."""

    def __init__(self, path: Path, header: str):
        super().__init__(path, encoding="utf-8", delay=True)
        self.header = header

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        stream = super()._open()
        stream.write(self.header + "\n")
        return stream


def log_uri(out_uri: str, started: float) -> str:
    """The log of a run started at `started` (epoch seconds) by this process."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
    return Output(storage.normalize(out_uri)).log(f"run-{stamp}-{os.getpid()}.log")


class RunLog:
    """For one command's run: OUT's log file (and stderr when verbose) on the realfill.run logger."""

    def __init__(self, out_uri: str, verbose: bool = False):
        self.uri = log_uri(out_uri, time.time())
        self.verbose = verbose
        self.local = Path(self.uri) if "://" not in self.uri else Path(tempfile.mkdtemp()) / "run.log"
        self.handlers: list[logging.Handler] = []
        self.written = False
        """Whether anything was logged (known once the run is over): only then is there a log file."""

    def __enter__(self) -> RunLog:
        self.handlers = [LazyFile(self.local, f"run log of pid {os.getpid()}: {' '.join(sys.argv)}")]
        if self.verbose:
            self.handlers.append(logging.StreamHandler(sys.stderr))
        for handler in self.handlers:
            handler.setFormatter(logging.Formatter(FORMAT))
        for logger in map(logging.getLogger, PACKAGES):
            for handler in self.handlers:
                logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False  # the file (and stderr when verbose) is where it goes, not the root logger
        return self

    def __exit__(self, *exc_info) -> None:
        error = exc_info[1]
        if error is not None and not isinstance(error, (ValueError, KeyboardInterrupt, SystemExit)):
            LOG.error("the run ended with an error", exc_info=error)  # ValueError: our own bad-input line
        for logger in map(logging.getLogger, PACKAGES):
            for handler in self.handlers:
                logger.removeHandler(handler)
            logger.propagate = True
        for handler in self.handlers:
            handler.close()
        self.written = self.local.exists()
        if "://" in self.uri:
            try:
                if self.written:
                    storage.write_bytes(self.uri, self.local.read_bytes())
            finally:
                self.local.unlink(missing_ok=True)
                self.local.parent.rmdir()
