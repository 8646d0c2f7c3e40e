"""Failures with nothing lost, bad input with nothing written, a real MLflow server, no leaked secrets."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from ray import tune

from icd_tune.platform.cli.main import main
from icd_tune.platform.runner import RunOptions, run_study
from icd_tune.platform.study.definition import load_study



class KillWorkerOnce(tune.Callback):
    """SIGKILLs the trial's worker process right after it reports epoch ``at``, mid-way through the next."""

    def __init__(self, at: int):
        self.at = at
        self.killed_pid = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.killed_pid is None and result.get("epoch") == self.at:
            self.killed_pid = result["pid"]
            os.kill(self.killed_pid, signal.SIGKILL)


@pytest.mark.slow
def test_killed_worker_restarts_from_checkpoint_with_identical_results(tmp_path, tiny_study, ray_session):
    path = tiny_study("killed", """
    mode: grid
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.5]}
    seeds: [0]
    max_retries: 2
    """, epochs=4, steps=4)
    study = load_study(path)
    killer = KillWorkerOnce(at=2)
    out = run_study(study, RunOptions(results_dir=str(tmp_path / "results"), extra_callbacks=[killer]),
                    log=lambda *_: None)
    assert killer.killed_pid is not None
    (trial,) = out["trials"]
    assert trial["status"] == "completed" and trial["epochs"] == 4

    # The same trial, uninterrupted, in this process with the same teacher and thread count.
    from icd_tune.method.data import load_data
    from icd_tune.method.teachers import get_teacher
    from icd_tune.method.train import Trainer

    cfg = study.trial_config(study.grid_points()[0].overrides, 0)
    data = load_data(cfg.data)
    teacher, info = get_teacher(cfg.teacher, data, cfg.data, device="cpu",
                                cache_dir=tmp_path / "results" / "teachers", log=lambda *_: None)
    assert info["source"] == "cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = Trainer(cfg, data, teacher).fit()
    finally:
        torch.set_num_threads(threads)
    for key in ("train/loss", "train/loss_contrastive", "train/loss_invariance", "val/acc1", "test/acc1", "test/acc5"):
        assert trial["final"][key] == final[key], key
    # Every epoch logged exactly once in MLflow despite the restart.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    child = [r for r in client.search_runs([out["experiment_id"]]) if "mlflow.parentRunId" in r.data.tags][0]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_diverging_trial_fails_alone_and_is_recorded(tmp_path, tiny_study, ray_session, capsys):
    """A search where some trials diverge: they fail alone, recorded in Optuna, MLflow and the report, and the
    command exits 3 saying how many failed (this run also covers what a grid with one diverging level did)."""
    import optuna
    import pyarrow.parquet as pq

    path = tiny_study("diverge", """
    mode: search
    search:
      space:
        optim.lr: {type: choice, values: [0.05, 1.0e+30]}
      num_samples: 4
      seed: 1
    seeds: [0]
    """, epochs=2, steps=2)
    results = tmp_path / "results"
    code = main([str(path), "--results-dir", str(results)])
    captured = capsys.readouterr()
    (run_folder,) = (results / "diverge").glob("2*")
    state = json.loads((run_folder / "study_state.json").read_text())
    trials = pq.read_table(run_folder / "trials.parquet").to_pylist()
    report = (run_folder / "report.txt").read_text()
    failed = [t for t in trials if t["status"] == "failed"]
    ok = [t for t in trials if t["status"] == "completed"]
    assert failed and ok, [t["name"] for t in trials]
    for t in failed:
        assert "lr=1e+30" in t["name"]
        assert "diverged at epoch 1" in t["error"] and "loss term" in t["error"]
    # Some trials failing: exit status 3, and the last line says how many and names the first.
    assert code == 3, captured.err[-2000:]
    assert f"Trials: 4 total | {len(ok)} completed | 0 stopped early | {len(failed)} failed" in captured.out
    last = [line for line in captured.err.splitlines() if line.strip()][-1]
    assert last.startswith(f"error: {len(failed)} of 4 trials failed (the first, '{failed[0]['name']}': diverged")
    ot = optuna.load_study(study_name="diverge", storage=f"sqlite:///{run_folder / 'optuna.db'}")
    # PRUNED, not FAIL, so TPE learns from them: valued at the diverging epoch with the worst value seen.
    diverged = [t for t in ot.trials if "diverged" in t.user_attrs]
    assert len(diverged) == len(failed) and not [t for t in ot.trials if t.state == optuna.trial.TrialState.FAIL]
    seen = {v for t in ot.trials if t not in diverged for v in t.intermediate_values.values()}
    for t in diverged:
        assert t.state == optuna.trial.TrialState.PRUNED and "diverged at epoch 1" in t.user_attrs["diverged"]
        assert set(t.intermediate_values) <= {1} and set(t.intermediate_values.values()) <= seen
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state["tracking_uri"])
    children = [r for r in client.search_runs([state["experiment_id"]]) if "mlflow.parentRunId" in r.data.tags]
    failed_runs = [r for r in children if r.info.status == "FAILED"]
    assert len(failed_runs) == len(failed)
    assert all(r.data.tags["icd_tune.end"].startswith("failed: diverged at epoch 1") for r in failed_runs)
    assert "Failed trials (" in report and "diverged at epoch 1" in report


