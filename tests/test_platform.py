"""End to end through real Ray Tune, a real Optuna study and a real MLflow sqlite store."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ray import tune

from icd_tune.platform.raytune.ray_internals import snapshots_taken
from icd_tune.platform.runner import RunOptions, run_study
from icd_tune.platform.study.definition import load_study

ROOT = Path(__file__).resolve().parents[1]


def mlflow_client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


class SnapshotProbe(tune.Callback):
    """Counts Tune's loop steps and checks after each that Tune's latest snapshot holds every trial so far.

    It reads the snapshot where Tune writes it, the driver's staging folder; Tune's syncer copies it
    into the run folder.
    """

    def __init__(self):
        self.steps = 0
        self.missing: list[str] = []

    def on_step_end(self, iteration, trials, **info):
        self.steps += 1
        if not trials:
            return
        ids = set()
        for state in Path(trials[0].storage.experiment_driver_staging_path).glob("experiment_state-*.json"):
            ids |= {json.loads(data)["trial_id"] for data, _ in json.loads(state.read_text())["trial_data"]}
        self.missing += [t.trial_id for t in trials if t.trial_id not in ids]


@pytest.mark.slow
def test_grid_study_logs_one_child_run_per_trial(finished_grid):
    # The shared grid (conftest.py): 2 levels x 2 seeds, 2 epochs, a transfer probe after the last epoch.
    out = finished_grid.out
    client = mlflow_client(out["tracking_uri"])
    experiment = client.get_experiment(out["experiment_id"])
    assert experiment.name == "grid"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([out["experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["parent_run_id"]]
    assert len(parents) == 1 and parents[0].info.run_name == "grid"
    assert sorted(r.info.run_name for r in children) == [
        "invariance_weight=0.0 seed=0", "invariance_weight=0.0 seed=1",
        "invariance_weight=0.5 seed=0", "invariance_weight=0.5 seed=1"]
    for run in children:
        level = run.info.run_name.split()[0].split("=")[1]
        assert float(run.data.params["loss.invariance_weight"]) == float(level)
        assert run.data.params["optim.epochs"] == "2" and run.data.params["student"] == "resnet8"
        assert run.info.status == "FINISHED" and run.data.tags["icd_tune.end"] == "completed"
        assert run.data.tags["ray.node_ip"] == "127.0.0.1"
        assert "version.torch" in run.data.tags and "icd_tune.trial_id" in run.data.tags
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc1")]
        assert steps == [1, 2]
        assert len(client.get_metric_history(run.info.run_id, "train/loss_invariance")) == 2
        # The transfer probe ran once, after the last epoch, and is logged at that step.
        probe = client.get_metric_history(run.info.run_id, "transfer/synthetic/acc1")
        assert [m.step for m in probe] == [2] and 0.0 <= probe[0].value <= 100.0
        assert run.data.params["transfer.epochs"] == "2"
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert "best/val/acc1" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(out["parent_run_id"])}
    assert {"report.txt", "trials.parquet", "history.parquet", "learning_curves.png",
            "factor_invariance_weight.png"} <= artifacts
    folder = out["run_folder"]
    trials = pq.read_table(folder / "trials.parquet").to_pydict()
    assert len(trials["trial_id"]) == 4
    probed = {t["trial_id"]: t["final"]["transfer/synthetic/acc1"] for t in out["trials"]}
    assert dict(zip(trials["trial_id"], trials["final.transfer/synthetic/acc1"])) == probed
    assert pq.read_table(folder / "history.parquet").num_rows == 8
    assert "diff vs 0" in out["report"]
    section = out["report"].split("## Transfer linear probe")[1].split("## ")[0]
    assert "transfer/synthetic/acc1" in section and section.count("(n=2)") == 2


@pytest.mark.slow
def test_paper_protocol_with_a_teacher_per_point(tmp_path, tiny_study, ray_session):
    """Protocol paper, two teachers from RepDistiller-format files through one template, and published numbers
    beside the measured ones: one Ray run covers them all (the output cache is off: building it costs more here)."""
    import torch

    from icd_tune.method.models import create_model

    for arch, seed in (("resnet8", 1), ("resnet14", 2)):
        torch.manual_seed(seed)
        folder = tmp_path / "teachers" / f"{arch}_vanilla"
        folder.mkdir(parents=True)
        torch.save({"model": create_model(arch, 4).state_dict()}, folder / "ckpt_epoch_240.pth")
    path = tiny_study("paper", f"""
    protocol: paper
    teachers_dir: {tmp_path / "teachers"}
    teacher: {{arch: resnet8, checkpoint: "{{teachers_dir}}/{{arch}}_vanilla/ckpt_epoch_240.pth"}}
    mode: grid
    grid:
      pair:
        levels:
          - {{label: resnet8->resnet8, set: {{teacher.arch: resnet8}}}}
          - {{label: resnet14->resnet8, set: {{teacher.arch: resnet14}}}}
      method:
        levels:
          - {{label: ICD+KD, set: {{loss.kd_weight: 1.0}}}}
    reported:
      resnet8->resnet8: {{teacher: 50.0, student: 40.0, ICD+KD: 45.5}}
    """)
    out = run_study(load_study(path, ["data.val_fraction=0"]), RunOptions(results_dir=str(tmp_path / "results")),
                    log=lambda *_: None)
    assert [t["status"] for t in out["trials"]] == ["completed", "completed"]
    for record in out["trials"]:
        final = record["final"]
        assert "val/acc1" not in final and "test/acc1_at_best_val" not in final
        assert final["test/best_acc1"] >= final["test/acc1"] and 1 <= final["test/best_epoch"] <= 2
        arch = record["levels"]["pair"].split("->")[0]
        assert record["params"]["teacher.checkpoint"] == str(tmp_path / "teachers" / f"{arch}_vanilla" / "ckpt_epoch_240.pth")
    flat = " ".join(out["report"].split())
    assert "Protocol: paper" in flat and "test/best_acc1 (selected on test)" in flat and "Best level" not in flat
    measured = next(t["final"]["test/best_acc1"] for t in out["trials"] if t["levels"]["pair"] == "resnet8->resnet8")
    assert (f"| resnet8->resnet8 | 50.00 | 40.00 | ICD+KD | {measured:.2f} +- n/a (n=1) | 45.50 | {measured - 45.5:+.2f} |"
            in re.sub(" +", " ", out["report"]))
    client = mlflow_client(out["tracking_uri"])
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["icd_tune.protocol"] == "paper" and not any(k.startswith("best/") for k in parent.data.metrics)
    teachers = json.loads(parent.data.tags["icd_tune.teacher"])["teachers"]
    assert sorted(t["path"] for t in teachers.values()) == sorted(
        str(tmp_path / "teachers" / f"{a}_vanilla" / "ckpt_epoch_240.pth") for a in ("resnet14", "resnet8"))
    for run in client.search_runs([out["experiment_id"]], "tags.mlflow.parentRunId = '%s'" % out["parent_run_id"]):
        assert run.data.params["protocol"] == "paper" and run.data.params["data.val_fraction"] == "0.0"
        assert "selected on the test set" in run.data.tags["icd_tune.selection"]
        assert run.data.tags["icd_tune.student_weights"].startswith("best test/acc1 (selected on the test set")
        assert len(client.get_metric_history(run.info.run_id, "test/best_acc1")) == 2
        # Each trial's lineage names its own teacher, not the study's first.
        arch = run.data.params["teacher.arch"]
        assert run.data.tags["icd_tune.teacher.arch"] == arch
        assert run.data.tags["icd_tune.teacher.checkpoint"] == run.data.params["teacher.checkpoint"]
        assert run.data.tags["icd_tune.teacher.outputs"] == "live teacher"


@pytest.mark.slow
def test_search_with_asha_records_pruned_trials_in_optuna(tmp_path, tiny_study, ray_session):
    import optuna

    path = tiny_study("search", """
    mode: search
    search:
      space:
        loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}
        optim.lr: {type: loguniform, low: 0.001, high: 0.2}
      num_samples: 8
      seed: 3
    asha: {enabled: true, grace_period: 1, reduction_factor: 2}
    max_concurrent: 2
    seeds: [0]
    """, epochs=4, steps=1)
    probe, taken = SnapshotProbe(), snapshots_taken()
    out = run_study(load_study(path), RunOptions(results_dir=str(tmp_path / "results"), extra_callbacks=[probe]),
                    log=lambda *_: None)
    # The searcher adds trials as slots free up: each was in Tune's snapshot by the end of the step
    # that added it, and that took far fewer snapshots than the loop took steps.
    assert probe.missing == []
    assert 8 <= snapshots_taken() - taken < probe.steps // 2, (snapshots_taken() - taken, probe.steps)
    stopped = [t for t in out["trials"] if t["status"] == "stopped"]
    completed = [t for t in out["trials"] if t["status"] == "completed"]
    assert len(out["trials"]) == 8
    assert stopped, "ASHA stopped no trial"
    storage = f"sqlite:///{out['run_folder'] / 'optuna.db'}"
    ot = optuna.load_study(study_name="search", storage=storage)
    states = [t.state for t in ot.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == len(stopped)
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(completed)
    for t in ot.trials:
        if t.state == optuna.trial.TrialState.PRUNED:
            assert t.intermediate_values and max(t.intermediate_values) < 4  # stopped before the budget
            assert t.value is not None  # recorded with its last value
    client = mlflow_client(out["tracking_uri"])
    ends = [r.data.tags["icd_tune.end"] for r in client.search_runs([out["experiment_id"]])
            if "mlflow.parentRunId" in r.data.tags]
    assert sum(e.startswith("stopped early at epoch") for e in ends) == len(stopped)
    # The parent run holds the Optuna storage as the search left it.
    local = client.download_artifacts(out["parent_run_id"], "study/optuna.db", str(tmp_path / "downloaded"))
    logged = optuna.load_study(study_name="search", storage=f"sqlite:///{local}")
    assert [t.state for t in logged.trials] == states


@pytest.mark.slow
def test_smoke_runs_one_short_trial(tmp_path, tiny_study, ray_session):
    path = tiny_study("smoke", """
    mode: grid
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
    seeds: [0, 1]
    smoke: {epochs: 1, max_steps: 2, teacher_epochs: 1}
    """, epochs=50, steps=50)
    out = run_study(load_study(path), RunOptions(smoke=True, results_dir=str(tmp_path / "results")), log=lambda *_: None)
    assert len(out["trials"]) == 1
    trial = out["trials"][0]
    assert trial["name"] == "invariance_weight=0.0 seed=0" and trial["epochs"] == 1 and trial["status"] == "completed"


def _count_runs(db: Path):
    con = sqlite3.connect(db)
    try:
        rows = con.execute("select r.run_uuid, r.status, (select count(*) from tags t where t.run_uuid = r.run_uuid "
                           "and t.key = 'mlflow.parentRunId') from runs r").fetchall()
        logged = con.execute("select count(*) from metrics where key = 'train/loss'").fetchone()[0]
    finally:
        con.close()
    return rows, logged


def run_then_kill(cmd, cwd, db: Path, min_logged: int, log_path: Path):
    """Starts a study, SIGKILLs its whole process group once ``min_logged`` epochs are in MLflow.

    Returns the environment used, so the ``--resume`` run sees the same one. The study must start
    its own local Ray instance and use its own tracking store, whatever this process has.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 180
        try:
            while time.time() < deadline:
                time.sleep(0.5)
                try:
                    _, logged = _count_runs(db) if db.exists() else ([], 0)
                except sqlite3.OperationalError:
                    continue
                if logged >= min_logged:
                    break
            else:
                pytest.fail("the study never got going:\n" + log_path.read_text()[-3000:])
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return env


