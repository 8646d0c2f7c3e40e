"""Leaving the process when a command is done, without the interpreter's teardown.

Once a run has returned its exit status, the interpreter's own teardown of what a run loads
(torch, Ray's driver, MLflow, SQLAlchemy, pandas) takes about two seconds on a 2-core machine
and does nothing the finished command needs. The exit hooks still run first, in their usual
order (Ray's shutdown, logging's flush, MLflow's, temporary folders), and the standard streams
are flushed; then the process ends with the status.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading


def others_running() -> bool:
    """Whether a non-daemon thread besides this one is alive (a normal exit would wait for it)."""
    me = threading.current_thread()
    return any(t is not me and t.is_alive() and not t.daemon for t in threading.enumerate())


def exit_now(code: int | None) -> None:
    """Ends the process with ``code`` after the exit hooks; a plain ``sys.exit`` where a thread must be waited for."""
    code = 0 if code is None else int(code)
    run_hooks = getattr(atexit, "_run_exitfuncs", None)
    if run_hooks is None or others_running():
        sys.exit(code)
    run_hooks()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream has nothing left to give
            pass
    os._exit(code)
