"""A first run as a new user makes it: nothing left in the directory the command ran from."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from icd_tune.platform.cli import console
from icd_tune.platform.study.definition import load_study
from icd_tune.platform.tracking.runs import default_artifact_root

ROOT = Path(__file__).resolve().parents[1]


def test_artifact_root_sits_beside_a_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'results' / 'study' / 'mlflow.db'}"
    assert default_artifact_root(uri) == (tmp_path / "results" / "study" / "mlartifacts").as_uri()
    assert default_artifact_root("http://127.0.0.1:5000") is None  # the server's own default


# What the project's display prints (cli, stages, progress, watchdog); the report is matched whole, as report.txt.
PROJECT_LINE = re.compile(
    r"(study '|Ray, MLflow and Optuna output: |MLflow tracking URI: |open the UI:  |teacher: |  teacher epoch "
    r"|teacher-output cache: |teacher cache |\[\d+:\d\d:\d\d\] |  (completed|stopped early|failed): "
    r"|waiting for resources: |stopping the study: |results: |runs table:  |compare the trials |"
    r"Optuna dashboard:  |student models \(\d+, best on )")
THIRD_PARTY = ("Configuration for experiment", "A new study created in RDB", "Creating initial MLflow database tables",
               "Started a local Ray instance")


def _cli_together(cwd, *arg_lists):
    """The command run with each of ``arg_lists``, all started at the same time; their results, in order."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_ablation.py"), *a], cwd=cwd, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a in arg_lists]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=400)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
        outs.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return outs


def _run_folder(results, name, before=()):
    (folder,) = [p for p in (results / name).glob("2*") if p not in before]
    return folder


