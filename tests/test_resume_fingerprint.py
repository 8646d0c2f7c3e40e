"""--resume against the run's fingerprint: changes refused with each key, additions planned apart, placement free (no Ray)."""

import json

import pytest

from icd_tune.platform.stages.fingerprint import FINGERPRINT_KEY
from icd_tune.platform.preflight import StudyRunError
from icd_tune.platform.stages.plan import STATE_FILE, RunOptions, resolve_plan
from icd_tune.platform.study.definition import load_study
from icd_tune.platform.study.trials import CheckpointMismatchError, check_checkpoint_config, trial_config

GRID = """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
seeds: [0, 1]
"""

SEARCH = """
mode: search
search:
  space:
    loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}
  num_samples: 4
asha: {enabled: true, grace_period: 1, reduction_factor: 2}
seeds: [0]
"""


@pytest.fixture(autouse=True)
def no_ambient_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def started_run(tmp_path, tiny_study, body):
    """A run as the stages leave it once started: its folder and its state file with the fingerprint."""
    path = tiny_study("again", body)
    plan = resolve_plan(load_study(path), RunOptions(results_dir=str(tmp_path / "results")))
    plan.run_folder.mkdir(parents=True)
    plan.save_state()
    return path, plan.run_folder / STATE_FILE


def resume(tmp_path, path, sets=(), **opts):
    return resolve_plan(load_study(path, list(sets)), RunOptions(resume=True, results_dir=str(tmp_path / "results"),
                                                                 **opts))


# (label, study, --set on resume, refused with, message pattern)
CASES = [
    ("changed loss weight", GRID, ["loss.kd_weight=0.5"], "mix", r"loss.kd_weight: 1.0 -> 0.5"),
    ("changed level", GRID, ["grid.invariance_weight.levels=[0.0, 0.7]"], "mix",
     r"trials: 'invariance_weight=0.5 seed=0', 'invariance_weight=0.5 seed=1' planned -> absent"),
    ("changed metric", GRID, ["metric=train/acc1"], "mix", r"metric: 'val/acc1' -> 'train/acc1'"),
    ("changed schedule", GRID, ["optim.milestones=[0.5]"], "mix", r"optim.milestones: \[0.625, 0.75, 0.875\] -> \[0.5\]"),
    ("ASHA turned on", GRID, ["asha.enabled=true", "asha.grace_period=1"], "mix", r"asha.enabled: False -> True"),
    ("removed seed", GRID, ["seeds=[0]"], "mix", r"planned -> absent \(seeds \[0, 1\] -> \[0\]\)"),
    ("changed space", SEARCH, ["search.space={loss.invariance_weight: {type: uniform, low: 0.0, high: 3.0}}"], "mix",
     r"search.space.loss.invariance_weight.high: 2.0 -> 3.0"),
    ("fewer samples", SEARCH, ["search.num_samples=2"], "mix", r"search.num_samples: 4 -> 2"),
    ("added seed and a changed weight", GRID, ["seeds=[0, 1, 2]", "loss.kd_weight=0.5"], "mix",
     r"loss.kd_weight: 1.0 -> 0.5"),
]


@pytest.mark.parametrize("label,body,sets,kind,pattern", CASES, ids=[c[0] for c in CASES])
def test_resume_that_changes_or_adds_trials_is_refused_and_changes_nothing(tmp_path, tiny_study, label, body, sets,
                                                                           kind, pattern):
    path, state_file = started_run(tmp_path, tiny_study, body)
    before = state_file.read_bytes()
    with pytest.raises(StudyRunError, match=pattern) as info:
        resume(tmp_path, path, sets)
    message = str(info.value)
    assert "would mix two studies" in message
    assert "Nothing was changed" in message and "start a new run (without --resume)" in message
    assert state_file.read_bytes() == before
    assert sorted(p.name for p in state_file.parent.iterdir()) == [STATE_FILE]


# (label, study, --set on resume, added trial names, trials per experiment after the resume)
ADDITIONS = [
    ("added seed", GRID, ["seeds=[0, 1, 2]"], ["invariance_weight=0.0 seed=2", "invariance_weight=0.5 seed=2"], [4, 2]),
    ("added level", GRID, ["grid.invariance_weight.levels=[0.0, 0.5, 1.0]"],
     ["invariance_weight=1.0 seed=0", "invariance_weight=1.0 seed=1"], [4, 2]),
    ("more samples", SEARCH, ["search.num_samples=6"], ["sample 5", "sample 6"], [4, 2]),
]


