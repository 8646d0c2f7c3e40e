"""A tracking server that goes away: the study's MLflow calls wait in order, bounded, while the trials train on.

Every call the driver makes to MLflow during a run goes through one ``TrackingLink``. While the
server answers, a call runs at once. When one fails because the server cannot be reached (refused
or timed-out connections, a 502/503/504 after MLflow's own retries), the link says so on the
console once, keeps that call and every later one in a queue, in order, and retries the queue at
the end of each step of Tune's loop (at most every ``PROBE_EVERY_S``, after a cheap ``/health``
probe of an HTTP server). A server back in time gets the queue in order and the console says so.
When the outage has lasted ``tracking.outage_timeout`` seconds, or the queue would pass
``tracking.max_queued`` calls, the link gives up: it drops the queue, says so, sends nothing more
for the rest of the invocation (so what reached MLflow is, per run, a prefix of what happened) and
marks the run's records incomplete; the run folder keeps everything and ``--sync-tracking``
(or ``--resume``) fills MLflow from it later (``tracking/sync.py``).

Errors that are not about reaching the server are raised as before.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from typing import Callable

PROBE_EVERY_S = 2.0  # how often a queue waiting on a server retries it
RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
UNAVAILABLE_STATUS = (502, 503, 504)


@contextlib.contextmanager
def client_limits(settings):
    """MLflow's per-request retries and timeout for this process's calls, from ``tracking:`` (restored after).

    MLflow reads these environment variables at each request; its defaults (7 retries, backoff factor 2,
    120 s) make one call to a server that is down take about four minutes.
    """
    wanted = {RETRIES_ENV: str(settings.request_retries), TIMEOUT_ENV: str(int(settings.request_timeout)),
              BACKOFF_ENV: "1"}
    before = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_unreachable(err: BaseException) -> bool:
    """True when ``err`` says the tracking server could not be reached, not that it refused the request."""
    import requests

    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            requests.exceptions.RetryError, ConnectionError, TimeoutError)):
            return True
        status = getattr(err, "get_http_status_code", None)
        if callable(status) and status() in UNAVAILABLE_STATUS:
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


class TrackingLink:
    """Runs or queues the study's MLflow calls through an outage of the server; see the module's text."""

    def __init__(self, uri: str, timeout_s: float = 1800.0, max_queued: int = 10000,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic):
        self.uri = uri
        self.timeout_s = timeout_s
        self.max_queued = max_queued
        self.log = log
        self.clock = clock
        self.queue: deque = deque()
        self.down_since: float | None = None
        self.last_probe = 0.0
        self.incomplete = False  # given up: some records never reached MLflow
        self.replaying = False  # the call running now was queued through an outage (it may have half run)

    def send(self, call: Callable[[], object]) -> None:
        """Runs ``call`` now, or queues it behind the ones waiting for the server; dropped once given up."""
        if self.incomplete:
            return
        if self.queue:
            self.queue.append(call)
            if not self.replaying:  # a call sent by a replayed one runs after it, in the same flush
                self.flush()
            return
        try:
            call()
        except Exception as err:
            if not is_unreachable(err):
                raise
            self._went_away(err)
            self.queue.append(call)
            self._check_bounds()

    def flush(self, force: bool = False) -> bool:
        """Retries the waiting calls in order (at most every ``PROBE_EVERY_S`` unless ``force``); True when none wait."""
        if not self.queue or self.incomplete:
            return not self.queue
        now = self.clock()
        if not force and now - self.last_probe < PROBE_EVERY_S:
            return self._check_bounds()
        self.last_probe = now
        if not self._healthy():
            return self._check_bounds()
        sent = 0
        while self.queue:
            self.replaying = True
            try:
                self.queue[0]()
            except Exception as err:
                if not is_unreachable(err):
                    raise
                return self._check_bounds()
            finally:
                self.replaying = False
            self.queue.popleft()
            sent += 1
        self.log(f"tracking server {self.uri} is back after {self.clock() - self.down_since:.0f} s; "
                 f"{sent} waiting record(s) sent")
        self.down_since = None
        return True

    def settle(self) -> bool:
        """Waits (up to what is left of the bound) for the queued calls to reach the server; True when they did."""
        if self.queue and not self.incomplete and not self.flush(force=True):
            left = self.timeout_s - (self.clock() - self.down_since)
            self.log(f"the trials are done; waiting up to {max(0.0, left):.0f} s more for tracking server {self.uri} "
                     f"({len(self.queue)} record(s) waiting)")
        while self.queue and not self.incomplete:
            if self.flush(force=True):
                return True
            time.sleep(min(PROBE_EVERY_S, max(0.05, self.timeout_s - (self.clock() - self.down_since))))
        return not self.incomplete

    def _healthy(self) -> bool:
        if not self.uri.startswith("http"):
            return True  # a local store: the replayed call is the probe
        import urllib.request

        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _went_away(self, err: Exception) -> None:
        self.down_since = self.clock()
        self.last_probe = self.down_since
        reason = str(err).splitlines()[0][:200]
        self.log(f"tracking server {self.uri} is unreachable ({reason}); trials go on, their records wait in "
                 f"memory for up to {self.timeout_s:.0f} s (tracking.outage_timeout, --tracking-wait)")

    def _check_bounds(self) -> bool:
        """Gives up when the outage has lasted too long or too much waits; False (calls still waiting or lost)."""
        waited = self.clock() - self.down_since
        if waited < self.timeout_s and len(self.queue) <= self.max_queued:
            return False
        why = (f"unreachable for {waited:.0f} s (tracking.outage_timeout {self.timeout_s:.0f} s)"
               if waited >= self.timeout_s else f"more than {self.max_queued} records waiting (tracking.max_queued)")
        self.log(f"gave up on tracking server {self.uri}: {why}; {len(self.queue)} record(s) dropped, the run "
                 f"goes on and its folder keeps everything; MLflow's records of this run are INCOMPLETE until "
                 f"--sync-tracking fills them")
        self.queue.clear()
        self.incomplete = True
        return False