GOOD_BODY = """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.5]}
seeds: [0]
"""


def _nothing_written(tmp_path, keep):
    return sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_unwritable_results_folder_is_refused_up_front(tmp_path, tiny_study, capsys):
    path = tiny_study("unwritable", GOOD_BODY)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the results folder should go")
    assert main([str(path), "--results-dir", str(blocker / "results")]) == 2
    err = capsys.readouterr().err
    assert "results folder" in err and "is a file, not a folder" in err
    assert _nothing_written(tmp_path, ["unwritable.yaml", "not_a_folder"])


def test_unwritable_tracking_store_is_refused_up_front(tmp_path, tiny_study, capsys):
    path = tiny_study("tracking", GOOD_BODY)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code = main([str(path), "--results-dir", str(tmp_path / "results"),
                 "--tracking-uri", f"sqlite:///{blocker}/mlflow.db"])
    assert code == 2
    assert "MLflow tracking store folder" in capsys.readouterr().err
    assert _nothing_written(tmp_path, ["tracking.yaml", "blocker"])


def test_unreachable_tracking_server_is_refused_up_front(tmp_path, tiny_study, capsys):
    path = tiny_study("server_down", GOOD_BODY)
    port = _free_port()
    assert main([str(path), "--results-dir", str(tmp_path / "results"),
                 "--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    assert "is not reachable" in capsys.readouterr().err
    assert _nothing_written(tmp_path, ["server_down.yaml"])


def test_full_disk_is_refused_up_front(tmp_path, tiny_study, capsys):
    path = tiny_study("disk", GOOD_BODY + "min_free_gb: 1.0e+9\n")
    assert main([str(path), "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "not enough disk space" in err and "GiB free on" in err
    assert _nothing_written(tmp_path, ["disk.yaml"])


@pytest.mark.parametrize("case", ["missing", "corrupt", "other_arch", "other_classes"])
def test_bad_teacher_checkpoint_exits_2_and_writes_nothing(tmp_path, tiny_study, capsys, case):
    from icd_tune.method.models import create_model

    ckpt = tmp_path / "teacher.pth"
    if case == "corrupt":
        ckpt.write_bytes(b"not a torch file")
    elif case == "other_arch":
        torch.save({"model": create_model("resnet14", 4).state_dict()}, ckpt)
    elif case == "other_classes":
        torch.save({"model": create_model("resnet8", 10).state_dict()}, ckpt)
    path = tiny_study("teacher", GOOD_BODY)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main([str(path), "--results-dir", str(tmp_path / "results"), "--set", f"teacher.checkpoint={ckpt}"])
    assert code == 2
    expected = {"missing": f"1 teacher checkpoint(s) do not exist:\n  {ckpt}", "corrupt": "could not be read", "other_arch": "does not fit 'resnet8' with 4 classes: unexpected keys",
                "other_classes": "with 4 classes"}[case]
    assert expected in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_cifar_exits_2_and_writes_nothing(tmp_path, tiny_study, capsys):
    path = tiny_study("cifar", GOOD_BODY + "data: {name: cifar100, download: false}\n")
    assert main([str(path), "--results-dir", str(tmp_path / "results"), "--data-dir", str(tmp_path / "data")]) == 2
    assert "CIFAR-100 not found in" in capsys.readouterr().err
    assert _nothing_written(tmp_path, ["cifar.yaml"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server_artifacts")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mlflow server did not come up")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_study_against_a_real_tracking_server_without_leaking_secrets(tmp_path, tiny_study, ray_session, mlflow_server,
                                                                      monkeypatch, capsys):
    secret = "s3cr3t-token-do-not-log"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret + "-aws")
    path = tiny_study("served", """
    mode: grid
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
    seeds: [0]
    register: served_students
    """)
    out = run_study(load_study(path), RunOptions(results_dir=str(tmp_path / "results"), tracking_uri=mlflow_server))
    printed = capsys.readouterr()
    assert out["tracking_uri"] == mlflow_server
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([out["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["parent_run_id"]]
    assert len(children) == 2
    for run in children:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc1")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(out["parent_run_id"])}
    assert "report.txt" in artifacts
    report = Path(client.download_artifacts(out["parent_run_id"], "report.txt", str(tmp_path / "dl")))
    assert "invariance_weight" in report.read_text()
    assert f"{mlflow_server}/#/experiments/{out['experiment_id']}/runs" in printed.out
    # The best student registered on the server (study key register), champion since it is the first.
    assert out["registered"]["version"] == "1" and out["registered"]["promoted"]
    champion = client.get_model_version_by_alias("served_students", "champion")
    assert champion.run_id in {r.info.run_id for r in children}
    assert champion.tags["icd_tune.selection_metric"] == "val/acc1"

    # No credential anywhere: parameters, tags, artifacts, results files, printed output.
    haystack = [printed.out, printed.err]
    for run in runs:
        haystack += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    for folder in (tmp_path / "results", tmp_path / "server_artifacts"):
        for f in folder.rglob("*"):
            if f.is_file() and f.stat().st_size < 5_000_000:
                haystack.append(f.read_bytes().decode("latin-1"))
    assert not any(secret in text for text in haystack)
