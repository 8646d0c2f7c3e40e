"""The baselines study end to end on digits: every method level trained through Ray Tune and logged to MLflow.

One run of ``ablations/baselines_digits.yaml`` (2 epochs of at most 3 steps, 1 seed), shared by the tests
below, which only read what it recorded.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Method level -> (method, its own loss terms). Every trial logs CE, and KD's divergence from the teacher
# whenever it reads one (weighted or not): all but the CE level.
LEVELS = {"ICD": ("icd", {"contrastive", "invariance"}), "ICD+KD": ("icd", {"contrastive", "invariance"}),
          "CE": ("ce", set()), "KD": ("ce", set()), "CRD": ("crd", {"crd"}), "CRD+KD": ("crd", {"crd"}),
          "RRD": ("rrd", {"rrd"}), "RRD+KD": ("rrd", {"rrd"}), "RRD-Tswap": ("rrd", {"rrd"}), "DKD": ("dkd", {"dkd"})}


@pytest.fixture(scope="module")
def finished_baselines(tmp_path_factory, ray_session):
    from icd_tune.platform.runner import RunOptions, run_study
    from icd_tune.platform.study.definition import load_study

    work = tmp_path_factory.mktemp("baselines_digits")
    overrides = ["seeds=[0]", "optim.epochs=2", "max_steps_per_epoch=3", "teacher.optim.epochs=1",
                 "teacher.max_steps_per_epoch=3", f"teacher.cache_dir={work / 'teachers'}"]
    study = load_study(ROOT / "ablations" / "baselines_digits.yaml", overrides)
    out = run_study(study, RunOptions(results_dir=str(work / "results")), log=lambda *_: None)
    return SimpleNamespace(study=study, out=out)


def test_every_method_level_completes_and_logs_its_own_terms(finished_baselines):
    from mlflow.tracking import MlflowClient

    out = finished_baselines.out
    assert sorted(t["levels"]["method"] for t in out["trials"]) == sorted(LEVELS)
    assert all(t["status"] == "completed" for t in out["trials"])
    client = MlflowClient(out["tracking_uri"])
    children = [r for r in client.search_runs([out["experiment_id"]])
                if r.data.tags.get("mlflow.parentRunId") == out["parent_run_id"]]
    assert len(children) == len(LEVELS)
    for run in children:
        level = run.data.params["level.method"]
        method, terms = LEVELS[level]
        assert run.data.params["method"] == method
        logged = {k.removeprefix("train/loss_") for k in run.data.metrics if k.startswith("train/loss_")}
        assert logged == {"ce", *terms, *(["kd"] if level != "CE" else [])}, level
        assert len(client.get_metric_history(run.info.run_id, "val/acc1")) == 2
        # A trial records its own method's settings, not the ones it ignored.
        own = {k for k in run.data.params if k.startswith("loss.")}
        assert ("loss.crd_negatives" in own) == (method == "crd") and ("loss.feat_dim" in own) == (method == "icd")
    crd = next(r for r in children if r.data.params["level.method"] == "CRD")
    assert crd.data.params["loss.crd_negatives"] == "1024" and crd.data.params["loss.crd_weight"] == "0.8"
    swap = next(r for r in children if r.data.params["level.method"] == "RRD-Tswap")
    assert swap.data.params["loss.rrd_student_temperature"] == "0.02"


def test_the_report_compares_every_method_with_icd_paired_by_seed(finished_baselines):
    report = finished_baselines.out["report"]
    section = report[report.index("## Factor: method"):]
    section = section[:section.index("\n## ", 1)]
    assert "Holm" in section
    for level in LEVELS:
        assert f"| {level} " in section, level
    assert "diff vs ICD" in section
    # The one-level pair factor has no baseline of its own: no differences, and said so once.
    assert "## Factor: pair" in report