@pytest.mark.slow
def test_study_reads_teacher_outputs_from_the_cache(tmp_path, tiny_study, ray_session):
    path = tiny_study("cached", """
    teacher: {arch: resnet8, optim: {epochs: 1, batch_size: 16}, cache: on, cache_dtype: float32}
    data: {name: synthetic, num_train: 60, num_test: 20, num_classes: 4, val_fraction: 0.2}
    optim: {epochs: 2, batch_size: 16, lr: 0.05}
    mode: grid
    grid:
      kd_weight: {key: loss.kd_weight, levels: [1.0]}
    seeds: [0]
    """)
    logs = []
    out = run_study(load_study(path), RunOptions(results_dir=str(tmp_path / "results")), log=logs.append)
    assert any(str(m).startswith("teacher-output cache: cache on") for m in logs)
    caches = list((tmp_path / "results" / "teachers").glob("outputs-*.bin"))
    assert len(caches) == 1 and caches[0].stat().st_size == 48 * 162 * (64 + 4) * 4
    assert [t["status"] for t in out["trials"]] == ["completed"]
    assert out["trials"][0]["final"]["train/loss_kd"] > 0


@pytest.mark.slow
def test_killed_driver_resumes_its_optuna_study_without_duplicate_runs_and_never_mixes_studies(tmp_path, tiny_study):
    """SIGKILL of the whole run mid-search; a --resume that changes the study is refused and changes nothing; a
    --resume that only moves the trials (CPUs per trial) continues the same Optuna study and MLflow runs."""
    import optuna

    path = tiny_study("search_resume", """
    mode: search
    search:
      space:
        loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}
      num_samples: 4
      seed: 0
    max_concurrent: 1
    seeds: [0]
    """, epochs=3, steps=6)
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "run_ablation.py"), str(path), "--results-dir", str(results)]
    db = results / "search_resume" / "mlflow.db"
    # Past the first trial, before the last.
    env = run_then_kill(cmd, tmp_path, db, min_logged=4, log_path=tmp_path / "first_run.log")
    rows_before, logged_before = _count_runs(db)
    assert logged_before < 12
    folder = next((results / "search_resume").glob("2*"))
    state_file = folder / "study_state.json"
    state_before = state_file.read_bytes()
    storage = f"sqlite:///{folder / 'optuna.db'}"
    before = optuna.load_study(study_name="search_resume", storage=storage)
    started_before = len(before.trials)
    assert 1 <= started_before < 4
    assert before.user_attrs["optuna_version"] == optuna.__version__

    changed = subprocess.run(cmd + ["--resume", "--set", "loss.kd_weight=0.5"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=400)
    assert changed.returncode == 2, changed.stdout[-3000:] + changed.stderr[-3000:]
    assert "would mix two studies" in changed.stderr and "loss.kd_weight: 1.0 -> 0.5" in changed.stderr
    assert _count_runs(db) == (rows_before, logged_before) and state_file.read_bytes() == state_before
    assert len(optuna.load_study(study_name="search_resume", storage=storage).trials) == started_before

    # A child run the killed driver had opened for a trial Ray never recorded: nothing will continue it.
    client = mlflow_client(f"sqlite:///{db}")
    parent_id = json.loads(state_before)["parent_run_id"]
    orphan = client.create_run(client.get_run(parent_id).info.experiment_id, run_name="orphan",
                               tags={"mlflow.parentRunId": parent_id, "icd_tune.trial_id": "never_recorded"}).info.run_id
    out = subprocess.run(cmd + ["--resume", "--cpus-per-trial", "1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    after = optuna.load_study(study_name="search_resume", storage=storage)
    # The same study continued: its earlier trials kept, no fresh study, no extra samples.
    assert [t.params for t in after.trials[:started_before - 1]] == [t.params for t in before.trials[:started_before - 1]]
    complete = [t for t in after.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    # A kill between Optuna's ask() and Ray's snapshot can leave one orphan, which resume closes as FAIL.
    others = [t for t in after.trials if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.state == optuna.trial.TrialState.FAIL and "orphaned" in t.user_attrs["failure"] for t in others)
    rows, logged = _count_runs(db)
    parents = [r for r in rows if r[2] == 0]
    children = [r for r in rows if r[2] == 1 and r[0] != orphan]
    assert len(parents) == 1 and len(children) == 4
    assert all(status == "FINISHED" for run_id, status, _ in rows if run_id != orphan)
    assert logged == 12  # 4 trials x 3 epochs, each epoch logged exactly once
    closed = client.get_run(orphan)
    assert closed.info.status == "KILLED" and closed.data.tags["icd_tune.end"].startswith("interrupted: its driver")


def test_searcher_ignores_trials_optuna_already_closed(tmp_path, tiny_study):
    """After a killed driver resumes, Ray may replay a trial that Optuna had already closed."""
    import optuna

    from icd_tune.platform.runner import make_searcher, search_domains

    study = load_study(tiny_study("replay", """
    mode: search
    search:
      space:
        loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}
      num_samples: 2
    """, epochs=3))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(study, storage, max_epochs=3)
    assert searcher.set_search_properties("val/acc1", "max", {"seed": 0, "params": search_domains(study)})
    assert "params" in searcher.suggest("t1")
    searcher.on_trial_result("t1", {"val/acc1": 40.0, "epoch": 2, "training_iteration": 2})
    searcher.on_trial_complete("t1", {"val/acc1": 50.0, "epoch": 3})
    searcher._completed_trials.discard("t1")  # the searcher state of an older snapshot
    searcher.on_trial_result("t1", {"val/acc1": 51.0, "epoch": 3, "training_iteration": 3})
    searcher.on_trial_complete("t1", {"val/acc1": 51.0, "epoch": 3})
    (trial,) = optuna.load_study(study_name="replay", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 50.0
