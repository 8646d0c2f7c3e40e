"""The report's protocol rules, one table of cases each: selection on validation
only, statistics over completed trials, Holm-adjusted paired tests with d_z,
and no interval from fewer than three seed pairs."""

import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from icd_tune.platform.report import best_configurations, level_table, render_report, write_report
from icd_tune.platform.report.stats import best_level, check_selection_metric, holm_adjust
from icd_tune.platform.study.definition import load_study

FACTOR = "invariance_weight"
ERROR = "diverged at epoch 3: loss term 'invariance' became non-finite"
BASE = (70.0, 71.5, 69.0, 72.0, 70.5)  # the baseline's test number per seed


def trial(level, seed, test, status="completed", epochs=12, final=None):
    """A record as the runner builds it; validation scores sit a little under test."""
    record = {"trial_id": f"t_{level}_{seed}", "name": f"{FACTOR}={level} seed={seed}",
              "levels": {FACTOR: level}, "params": {f"loss.{FACTOR}": level}, "seed": seed,
              "status": status, "epochs": epochs, "error": None,
              "final": {"test/acc1": test + 0.1, "test/acc1_at_best_val": test,
                        "val/acc1": test - 1.0, "val/best_acc1": test - 0.5}}
    record["final"].update(final or {})
    return record


def paired_trials(diffs, base=BASE):
    """Baseline 0 over len(base) seeds; each level its per-seed differences from it."""
    out = [trial(0, s, b) for s, b in enumerate(base)]
    for level, ds in diffs.items():
        out += [trial(level, s, base[s] + d) for s, d in enumerate(ds)]
    return out


def by_level(rows):
    return {r["level"]: r for r in rows}


def tables(text):
    return [block.splitlines() for block in text.split("\n\n") if block.startswith("|")]


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


# ------------------------------------------------- selection on validation


def crossed_trials(with_best):
    """Level "a" wins on validation, level "b" on test; the last val epoch favours b."""
    out = []
    for level, val, last_val, test in (("a", 75.0, 60.0, 70.0), ("b", 72.0, 71.0, 74.0)):
        for seed in range(3):
            final = {"val/best_acc1": val + seed, "val/acc1": last_val + seed,
                     "val/loss": (1.0 if level == "a" else 2.0) - 0.1 * seed}
            record = trial(level, seed, test + seed, final=final)
            if not with_best:
                del record["final"]["val/best_acc1"]
                record["final"]["val/acc1"] = val + seed
            out.append(record)
    return out


@pytest.mark.parametrize("selection, mode, with_best, label", [
    ("val/acc1", "max", True, "val/best_acc1"),  # a trial's best epoch, not its last
    ("val/best_acc1", "max", True, "val/best_acc1"),
    ("val/acc1", "max", False, "val/acc1"),  # no best recorded: the final value
    ("val/loss", "min", True, "val/loss"),
])
def test_best_level_and_configurations_are_selected_on_validation(selection, mode, with_best, label):
    trials = crossed_trials(with_best)
    rows = by_level(level_table(trials, FACTOR, selection_metric=selection))
    assert rows["b"]["metric_mean"] > rows["a"]["metric_mean"]  # test would pick b
    assert best_level(list(rows.values()), mode)["level"] == "a"
    text = render_report("s", trials, [FACTOR], baseline="b", mode=mode, selection_metric=selection)
    assert f"Best level by mean {label} (selected on validation, {mode}): a;" in text
    assert f"(top 3 by {label}, {mode}; completed trials, selected on validation)" in text
    assert "\n1. t_a_2 " in text
    assert "by mean test" not in text


REFUSERS = {
    "render_report": lambda m, out: render_report("s", paired_trials({1: [1, 2]}), [FACTOR],
                                                  selection_metric=m),
    "write_report": lambda m, out: write_report(out, "s", paired_trials({1: [1, 2]}), [], [FACTOR],
                                                selection_metric=m),
    "level_table": lambda m, out: level_table(paired_trials({1: [1, 2]}), FACTOR, selection_metric=m),
    "best_configurations": lambda m, out: best_configurations(paired_trials({1: [1, 2]}), metric=m),
}


