"""Time spent inside the lineage, study-record, student and system-metrics logging, against the trials' time.

Runs the quickstart study (or another) once, with a timer around each of those
calls on the driver: the dataset input and teacher tags (built once, logged per
child run), the study files and command line on the parent, each student's
artifact, the checkpoint pruning, the Optuna storage of a search and the teacher's
test accuracy. Inside the trials, the per-epoch system sample runs in Ray's
workers, out of this process's reach: its cost is timed here, per call, and
counted once per trial-epoch; the driver's logging of those samples is counted as
an extra ``log_batch`` of just them per epoch (an upper bound: in the study they
ride in the epoch's existing batch). Whole-run wall ratios are too noisy on a
shared machine to show a few per cent; these sums are not.

    python bench/logging_cost.py                              # the quickstart
    python bench/logging_cost.py --study ablations/quickstart.yaml --set optim.epochs=2
    python bench/logging_cost.py --set export_models=9    # every quickstart trial's MLflow Model, timed

Each exported student's MLflow Model (``tracking.models.log_student_model``: the
torch.export program, the MLflow Model files, the logged model) is timed too; the
study exports its best ``export_models`` trials after the trials, so setting it to
the trial count measures what exporting every trial inside Tune's loop would cost.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPENT: dict[str, list[float]] = defaultdict(list)


def timed(label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label].append(time.perf_counter() - start)
    return wrapper


def instrument() -> None:
    """Wraps each new logging call where its caller looks it up."""
    import icd_tune.method.teachers as teachers
    import icd_tune.platform.tracking.lineage as lineage
    import icd_tune.platform.stages.record as record
    import icd_tune.platform.stages.track as track
    import icd_tune.platform.stages.tune as tune_stage
    import icd_tune.platform.tracking.models as models
    import icd_tune.platform.tracking.students as students

    tune_stage.trial_lineage = timed("lineage: data digest, teacher sha256 (once)", tune_stage.trial_lineage)
    lineage.TrialLineage.log = timed("lineage: dataset input + teacher tags (per run)", lineage.TrialLineage.log)
    track.log_study_record = timed("parent: study files, command, --set (once)", track.log_study_record)
    record.log_search_storage = timed("parent: Optuna storage (once)", record.log_search_storage)
    students.log_student = timed("student artifact (per trial)", students.log_student)
    models.log_student_model = timed("student MLflow Model: torch.export + log (per exported trial)",
                                     models.log_student_model)
    students.prune_checkpoints = timed("checkpoint pruning (per trial)", students.prune_checkpoints)
    teachers.teacher_test_acc1 = timed("teacher test accuracy (once)", teachers.teacher_test_acc1)


def sampler_seconds(calls: int = 200) -> float:
    """Median seconds of one ``SystemSampler.sample()`` on this machine's CPU."""
    import statistics

    import torch

    from icd_tune.platform.raytune.system_metrics import SystemSampler

    sampler = SystemSampler(torch.device("cpu"))
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        sampler.sample()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def system_log_seconds(tracking_uri: str, epochs: int) -> list[float]:
    """Seconds of each of ``epochs`` batches holding only a sample's figures, on a scratch run of the same store."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment(f"logging-cost-{time.time_ns()}"))
    times = []
    for epoch in range(1, epochs + 1):
        now = int(time.time() * 1000)
        start = time.perf_counter()
        client.log_batch(run.info.run_id, metrics=[Metric("system/cpu_percent", 100.0, now, epoch),
                                                   Metric("system/rss_mb", 500.0, now, epoch)])
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="ablations/quickstart.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    from icd_tune.platform.runner import RunOptions, run_study
    from icd_tune.platform.study.definition import load_study

    instrument()
    with tempfile.TemporaryDirectory() as folder:
        out = run_study(load_study(args.study, args.set), RunOptions(results_dir=folder), log=lambda *_: None)
        trial_epochs = len(out["history"])
        trial_seconds = sum(row.get("time/epoch_seconds", 0.0) for row in out["history"])
        SPENT["system metrics: driver log_batch (per epoch, upper bound)"] = system_log_seconds(
            out["tracking_uri"], trial_epochs)
    SPENT["system metrics: sample in the trial (per epoch)"] = [sampler_seconds()] * trial_epochs
    report(out, trial_epochs, trial_seconds)
    return 0


def report(out: dict, trial_epochs: int, trial_seconds: float) -> None:
    print(f"study: {len(out['trials'])} trials, {trial_epochs} trial-epochs; trials' training time "
          f"(sum of time/epoch_seconds) {trial_seconds:.1f} s; trials phase wall {out['wall_seconds']:.1f} s")
    print(f"{'call':58s} {'calls':>5s} {'seconds':>8s} {'% of trial time':>16s}")
    total = 0.0
    for label, times in SPENT.items():
        seconds = sum(times)
        total += seconds
        print(f"{label:58s} {len(times):5d} {seconds:8.3f} {100 * seconds / trial_seconds:15.2f}%")
    print(f"{'total':58s} {'':5s} {total:8.3f} {100 * total / trial_seconds:15.2f}%")
    print(f"target < 5% of the trials' time: {'met' if total < 0.05 * trial_seconds else 'NOT met'}")
    exports = [t for label, times in SPENT.items() if label.startswith("student MLflow Model") for t in times]
    if exports:
        per_trial = trial_seconds / max(1, len(out["trials"]))
        print(f"student MLflow Model export: {len(exports)} calls, first {exports[0]:.3f} s, median "
              f"{sorted(exports)[len(exports) // 2]:.3f} s, mean {sum(exports) / len(exports):.3f} s; a trial's "
              f"training time {per_trial:.1f} s on average: {100 * sum(exports) / len(exports) / per_trial:.2f}% per "
              f"trial (per-trial export in Tune's loop needs < 2%)")


if __name__ == "__main__":
    sys.exit(main())
