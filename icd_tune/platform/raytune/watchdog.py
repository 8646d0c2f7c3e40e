"""Ends a study's Tune run early, and resumably, when it must: time budget spent, resources never came, a signal.

Every early end goes through Tune's own graceful stop (what a first Ctrl+C does):
no new trials start, running ones stop with their last checkpoint kept, and the
experiment state keeps them unfinished, so that ``--resume`` continues them.
``StudyWatch`` records why the run ended and which trials it left unfinished.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from contextlib import contextmanager
from ray import tune

from ..cli import console
from .ray_internals import request_tune_stop
from .resources import amount

# How a run ended early -> the CLI's exit status (README "Exit status").
TIME_BUDGET, PENDING, SIGINT, SIGTERM = "time budget", "pending timeout", "SIGINT", "SIGTERM"
FINISHED_STATUSES = ("TERMINATED", "ERROR")


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the Tune run (e.g. while the teacher trains): handled like Ctrl+C, reported apart."""


def raise_terminated(signum, frame):
    raise Terminated()


class StudyWatch(tune.Callback):
    """Stops the run when the budget is spent or no trial could start for ``pending_timeout_s``; notes signals."""

    def __init__(self, deadline: float | None = None, budget_text: str = "", pending_timeout_s: float | None = None,
                 trial_cpus: float = 1.0, trial_gpus: float = 0.0, poll_s: float = 30.0, stream=None):
        self.deadline = deadline
        self.budget_text = budget_text
        self.pending_timeout_s = pending_timeout_s
        self.trial_cpus, self.trial_gpus = trial_cpus, trial_gpus
        self.poll_s = poll_s
        self.stream = stream  # None: console.out() at print time (Tune pickles callbacks)
        self.kind: str | None = None
        self.reason: str | None = None
        self.unfinished: set[str] = set()
        self.pending_since: float | None = None
        self.last_wait_note = 0.0

    @property
    def stopped(self) -> bool:
        return self.kind is not None

    # Tune's hooks

    def setup(self, **info):
        # Tune installed its SIGINT handler just before; ours notes the signal, then hands over to it.
        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            tune_handler = signal.getsignal(signal.SIGINT)
            if callable(tune_handler):
                def on_sigint(signum, frame):
                    self.note(SIGINT, "interrupted (SIGINT)")
                    tune_handler(signum, frame)

                signal.signal(signal.SIGINT, on_sigint)

    def on_step_end(self, iteration, trials, **info):
        self.unfinished = {t.trial_id for t in trials if t.status not in FINISHED_STATUSES}
        if self.stopped:
            return
        now = time.time()
        if self.deadline is not None and now >= self.deadline:
            self.stop(TIME_BUDGET, f"the time budget ({self.budget_text}) was spent: no new trial started, the running "
                                   f"ones were stopped at their last checkpoint")
            return
        self.watch_pending(trials, now)

    # The checks

    def watch_pending(self, trials, now: float) -> None:
        running = any(t.status == "RUNNING" for t in trials)
        pending = sum(t.status == "PENDING" for t in trials)
        if running or not pending:
            self.pending_since = None
            return
        self.pending_since = self.pending_since or now
        waited = now - self.pending_since
        need = f"{amount(self.trial_cpus, 'CPU')} + {amount(self.trial_gpus, 'GPU')}"
        limit = self.pending_timeout_s
        if limit is not None and waited >= limit:
            self.stop(PENDING, f"no trial could start for {span(waited)} (--pending-timeout {limit / 60:g}): "
                               f"{pending} pending, each needs {need}; free now: {free_resources()}")
        elif waited >= min(10.0, (limit or 20.0) / 2) and now - self.last_wait_note >= self.poll_s:
            # Between two trials a few seconds of nothing running is normal; longer, say what is missing.
            self.last_wait_note = now
            until = f"; giving up in {span(limit - waited)}" if limit is not None else ""
            self.print(f"waiting for resources: {pending} trial(s) pending and none running for {span(waited)}; "
                       f"each needs {need}, free now: {free_resources()}{until}")

    def note(self, kind: str, reason: str) -> None:
        if not self.stopped:
            self.kind, self.reason = kind, reason

    def stop(self, kind: str, reason: str) -> None:
        self.note(kind, reason)
        self.print(f"stopping the study: {reason}")
        if not request_tune_stop():
            raise RuntimeError(f"could not stop the Tune run gracefully: {reason}")

    def print(self, line: str) -> None:
        print(line, file=self.stream or console.out(), flush=True)


def free_resources() -> str:
    import ray

    free = ray.available_resources()
    return f"{amount(free.get('CPU', 0.0), 'CPU')}, {amount(free.get('GPU', 0.0), 'GPU')}"


@contextmanager
def graceful_sigterm(watch: StudyWatch):
    """While Tune runs, SIGTERM ends it as Ctrl+C does (state saved, resumable); before and after, as the caller had it."""
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_term = signal.getsignal(signal.SIGTERM)
    previous_int = signal.getsignal(signal.SIGINT)

    def on_sigterm(signum, frame):
        watch.note(SIGTERM, "terminated (SIGTERM)")
        if not request_tune_stop():
            raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)


def span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def budget_deadline(started: float, budget_s: float | None) -> float | None:
    return None if budget_s is None else started + budget_s


def format_duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"

