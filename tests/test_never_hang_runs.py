"""Runs that cannot finish end, and say so: refusals, giving up on resources, budgets, signals, failed trials.

Real Ray, Optuna and MLflow on loopback, tiny studies. The table-driven cases
that need no Ray are in tests/test_never_hang.py.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from icd_tune.platform.cli.main import main
from icd_tune.platform.smoke import local_cpus
from icd_tune.platform.stages.plan import STATE_FILE

ROOT = Path(__file__).resolve().parents[1]

GRID = """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
seeds: [0]
max_retries: 0
"""


@pytest.fixture(autouse=True)
def own_tracking_and_ray(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _state(results: Path, study: str) -> dict:
    (state,) = (results / study).glob(f"*/{STATE_FILE}")
    return json.loads(state.read_text())


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


# Fast tier: refused before Ray starts, as the test checks.
def test_requests_beyond_this_machine_are_refused_before_ray_starts(tmp_path, tiny_study, capsys):
    import ray

    assert not ray.is_initialized()
    path = tiny_study("too_big", GRID)
    results = tmp_path / "results"
    cpus = local_cpus()
    started = time.time()
    assert main([str(path), "--results-dir", str(results), "--cpus-per-trial", str(cpus + 62)]) == 2
    err = capsys.readouterr().err
    assert f"cpus_per_trial {cpus + 62} exceeds the largest node ({cpus} CPU" in err
    assert "It cannot grow: it is the local Ray instance this command starts" in err
    assert time.time() - started < 30 and not ray.is_initialized() and not results.exists()


@pytest.mark.slow
def test_waiting_for_nodes_that_never_come_gives_up_with_nothing_written(tmp_path, tiny_study, ray_session, capsys):
    path = tiny_study("never", GRID)
    results = tmp_path / "results"
    started = time.time()
    code = main([str(path), "--results-dir", str(results), "--cpus-per-trial", "64", "--autoscaling",
                 "--pending-timeout", "0.1"])
    captured = capsys.readouterr()
    assert code == 5 and time.time() - started < 60
    assert "waiting up to 0.1 min for it: cpus_per_trial 64 exceeds the largest node (2 CPUs)" in captured.out
    assert "gave up after waiting 0.1 min (--pending-timeout) for a node with 64 CPUs + 0 GPUs for a trial" in \
        _last_line(captured.err)
    assert not results.exists()


@pytest.mark.slow
def test_trials_that_cannot_start_give_up_resumably(tmp_path, tiny_study, ray_session, capsys):
    import ray

    @ray.remote(num_cpus=2)
    class Hold:  # another job holding every CPU of a cluster that cannot grow
        def ping(self):
            return True

    hold = Hold.remote()
    ray.get(hold.ping.remote())
    path = tiny_study("held", GRID)
    results = tmp_path / "results"
    try:
        code = main([str(path), "--results-dir", str(results), "--pending-timeout", "0.1"])
    finally:
        ray.kill(hold)
    captured = capsys.readouterr()
    assert code == 5, captured.err[-2000:]
    assert "waiting for resources: 2 trial(s) pending and none running" in captured.out
    last = _last_line(captured.err)
    # 6 s (0.1 min) and at most a few seconds of steps: it gave up at the timeout, not before nor long after.
    assert re.match(r"error: cut short \(pending timeout\): no trial could start for [6-9] s \(--pending-timeout 0\.1\)",
                    last), last
    assert last.endswith(f"continue with: python run_ablation.py {path} --results-dir {results} "
                         f"--pending-timeout 0.1 --resume")
    assert _state(results, "held")["status"] == "interrupted"
    assert main([str(path), "--results-dir", str(results), "--resume"]) == 0
    report = capsys.readouterr().out
    assert "Trials: 2 total | 2 completed" in report and _state(results, "held")["status"] == "finished"


@pytest.mark.slow
def test_time_budget_cuts_the_study_short_and_resume_finishes_it(tmp_path, tiny_study, ray_session, capsys):
    path = tiny_study("budget", GRID.replace("levels: [0.0, 0.5]", "levels: [0.0, 0.25, 0.5, 1.0]")
                      + "max_concurrent: 1\n", epochs=10, steps=2)
    results = tmp_path / "results"
    code = main([str(path), "--results-dir", str(results), "--time-budget", "12s"])
    captured = capsys.readouterr()
    assert code == 4, captured.err[-2000:]
    assert "stopping the study: the time budget (12s) was spent" in captured.out
    assert "CUT SHORT (time budget)" in captured.out and "## Unfinished trials (" in captured.out
    last = _last_line(captured.err)
    assert last.startswith("error: cut short (time budget)") and last.endswith("--time-budget 12s --resume")
    db = results / "budget" / "mlflow.db"
    with sqlite3.connect(db) as con:
        parent_status = con.execute("select status from runs r where not exists (select 1 from tags t where "
                                    "t.run_uuid = r.run_uuid and t.key = 'mlflow.parentRunId')").fetchall()
    assert parent_status == [("KILLED",)]

    assert main([str(path), "--results-dir", str(results), "--resume"]) == 0
    assert "Trials: 4 total | 4 completed" in capsys.readouterr().out
    with sqlite3.connect(db) as con:
        runs = con.execute("select status from runs").fetchall()
        steps = con.execute("select run_uuid, count(*), count(distinct step) from metrics "
                            "where key = 'train/loss' group by run_uuid").fetchall()
    assert sorted(runs) == [("FINISHED",)] * 5  # one parent, four children: continued, not duplicated
    assert len(steps) == 4 and all(n == distinct == 10 for _, n, distinct in steps)


@pytest.mark.slow
def test_all_trials_failing_exits_1_with_the_first_reason_last(tmp_path, tiny_study, ray_session, capsys):
    path = tiny_study("all_fail", GRID + "optim: {epochs: 1, batch_size: 32, lr: 1.0e+30}\n", epochs=1)
    assert main([str(path), "--results-dir", str(tmp_path / "results")]) == 1
    last = _last_line(capsys.readouterr().err)
    assert last.startswith("error: all 2 trials failed; the first failure, 'invariance_weight=0.0 seed=0': "
                           "diverged at epoch 1")


# Some trials failing (exit 3, how many, the first reason): in tests/test_resilience.py,
# test_diverging_trial_fails_alone_and_is_recorded, on the run that records diverged trials.


def _run_then_signal(cmd, cwd, results: Path, study: str, signum: int, log_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and "completed: " not in log_path.read_text():
                time.sleep(0.5)
            assert "completed: " in log_path.read_text(), log_path.read_text()[-3000:]
            os.kill(proc.pid, signum)  # the driver only, as a terminal or a scheduler signals it
            return proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _assert_cut_short_by(name: str, log: Path, results: Path):
    out = log.read_text()
    assert _last_line(out).startswith(f"error: cut short ({name}): ") and _last_line(out).endswith("--resume")
    assert "## Unfinished trials (" in out and _state(results, "signalled")["status"] == "interrupted"


@pytest.mark.slow
def test_a_signalled_run_exits_non_zero_and_resumes(tmp_path, tiny_study):
    """SIGINT (130) and SIGTERM (143) on one study: the first run takes SIGINT after a trial completes, its
    --resume takes SIGTERM after the next one completes, and a last --resume finishes the study."""
    path = tiny_study("signalled", GRID.replace("levels: [0.0, 0.5]", "levels: [0.0, 0.25, 0.5]")
                      + "max_concurrent: 1\n", epochs=6, steps=2)
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "run_ablation.py"), str(path), "--results-dir", str(results)]
    assert _run_then_signal(cmd, tmp_path, results, "signalled", signal.SIGINT, tmp_path / "run.log") == 130
    _assert_cut_short_by("SIGINT", tmp_path / "run.log", results)
    # The resumed run is signalled in turn: a trial completes in it first, so it made progress.
    assert _run_then_signal(cmd + ["--resume"], tmp_path, results, "signalled", signal.SIGTERM,
                            tmp_path / "resumed.log") == 143
    _assert_cut_short_by("SIGTERM", tmp_path / "resumed.log", results)
    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Trials: 3 total | 3 completed" in resumed.stdout


@pytest.mark.slow
def test_smoke_of_a_shipped_cifar_study_runs_offline_here(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    started = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "run_ablation.py"), str(ROOT / "ablations" / "invariance_weight.yaml"),
                          "--smoke", "--results-dir", str(tmp_path / "results"), "--data-dir", str(tmp_path / "data")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert time.time() - started < 240
    assert "smoke: CIFAR-100 is not in" in out.stdout and "synthetic 32x32 images of 100 classes" in out.stdout
    assert "completed: invariance_weight=0.0 seed=0" in out.stdout
    if local_cpus() < 4:
        assert f"smoke: 4 CPUs per trial asked, this machine has {local_cpus()}" in out.stdout
