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


@pytest.mark.slow
def test_each_finished_trial_logs_a_student_that_reproduces_its_test_number(tmp_path, tiny_study, ray_session):
    import torch
    from mlflow.tracking import MlflowClient

    from icd_tune.method.data import load_data
    from icd_tune.method.models import create_model
    from icd_tune.method.train import Trainer
    from icd_tune.platform.trials import trial_config

    path = tiny_study("students", """
    mode: grid
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
    baseline: 0.0
    seeds: [0]
    """, epochs=2)
    study = load_study(path)
    out = run_study(study, RunOptions(results_dir=str(tmp_path / "results")), log=lambda *_: None)
    client = MlflowClient(out["tracking_uri"])
    children = [r for r in client.search_runs([out["experiment_id"]])
                if r.data.tags.get("mlflow.parentRunId") == out["parent_run_id"]]
    assert len(children) == 2
    cfg = trial_config(study.base, {}, 0)
    data = load_data(cfg.data)
    for run in children:
        assert [a.path for a in client.list_artifacts(run.info.run_id, "student")] == ["student/resnet8.pth"]
        assert run.data.tags["icd_tune.student_weights"].startswith("best val/acc1, epoch ")
        local = client.download_artifacts(run.info.run_id, "student/resnet8.pth", str(tmp_path / run.info.run_id))
        model = create_model("resnet8", data.num_classes)
        model.load_state_dict(torch.load(local, weights_only=True)["model"])  # strict
        trainer = Trainer(cfg, data, None if not cfg.loss.uses_teacher else create_model("resnet8", 4))
        trainer.student.load_state_dict(model.state_dict())
        assert trainer.evaluate(data.test_x, data.test_y)["acc1"] == run.data.metrics["test/acc1_at_best_val"]


def test_a_study_can_turn_student_logging_off(tiny_study):
    study = load_study(tiny_study("quiet", """
    log_students: false
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.0]}
    """))
    assert study.settings.log_students is False
