"""The stages of a study run that need no Ray: the plan, the cache decision, trial configs, metric names.

Nothing here starts Ray; the searcher test drives Optuna through Ray's OptunaSearch
without a Ray instance, which also checks ``ray_internals`` against the installed
Ray and Optuna.
"""

import json
import subprocess
import sys

import pytest

from icd_tune.method.schema import ConfigError
from icd_tune.platform.metrics import PAPER_ONLY, TRAINER_METRICS, trainer_metrics
from icd_tune.platform.preflight import StudyRunError
from icd_tune.platform.stages.plan import STATE_FILE, RunOptions, planned_trial_epochs, resolve_plan
from icd_tune.platform.stages.cache_plan import cache_decision
from icd_tune.platform.study.definition import load_study
from icd_tune.platform.study.trials import TrialDescriber, trial_config, trial_dict

GRID = """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0, 0.5]}
seeds: [0, 1]
smoke: {epochs: 1, max_steps: 2, teacher_epochs: 1}
"""

SEARCH = """
mode: search
search:
  space:
    loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}
    optim.lr: {type: loguniform, low: 0.001, high: 0.2}
  num_samples: 5
asha: {enabled: true, grace_period: 1, reduction_factor: 2}
seeds: [3]
"""


@pytest.fixture(autouse=True)
def no_ambient_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_stage_modules_that_need_no_ray_do_not_load_it():
    code = ("import sys, icd_tune.platform.stages.plan, icd_tune.platform.stages.prepare, icd_tune.platform.study.trials, "
            "icd_tune.platform.cli.main;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'ray', 'optuna', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_plan_of_a_grid_resolves_points_resources_and_folders(tmp_path, tiny_study):
    study = load_study(tiny_study("grid", GRID, epochs=3))
    results = tmp_path / "results"
    plan = resolve_plan(study, RunOptions(results_dir=str(results), data_dir=str(tmp_path / "data"),
                                          cpus_per_trial=2))
    assert [p.name for p in plan.points] == ["invariance_weight=0 seed=0", "invariance_weight=0.5 seed=0",
                                             "invariance_weight=0 seed=1", "invariance_weight=0.5 seed=1"]
    assert plan.run_trials == 4 and plan.max_epochs == 3 and not plan.searching
    assert plan.cpus == 2 and plan.gpus == 0
    assert plan.base["data"]["root"] == str((tmp_path / "data").resolve())
    assert study.base["data"]["root"] is None  # the study itself is left as loaded
    assert plan.run_folder.parent == (results / "grid").resolve() and not plan.run_folder.name.endswith("-smoke")
    assert plan.storage_path == str(plan.run_folder / "ray")
    assert plan.experiment_path == str(plan.run_folder / "ray" / "tune")
    assert plan.tracking_uri == f"sqlite:///{(results / 'grid').resolve() / 'mlflow.db'}"
    assert plan.trial0.loss.invariance_weight == 0 and plan.trial0.seed == 0 and plan.needs_teacher
    assert plan.teacher_dir == str(results.resolve() / "teachers")
    # Planning writes nothing; the state it will write holds the run's fingerprint.
    assert list(plan.state) == ["fingerprint"] and not results.exists()
    assert json.loads(json.dumps(vars(plan.run_settings()))) == {
        "metric": "val/acc1", "seeds": [0, 1], "cpus_per_trial": 2, "checkpoint_every": 1, "gpus_per_trial": 0.0,
        "system_metrics": True, "import_paths": []}


def test_plan_of_a_smoke_run_caps_the_first_point(tmp_path, tiny_study):
    study = load_study(tiny_study("smoke", GRID, epochs=50, steps=50))
    plan = resolve_plan(study, RunOptions(smoke=True, results_dir=str(tmp_path / "results"),
                                          storage="s3://bucket/studies/"))
    assert [p.name for p in plan.points] == ["invariance_weight=0 seed=0"] and plan.max_epochs == 1
    assert plan.base["optim"]["epochs"] == 1 and plan.base["max_steps_per_epoch"] == 2
    assert plan.base["teacher"]["optim"]["epochs"] == 1
    assert list(plan.base) == list(study.base)  # key order kept: it is logged and saved
    assert study.base["optim"]["epochs"] == 50 and study.base["max_steps_per_epoch"] == 50
    assert plan.run_folder.name.endswith("-smoke")
    assert plan.storage_path == f"s3://bucket/studies/smoke/{plan.run_folder.name}"
    assert plan.experiment_path == plan.storage_path + "/tune"
    assert plan.experiment_name == "smoke-smoke" and plan.parent_run_name == "smoke (smoke)"


def test_plan_of_a_search(tmp_path, tiny_study):
    study = load_study(tiny_study("search", SEARCH, epochs=4))
    plan = resolve_plan(study, RunOptions(results_dir=str(tmp_path / "results")))
    assert plan.points is None and plan.run_trials == 5 and plan.searching and plan.needs_teacher
    assert plan.trial0.seed == 3 and plan.trial0.loss.invariance_weight == 1.0
    assert planned_trial_epochs(study) == 20
    smoke = resolve_plan(study, RunOptions(smoke=True, results_dir=str(tmp_path / "results")))
    assert not smoke.searching and len(smoke.points) == 1 and smoke.points[0].seed == 3


def test_plan_of_a_resume_reads_the_latest_matching_run(tmp_path, tiny_study):
    study = load_study(tiny_study("again", GRID))
    results = tmp_path / "results"
    with pytest.raises(StudyRunError, match=r"nothing to resume: no earlier run of 'again' under "):
        resolve_plan(study, RunOptions(resume=True, results_dir=str(results)))
    runs = {"20260101-000000": {"storage": "s3://bucket/old"},
            "20260102-000000": {"storage": "s3://bucket/new", "tracking_uri": "http://127.0.0.1:5000",
                                "parent_run_id": "abc"},
            "20260103-000000-smoke": {"storage": "/smoke/storage"}}
    for name, state in runs.items():
        (results / "again" / name).mkdir(parents=True)
        (results / "again" / name / STATE_FILE).write_text(json.dumps(state))
    plan = resolve_plan(study, RunOptions(resume=True, results_dir=str(results)))
    assert plan.run_folder.name == "20260102-000000" and plan.state["parent_run_id"] == "abc"
    assert plan.storage_path == "s3://bucket/new" and plan.tracking_uri == "http://127.0.0.1:5000"
    explicit = resolve_plan(study, RunOptions(resume=True, results_dir=str(results), tracking_uri="sqlite:///x.db"))
    assert explicit.tracking_uri == "sqlite:///x.db"
    smoke = resolve_plan(study, RunOptions(resume=True, smoke=True, results_dir=str(results)))
    assert smoke.run_folder.name == "20260103-000000-smoke" and smoke.storage_path == "/smoke/storage"


def test_cache_decision(tmp_path, tiny_study):
    short = load_study(tiny_study("short", GRID, epochs=2))  # 4 trials x 2 epochs
    long = load_study(tiny_study("long", GRID, epochs=50))  # 4 x 50 = 200 trial-epochs
    sizes = dict(num_train=192, feature_dim=64, num_classes=4)
    trial0 = short.trial_config({}, 0)
    enabled, reason = cache_decision(short, trial0, **sizes)
    assert not enabled and reason.startswith("off: this study runs 8 trial-epochs, fewer than the 162")
    enabled, reason = cache_decision(long, long.trial_config({}, 0), **sizes)
    assert enabled and reason.startswith("cache on: ") and "fits the 8.0 GiB budget" in reason
    enabled, reason = cache_decision(long, long.trial_config({}, 0), **sizes, smoke=True)
    assert not enabled and reason == "off for a smoke run (teacher.cache: on forces it)"
    forced = short.trial_config({"teacher.cache": "on"}, 0)
    enabled, reason = cache_decision(short, forced, **sizes, smoke=True, on_cluster=True)
    assert enabled and reason.startswith("cache on (teacher.cache: on)")
    assert reason.endswith("; on a cluster each node builds its own copy once, on its own device, before its first trial")
    enabled, reason = cache_decision(long, long.trial_config({"teacher.cache": "off"}, 0), **sizes)
    assert not enabled and reason == "cache off (teacher.cache: off)"


def test_trial_config_applies_overrides_in_order_and_the_seed(tmp_path, tiny_study):
    study = load_study(tiny_study("cfg", GRID))
    overrides = {"loss.invariance_weight": 2.0, "optim.lr": 0.01}
    cfg = trial_config(study.base, overrides, 7)
    assert cfg.seed == 7 and cfg.loss.invariance_weight == 2.0 and cfg.optim.lr == 0.01
    assert cfg == study.trial_config(overrides, 7)
    assert study.base["loss"]["invariance_weight"] == 0.5  # the base is never changed
    # A list keeps a command line's order, repeated keys included.
    pairs = [("optim.lr", 0.1), ("optim", {"epochs": 3}), ("optim.lr", 0.2)]
    assert trial_dict({}, pairs, 0) == {"optim": {"epochs": 3, "lr": 0.2}, "seed": 0}
    with pytest.raises(ConfigError, match=r"loss.invariance_weight.*>= 0"):
        trial_config(study.base, {"loss.invariance_weight": -1.0}, 0)


def test_trial_describer_names_and_params(tmp_path, tiny_study):
    study = load_study(tiny_study("names", GRID))
    describe = TrialDescriber(study.base, default_seed=5)
    name, params = describe({"point": study.grid_points()[0].to_config()})
    assert name == "invariance_weight=0 seed=0"
    # Logged as the study file wrote it (0, not 0.0), with the level beside it.
    assert params["loss.invariance_weight"] == 0 and type(params["loss.invariance_weight"]) is int
    assert params["level.invariance_weight"] == 0 and params["seed"] == 0 and params["student"] == "resnet8"
    name, params = describe({"params": {"loss.invariance_weight": 1.23456, "optim.lr": 0.01}})
    assert name == "invariance_weight=1.235 lr=0.01 seed=5"
    assert params["optim.lr"] == 0.01 and params["seed"] == 5 and not any(k.startswith("level.") for k in params)


def test_trainer_metrics_are_what_the_trainer_emits(tiny_data):
    import torch

    from icd_tune.method.models import create_model
    from icd_tune.method.train import Trainer

    base = {"student": "resnet8", "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4,
                                           "val_fraction": 0.2},
            "optim": {"epochs": 1, "batch_size": 16}, "loss": {"kd_weight": 1.0, "feat_dim": 16},
            "max_steps_per_epoch": 2, "device": "cpu"}
    torch.manual_seed(0)
    teacher = create_model("resnet8", 4).eval()
    (metrics,) = Trainer(trial_config(base, {}, 0), tiny_data, teacher).epochs()
    # The protocol-paper names come from a trial without a validation split (test_study_checks).
    assert set(metrics) == set(TRAINER_METRICS) - set(PAPER_ONLY)
    assert "train/loss_invariance" in TRAINER_METRICS and trainer_metrics(["ce"])[:2] == ("train/loss", "train/loss_ce")


