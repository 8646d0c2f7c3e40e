"""A first run as a new user makes it: nothing left in the directory the command ran from."""

import os

import pytest

from icd_tune.platform.runner import RunOptions, run_study
from icd_tune.platform.study import load_study
from icd_tune.platform.tracking import default_artifact_root


def test_artifact_root_sits_beside_a_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'results' / 'study' / 'mlflow.db'}"
    assert default_artifact_root(uri) == (tmp_path / "results" / "study" / "mlartifacts").as_uri()
    assert default_artifact_root("http://127.0.0.1:5000") is None  # the server's own default


@pytest.mark.slow
def test_study_run_from_elsewhere_writes_nothing_there(tmp_path, tiny_study, ray_session, monkeypatch):
    path = tiny_study("elsewhere", """
    mode: grid
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.0]}
    baseline: 0.0
    seeds: [0]
    """, epochs=1)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.chdir(scratch)
    out = run_study(load_study(path), RunOptions(results_dir=str(tmp_path / "results")), log=lambda *_: None)
    assert sorted(os.listdir(scratch)) == []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    artifacts = {a.path for a in client.list_artifacts(out["parent_run_id"])}
    assert "report.txt" in artifacts
    location = client.get_experiment(out["experiment_id"]).artifact_location
    assert location == (tmp_path / "results" / "elsewhere" / "mlartifacts").as_uri()
    assert (tmp_path / "results" / "elsewhere" / "mlartifacts").is_dir()
