"""The live progress line: counts, the time left, and how it names the metric it watches."""

import io
from types import SimpleNamespace

import pytest

from icd_tune.platform.raytune.progress import ProgressCallback


def trial(tid, status, epoch, value):
    return SimpleNamespace(trial_id=tid, status=status, config={}, last_result={"epoch": epoch})


@pytest.mark.parametrize("metric, word", [("val/acc1", "best"), ("test/best_acc1", "highest")])
def test_progress_line_counts_and_names_a_test_metric_highest_not_best(metric, word):
    out = io.StringIO()
    progress = ProgressCallback(planned_trials=3, max_epochs=4, metric=metric, mode="max", stream=out, interval=0.0)
    a, b = trial("a", "TERMINATED", 4, 70.0), trial("b", "RUNNING", 2, 60.0)
    for epoch in range(1, 5):
        progress.record_result(a, {"epoch": epoch, metric: 66.0 + epoch})
    progress.record_result(b, {"epoch": 2, metric: 60.0})
    progress.record_end(a, failed=False)
    progress.start -= 60.0
    progress.print_status([a, b])
    status = out.getvalue().splitlines()[-1]
    assert "1 running | 1 done | 0 stopped early | 0 failed | 1/3 trials" in status
    assert f"| {word} {metric} 70.00 (a) |" in status
    # 6 epochs in 60 s; left: 2 unfinished trials x 4 epochs, less the 2 b has done: 6 epochs, 60 s more.
    assert status.startswith("[0:01:00]") and status.endswith("left ~0:01:00")
