"""The same study launched three times at once into one fresh results folder and tracking store.

Each invocation is the quickstart's smoke run from the command line (its first point, offline), with its own
``--set``: they start in the same second, need the same teacher and create the same sqlite store together.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LRS = ("0.05", "0.04", "0.03")


@pytest.mark.slow
def test_three_invocations_started_together_keep_their_own_folders_runs_and_reports(tmp_path):
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    results = tmp_path / "results"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run_ablation.py"), str(ROOT / "ablations" / "quickstart.yaml"),
                               "--smoke", "--results-dir", str(results), "--set", f"optim.lr={lr}"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for lr in LRS]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n\n".join(o[-3000:] for o in outs)
    for out in outs:
        assert "completed: invariance_weight=0.0 seed=0" in out
        assert "mlflow ui --host 127.0.0.1" in out and "/#/experiments/" in out
    folders = sorted((results / "quickstart").glob("*-smoke"))
    assert len(folders) == 3 and all((f / "report.txt").exists() for f in folders)
    # One store, one experiment, three parents, each with the one trial its own invocation ran.
    client = MlflowClient(f"sqlite:///{results / 'quickstart' / 'mlflow.db'}")
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "quickstart-smoke"]
    experiment = client.get_experiment_by_name("quickstart-smoke")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 3
    lrs = []
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 1 and children[0].data.tags["icd_tune.end"] == "completed"
        lrs.append(children[0].data.params["optim.lr"])
    assert sorted(lrs) == sorted(LRS)
    # Each report holds its own trial only.
    for folder in folders:
        assert "Trials: 1 total | 1 completed" in (folder / "report.txt").read_text()
    # One teacher, written once or rewritten whole: no temporary file left behind.
    teachers = results / "teachers"
    assert len(list(teachers.glob("resnet14-digits-*.pt"))) == 1 and not list(teachers.glob("*.tmp"))


def _started(path, lr, results):
    """A planned run of the tiny study with ``--set optim.lr=LR``, its folder claimed and its state saved."""
    from icd_tune.platform.stages.plan import RunOptions, resolve_plan
    from icd_tune.platform.stages.prepare import claim_fresh_folder
    from icd_tune.platform.study.definition import load_study

    plan = resolve_plan(load_study(path, [f"optim.lr={lr}"]), RunOptions(results_dir=str(results)))
    claim_fresh_folder(plan)
    plan.state["status"] = "running"
    plan.save_state()
    return plan.run_folder


def test_resume_takes_the_run_its_own_set_started_or_the_one_named(tmp_path, tiny_study):
    from icd_tune.platform.preflight import StudyRunError
    from icd_tune.platform.stages.plan import RunOptions, resolve_plan
    from icd_tune.platform.study.definition import load_study

    path = tiny_study("twins", "mode: grid\ngrid:\n  w: {key: loss.invariance_weight, levels: [0.0, 0.5]}\n")
    results = tmp_path / "results"
    first, second = _started(path, 0.05, results), _started(path, 0.04, results)
    # Started in the same second: the second takes the stamp with a number, never the first's folder.
    assert first.parent == second.parent and first != second
    assert second.name[:15] != first.name[:15] or second.name == first.name + "-02"

    def resumed(lr, resume=True):
        return resolve_plan(load_study(path, [f"optim.lr={lr}"]), RunOptions(results_dir=str(results), resume=resume))

    plan = resumed(0.05)  # not the newest run: the one its own --set started
    assert plan.run_folder == first
    assert any("other interrupted runs of 'twins'" in n and str(second) in n for n in plan.notes)
    assert resumed(0.04).run_folder == second
    with pytest.raises(StudyRunError, match="would mix two studies"):  # neither: the newest says what differs
        resumed(0.03)
    assert resumed(0.04, resume=str(second)).run_folder == second  # --resume PATH
    with pytest.raises(StudyRunError, match="would mix two studies"):
        resumed(0.05, resume=str(second))
    with pytest.raises(StudyRunError, match="is not a run folder"):
        resumed(0.05, resume=str(tmp_path))
