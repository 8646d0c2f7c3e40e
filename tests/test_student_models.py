"""Students as MLflow Models: exported per study, registered with the champion alias rules, loaded without icd-tune."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from icd_tune.platform.cli.main import EXIT_BAD_INPUT, main

GRID = """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
seeds: [0]
"""


# ---------------------------------------------------------------------------
# Fast: refusals, the folded-in normalisation, the alias rules, the fluent URI


@pytest.mark.parametrize("extra, said", [
    (["--register", "../evil"], "a name must be plain"),
    (["--register", "students", "--set", "protocol=paper", "--set", "data.val_fraction=0"], "nothing is registered under protocol paper"),
    (["--set", "register=a/b"], "a name must be plain"),
])
def test_register_is_refused_before_any_work(tmp_path, tiny_study, capsys, extra, said):
    path = tiny_study("refused", GRID)
    results = tmp_path / "results"
    assert main([str(path), "--results-dir", str(results), *extra]) == EXIT_BAD_INPUT
    assert said in capsys.readouterr().err
    assert not results.exists()


def test_dry_run_says_what_would_be_registered(tiny_study, capsys):
    path = tiny_study("planned", GRID)
    assert main([str(path), "--dry-run", "--register", "students"]) == 0
    out = capsys.readouterr().out
    assert "# student models: the best 1 trial(s) on val/acc1 (max)" in out
    assert "as a new version of registered model students; alias champion moves" in out


def test_servable_student_scores_as_the_trainer(tiny_data):
    from icd_tune.method.data import Normalizer
    from icd_tune.method.models import create_model
    from icd_tune.method.servable import servable_student

    student = create_model("resnet8", tiny_data.num_classes).eval()
    served = servable_student("resnet8", tiny_data.num_classes, student.state_dict(), tiny_data.mean, tiny_data.std)
    images = tiny_data.test_x[:8]
    with torch.no_grad():
        expected = student(Normalizer(tiny_data.mean, tiny_data.std, "cpu")(images))
        assert torch.equal(served(images), expected)


def test_fluent_tracking_uri_is_put_back(tmp_path, monkeypatch):
    import mlflow

    from icd_tune.platform.tracking.models import fluent_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    with fluent_tracking(f"sqlite:///{tmp_path / 'a.db'}"):
        assert mlflow.get_tracking_uri().endswith("a.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ and mlflow.get_tracking_uri() == before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    with fluent_tracking(f"sqlite:///{tmp_path / 'a.db'}"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    mlflow.set_tracking_uri(before)


def test_champion_moves_only_to_a_better_comparable_student(tmp_path):
    from mlflow.tracking import MlflowClient

    from icd_tune.platform.tracking.registry import CHAMPION, Candidate, register_student

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("s", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment).info.run_id
    model = client.create_logged_model(experiment, name="student", source_run_id=run)

    def candidate(value, metric="val/acc1", digest="d1"):
        return Candidate(f"models:/{model.model_id}", run, "parent", "s", metric, "max", value, 70.0, "resnet8",
                         "synthetic", digest)

    def champion():
        return str(client.get_model_version_by_alias("students", CHAMPION).version)

    first = register_student(client, uri, "students", candidate(80.0))
    assert (first.version, first.promoted, first.reason) == ("1", True, "no champion yet")
    worse = register_student(client, uri, "students", candidate(75.0))
    assert not worse.promoted and "does not beat the champion" in worse.reason and champion() == "1"
    better = register_student(client, uri, "students", candidate(85.0))
    assert better.promoted and "beats the champion" in better.reason and champion() == "3"
    other_metric = register_student(client, uri, "students", candidate(99.0, metric="val/loss"))
    assert not other_metric.promoted and "was chosen on val/acc1 (max)" in other_metric.reason
    other_data = register_student(client, uri, "students", candidate(99.0, digest="d2"))
    assert not other_data.promoted and "dataset digest d1" in other_data.reason and champion() == "3"
    tags = client.get_model_version("students", "3").tags
    assert tags["icd_tune.selection_metric"] == "val/acc1" and float(tags["icd_tune.selection_value"]) == 85.0
    assert float(tags["test/acc1_at_best_val"]) == 70.0 and tags["icd_tune.dataset_digest"] == "d1"
    assert "alias champion unchanged" in worse.lines()[0]


# ---------------------------------------------------------------------------
# Slow: the shared finished grid's exported best student, registered and loaded by a client without icd-tune


def _best_run(finished_grid):
    from mlflow.tracking import MlflowClient

    out = finished_grid.out
    client = MlflowClient(out["tracking_uri"])
    runs = client.search_runs([out["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{out['parent_run_id']}'")
    best = max(runs, key=lambda r: r.data.metrics["val/acc1"])  # ties: search order; the tag says which
    with_model = [r for r in runs if "icd_tune.student_model" in r.data.tags]
    return client, best, with_model


@pytest.mark.slow
def test_the_best_trial_is_exported_once_into_the_study_experiment(finished_grid):
    import mlflow
    import yaml

    from icd_tune.platform.tracking.models import MODEL_TAG

    client, best, with_model = _best_run(finished_grid)
    assert len(with_model) == 1  # export_models: 1
    run = with_model[0]
    assert run.data.metrics["val/acc1"] == best.data.metrics["val/acc1"]
    assert list(finished_grid.out["student_models"].values()) == [run.data.tags[MODEL_TAG]]
    model = client.get_logged_model(run.data.tags[MODEL_TAG].split("/")[1])
    assert model.experiment_id == finished_grid.out["experiment_id"] and model.source_run_id == run.info.run_id
    assert mlflow.active_run() is None and "MLFLOW_TRACKING_URI" not in os.environ
    folder = Path(mlflow.artifacts.download_artifacts(model.artifact_location, tracking_uri=finished_grid.out[
        "tracking_uri"]))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert (folder / "data" / "model.pt2").is_file() and "python_function" in mlmodel["flavors"]
    assert json.loads(mlmodel["signature"]["inputs"])[0]["tensor-spec"] == {"dtype": "uint8", "shape": [-1, 3, 32, 32]}
    meta = mlmodel["metadata"]["icd_tune"]
    assert meta["dataset"]["digest"] == run.inputs.dataset_inputs[0].dataset.digest
    assert meta["teacher"]["icd_tune.teacher.arch"] == "resnet8"
    assert meta["metrics"]["test/acc1_at_best_val"] == run.data.metrics["test/acc1_at_best_val"]
    assert "best val/acc1" in meta["weights"]
    assert "torch==" in (folder / "requirements.txt").read_text()
    # A resumed study finds the model already there and logs nothing again.
    from icd_tune.platform.tracking.models import export_trial_model

    again = export_trial_model(client, finished_grid.out["tracking_uri"], model.experiment_id, run.info.run_id, None,
                               "unused", "resnet8", {}, {}, None)
    assert again == run.data.tags[MODEL_TAG]
    assert len(client.search_logged_models([model.experiment_id])) == 1


# Imported first in the client's processes (PYTHONPATH): any import of icd_tune fails there.
BLOCKER = '''
import sys

class _NoIcdTune:
    def find_spec(self, name, path=None, target=None):
        if name == "icd_tune" or name.startswith("icd_tune."):
            raise ModuleNotFoundError(f"No module named {name!r} (kept out of this client)")
        return None

sys.meta_path.insert(0, _NoIcdTune())
'''

CLIENT = '''
import os, sys
import numpy as np
try:
    import icd_tune
    sys.exit("icd_tune is importable in the client")
except ModuleNotFoundError:
    pass
import mlflow, mlflow.pyfunc, mlflow.pytorch, torch
images = np.load("images.npy")
out = {}
out["pyfunc"] = mlflow.pyfunc.load_model("models:/grid_students@champion").predict(images).argmax(1)
with torch.no_grad():
    out["pytorch"] = mlflow.pytorch.load_model("models:/grid_students@champion")(torch.from_numpy(images)).argmax(1).numpy()
assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
assert not any(m == "icd_tune" or m.startswith("icd_tune.") for m in sys.modules)
np.savez("predicted.npz", **out)
'''


def _trainer_predictions(client, run, data):
    """The predictions ``Trainer.evaluate`` makes with the run's best-validation weights (its .pth file)."""
    from icd_tune.method.data import Normalizer, eval_batches
    from icd_tune.method.models import create_model

    path = client.download_artifacts(run.info.run_id, "student/resnet8.pth")
    student = create_model("resnet8", data.num_classes)
    student.load_state_dict(torch.load(path, weights_only=True)["model"])
    student.eval()
    with torch.no_grad():
        return torch.cat([student(x).argmax(1) for x, _ in eval_batches(
            data.test_x, data.test_y, 512, torch.device("cpu"), Normalizer(data.mean, data.std, "cpu"))]).numpy()


