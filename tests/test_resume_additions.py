"""--resume that only adds trials: the finished ones are kept, the added ones run, one report and parent run cover all."""

import json
import re

import mlflow
import pytest

from icd_tune.platform.runner import RunOptions, run_study
from icd_tune.platform.stages.plan import STATE_FILE
from icd_tune.platform.study.definition import load_study

pytestmark = pytest.mark.slow


def test_added_seed_runs_only_the_new_trials(tmp_path, tiny_study, ray_session, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tiny_study("grown", """
    mode: grid
    grid:
      invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
    seeds: [0]
    """, epochs=1, steps=2)
    results = str(tmp_path / "results")
    first = run_study(load_study(path), RunOptions(results_dir=results), log=lambda *_: None)
    assert [t["status"] for t in first["trials"]] == ["completed", "completed"]
    lines = []
    grown = run_study(load_study(path, ["seeds=[0, 1]"]), RunOptions(results_dir=results, resume=True),
                      log=lines.append)

    assert grown["run_folder"] == first["run_folder"] and grown["parent_run_id"] == first["parent_run_id"]
    assert sorted(t["seed"] for t in grown["trials"]) == [0, 0, 1, 1]
    assert all(t["status"] == "completed" for t in grown["trials"])
    kept = {t["trial_id"]: t["final"] for t in first["trials"]}
    for trial in grown["trials"]:  # the first run's trials come back as they were, not trained again
        if trial["trial_id"] in kept:
            assert trial["final"] == kept[trial["trial_id"]]
    assert len(kept.keys() & {t["trial_id"] for t in grown["trials"]}) == 2
    assert any("--resume adds 2 trial(s)" in line for line in lines)
    assert (grown["run_folder"] / "ray" / "tune-added-1").is_dir()
    state = json.loads((grown["run_folder"] / STATE_FILE).read_text())
    assert state["status"] == "finished" and [a["name"] for a in state["additions"]] == ["tune-added-1"]
    for level in ("0  ", "0.5"):  # the level table's n and completed columns count both seeds
        assert re.search(rf"\| {re.escape(level)}\s*\|\s+2 \|\s+2 \|", grown["report"]), level

    client = mlflow.MlflowClient(grown["tracking_uri"])
    runs = client.search_runs([grown["experiment_id"]])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == grown["parent_run_id"]]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "tune-added-1" in parents[0].data.tags["icd_tune.additions"]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    assert parents[0].data.tags["icd_tune.resume_command"].endswith("overrides ['seeds=[0, 1]']")
    assert all(len(client.get_run(r.info.run_id).inputs.dataset_inputs) == 1 for r in children)
