"""A tracking server that goes away mid-study: records wait in order, bounded; back in time, all reach it; gone,
the study finishes with exit status 6 and --sync-tracking fills MLflow from the run folder, nothing twice."""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from ray import tune

from icd_tune.platform.cli.main import EXIT_TRACKING_INCOMPLETE, exit_status, main
from icd_tune.platform.runner import RunOptions, run_study
from icd_tune.platform.study.definition import load_study
from icd_tune.platform.tracking.outage import TrackingLink, is_unreachable


class Unreachable(ConnectionError):
    pass


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_link_queues_in_order_through_an_outage_and_sends_when_back():
    sent, lines, clock = [], [], FakeClock()
    down = [False]

    def call(n):
        def run():
            if down[0]:
                raise Unreachable("refused")
            sent.append(n)
        return run

    link = TrackingLink("sqlite:///x.db", timeout_s=60, max_queued=10, log=lines.append, clock=clock)
    link.send(call(1))
    down[0] = True
    link.send(call(2))
    link.send(call(3))
    assert sent == [1] and len(link.queue) == 2 and "unreachable" in lines[-1] and len(lines) == 1
    clock.now = 10
    down[0] = False
    assert link.flush() and sent == [1, 2, 3] and "back after 10 s; 2 waiting record(s) sent" in lines[-1]
    assert not link.incomplete and len(lines) == 2


@pytest.mark.parametrize("bound", ["time", "size"])
def test_link_gives_up_past_its_bound_and_sends_nothing_more(bound):
    sent, lines, clock = [], [], FakeClock()

    def failing():
        raise Unreachable("refused")

    link = TrackingLink("sqlite:///x.db", timeout_s=30, max_queued=3, log=lines.append, clock=clock)
    link.send(failing)
    if bound == "time":
        clock.now = 31
        link.flush(force=True)
        assert "tracking.outage_timeout 30 s" in lines[-1]
    else:
        for _ in range(3):
            link.send(failing)
        assert "more than 3 records waiting (tracking.max_queued)" in lines[-1]
    assert link.incomplete and not link.queue and "INCOMPLETE" in lines[-1] and len(lines) == 2
    link.send(lambda: sent.append(1))
    assert sent == [] and not link.settle()


def test_unreachable_tells_a_down_server_from_a_refused_request():
    from mlflow.exceptions import MlflowException
    import requests

    try:
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded")
        except Exception as err:
            raise MlflowException(f"API request failed with exception {err}")
    except MlflowException as wrapped:
        assert is_unreachable(wrapped)
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

    assert is_unreachable(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert not is_unreachable(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))
    assert not is_unreachable(ValueError("no"))


class Server:
    """A real ``mlflow server`` on 127.0.0.1 that can be SIGKILLed and started again on its port and store."""

    def __init__(self, folder):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers",
             "1", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "server_artifacts")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not come up")

    def kill(self, sig=signal.SIGKILL):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=20)
            self.proc = None


LIVE = {}  # what the callback below reaches without holding it: Tune pickles its callbacks


class KillServerAt(tune.Callback):
    """SIGKILLs the server at the first epoch-1 result (after the trials' callback logged it); restarts it later."""

    def __init__(self, server, restart_after: float | None):
        LIVE["server"], LIVE["restarter"] = server, None
        self.restart_after = restart_after
        self.killed = False

    @property
    def restarter(self):
        return LIVE.get("restarter")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.killed and result.get("epoch") == 1:
            self.killed = True
            server = LIVE["server"]
            server.kill()
            if self.restart_after is not None:
                def restart():
                    time.sleep(self.restart_after)
                    server.start()
                LIVE["restarter"] = threading.Thread(target=restart, daemon=True)
                LIVE["restarter"].start()


OUTAGE_STUDY = """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
seeds: [0]
log_students: false
system_metrics: false
tracking: {outage_timeout: %s, request_retries: 0, request_timeout: 10}
"""


