"""mode: compare: each method tuned with the same budget, then its best and its default retrained on the same seeds.

One tiny digits comparison (2 methods, 3 trials each, 2 epochs of at most 3 steps, 2 seeds) runs end to end
through Ray Tune, Optuna, ASHA and MLflow: cut short by a time budget in its first search, then resumed to the
end. It is shared by the slow tests below, which only read it (the last one resumes it again: nothing may be
trained again). The refusals run nothing.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from icd_tune.platform.cli.main import main
from icd_tune.platform.study.definition import load_study

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "ablations" / "compare_digits.yaml"

TINY = """
extends: {digits}
name: compare_tiny
teacher: {{optim: {{epochs: 1, batch_size: 64, lr: 0.1}}}}
optim: {{epochs: 2, batch_size: 64, lr: auto}}
max_steps_per_epoch: 3
search: {{num_samples: 3, seed: 0}}
asha: {{enabled: true, grace_period: 1, reduction_factor: 2}}
seeds: [0, 1]
results_dir: {results}
export_models: 0
"""
# Two methods: ICD over its invariance weight, CRD over its shipped space with digits-sized negatives.
METHODS = ("compare.methods={ICD: {set: {method: icd}, spaces: [], space: {loss.invariance_weight: "
           "{type: uniform, low: 0.0, high: 2.0}}}, CRD: {set: {method: crd}, space: {loss.crd_negatives: "
           "{type: int, low: 256, high: 1024, log: true}}}}")


def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "compare_tiny.yaml"
    path.write_text(TINY.format(digits=DIGITS, results=tmp_path / "results"))
    return path


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_shipped_comparisons_give_every_method_the_same_budget_and_its_own_space():
    for path in (ROOT / "ablations" / "compare_icd_crd_dkd.yaml", DIGITS):
        comparison = load_study(path).compare
        assert comparison.labels == ["ICD", "CRD", "DKD"] and comparison.reference == "ICD"
        assert not comparison.unequal_budgets()
        spaces = {arm.label: set(arm.search.space) for arm in comparison.arms}
        assert spaces["CRD"] == {"loss.crd_weight", "loss.crd_temperature", "loss.crd_negatives"}
        assert spaces["DKD"] == {"loss.dkd_alpha", "loss.dkd_beta", "loss.dkd_temperature"}
        assert spaces["ICD"] == {"loss.contrastive_weight", "loss.invariance_weight", "loss.temperature"}
        # The default arm is each method's published setting.
        defaults = {arm.label: arm.default_config() for arm in comparison.arms}
        assert defaults["CRD"]["loss.crd_weight"] == 0.8 and defaults["DKD"]["loss.dkd_beta"] == 8.0
        assert defaults["ICD"] == {"loss.contrastive_weight": 1.0, "loss.invariance_weight": 0.5,
                                   "loss.temperature": "learnable"}
        confirm = comparison.confirm_study(comparison.default_best())
        assert [lab for lab, _ in confirm.factors[0].levels] == [
            "ICD", "ICD (default)", "CRD", "CRD (default)", "DKD", "DKD (default)"]
        assert len(confirm.grid_points()) == 6 * 3
        # Each search tries its default first; where it wins, the confirm phase runs that arm once.
        assert [arm.search.settings.search.points_to_evaluate for arm in comparison.arms] == [
            [defaults[arm.label]] for arm in comparison.arms]
        best = {**comparison.default_best(), "CRD": defaults["CRD"]}
        assert [lab for lab, _ in comparison.confirm_study(best).factors[0].levels] == [
            "ICD", "ICD (default)", "CRD", "DKD", "DKD (default)"]


@pytest.mark.parametrize("override, key, says", [
    ("compare.methods.CRD.num_samples=4", "compare.methods.CRD.num_samples", "unequal tuning budgets: CRD gets 4"),
    ("compare.methods.DKD.asha={grace_period: 2}", "compare.methods.DKD.asha", "unequal tuning budgets: DKD gets"),
    ("compare.methods.CRD.set={method: crd, optim.epochs: 4}", "compare.methods.CRD.set.optim.epochs",
     "CRD gets 6 trials x 4 epochs"),
    ("compare.reference=KD", "compare.reference", "must be one of the compared methods ['ICD', 'CRD', 'DKD']"),
    ("compare.methods.CRD.space={loss.invariance_weight: {type: uniform, low: 0.0, high: 1.0}}",
     "loss.invariance_weight", "is a setting of method 'icd', not of this trial's method 'crd'"),
    ("compare.methods.DKD.spaces=[]", "search", "a search needs parameters"),
    ("grid={w: {key: loss.invariance_weight, levels: [0.0]}}", "grid", "a comparison builds its own grid"),
])
def test_bad_comparisons_are_refused_before_any_work_naming_the_key(tmp_path, capsys, override, key, says):
    results = tmp_path / "results"
    code, _, err = run_main([DIGITS, "--set", override, "--results-dir", results], capsys)
    assert code == 2, err
    assert f"key '{key}'" in err and says in err, err
    assert not results.exists()


def test_unequal_budgets_run_only_when_allowed_and_the_plan_says_so(capsys):
    allowed = ["--set", "compare.methods.CRD.num_samples=4", "--set", "compare.allow_unequal_budgets=true"]
    code, out, err = run_main([DIGITS, "--dry-run", *allowed], capsys)
    assert code == 0, err
    assert "UNEQUAL TUNING BUDGETS" in out and "search-CRD: 4 trials x 5 epochs" in out
    code, out, _ = run_main([DIGITS, "--dry-run"], capsys)
    assert code == 0 and "UNEQUAL" not in out
    for line in ("search-ICD: 6 trials x 5 epochs, ASHA grace 1, factor 2, seed 0: at most 30 trial-epochs",
                 "confirm: 3 methods x (tuned, default) x 3 seed(s) = 18 trials x 5 epochs = 90 trial-epochs",
                 "budget: at most 180 trial-epochs (90 search, 90 confirm)", "GPU-hours estimate"):
        assert line in out, out


@pytest.fixture(scope="module")
def finished_comparison(tmp_path_factory, ray_session):
    work = tmp_path_factory.mktemp("compare")
    path = tiny_file(work)
    argv = [str(path), "--set", METHODS]
    # Cut short by the time budget in its first search (exit 4), then resumed to the end in the same folder.
    assert main([*argv, "--time-budget", "1s"]) == 4
    (folder,) = (work / "results" / "compare_tiny").glob("2*")
    cut = json.loads((folder / "compare_state.json").read_text())
    assert cut["status"] == "running" and cut["phases"]["search-ICD"]["stop_kind"] == "time budget"
    assert main([*argv, "--resume"]) == 0
    assert list((work / "results" / "compare_tiny").glob("2*")) == [folder]
    return SimpleNamespace(work=work, argv=argv, folder=folder,
                           summary=json.loads((folder / "compare.json").read_text()),
                           report=(folder / "compare_report.txt").read_text(),
                           state=json.loads((folder / "compare_state.json").read_text()))


def confirm_arms(finished) -> list[tuple[str, str]]:
    """(method, tuned or default) of each confirm arm: a method whose search chose its default has one."""
    methods = {m["label"]: m for m in finished.summary["methods"]}
    return [(label, config) for label in ("ICD", "CRD") for config in ("tuned", "default")
            if config == "tuned" or not methods[label]["best_is_default"]]


@pytest.mark.slow
def test_the_comparison_report_holds_every_section(finished_comparison):
    report, summary = finished_comparison.report, finished_comparison.summary
    assert report.startswith("# Comparison compare_tiny: ICD, CRD (reference ICD)")
    assert "Every method was tuned with the same budget: 3 trials x 2 epochs, ASHA grace 1 factor 2" in report
    assert not finished_comparison.summary["unequal_budgets"]
    for section in ("## Each method tuned and at its default", "## ICD against each method after tuning",
                    "Holm over", "## What tuning chose", "## Trial-epochs spent", "tuning gain, tuned - default"):
        assert section in report, section
    methods = {m["label"]: m for m in summary["methods"]}
    assert set(methods) == {"ICD", "CRD"}
    for m in methods.values():
        assert m["tuned"]["n"] == 2 and m["default"]["n"] == 2  # both seeds, both arms, every trial completed
        # A search whose best is the default confirms one arm, standing for both.
        assert m["best_is_default"] == (m["best"] == m["default_config"])
        assert m["tuning_gain"]["diff_n"] == 2 and m["tuning_gain"]["diff_mean"] == pytest.approx(
            m["tuned"]["mean"] - m["default"]["mean"])
        assert m["search"]["trials"] == 3 and m["search"]["failed"] == 0
        # A trial ASHA stopped at its first rung ran 1 epoch of 2.
        search = m["search"]
        assert search["trial_epochs"] == 2 * search["completed"] + search["stopped"] and search["completed"] >= 1
        assert m["confirm_trial_epochs"] == 2 * 2 * (1 if m["best_is_default"] else 2)
    against = summary["reference_against"]
    assert [r["method"] for r in against] == ["CRD"] and against[0]["diff_n"] == 2
    assert against[0]["diff_mean"] == pytest.approx(methods["ICD"]["tuned"]["mean"] - methods["CRD"]["tuned"]["mean"])
    assert methods["CRD"]["default_config"]["loss.crd_negatives"] == 1024
    assert (finished_comparison.folder / "compare.png").stat().st_size > 0


@pytest.mark.slow
def test_each_method_confirms_its_own_search_best_on_validation(finished_comparison):
    import pandas as pd

    folder, state = finished_comparison.folder, finished_comparison.state
    for label, key in (("ICD", "loss.invariance_weight"), ("CRD", "loss.crd_negatives")):
        search = pd.read_parquet(folder / f"search-{label}" / "trials.parquet")
        assert len(search) == 3
        done = search[search["status"] == "completed"]
        best = done.loc[done["final.val/best_acc1"].idxmax()]
        assert state["best"][label][key] == pytest.approx(best[f"param.{key}"])
        # Each search tries its method's default first.
        assert (search[f"param.{key}"] == {"ICD": 0.5, "CRD": 1024}[label]).any()
    confirm = pd.read_parquet(folder / "confirm" / "trials.parquet")
    # Every arm on both seeds: the methods are paired by seed.
    arms = confirm_arms(finished_comparison)
    assert confirm.groupby("level.method")["seed"].apply(sorted).to_dict() == {
        (label if config == "tuned" else f"{label} (default)"): [0, 1] for label, config in arms}
    tuned = confirm[confirm["level.method"] == "CRD"]
    assert (tuned["param.loss.crd_negatives"] == state["best"]["CRD"]["loss.crd_negatives"]).all()


@pytest.mark.slow
def test_one_parent_run_with_every_trial_tagged_by_phase_and_method(finished_comparison):
    from mlflow.tracking import MlflowClient

    state = finished_comparison.state
    client = MlflowClient(state["tracking_uri"])
    runs = client.search_runs([state["experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [state["parent_run_id"]]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["icd_tune.phase"] == "comparison"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    arms = confirm_arms(finished_comparison)
    assert len(children) == 3 + 3 + 2 * len(arms) and all(r.info.status == "FINISHED" for r in children)
    tags = sorted((r.data.tags["icd_tune.phase"], r.data.tags["icd_tune.method"], r.data.tags.get("icd_tune.config", ""))
                  for r in children)
    assert tags == sorted([("search", "ICD", "")] * 3 + [("search", "CRD", "")] * 3
                          + [("confirm", m, c) for m, c in arms] * 2)
    for child in children:  # each runs its own method
        assert child.data.params["method"] == child.data.tags["icd_tune.method"].lower()
    assert parent.data.metrics["compare/ICD/tuned_mean"] == pytest.approx(
        finished_comparison.summary["methods"][0]["tuned"]["mean"])
    # The printed compare link opens the confirm runs.
    confirm_ids = {r.info.run_id for r in children if r.data.tags["icd_tune.phase"] == "confirm"}
    url = parent.data.tags["icd_tune.compare_url"]
    assert all(i in url for i in confirm_ids) and not any(r.info.run_id in url for r in children
                                                          if r.info.run_id not in confirm_ids)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"compare_report.txt", "compare.json", "compare.png", "search-ICD", "search-CRD", "confirm"} <= artifacts


@pytest.mark.slow
def test_a_resumed_comparison_never_runs_a_finished_phase_again_nor_another_definition(finished_comparison, capsys):
    from mlflow.tracking import MlflowClient

    state = finished_comparison.state
    client = MlflowClient(state["tracking_uri"])
    before = len(client.search_runs([state["experiment_id"]]))
    code, _, err = run_main([*finished_comparison.argv, "--set", "compare.reference=CRD", "--resume"], capsys)
    assert code == 2 and "nothing to resume: no earlier run of comparison 'compare_tiny' with this definition" in err
    code, out, err = run_main([*finished_comparison.argv, "--resume"], capsys)
    assert code == 0, err
    for phase in ("search-ICD", "search-CRD", "confirm"):
        assert f"{phase}: finished earlier" in out
    assert len(client.search_runs([state["experiment_id"]])) == before
    again = json.loads((finished_comparison.folder / "compare.json").read_text())
    assert again["methods"] == finished_comparison.summary["methods"]


def test_a_search_point_to_evaluate_must_lie_in_its_space(tiny_study, capsys):
    path = tiny_study("first_points", """
    mode: search
    search:
      space: {loss.invariance_weight: {type: uniform, low: 0.0, high: 1.0}}
      num_samples: 2
      points_to_evaluate: [{loss.invariance_weight: 0.5}]
    """)
    assert load_study(path).settings.search.points_to_evaluate == [{"loss.invariance_weight": 0.5}]
    for bad in ("[{loss.invariance_weight: 2.0}]", "[{loss.kd_weight: 0.5}]"):
        code, _, err = run_main([path, "--dry-run", "--set", f"search.points_to_evaluate={bad}"], capsys)
        assert code == 2 and "key 'search.points_to_evaluate[0]'" in err and "inside the space" in err, err


def _record(label, seed, test, val=90.0, status="completed", epochs=5, params=None):
    return {"name": f"method={label} seed={seed}", "levels": {"method": label} if label else {}, "seed": seed,
            "status": status, "epochs": epochs, "params": params or {},
            "final": {"test/acc1_at_best_val": test, "val/best_acc1": val, "val/acc1": val}}


def test_the_report_pairs_by_seed_adjusts_over_the_comparisons_and_flags_unequal_budgets():
    from icd_tune.platform.report.compare import render_compare, summarise

    study = load_study(DIGITS, ["compare.methods.CRD.num_samples=4", "compare.allow_unequal_budgets=true"])
    comparison = study.compare
    tuned = {"ICD": [93.0, 94.0, 95.5], "CRD": [91.0, 92.5, 93.0], "DKD": [92.0, 94.5, 94.0]}
    default = {"ICD": [92.0, 93.5, 94.0], "CRD": [89.0, 90.0, 91.5], "DKD": [92.5, 93.0, 95.0]}
    confirm = [_record(label, s, v) for label, vs in tuned.items() for s, v in enumerate(vs)]
    confirm += [_record(f"{label} (default)", s, v) for label, vs in default.items() for s, v in enumerate(vs)]
    phases = {"confirm": {"trials": confirm}}
    for arm in comparison.arms:
        phases[f"search-{arm.slug}"] = {"trials": [_record(None, 0, 90.0, val=80.0 + i, epochs=5 if i else 2,
                                                            status="completed" if i else "stopped")
                                                    for i in range(arm.search.planned_trials())]}
    best = {arm.label: {} for arm in comparison.arms}
    summary = summarise(study, phases, best)
    text = render_compare(summary)
    assert text.startswith("UNEQUAL TUNING BUDGETS (compare.allow_unequal_budgets: true)")
    assert "CRD 4 trials x 5 epochs" in text.splitlines()[0]
    rows = {r["method"]: r for r in summary["reference_against"]}
    assert rows["CRD"]["diff_mean"] == pytest.approx(sum(a - b for a, b in zip(tuned["ICD"], tuned["CRD"])) / 3)
    assert rows["CRD"]["diff_n"] == 3 and rows["CRD"]["holm_m"] == 2
    # Holm: the smaller p is doubled, the larger kept at least as large.
    small, large = sorted([rows["CRD"], rows["DKD"]], key=lambda r: r["p_value"])
    assert small["p_holm"] == pytest.approx(min(1.0, 2 * small["p_value"]))
    assert large["p_holm"] == pytest.approx(max(small["p_holm"], large["p_value"]))
    methods = {m["label"]: m for m in summary["methods"]}
    assert methods["CRD"]["tuning_gain"]["diff_mean"] == pytest.approx(2.0)
    assert methods["CRD"]["search"] == {"trials": 4, "completed": 3, "stopped": 1, "failed": 0, "trial_epochs": 17}
    assert "Holm over 2 comparison(s)" in text and "| CRD    |             4 |" in text