@pytest.mark.parametrize("metric", ["test/acc1", "test/acc1_at_best_val", "test/acc5"])
@pytest.mark.parametrize("call", sorted(REFUSERS))
def test_a_test_metric_is_refused_for_selection(tmp_path, call, metric):
    with pytest.raises(ValueError, match="selection metric .* test set"):
        REFUSERS[call](metric, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("study", sorted((Path(__file__).parents[1] / "ablations").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_studies_report_test_at_best_val(study):
    loaded = load_study(study)
    settings = loaded.settings
    if loaded.base["protocol"] == "paper":  # the published table: reported as published, selected on nothing
        assert settings.report_metric == settings.metric == "test/best_acc1" and loaded.settings.mode == "grid"
        assert not settings.asha.enabled
        return
    assert settings.report_metric == "test/acc1_at_best_val"
    check_selection_metric(settings.metric)


# ------------------------------------------------- completed trials only


def test_stopped_trials_are_out_of_the_statistics_and_listed_apart():
    trials = paired_trials({1: [1.0, 1.4, 0.7]})
    # A stopped rerun of a seed that pairs; its high early value must move nothing.
    stopped = trial(1, 1, 99.0, status="stopped", epochs=4)
    stopped["trial_id"] = "stopped_1"
    failed = trial(1, 3, 0.0, status="failed", epochs=3)
    failed.update(trial_id="failed_3", final={}, error=ERROR)
    extra = [stopped, failed]
    rows = by_level(level_table(trials + extra, FACTOR, baseline=0, also=["test/acc1"]))
    clean = by_level(level_table(trials, FACTOR, baseline=0, also=["test/acc1"]))
    for key in ("metric_mean", "metric_std", "select_mean", "also", "diff_mean", "diff_n", "p_value"):
        assert rows[1][key] == clean[1][key], key
    assert [rows[1][k] for k in ("n", "n_completed", "n_stopped", "n_failed")] == [5, 3, 1, 1]
    text = render_report("s", trials + extra, [FACTOR], baseline=0)
    head, tail = text.split("## Stopped trials (1)")
    assert "stopped_1" not in head  # nor among the best configurations
    assert cells(tables(tail)[0][2]) == ["stopped_1", f"{FACTOR}=1", "1", "4", "98.00"]
    assert "## Failed trials (1)" in tail and f"failed_3 ({FACTOR}=1 seed=3), after 3 epoch(s): {ERROR}" in tail


# ------------------------------------------------- paired differences


@pytest.mark.parametrize("p, adjusted", [
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),  # 4x.005, 3x.01, 2x.03, max(.06, .04)
    ([0.5, 0.6], [1.0, 1.0]),  # capped at 1, and never below an earlier adjusted p
    ([0.02], [0.02]),  # a family of one is not corrected
    ([], []),
])
def test_holm_adjust(p, adjusted):
    assert holm_adjust(p) == pytest.approx(adjusted)


def test_holm_adjusted_p_values_match_a_hand_computation():
    diffs = {1: [0.4, 1.1, 0.2, 0.9], 2: [2.0, 2.6, 1.7, 2.2], 0.5: [-0.3, 0.5, 0.1, -0.6], 3: [1.0, 2.0]}
    base = BASE[:4]
    rows = by_level(level_table(paired_trials(diffs, base), FACTOR, baseline=0))
    raw = {lv: scipy_stats.ttest_rel([b + d for b, d in zip(base, ds)], base).pvalue
           for lv, ds in diffs.items() if len(ds) >= 3}
    for level, p in raw.items():
        assert rows[level]["p_value"] == pytest.approx(p)
    # Holm over the m = 3 levels with 3+ pairs; level 3 (two pairs) is not in the family.
    (l1, p1), (l2, p2), (l3, p3) = sorted(raw.items(), key=lambda kv: kv[1])
    a1 = min(1.0, 3 * p1)
    a2 = max(a1, min(1.0, 2 * p2))
    a3 = max(a2, p3)
    assert [rows[l]["p_holm"] for l in (l1, l2, l3)] == pytest.approx([a1, a2, a3])
    assert {rows[l]["holm_m"] for l in raw} == {3}
    assert rows[3]["p_holm"] is None and "holm_m" not in rows[3]


@pytest.mark.parametrize("diffs, dz", [
    ([2.0, 1.5, 2.5], 2.0 / 0.5),
    ([0.4, 1.1, 0.2, 0.9], 0.65 / math.sqrt(0.53 / 3)),
    ([-1.0, -0.5], -0.75 / math.sqrt(0.125)),
    ([1.0, 1.0, 1.0], None),  # no spread: undefined rather than infinite
])
def test_effect_size_dz(diffs, dz):
    row = by_level(level_table(paired_trials({1: diffs}), FACTOR, baseline=0))[1]
    assert row["diff_dz"] == (None if dz is None else pytest.approx(dz))


@pytest.mark.parametrize("pairs", [1, 2, 3, 5])
def test_fewer_than_three_pairs_print_no_interval_or_p(pairs):
    diffs = [1.0, 1.4, 0.7, 1.2, 0.9][:pairs]
    text = render_report("s", paired_trials({1: diffs}), [FACTOR], baseline=0)
    row = cells(tables(text)[1][3])  # comparison table: header, rule, baseline, level 1
    assert row[0] == "1"
    if pairs < 3:
        assert row[1].endswith(f"(n={pairs}) n < 3: interval not informative")
        assert row[3:] == ["-", "-"]
    else:
        assert row[1].endswith(f"] (n={pairs})") and "not informative" not in row[1]
        assert all(0 <= float(c) <= 1 for c in row[3:])


def paper_trial(level, seed, best, last):
    record = trial(level, seed, 0.0)
    record["final"] = {"test/best_acc1": best, "test/best_epoch": 7, "test/acc1": last}
    return record


def test_protocol_paper_labels_the_test_selected_number_and_picks_nothing(tmp_path):
    trials = [paper_trial(0, s, 70.0 + s, 69.0 + s) for s in range(3)]
    trials += [paper_trial(0.5, s, 72.0 + s, 70.0 + s) for s in range(3)]
    text = render_report("paper", trials, [FACTOR], baseline=0, metric="test/best_acc1",
                         selection_metric="test/best_acc1", protocol="paper")
    flat = " ".join(text.split())
    assert "Protocol: paper" in flat and "SELECTED ON THE TEST SET" in flat
    assert "test/best_acc1 (selected on test)" in text and "test/acc1 (last epoch)" in text
    assert "71.00 +- 1.00" in text and "73.00 +- 1.00" in text and "70.00 +- 1.00" in text
    assert "Best level" not in text and "Best configurations" not in text
    assert "+2.00" in text  # the seed-paired difference from the baseline
    # A baseline that is not a level is named, under either protocol, and no differences are shown.
    for protocol in ("paper", "validation"):
        other = render_report("paper", trials, [FACTOR], baseline=7, metric="test/best_acc1",
                              selection_metric="test/best_acc1" if protocol == "paper" else "val/acc1",
                              protocol=protocol)
        assert f"Baseline 7 is not a level of '{FACTOR}'; no differences shown." in other and "+2.00" not in other
    honest = render_report("honest", paired_trials({0.5: [1.0, 1.0, 1.0, 1.0, 1.0]}), [FACTOR], baseline=0)
    assert "Protocol: validation" in honest and "Best level" in honest
    # Selecting on a test metric stays refused under the validation protocol.
    with pytest.raises(ValueError, match="measured on the test set"):
        write_report(tmp_path, "x", trials, [], [FACTOR], metric="test/best_acc1", selection_metric="test/best_acc1")
    assert (write_report(tmp_path, "x", trials, [], [FACTOR], metric="test/best_acc1", selection_metric="test/best_acc1",
                         protocol="paper")["report.txt"]).is_file()
