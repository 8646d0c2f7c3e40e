"""What the Ray cluster can run: node sizes, whether it can grow, and waiting for a node when it can.

A request that no node can meet is refused before any work on a cluster that
cannot grow (the local Ray instance the CLI starts, or a cluster without an
autoscaler that has node types). On one that can, the study waits for the node,
says what it waits for, and gives up after ``--pending-timeout``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..preflight import StudyRunError

# The read-only autoscaler (a cluster started without a cluster config) names each node's type after
# the node: ray/autoscaler/_private/util.py format_readonly_node_type.
READONLY_NODE_TYPE = re.compile(r"^node_[0-9a-f]{16,}$")
DEFAULT_PENDING_TIMEOUT_S = 30 * 60.0
REPORT_PATIENCE_S = 20.0


class PendingTimeoutError(RuntimeError):
    """The cluster did not provide the resources the study needs within the pending timeout."""


@dataclass(frozen=True)
class Request:
    what: str  # "a trial", "the teacher's training task"
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Growth:
    can_grow: bool
    reason: str


def amount(value: float, unit: str) -> str:
    return f"{value:g} {unit}{'' if value == 1 else 's'}"


def describe_nodes(nodes: list[Node]) -> str:
    sizes = sorted({(n.cpus, n.gpus) for n in nodes}, reverse=True)
    return ", ".join(f"{amount(c, 'CPU')} + {amount(g, 'GPU')}" for c, g in sizes) or "no live node"


def unmet(request: Request, nodes: list[Node]) -> str | None:
    """Why no node can run ``request``, or None when one can."""
    if any(n.cpus >= request.cpus and n.gpus >= request.gpus for n in nodes):
        return None
    most_cpus = max((n.cpus for n in nodes), default=0.0)
    most_gpus = max((n.gpus for n in nodes), default=0.0)
    trial = request.what == "a trial"
    if request.cpus > most_cpus:
        asked = f"cpus_per_trial {request.cpus:g}" if trial else f"{request.what} ({amount(request.cpus, 'CPU')})"
        return f"{asked} exceeds the largest node ({amount(most_cpus, 'CPU')})"
    if request.gpus > most_gpus:
        asked = f"gpus_per_trial {request.gpus:g}" if trial else f"{request.what} ({amount(request.gpus, 'GPU')})"
        return f"{asked} exceeds the largest node ({amount(most_gpus, 'GPU')})"
    return (f"no node has both {amount(request.cpus, 'CPU')} and {amount(request.gpus, 'GPU')} for {request.what} "
            f"(nodes: {describe_nodes(nodes)})")


def growth_from_report(report: dict | None, bootstrap_config: bool = False) -> Growth:
    """Whether the autoscaler that reported ``report`` (see ``ray_internals.autoscaler_report``) adds nodes."""
    if bootstrap_config:
        return Growth(True, "~/ray_bootstrap_config.yaml is here: a head started by the Ray cluster launcher")
    if report is None:
        return Growth(False, "no autoscaler reports to this cluster")
    named = sorted(t for t in report["types"] if not READONLY_NODE_TYPE.match(t))
    if named:
        return Growth(True, f"its autoscaler ({report['version']}) manages node types {', '.join(named)}")
    return Growth(False, "its autoscaler runs read-only (the cluster was started without a cluster config, "
                         "so it never adds nodes)")


def cluster_growth(joined: bool, forced: bool | None, patience_s: float = 0.0) -> Growth:
    """Can the connected cluster add nodes? ``forced`` is --autoscaling / --no-autoscaling, None to detect.

    ``patience_s``: how long to wait for a first autoscaler report (a cluster started seconds ago).
    """
    if forced is not None:
        return Growth(forced, f"--{'' if forced else 'no-'}autoscaling was given")
    if not joined:
        return Growth(False, "it is the local Ray instance this command starts")
    from .ray_internals import autoscaler_report

    deadline = time.time() + patience_s
    while True:
        try:
            report = autoscaler_report()
        except Exception as err:  # an older or newer GCS answers in its own way: treat as unknown
            return Growth(False, f"its autoscaler state could not be read ({type(err).__name__})")
        if report is not None or time.time() >= deadline:
            return growth_from_report(report, Path("~/ray_bootstrap_config.yaml").expanduser().exists())
        time.sleep(2.0)  # the autoscaler reports every few seconds once the raylets have sent their load


def live_nodes() -> list[Node]:
    import ray

    return [Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in ray.nodes() if n.get("Alive")]


def refusal(problems: list[str], growth: Growth, nodes: list[Node], joined: bool) -> str:
    remedy = ("lower cpus_per_trial / gpus_per_trial (--cpus-per-trial, --gpus-per-trial) to what a node has, or "
              + ("pass --autoscaling if this cluster adds nodes on demand" if joined
                 else "join a larger cluster with --address"))
    return (f"this Ray cluster cannot run the study as asked: {'; '.join(problems)}. It cannot grow: {growth.reason} "
            f"(nodes: {describe_nodes(nodes)}). Nothing was started; {remedy}")


def _node_of_probe() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def wait_for_nodes(requests: list[Request], timeout_s: float, log: Callable[[str], None],
                   poll_s: float = 30.0) -> None:
    """Waits until each request has run once on some node: the autoscaler then has added what it needs."""
    import ray

    from .ray_internals import autoscaler_report

    probes = {ray.remote(num_cpus=r.cpus, num_gpus=r.gpus)(_node_of_probe).remote(): r for r in requests}
    started = time.time()
    while probes:
        left = timeout_s - (time.time() - started)
        if left <= 0:
            for ref in probes:
                ray.cancel(ref, force=True)
            waiting = "; ".join(f"{amount(r.cpus, 'CPU')} + {amount(r.gpus, 'GPU')} for {r.what}"
                                for r in probes.values())
            raise PendingTimeoutError(
                f"gave up after waiting {timeout_s / 60:g} min (--pending-timeout) for a node with {waiting}; "
                f"nodes now: {describe_nodes(live_nodes())}. Nothing was started or written; check the cluster's "
                f"node types and quotas, then run the same command again (a longer --pending-timeout waits longer)")
        ready, _ = ray.wait(list(probes), timeout=min(poll_s, left))
        for ref in ready:
            probes.pop(ref)
        if probes:
            try:
                launching = (autoscaler_report() or {}).get("launching") or {}
            except Exception:
                launching = {}
            news = (f"; the autoscaler is launching {', '.join(f'{n} x {t}' for t, n in launching.items())}"
                    if launching else "")
            log("waiting for the cluster to add a node with " + "; ".join(
                f"{amount(r.cpus, 'CPU')} + {amount(r.gpus, 'GPU')} for {r.what}" for r in probes.values())
                + f" (nodes now: {describe_nodes(live_nodes())}{news}); giving up in {max(0.0, left) / 60:.1f} min")


def check_capacity(requests: list[Request], joined: bool, forced: bool | None, timeout_s: float | None,
                   log: Callable[[str], None], nodes: list[Node] | None = None) -> Growth:
    """Refuses requests no node meets on a cluster that cannot grow; waits for them on one that can.

    ``nodes``: the nodes of a Ray instance not started yet (this machine); None asks the running one.
    """
    live = nodes is None
    nodes = live_nodes() if live else nodes
    problems = {r: why for r in requests if (why := unmet(r, nodes)) is not None}
    # Refusing on a missing report would turn away a cluster whose autoscaler has not reported yet.
    growth = cluster_growth(joined, forced, patience_s=REPORT_PATIENCE_S if problems and live else 0.0)
    if problems and not growth.can_grow:
        raise StudyRunError(refusal(list(dict.fromkeys(problems.values())), growth, nodes, joined))
    if problems and live:
        timeout = DEFAULT_PENDING_TIMEOUT_S if timeout_s is None else timeout_s
        log(f"the cluster may grow ({growth.reason}); waiting up to {timeout / 60:g} min for it: "
            + "; ".join(problems.values()))
        wait_for_nodes(list(problems), timeout, log)
    return growth
