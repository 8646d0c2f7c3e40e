"""The live display of a running study: one concise line every few seconds in place of Ray's tables."""

from __future__ import annotations

import math
import time
from typing import Callable

from ray import tune

from ..cli import console
from ..metrics import DIVERGED, ERROR, epochs_done


class ProgressCallback(tune.Callback):
    """Counts running, finished, stopped and failed trials, the best value so far and the time left."""

    def __init__(self, planned_trials: int, max_epochs: int, metric: str, mode: str, stream=None,
                 interval: float = 5.0, describe: Callable[[dict], tuple[str, dict]] | None = None):
        self.planned = planned_trials
        self.max_epochs = max_epochs
        self.metric, self.mode = metric, mode
        self.stream = stream  # None: console.out() when printing (Tune pickles callbacks)
        self.interval = interval
        self.start = time.time()
        self.last_print = 0.0
        self.epochs: dict[str, int] = {}
        self.best: tuple[float, str] | None = None
        self.names: dict[str, str] = {}
        self.counts = {"completed": 0, "stopped early": 0, "failed": 0}
        self.describe = describe

    # Tune's hooks

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.record_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.record_end(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.record_end(trial, failed=True)

    def on_step_end(self, iteration, trials, **info):
        self.print_status(trials)

    # The display

    def trial_name(self, trial) -> str:
        if trial.trial_id not in self.names and self.describe is not None:
            self.names[trial.trial_id] = self.describe(trial.config)[0]
        return self.names.get(trial.trial_id, trial.trial_id)

    def record_result(self, trial, result):
        self.epochs[trial.trial_id] = max(epochs_done(result), self.epochs.get(trial.trial_id, 0))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and not result.get(DIVERGED):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), self.trial_name(trial))

    def record_end(self, trial, failed: bool):
        result = trial.last_result or {}
        epoch = epochs_done(result)
        if failed or result.get(DIVERGED):
            kind = "failed"
            detail = result.get(ERROR) or "error"
        elif epoch < self.max_epochs:
            kind, detail = "stopped early", f"at epoch {epoch}"
        else:
            kind, detail = "completed", f"{self.metric}={result.get(self.metric, float('nan')):.2f}"
        self.counts[kind] += 1
        self.print_line(f"  {kind}: {self.trial_name(trial)} ({detail})")

    def print_status(self, trials):
        now = time.time()
        if now - self.last_print < self.interval:
            return
        running = sum(1 for t in trials if t.status == "RUNNING")
        elapsed = now - self.start
        done_epochs = sum(self.epochs.values())
        finished = sum(self.counts.values())
        # Remaining work: unfinished trials' remaining epochs (stopped trials need none).
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        remaining = max(0, (self.planned - finished) * self.max_epochs
                        - sum(e for t, e in self.epochs.items() if t not in ended))
        eta = (elapsed / done_epochs * remaining) if done_epochs else float("nan")
        # A test metric is watched, never chosen by: say "highest", not "best".
        word = "highest" if self.metric.startswith("test/") else "best"
        best = f"{word} {self.metric} {self.best[0]:.2f} ({self.best[1]})" if self.best else f"{word} -"
        self.print_line(f"[{clock(elapsed)}] {running} running | {self.counts['completed']} done | "
                        f"{self.counts['stopped early']} stopped early | {self.counts['failed']} failed | "
                        f"{finished}/{self.planned} trials | {best} | left ~{clock(eta)}")

    def print_line(self, line: str):
        self.last_print = time.time()
        print(line, file=self.stream or console.out(), flush=True)


def clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
