"""Progress of long method-layer work (a teacher-output cache build) on one stderr line."""

from __future__ import annotations

import math
import sys
import time

from .data import NUM_VARIANTS


def format_bytes(n: int | float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale / 10 or unit == "KiB":
            return f"{n / scale:.1f} {unit}"


class Progress:
    """One self-overwriting stderr line on a terminal; an occasional plain line in a log file."""

    def __init__(self, total: int, label: str, enabled: bool, stream=None):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.25 if self.tty else 30.0
        self.start = self.last = time.perf_counter()

    def _line(self, done: int) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        epochs = done / max(1, self.total // NUM_VARIANTS)
        return (f"{self.label}: {100.0 * done / self.total:5.1f}% ({epochs:.1f}/{NUM_VARIANTS} teacher-epochs) "
                f"{rate:,.0f} images/s, ETA {_duration(eta)}")

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        self._write(self._line(done), final=False)

    def finish(self, done: int) -> None:
        if self.enabled:
            self._write(self._line(done).split(", ETA")[0] + f", took {_duration(time.perf_counter() - self.start)}",
                        final=True)

    def _write(self, line: str, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