def assert_complete(url, experiment_id, parent_run_id, epochs=2):
    """Every trial has exactly one child run, FINISHED, with each epoch's metrics once; the parent finished."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    children = [r for r in client.search_runs([experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    trial_ids = [r.data.tags["icd_tune.trial_id"] for r in children]
    assert len(children) == 2 and len(set(trial_ids)) == 2, trial_ids
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["icd_tune.end"] == "completed"
        for key in ("train/loss", "val/acc1", "epoch"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, epochs + 1)), key
        assert run.data.params["loss.invariance_weight"] in ("0.0", "0.5")
    parent = client.get_run(parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["icd_tune.end"] == "2 trials, 0 failed"
    assert len(client.get_metric_history(parent_run_id, "study/wall_seconds")) == 1
    assert "report.txt" in {a.path for a in client.list_artifacts(parent_run_id)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for both outage tests (each its own study, so its own experiment): starting one takes seconds."""
    server = Server(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    yield server
    server.kill(signal.SIGTERM)


@pytest.mark.slow
def test_server_back_in_time_gets_every_record_and_exit_0(tmp_path, tiny_study, ray_session, server):
    killer = KillServerAt(server, restart_after=0.0)
    lines = []
    try:
        path = tiny_study("outage_back", OUTAGE_STUDY % 90)
        out = run_study(load_study(path), RunOptions(results_dir=str(tmp_path / "results"), tracking_uri=server.url,
                                                     extra_callbacks=[killer]), log=lines.append)
        assert killer.killed
        assert exit_status(out) == (0, None)
        assert not out["tracking_incomplete"]
        said = [line for line in lines if line.startswith(("tracking server", "gave up on", "the trials are done"))]
        assert len(said) in (2, 3), said  # went away, (trials done, waiting), back
        assert "is unreachable" in said[0] and "is back after" in said[-1]
        assert_complete(server.url, out["experiment_id"], out["parent_run_id"])
    finally:
        if killer.restarter:
            killer.restarter.join(timeout=120)


@pytest.mark.slow
def test_server_gone_for_good_exits_6_and_sync_tracking_fills_mlflow_once(tmp_path, tiny_study, ray_session, server,
                                                                          capsys):
    import json

    killer = KillServerAt(server, restart_after=None)
    lines = []
    try:
        path = tiny_study("outage_gone", OUTAGE_STUDY % 2)
        results = tmp_path / "results"
        command = [str(path), "--results-dir", str(results), "--tracking-uri", server.url]
        out = run_study(load_study(path), RunOptions(results_dir=str(results), tracking_uri=server.url,
                                                     extra_callbacks=[killer], command=command), log=lines.append)
        assert killer.killed and out["tracking_incomplete"]
        code, message = exit_status(out)
        assert code == EXIT_TRACKING_INCOMPLETE == 6
        assert "--sync-tracking" in message and "2 trials, 0 failed" in message
        run_folder = out["run_folder"]
        assert (run_folder / "report.txt").is_file() and (run_folder / "history.parquet").is_file()
        assert [t["status"] for t in out["trials"]] == ["completed", "completed"]
        said = [line for line in lines if line.startswith(("tracking server", "gave up on", "the trials are done"))]
        assert "is unreachable" in said[0] and said[-1].startswith("gave up on tracking server"), said
        assert "MLflow's records of this run are incomplete" in lines[-1]  # its tiny study exports no model
        assert not json.loads((run_folder / "study_state.json").read_text())["tracking"]["complete"]

        server.start()
        assert f"--sync-tracking {run_folder}" in out["sync_command"]
        capsys.readouterr()
        assert main([*command, "--sync-tracking", str(run_folder)]) == 0
        assert "tracking synced from" in capsys.readouterr().out
        assert_complete(server.url, out["experiment_id"], out["parent_run_id"])
        # Again: nothing more is logged (the state says complete; the runs are found by their tags).
        assert main([*command, "--sync-tracking", str(run_folder)]) == 0
        assert_complete(server.url, out["experiment_id"], out["parent_run_id"])
    finally:
        if server.proc is None:
            server.start()


def test_exit_status_6_yields_to_a_cut_short_run_and_wins_over_failed_trials():
    trials = [{"name": "a", "status": "failed", "error": "diverged"}, {"name": "b", "status": "completed"}]
    result = {"trials": trials, "tracking_incomplete": True, "run_folder": "R",
              "sync_command": "python run_ablation.py s.yaml --sync-tracking R"}
    code, message = exit_status(result)
    assert code == 6 and "2 trials, 1 failed" in message and message.endswith("--sync-tracking R")
    assert exit_status({**result, "trials": trials[:1]})[0] == 6
    cut = {**result, "stop_kind": "time budget", "stop_reason": "spent", "resume_command": "... --resume"}
    code, message = exit_status(cut)
    assert code == 4 and "records are incomplete" in message
    assert exit_status({**result, "tracking_incomplete": False})[0] == 3


def test_tracking_options_parse():
    from icd_tune.platform.cli.main import build_parser

    args = build_parser().parse_args(["s.yaml", "--tracking-wait", "10m"])
    assert args.tracking_wait == 600 and args.sync_tracking is False
    assert build_parser().parse_args(["s.yaml", "--sync-tracking"]).sync_tracking is True
    assert build_parser().parse_args(["s.yaml", "--sync-tracking", "R"]).sync_tracking == "R"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["s.yaml", "--sync-tracking", "--resume"])