@pytest.mark.slow
def test_a_run_from_elsewhere_writes_nothing_there_and_keeps_its_console_to_the_project(tmp_path, tiny_study):
    path = tiny_study("elsewhere", """
    mode: search
    search:
      space:
        loss.invariance_weight: {type: uniform, low: 0.0, high: 1.0}
      num_samples: 1
    asha: {enabled: false}
    """, epochs=1)
    scratch, results, loud_results = tmp_path / "scratch", tmp_path / "results", tmp_path / "loud"
    scratch.mkdir()
    # The quiet run and a -v run, started together (each with its own results folder).
    quiet, loud = _cli_together(scratch, [str(path), "--results-dir", str(results)],
                                [str(path), "--results-dir", str(loud_results), "-v"])
    assert sorted(os.listdir(scratch)) == []
    folder = _run_folder(results, "elsewhere")
    # The quiet console: nothing on stderr, and on stdout the report and the project's own lines alone.
    assert quiet.stderr == ""
    report = (folder / "report.txt").read_text()
    assert report.strip() in quiet.stdout
    others = [line for line in quiet.stdout.replace(report.strip(), "").splitlines()
              if line.strip() and not PROJECT_LINE.match(line)]
    assert others == []
    log = folder / console.LOG_NAME
    assert f"Ray, MLflow and Optuna output: {log} (-v shows it here)" in quiet.stdout.splitlines()[:3]
    for line in THIRD_PARTY:
        assert line in log.read_text() and line not in quiet.stdout

    from mlflow.tracking import MlflowClient

    state = json.loads((folder / "study_state.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    artifacts = {a.path for a in client.list_artifacts(state["parent_run_id"])}
    assert "report.txt" in artifacts
    location = client.get_experiment(state["experiment_id"]).artifact_location
    assert location == (results / "elsewhere" / "mlartifacts").as_uri()
    assert (results / "elsewhere" / "mlartifacts").is_dir()

    # -v: the third-party lines come back to the console, and no log file is kept.
    assert sorted(os.listdir(scratch)) == []
    second = _run_folder(loud_results, "elsewhere")
    for line in ("Configuration for experiment", "A new study created in RDB", "Started a local Ray instance"):
        assert line in loud.stdout + loud.stderr
    assert "Ray, MLflow and Optuna output: " not in loud.stdout and not (second / console.LOG_NAME).exists()


@pytest.fixture
def process_tracking_uri(finished_grid):
    """MLflow lists a run's artifacts with its logged models found through the process-wide tracking URI, not the
    client's (MLflow 3): a run with an exported student is listed with that URI pointed at its store."""
    import mlflow

    before, before_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(finished_grid.out["tracking_uri"])  # which exports MLFLOW_TRACKING_URI too
    yield
    mlflow.set_tracking_uri(before)
    if before_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before_env


@pytest.mark.slow
def test_each_finished_trial_logs_a_student_that_reproduces_its_test_number(tmp_path, finished_grid,
                                                                            process_tracking_uri):
    import torch
    from mlflow.tracking import MlflowClient

    from icd_tune.method.data import load_data
    from icd_tune.method.models import create_model
    from icd_tune.method.train import Trainer
    from icd_tune.platform.study.trials import trial_config

    # The shared grid (conftest.py): grid.yaml extends common.yaml, run with --set optim.lr=0.05;
    # 2 levels x 2 seeds, 2 epochs each.
    study, argv, out = finished_grid.study, finished_grid.argv, finished_grid.out
    client = MlflowClient(out["tracking_uri"])
    children = [r for r in client.search_runs([out["experiment_id"]])
                if r.data.tags.get("mlflow.parentRunId") == out["parent_run_id"]]
    assert len(children) == 4
    cfg = trial_config(study.base, {}, 0)
    data = load_data(cfg.data)
    for run in children:
        # The .pth file; the best trial's run also lists its exported MLflow Model's files under the same name.
        listed = [a.path for a in client.list_artifacts(run.info.run_id, "student")]
        assert "student/resnet8.pth" in listed and (listed == ["student/resnet8.pth"] or "student/MLmodel" in listed)
        assert run.data.tags["icd_tune.student_weights"].startswith("best val/acc1, epoch ")
        local = client.download_artifacts(run.info.run_id, "student/resnet8.pth", str(tmp_path / run.info.run_id))
        model = create_model("resnet8", data.num_classes)
        model.load_state_dict(torch.load(local, weights_only=True)["model"])  # strict
        trainer = Trainer(cfg, data, None if not cfg.uses_teacher else create_model("resnet8", 4))
        trainer.student.load_state_dict(model.state_dict())
        assert trainer.evaluate(data.test_x, data.test_y)["acc1"] == run.data.metrics["test/acc1_at_best_val"]
        assert_lineage(client, run, data)
        assert_system_metrics(client, run)
    assert_study_record(client, out["parent_run_id"], finished_grid.path, finished_grid.extended, argv, tmp_path)
    assert_pruned(out["run_folder"], len(children))


def assert_lineage(client, run, data):
    """The data set as a dataset input with its split sizes and seed; the teacher as tags."""
    import json

    from icd_tune.platform.tracking.lineage import data_sha256

    (dataset_input,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    dataset = dataset_input.dataset
    profile = json.loads(dataset.profile)
    assert dataset.name == "synthetic" and dataset.digest == data_sha256(data)[:16]
    assert (profile["num_train"], profile["num_val"], profile["num_test"]) == (192, 48, 40)
    assert profile["split_seed"] == 0 and profile["val_fraction"] == 0.2
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    tags = run.data.tags
    assert tags["icd_tune.teacher.arch"] == "resnet8" and tags["icd_tune.teacher.source"] == "trained"
    with open(tags["icd_tune.teacher.checkpoint"], "rb") as f:
        import hashlib

        assert tags["icd_tune.teacher.checkpoint_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert 0 <= float(tags["icd_tune.teacher.test_acc1"]) <= 100
    assert tags["icd_tune.teacher.outputs"] == "live teacher"  # the cache is off for so few trial-epochs


def assert_system_metrics(client, run):
    """Each epoch's CPU and memory of the trial's process; no GPU figures on the CPU."""
    for name in ("system/cpu_percent", "system/rss_mb"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2], name
        assert all(m.value > 0 for m in history), name
    assert not any(k.startswith("system/gpu") for k in run.data.metrics)


def assert_study_record(client, parent_id, path, extended, argv, download_to):
    """The study files as written and as resolved, the command line and the --set values."""
    import yaml

    parent = client.get_run(parent_id)
    assert parent.data.tags["icd_tune.command"] == "run_ablation.py " + " ".join(argv)
    assert parent.data.params["set.optim.lr"] == "0.05"
    written = sorted(a.path for a in client.list_artifacts(parent_id, "study/written"))
    assert written == ["study/written/common.yaml", "study/written/grid.yaml"]
    local = client.download_artifacts(parent_id, "study", str(download_to / "downloaded"))
    assert open(f"{local}/written/grid.yaml").read() == path.read_text()
    assert open(f"{local}/written/common.yaml").read() == extended.read_text()
    resolved = yaml.safe_load(open(f"{local}/resolved.yaml"))
    assert resolved["description"] == "written in the file it extends" and resolved["optim"]["lr"] == 0.05


def assert_pruned(run_folder, trials):
    """An ended trial keeps only its latest checkpoint: the one Tune's experiment state names."""
    folders = [p for p in (run_folder / "ray" / "tune").iterdir() if p.is_dir()]
    trial_folders = [p for p in folders if any(p.glob("checkpoint_*"))]
    assert len(trial_folders) == trials
    for folder in trial_folders:
        assert [c.name for c in folder.glob("checkpoint_*")] == ["checkpoint_000001"], folder


def test_a_study_can_turn_student_logging_off(tiny_study):
    study = load_study(tiny_study("quiet", """
    log_students: false
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.0]}
    """))
    assert study.settings.log_students is False
