"""Study reports: statistics checked against numbers worked out by hand, and
the files (text, Parquet, PNG) written for real under tmp_path."""

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from icd_tune.platform import report
from icd_tune.platform.report import (
    best_configurations,
    level_table,
    plot_factor,
    plot_learning_curves,
    render_report,
    use_log_axis,
    write_parquet,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T_975_1DOF = 12.706204736174707
T_975_2DOF = 4.302652729911275
FACTOR = "invariance_weight"
ERROR = "diverged at epoch 3, step 17: loss term 'invariance' became non-finite"

# level -> test/acc1 per seed 0, 1, 2 (None = that seed failed)
TEST_ACC = {0.0: [70.0, 71.0, 72.0], 0.5: [72.0, 72.5, 74.5], 1.0: [69.0, 70.5, None]}


def make_trial(level, seed, acc, status="completed", epochs=12, factor=FACTOR, best_offset=-0.5,
               at_best_val=None):
    failed = acc is None
    return {
        "trial_id": f"t_{factor}_{level}_{seed}",
        "name": f"{factor}={level} seed={seed}",
        "levels": {factor: level},
        "params": {f"loss.{factor}": level, "optim.lr": 0.05, "seed": seed},
        "seed": seed,
        "status": "failed" if failed else status,
        "epochs": 3 if failed else epochs,
        "final": {} if failed else {"test/acc1": acc, "val/acc1": acc - 1.0,
                                    "val/best_acc1": acc + best_offset,
                                    "test/acc1_at_best_val": acc if at_best_val is None else at_best_val},
        "error": ERROR if failed else None,
    }


def grid_trials(stop_one=True):
    trials = []
    for level, accs in TEST_ACC.items():
        for seed, acc in enumerate(accs):
            # One early-stopped run: counted, listed apart, kept out of the means.
            stopped = stop_one and level == 0.5 and seed == 2
            trials.append(make_trial(level, seed, acc, status="stopped" if stopped else "completed",
                                     epochs=6 if stopped else 12))
    return trials


def history_for(trials):
    rows = []
    for t in trials:
        for epoch in range(1, t["epochs"] + 1):
            row = {"trial_id": t["trial_id"], "epoch": epoch, "train/loss": 3.0 / epoch}
            if t["status"] != "failed":
                row["val/acc1"] = 40.0 + 2.5 * epoch + t["seed"]
            rows.append(row)
    return rows


def temperature_trials():
    out = []
    for level, accs in {0.05: [70.1, 70.4], 0.1: [71.0, 71.6], "learnable": [71.9, 72.3]}.items():
        for seed, acc in enumerate(accs):
            out.append(make_trial(level, seed, acc, factor="temperature"))
    return out


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000


def by_level(rows):
    return {r["level"]: r for r in rows}


# ---------------------------------------------------------------- level table


def test_level_table_means_std_and_counts():
    rows = level_table(grid_trials(), FACTOR)
    assert [r["level"] for r in rows] == [0.0, 0.5, 1.0]
    rows = by_level(rows)

    base = rows[0.0]
    assert (base["n"], base["n_completed"], base["metric_n"]) == (3, 3, 3)
    assert base["metric_mean"] == pytest.approx(71.0)
    assert base["metric_std"] == pytest.approx(1.0)
    assert base["best_mean"] == pytest.approx(70.5)
    assert base["best_std"] == pytest.approx(1.0)
    assert base["epochs_mean"] == pytest.approx(12.0)

    # The stopped seed 2 (74.5 after 6 epochs) is counted but not averaged:
    # mean and sample std of 72, 72.5 only.
    mid = rows[0.5]
    assert (mid["n"], mid["n_completed"], mid["n_stopped"], mid["metric_n"]) == (3, 2, 1, 2)
    assert mid["metric_mean"] == pytest.approx(72.25)
    assert mid["metric_std"] == pytest.approx(math.sqrt(2 * 0.25 ** 2))
    assert mid["epochs_mean"] == pytest.approx((12 + 12 + 6) / 3)

    # The failed seed counts as a trial but not in the means.
    high = rows[1.0]
    assert (high["n"], high["n_completed"], high["n_failed"], high["metric_n"]) == (3, 2, 1, 2)
    assert high["metric_mean"] == pytest.approx(69.75)
    assert high["metric_std"] == pytest.approx(math.sqrt(2 * 0.75 ** 2))
    assert high["epochs_mean"] == pytest.approx((12 + 12 + 3) / 3)


def test_level_table_single_value_has_no_std():
    trials = [make_trial(0.1, 0, 70.0)]
    (row,) = level_table(trials, FACTOR)
    assert row["metric_mean"] == pytest.approx(70.0)
    assert row["metric_std"] is None


def test_paired_difference_and_t_interval():
    rows = by_level(level_table(grid_trials(stop_one=False), FACTOR, baseline=0.0))
    assert rows[0.0]["is_baseline"] and "diff_mean" not in rows[0.0]

    # 0.5 vs 0.0, seeds 0,1,2: diffs 2.0, 1.5, 2.5 -> mean 2, sd 0.5
    mid = rows[0.5]
    half = T_975_2DOF * 0.5 / math.sqrt(3)
    assert mid["diff_n"] == 3
    assert mid["diff_mean"] == pytest.approx(2.0)
    assert mid["diff_sd"] == pytest.approx(0.5)
    assert mid["diff_half_width"] == pytest.approx(half)
    assert (mid["diff_ci_low"], mid["diff_ci_high"]) == pytest.approx((2.0 - half, 2.0 + half))

    # 1.0 vs 0.0: seed 2 failed so only seeds 0,1 pair: diffs -1.0, -0.5
    high = rows[1.0]
    sd = math.sqrt(2 * 0.25 ** 2)
    half = T_975_1DOF * sd / math.sqrt(2)
    assert high["diff_n"] == 2
    assert high["diff_mean"] == pytest.approx(-0.75)
    assert (high["diff_ci_low"], high["diff_ci_high"]) == pytest.approx((-0.75 - half, -0.75 + half))


def test_paired_difference_with_one_pair_has_no_interval():
    trials = [make_trial(0.0, 0, 70.0), make_trial(0.0, 1, 71.0),
              make_trial(2.0, 1, 73.0), make_trial(2.0, 5, 60.0)]
    rows = by_level(level_table(trials, FACTOR, baseline=0.0))
    only = rows[2.0]
    assert only["diff_n"] == 1
    assert only["diff_mean"] == pytest.approx(2.0)
    assert only["diff_ci_low"] is None and only["diff_half_width"] is None
    assert "n < 3: interval not informative" in render_report("s", trials, [FACTOR], baseline=0.0)


def test_baseline_matches_string_form_and_rejects_unknown_level():
    rows = level_table(grid_trials(), FACTOR, baseline="0.5")
    assert by_level(rows)[0.5]["is_baseline"]
    with pytest.raises(ValueError, match="not among the levels"):
        level_table(grid_trials(), FACTOR, baseline=7)


def test_string_level_beside_numbers():
    rows = by_level(level_table(temperature_trials(), "temperature", baseline="learnable"))
    assert rows["learnable"]["is_baseline"]
    assert rows[0.1]["diff_mean"] == pytest.approx(((71.0 - 71.9) + (71.6 - 72.3)) / 2)


# ------------------------------------------------------------- best configs


def test_best_configurations_skip_failed_and_rank():
    trials = grid_trials()
    trials.append(make_trial(9.0, 0, None))
    best = best_configurations(trials, metric="val/best_acc1", mode="max", top=2)
    assert [b["value"] for b in best] == pytest.approx([74.0, 72.0])
    assert best[0]["params"]["loss.invariance_weight"] == 0.5
    worst = best_configurations(trials, metric="val/best_acc1", mode="min", top=1)
    assert worst[0]["value"] == pytest.approx(68.5)
    with pytest.raises(ValueError, match="test set"):
        best_configurations(trials, metric="test/acc1", mode="min", top=1)
    with pytest.raises(ValueError):
        best_configurations(trials, mode="largest")


# -------------------------------------------------------------------- text


def test_render_report_contents():
    text = render_report("icd_ablation", grid_trials(), [FACTOR], baseline=0.0)
    assert "icd_ablation" in text
    assert "9 total | 7 completed | 1 stopped early | 1 failed" in text
    assert "diff vs 0 [95% CI]" in text
    assert "(baseline)" in text
    assert "71.00 +- 1.00" in text
    # With the stopped seed out, 0.5 and 1.0 have two pairs each.
    assert text.count("(n=2) n < 3: interval not informative") == 2
    assert ERROR in text
    assert "## Best configurations (top 3" in text
    # level table, comparison table, stopped table: each with aligned lines
    tables = [b for b in text.split("\n\n") if b.startswith("|")]
    assert [len(t.splitlines()) for t in tables] == [2 + 3, 2 + 3, 2 + 1]
    for table in tables:
        assert len({len(l) for l in table.splitlines()}) == 1


def test_render_report_search_study_lists_varying_params():
    trials = [make_trial(None, s, 70.0 + s) for s in range(7)]
    for i, t in enumerate(trials):
        t["levels"] = {}
        t["params"]["optim.lr"] = 0.01 * (i + 1)
    text = render_report("search", trials, [])
    assert "top 5 by val/best_acc1" in text
    assert "optim.lr=0.07" in text
    assert "loss.invariance_weight" not in text  # constant params are noise
    assert "## Failed trials (0)" in text


# ----------------------------------------------------------------- parquet


def test_parquet_round_trip_with_mixed_level_column(tmp_path):
    trials = grid_trials() + temperature_trials()
    history = history_for(trials)
    # A duplicate report for one epoch merges into one row.
    history.append({"trial_id": trials[0]["trial_id"], "epoch": 1, "val/acc5": 90.0})
    trials_path, history_path = write_parquet(trials, history, tmp_path)

    table = pq.read_table(trials_path)
    assert table.num_rows == len(trials)
    cols = table.column_names
    assert cols[:6] == ["trial_id", "name", "seed", "status", "epochs", "error"]
    for col in ("level.invariance_weight", "level.temperature", "param.optim.lr",
                "param.loss.temperature", "final.test/acc1", "final.val/best_acc1",
                "final.test/acc1_at_best_val"):
        assert col in cols
    temps = table.column("level.temperature").to_pylist()
    assert set(temps) == {None, "0.05", "0.1", "learnable"}
    assert table.column("level.invariance_weight").to_pylist()[:3] == [0.0, 0.0, 0.0]
    assert table.column("error").to_pylist().count(ERROR) == 1

    hist = pq.read_table(history_path)
    assert hist.num_rows == len(history) - 1
    assert hist.column_names[:2] == ["trial_id", "epoch"]
    assert {"train/loss", "val/acc1", "val/acc5"} <= set(hist.column_names)


def test_parquet_empty(tmp_path):
    trials_path, history_path = write_parquet([], [], tmp_path)
    assert pq.read_table(trials_path).num_rows == 0
    assert pq.read_table(history_path).num_rows == 0


# ------------------------------------------------------------------- plots


def test_log_axis_decision():
    assert use_log_axis([0.01, 0.1, 1, 10]) is True
    assert use_log_axis([0.25, 0.5, 0.75]) is False
    assert use_log_axis([0.25, 0.5, 1.0, 2.0]) is True  # constant ratio 2
    assert use_log_axis([0, 0.1, 1, 10]) is False  # zero cannot go on a log axis
    assert use_log_axis([0.1, "learnable"]) is False
    assert use_log_axis([1.0]) is False


def test_plots_are_valid_pngs(tmp_path):
    trials = grid_trials()
    assert_png(plot_factor(trials, FACTOR, "test/acc1", tmp_path / "f.png", baseline=0.0))
    assert_png(plot_factor(temperature_trials(), "temperature", "test/acc1", tmp_path / "t.png",
                           baseline="learnable"))
    assert_png(plot_learning_curves(history_for(trials), trials, tmp_path / "lc.png"))


# ------------------------------------------------------------- write_report


def test_write_report_writes_everything(tmp_path):
    trials = grid_trials()
    paths = write_report(tmp_path / "out", "icd_ablation", trials, history_for(trials), [FACTOR],
                         baseline=0.0)
    assert set(paths) == {"report.txt", "trials.parquet", "history.parquet", "importance.json",
                          f"factor_{FACTOR}.png", "learning_curves.png"}  # one factor: no importance plot
    for name, path in paths.items():
        assert path.exists() and path.parent == tmp_path / "out"
        if name.endswith(".png"):
            assert_png(path)
    assert "diff vs 0 [95% CI]" in paths["report.txt"].read_text()


def test_write_report_plots_and_stores_the_report_metric(tmp_path, monkeypatch):
    plotted = []
    monkeypatch.setattr(report, "plot_factor", lambda t, f, metric, path, baseline=None:
                        plotted.append(metric) or Path(path))
    trials = grid_trials()
    paths = write_report(tmp_path, "s", trials, history_for(trials), [FACTOR], baseline=0.0)
    assert plotted == ["test/acc1_at_best_val"]
    assert "final.test/acc1_at_best_val" in pq.read_table(paths["trials.parquet"]).column_names


@pytest.mark.parametrize("case", ["empty", "all_failed", "one_level", "no_metric"])
def test_write_report_edge_cases(tmp_path, case):
    if case == "empty":
        trials = []
    elif case == "all_failed":
        trials = [make_trial(l, s, None) for l in (0.0, 1.0) for s in range(2)]
    elif case == "one_level":
        trials = [make_trial(0.5, s, 70.0 + s) for s in range(3)]
    else:
        trials = grid_trials()
        for t in trials:
            t["final"] = {"train/loss": 1.0}
    paths = write_report(tmp_path, "edge", trials, history_for(trials), [FACTOR], baseline=0.0)
    text = paths["report.txt"].read_text()
    assert "edge" in text
    assert pq.read_table(paths["trials.parquet"]).num_rows == len(trials)
    for name in (f"factor_{FACTOR}.png", "learning_curves.png"):
        assert paths[name].read_bytes()[:8] == PNG_SIGNATURE
    if case == "all_failed":
        assert text.count(ERROR) == 4


def test_module_does_not_import_heavy_frameworks():
    source = "".join(open(m.__file__).read()
                     for m in (report, report.stats, report.markdown, report.parquet, report.plots))
    for name in ("ray", "mlflow", "optuna", "torch"):
        assert f"import {name}" not in source and f"from {name}" not in source