def test_searcher_prunes_stopped_trials_and_closes_orphans_without_ray(tmp_path, tiny_study):
    import optuna
    import ray

    from icd_tune.platform.raytune.ray_internals import searcher_study
    from icd_tune.platform.runner import make_searcher, search_domains

    study = load_study(tiny_study("prune", SEARCH, epochs=4))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(study, storage, max_epochs=4)
    assert searcher.set_search_properties("val/acc1", "max", {"seed": 3, "params": search_domains(study)})
    trial_ids = ("diverged_first", "stopped", "done", "diverged", "errored")
    for trial_id in trial_ids:
        assert set(searcher.suggest(trial_id)["params"]) == {"loss.invariance_weight", "optim.lr"}

    def diverge(trial_id, epoch, last):
        searcher.on_trial_result(trial_id, {"val/acc1": last, "epoch": epoch, "trial/diverged": 1.0,
                                            "trial/error": f"diverged at epoch {epoch}"})
        searcher.on_trial_complete(trial_id, {"val/acc1": last, "epoch": epoch, "trial/diverged": 1.0,
                                              "trial/error": f"diverged at epoch {epoch}"})

    diverge("diverged_first", 1, float("nan"))  # before any value: pruned without one
    searcher.on_trial_result("stopped", {"val/acc1": 30.0, "epoch": 1, "training_iteration": 1})
    searcher.on_trial_complete("stopped", {"val/acc1": 35.0, "epoch": 2})
    searcher.on_trial_complete("done", {"val/acc1": 60.0, "epoch": 4})
    searcher.on_trial_result("diverged", {"val/acc1": 50.0, "epoch": 1, "training_iteration": 1})
    diverge("diverged", 2, 50.0)  # valued with the study's worst (30), not its own last 50
    searcher.on_trial_complete("errored", error=True)
    # An Optuna trial asked for by a driver that was killed before Ray recorded it.
    searcher_study(searcher).ask()
    checkpoint = tmp_path / "searcher.pkl"
    searcher.save(str(checkpoint))
    make_searcher(study, storage, max_epochs=4).restore(str(checkpoint))
    trials = optuna.load_study(study_name="prune", storage=storage).trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED", "COMPLETE", "PRUNED", "FAIL", "FAIL"]
    first, stopped, _, diverged, _, orphan = trials
    assert stopped.value == 35.0 and stopped.intermediate_values == {1: 30.0, 2: 35.0}
    assert first.intermediate_values == {} and first.user_attrs["diverged"] == "diverged at epoch 1"
    assert diverged.intermediate_values == {1: 50.0, 2: 30.0} and diverged.value == 30.0
    assert diverged.user_attrs["diverged"] == "diverged at epoch 2" and "orphaned" in orphan.user_attrs["failure"]
    assert optuna.load_study(study_name="prune", storage=storage).user_attrs["optuna_version"] == optuna.__version__
    assert not ray.is_initialized()
