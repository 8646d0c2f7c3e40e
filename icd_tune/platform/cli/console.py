"""The quiet console: the project's own lines on the terminal, Ray's, MLflow's and Optuna's in a log file.

Third-party output reaches the terminal three ways: Python logging (Ray's token
warning, MLflow's and alembic's database-migration lines, Optuna's "A new study
created in RDB"), plain ``print`` on the driver (Ray Tune's "Configuration for
experiment" box and TensorBoard hint, the worker output Ray forwards to the
driver) and writes straight to file descriptors 1 and 2 (Ray's C++ core). A quiet
run therefore points descriptors 1 and 2, and ``sys.stdout``/``sys.stderr`` with
them, at the log file, and writes the project's lines to a copy of the terminal
kept aside: ``say`` and ``out()``. ERROR records of any logger still reach the
terminal, and every exception still does (the log is released before it is
printed).

Nothing is written before a study's checks pass, so until the run folder exists
the output collects in an unnamed temporary file; ``attach_log`` copies it into
the run folder's log and goes on there. A run that ends before that replays what
was collected on stderr when it ends with an error.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

LOG_NAME = "third_party.log"


class QuietConsole:
    """Third-party output to a log file for the span of a run; see the module's docstring."""

    def __init__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.out = _terminal_copy(sys.stdout)
        self.err = _terminal_copy(sys.stderr)
        self.saved_streams = (sys.stdout, sys.stderr)
        self.saved_fds = (os.dup(1), os.dup(2))
        self.log_path: Path | None = None
        self.sink: IO[bytes] = tempfile.TemporaryFile()
        self._point_fds(self.sink.fileno())
        # Descriptor 1 itself, not a copy: attach_log repoints it.
        self.text = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stdout = sys.stderr = self.text
        self.errors = _ErrorsToTerminal(self.err)
        for logger in _error_loggers():
            logger.addHandler(self.errors)

    def attach_log(self, path: Path) -> None:
        """Goes on writing to ``path`` (appending: a resumed run adds to its log), with what was collected so far."""
        self._flush()
        with open(path, "ab") as log:
            self.sink.seek(0)
            shutil.copyfileobj(self.sink, log)
            log.flush()
            self._point_fds(log.fileno())
        self.sink.close()
        self.sink = None
        self.log_path = path

    def close(self, failed: bool) -> None:
        for logger in _error_loggers():
            logger.removeHandler(self.errors)
        self._flush()
        for fd, saved in zip((1, 2), self.saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        sys.stdout, sys.stderr = self.saved_streams
        # Left open: a thread that took it as sys.stdout now writes to the terminal, not to a closed file.
        self.text.flush()
        if self.sink is not None:
            if failed:  # no log file to look in: show what Ray, MLflow or Optuna said before the error
                self.sink.seek(0)
                collected = self.sink.read().decode("utf-8", "backslashreplace")
                if collected:
                    self.err.write(collected)
            self.sink.close()
        for stream in (self.out, self.err):
            stream.flush()
            if stream not in self.saved_streams:
                stream.close()

    def _flush(self) -> None:
        for stream in (sys.stdout, sys.stderr, self.text):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass

    @staticmethod
    def _point_fds(target: int) -> None:
        os.dup2(target, 1)
        os.dup2(target, 2)


class _ErrorsToTerminal(logging.StreamHandler):
    """ERROR and above of any library to the terminal, once per record however many loggers it passes."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.setLevel(logging.ERROR)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_icd_tune_shown", False):
            return False
        record._icd_tune_shown = True
        return super().filter(record)


# The root logger catches libraries that propagate; these keep their records to their own handlers.
OWN_HANDLER_LOGGERS = ("ray", "mlflow", "alembic", "optuna")


def _error_loggers() -> list[logging.Logger]:
    return [logging.getLogger(), *(logging.getLogger(name) for name in OWN_HANDLER_LOGGERS)]


def _terminal_copy(stream):
    """A stream to where ``stream`` writes that survives descriptors 1 and 2 being pointed elsewhere."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # not a descriptor (a test's capture): redirecting 1 and 2 leaves it alone
    if fd not in (1, 2):
        return stream
    return open(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                errors="backslashreplace")


_active: QuietConsole | None = None


def out() -> IO[str]:
    """Where the project's lines go: the terminal, also while a quiet run sends everything else to its log."""
    return _active.out if _active is not None else sys.stdout


def say(line: str) -> None:
    print(line, file=out(), flush=True)


def log_path() -> Path | None:
    """The log file of the quiet run going on; None when none is, or its run folder does not exist yet."""
    return _active.log_path if _active is not None else None


def attach_log(run_folder: Path) -> Path | None:
    """Moves the quiet run's third-party output into ``run_folder``; returns the log's path (None if not quiet)."""
    if _active is None:
        return None
    if _active.log_path is None:
        _active.attach_log(run_folder / LOG_NAME)
    return _active.log_path


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Third-party output off the terminal for the span of the block (nothing changes when not ``enabled``)."""
    global _active
    if not enabled or _active is not None:
        yield
        return
    _active = QuietConsole()
    failed = True
    try:
        yield
        failed = False
    finally:
        console, _active = _active, None
        console.close(failed)


@contextmanager
def shown() -> Iterator[None]:
    """The project's own output written through ``sys.stdout``/``sys.stderr`` (a progress bar) to the terminal."""
    if _active is None:
        yield
        return
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _active.out, _active.err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