@pytest.mark.parametrize("label,body,sets,added,sizes", ADDITIONS, ids=[c[0] for c in ADDITIONS])
def test_resume_that_only_adds_trials_plans_them_as_another_experiment(tmp_path, tiny_study, label, body, sets, added,
                                                                         sizes):
    path, state_file = started_run(tmp_path, tiny_study, body)
    before = state_file.read_bytes()
    plan = resume(tmp_path, path, sets)
    assert state_file.read_bytes() == before  # written once the run goes on, not while planning
    experiments = plan.experiments()
    assert [e.name for e in experiments] == ["tune", "tune-added-1"]
    assert [e.trials for e in experiments] == sizes
    if plan.points is not None:
        assert [p.name for p in experiments[1].points] == added
        assert not {p.name for p in experiments[0].points} & set(added)
    assert plan.state["additions"][0]["trials"] == added
    assert any("--resume adds 2 trial(s)" in n and "'tune-added-1'" in n for n in plan.notes)
    # The run now defines the larger study: resuming it again as it is adds nothing more.
    plan.save_state()
    again = resume(tmp_path, path, sets)
    assert [e.trials for e in again.experiments()] == sizes and len(again.state["additions"]) == 1


def test_resume_with_other_placement_goes_on(tmp_path, tiny_study):
    path, state_file = started_run(tmp_path, tiny_study, GRID)
    stored = json.loads(state_file.read_text())[FINGERPRINT_KEY]
    plan = resume(tmp_path, path, ["device=auto", "max_concurrent=3", "checkpoint_every=2", "report_metric=test/acc1"],
                  cpus_per_trial=2, gpus_per_trial=0.5, max_concurrent=4, address="127.0.0.1:6379",
                  data_dir=str(tmp_path / "data"))
    assert plan.notes == []
    assert plan.base["device"] == "auto" and plan.base["data"]["root"] == str((tmp_path / "data").resolve())
    assert plan.state[FINGERPRINT_KEY] == stored  # the run keeps the definition it started with
    assert [r["git_commit"] for r in plan.state["resumed"]] == [stored["git_commit"]]
    definition = stored["definition"]
    assert set(definition) == {"mode", "metric", "metric_mode", "max_epochs", "asha", "seeds", "base", "trials"}
    assert definition["base"]["loss.kd_weight"] == 1.0 and "device" not in definition["base"]
    assert definition["trials"]["invariance_weight=0.5 seed=1"] == {"seed": 1,
                                                                     "overrides": {"loss.invariance_weight": 0.5}}


def test_resume_at_another_commit_warns(tmp_path, tiny_study):
    path, state_file = started_run(tmp_path, tiny_study, GRID)
    state = json.loads(state_file.read_text())
    state[FINGERPRINT_KEY]["git_commit"] = "0" * 40
    state_file.write_text(json.dumps(state))
    (note,) = resume(tmp_path, path).notes
    assert note.startswith(f"warning: this run was started at code commit {'0' * 40} and resumes at ")
    del state[FINGERPRINT_KEY]
    state_file.write_text(json.dumps(state))
    plan = resume(tmp_path, path, ["loss.kd_weight=0.5"])  # nothing recorded to compare with
    assert "records no fingerprint" in plan.notes[0] and plan.state[FINGERPRINT_KEY]["digest"]


def test_checkpoint_of_another_config_is_refused(tmp_path, tiny_data):
    from icd_tune.method.train import Trainer

    base = {"student": "resnet8", "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4,
                                           "val_fraction": 0.2},
            "optim": {"epochs": 1, "batch_size": 16}, "loss": {"contrastive_weight": 0.0, "invariance_weight": 0.0},
            "max_steps_per_epoch": 1, "device": "cpu"}
    cfg = trial_config(base, {}, 0)
    saved = Trainer(cfg, tiny_data).state_dict()["config"]
    check_checkpoint_config(saved, trial_config(base, {"device": "auto", "data.root": "/elsewhere"}, 0), "t")
    with pytest.raises(CheckpointMismatchError, match=r"trial 't' was written for another config \(loss.ce_weight: "
                                                      r"1.0 -> 0.5; seed: 0 -> 1\); refusing to continue it"):
        check_checkpoint_config(saved, trial_config(base, {"loss.ce_weight": 0.5}, 1), "t")