@pytest.mark.slow
def test_a_client_without_icd_tune_loads_the_champion_and_scores_as_the_trainer(finished_grid, tmp_path):
    from icd_tune.method.config import DataConfig
    from icd_tune.method.data import load_data
    from icd_tune.platform.tracking.registry import candidate_from_run, register_student

    client, _, (run,) = _best_run(finished_grid)
    uri = finished_grid.out["tracking_uri"]
    registered = register_student(client, uri, "grid_students",
                                  candidate_from_run(client, run.info.run_id, "grid", "val/acc1", "max"))
    assert registered.promoted and registered.version == "1"
    data = load_data(DataConfig(name="synthetic", num_train=240, num_test=40, num_classes=4, val_fraction=0.2))
    expected = _trainer_predictions(client, run, data)
    logged = run.data.metrics["test/acc1_at_best_val"]
    assert abs(100.0 * (expected == data.test_y.numpy()).mean() - logged) < 0.1

    client_dir = tmp_path / "client"
    (client_dir / "block").mkdir(parents=True)
    (client_dir / "block" / "sitecustomize.py").write_text(BLOCKER)
    (client_dir / "client.py").write_text(textwrap.dedent(CLIENT))
    images = data.test_x.numpy()
    np.save(client_dir / "images.npy", images)
    (client_dir / "batch.json").write_text(json.dumps({"inputs": images.tolist()}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    env.update(PYTHONPATH=str(client_dir / "block"), MLFLOW_TRACKING_URI=uri, MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")
    run_client = dict(cwd=client_dir, env=env, capture_output=True, text=True, timeout=300)
    done = subprocess.run([sys.executable, "client.py"], **run_client)
    assert done.returncode == 0, done.stderr[-3000:]
    predicted = np.load(client_dir / "predicted.npz")
    assert (predicted["pyfunc"] == expected).all() and (predicted["pytorch"] == expected).all()

    served = subprocess.run([sys.executable, "-m", "mlflow", "models", "predict", "-m", "models:/grid_students/1",
                             "--env-manager", "local", "-i", "batch.json", "-t", "json", "-o", "out.json"], **run_client)
    assert served.returncode == 0, served.stderr[-3000:]
    answer = json.loads((client_dir / "out.json").read_text())
    assert (np.asarray(answer["predictions"]).argmax(1) == expected).all()
