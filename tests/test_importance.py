"""Factor importance from trial records: real Optuna evaluators on an in-memory study."""

import itertools
import json
import random
import re

from icd_tune.platform.report import write_report
from icd_tune.platform.report.importance import compute_importance, importance_metrics


def grid_trials(seeds=(0, 1, 2)):
    """A 3 x 3 grid whose val/acc1 depends strongly on ``weight``, hardly on ``temp``."""
    rng = random.Random(0)
    trials = []
    for seed, weight, temp in itertools.product(seeds, [0.0, 0.5, 2.0], [0.05, 0.1, "learnable"]):
        value = 60 + 10 * weight + rng.gauss(0, 0.2) + (0.1 if temp == "learnable" else 0)
        trials.append({"trial_id": f"t{len(trials)}", "name": f"w={weight} t={temp} seed={seed}",
                       "levels": {"weight": weight, "temp": temp},
                       "params": {"loss.w": weight, "loss.t": temp}, "seed": seed, "status": "completed",
                       "epochs": 2, "final": {"val/acc1": value, "test/acc1_at_best_val": value - 1}, "error": None})
    return trials


def test_importance_ranks_the_key_that_drives_the_metric_first():
    trials = grid_trials()
    trials[0]["status"] = "stopped"
    result = compute_importance(trials, ["weight", "temp"], "val/acc1", "max", from_levels=True)
    assert result["reason"] is None and result["trials"] == 26 and result["left_out"] == 1
    assert set(result["importance"]) == {"fANOVA", "PED-ANOVA"}
    fanova = result["importance"]["fANOVA"]
    assert fanova["weight"] > 0.8 > fanova["temp"]
    assert result["importance"]["PED-ANOVA"]["weight"] > result["importance"]["PED-ANOVA"]["temp"]
    metrics = importance_metrics(result, "importance/")
    assert set(metrics) == {"importance/fanova/weight", "importance/fanova/temp", "importance/pedanova/weight",
                            "importance/pedanova/temp"}


def test_search_keys_read_from_params_and_single_key_says_why_not():
    result = compute_importance(grid_trials(), ["loss.w", "loss.t"], "val/acc1", "min", from_levels=False)
    assert result["keys"] == ["loss.w", "loss.t"] and result["importance"]["fANOVA"]["loss.w"] > 0.8
    one = compute_importance(grid_trials(), ["weight"], "val/acc1", "max", from_levels=True)
    assert not one["importance"] and "varies one key (weight)" in one["reason"]
    few = compute_importance(grid_trials(seeds=(0,))[:3], ["weight", "temp"], "val/acc1", "max", from_levels=True)
    assert "needs at least 4" in few["reason"]


def test_report_carries_importance_table_plot_and_file(tmp_path):
    paths = write_report(tmp_path, "grid", grid_trials(), [], ["weight", "temp"], selection_metric="val/acc1")
    text = paths["report.txt"].read_text()
    assert "## Factor importance on val/acc1 (max)" in text and "rests on 27 trials" in text
    assert re.search(r"^\| weight +\| +[01]\.\d{3} \| +[01]\.\d{3} \|$", text, re.M)  # a pipe table like the others
    assert "fANOVA" in text and "PED-ANOVA" in text
    assert paths["importance.png"].stat().st_size > 1000
    assert json.loads(paths["importance.json"].read_text())["keys"] == ["weight", "temp"]
    single = write_report(tmp_path / "one", "q", grid_trials(), [], ["weight"], selection_metric="val/acc1")
    assert "Not computed: the study varies one key (weight)" in single["report.txt"].read_text()
    assert "importance.png" not in single


def test_trials_that_all_score_the_same_give_a_reason_not_an_error():
    trials = grid_trials()
    for t in trials:
        t["final"]["val/acc1"] = 25.0
    result = compute_importance(trials, ["weight", "temp"], "val/acc1", "max", from_levels=True)
    assert not result["importance"] and "scored the same val/acc1" in result["reason"]
