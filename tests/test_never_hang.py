"""Requests that can never run are refused up front, and the exit status tells how a run ended (no Ray here).

The runs through Ray (refusals on a real local instance, waiting and giving up,
time budgets, signals, failed trials, the smoke run of a shipped study) are in
tests/test_never_hang_runs.py.
"""

from pathlib import Path

import pytest

from icd_tune.method.schema import ConfigError
from icd_tune.platform.cli.main import EXIT_STATUS_TABLE, build_parser, exit_status, main
from icd_tune.platform.preflight import parse_duration
from icd_tune.platform.raytune.resources import Node, Request, growth_from_report, unmet
from icd_tune.platform.smoke import smoke_setup
from icd_tune.platform.study.definition import load_study

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "ablations" / "quickstart.yaml"

# --set overrides on the quickstart (digits: 1,294 training images after the validation split) -> message.
REFUSED_STUDIES = [
    ("batch beyond the data", ["optim.batch_size=100000"],
     r"key 'optim.batch_size': bad value 100000: the training split has 1294 images .*use a batch of at most 1294"),
    ("teacher batch beyond the data", ["teacher.optim.batch_size=5000"],
     r"key 'teacher.optim.batch_size': bad value 5000: the teacher is trained on this data and the training split "
     r"has 1294 images"),
    ("negatives beyond the data", ["loss.negatives.source=memory", "loss.negatives.count=5000"],
     r"key 'loss.negatives.count'.*more than the data allows.*use at most 1230"),
    ("grace period beyond the budget", ["asha.enabled=true", "asha.grace_period=1000", "optim.epochs=2"],
     r"key 'asha.grace_period': bad value 1000: ASHA's grace period must be below the epoch budget \(2 epochs"),
    ("grace period at the budget", ["asha.enabled=true", "asha.grace_period=8", "optim.epochs=8"],
     r"asha.grace_period.*below the epoch budget \(8 epochs.*use 1 to 7"),
    ("grace period beyond asha.max_epochs", ["asha.enabled=true", "asha.grace_period=5", "asha.max_epochs=5"],
     r"asha.grace_period.*\(5 epochs"),
    ("reduction factor below 2", ["asha.enabled=true", "asha.grace_period=1", "asha.reduction_factor=1.5"],
     r"key 'asha.reduction_factor': bad value 1.5: expected a reduction factor of at least 2"),
    ("more than one GPU per trial", ["gpus_per_trial=2"], r"key 'gpus_per_trial': bad value 2.0: expected 0 to 1; a trial trains on one device"),
    ("max_concurrent 0 in the study", ["max_concurrent=0"], r"key 'max_concurrent'.*leave it out for no limit"),
]


@pytest.mark.parametrize("label,sets,pattern", REFUSED_STUDIES, ids=[c[0] for c in REFUSED_STUDIES])
def test_study_sizes_and_scheduler_settings_that_cannot_work_are_refused(label, sets, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_study(QUICKSTART, sets)
    assert str(QUICKSTART) in str(info.value)


def test_what_the_data_allows_is_accepted():
    load_study(QUICKSTART, ["optim.batch_size=1294", "teacher.optim.batch_size=1294"])
    load_study(QUICKSTART, ["asha.enabled=true", "asha.grace_period=7", "asha.reduction_factor=2", "optim.epochs=8"])
    load_study(QUICKSTART, ["asha.grace_period=1000"])  # ASHA off: the grace period is never used


# Command lines refused before Ray starts -> (exit status, message).
REFUSED_COMMANDS = [
    ("max-concurrent 0", ["--max-concurrent", "0"], "--max-concurrent 0: expected at least 1; omit the flag for no limit"),
    ("two GPUs per trial", ["--gpus-per-trial", "2"], "gpus_per_trial 2: a trial trains on one device"),
    ("cuda without a GPU share", ["--set", "device=cuda"], "device: cuda with gpus_per_trial 0"),
    ("no CPU", ["--cpus-per-trial", "0"], "cpus_per_trial 0: expected more than 0"),
    ("pending timeout 0", ["--pending-timeout", "0"], "--pending-timeout 0: expected a positive number of minutes"),
    ("batch beyond the data", ["--set", "optim.batch_size=100000"], "fewer than one batch"),
]


@pytest.mark.parametrize("label,args,message", REFUSED_COMMANDS, ids=[c[0] for c in REFUSED_COMMANDS])
def test_command_lines_that_cannot_work_exit_2_and_write_nothing(tmp_path, capsys, label, args, message):
    results = tmp_path / "results"
    for extra in ([], ["--dry-run"]):
        assert main([str(QUICKSTART), "--results-dir", str(results), *args, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not results.exists()


@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("2h", 7200), ("1.5h", 5400), ("45s", 45), ("1d", 86400),
                                          (" 2H ", 7200)])
def test_time_budget_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["90", "h", "-1h", "0m", "nanh", "2 hours", ""])
def test_durations_without_a_unit_or_positive_number_are_refused(text, capsys):
    with pytest.raises(ValueError):
        parse_duration(text)
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([str(QUICKSTART), "--time-budget", text])
    assert info.value.code == 2 and "--time-budget" in capsys.readouterr().err


def test_help_carries_the_exit_status_table(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert EXIT_STATUS_TABLE.splitlines()[0] in out
    for code in ("  0 ", "  1 ", "  2 ", "  3 ", "  4 ", "  5 ", "  130 "):
        assert code in out
    readme = (ROOT / "README.md").read_text()
    assert "## Exit status" in readme and "--allow-failed-trials" in readme


TWO_CPUS = [Node(2, 0)]
MIXED = [Node(2, 1), Node(8, 0)]
# (request, nodes) -> why no node can run it (None: one can).
REQUESTS = [
    (Request("a trial", 64, 0), TWO_CPUS, "cpus_per_trial 64 exceeds the largest node (2 CPUs)"),
    (Request("a trial", 1, 1), TWO_CPUS, "gpus_per_trial 1 exceeds the largest node (0 GPUs)"),
    (Request("a trial", 2, 0), TWO_CPUS, None),
    (Request("a trial", 4, 1), MIXED, "no node has both 4 CPUs and 1 GPU for a trial (nodes: 8 CPUs + 0 GPUs, "
                                      "2 CPUs + 1 GPU)"),
    (Request("a trial", 2, 0.5), MIXED, None),
    (Request("the teacher's training task", 1, 1), TWO_CPUS,
     "the teacher's training task (1 GPU) exceeds the largest node (0 GPUs)"),
    (Request("a trial", 1, 0), [], "cpus_per_trial 1 exceeds the largest node (0 CPUs)"),
]


@pytest.mark.parametrize("request_,nodes,why", REQUESTS)
def test_requests_against_node_sizes(request_, nodes, why):
    assert unmet(request_, nodes) == why


READONLY = {"types": {"node_564e5a185818484481597338c3b798a2817a7fef62bb373ccde8218c"}, "launching": {},
            "version": "v1"}
# Autoscaler reports -> can the cluster grow, and a word of the reason.
REPORTS = [
    (None, False, False, "no autoscaler reports"),
    (READONLY, False, False, "read-only"),
    ({"types": {"ray.head.default", "gpu_worker"}, "launching": {"gpu_worker": 1}, "version": "v1"}, False, True,
     "gpu_worker, ray.head.default"),
    ({"types": {"headgroup", "gpu-group"}, "launching": {}, "version": "v2"}, False, True, "autoscaler (v2)"),
    (READONLY, True, True, "ray_bootstrap_config.yaml"),
]


@pytest.mark.parametrize("report,bootstrap,can_grow,reason", REPORTS)
def test_whether_a_cluster_can_grow_from_its_autoscaler_report(report, bootstrap, can_grow, reason):
    growth = growth_from_report(report, bootstrap)
    assert growth.can_grow is can_grow and reason in growth.reason


def _trial(name, status, error=None):
    return {"name": name, "status": status, "error": error}


def _result(*trials, stop_kind=None):
    return {"trials": list(trials), "stop_kind": stop_kind, "stop_reason": "the time budget (2h) was spent",
            "resume_command": "python run_ablation.py s.yaml --resume"}


# A run's trials and how it ended -> exit status and the start of the line printed last.
OUTCOMES = [
    (_result(_trial("a", "completed"), _trial("b", "stopped")), False, 0, None),
    (_result(_trial("a", "failed", "diverged at epoch 1"), _trial("b", "failed", "boom")), False, 1,
     "error: all 2 trials failed; the first failure, 'a': diverged at epoch 1"),
    (_result(_trial("a", "completed"), _trial("b", "failed", "boom")), False, 3,
     "error: 1 of 2 trials failed (the first, 'b': boom); exit status 3 (--allow-failed-trials makes it 0)"),
    (_result(_trial("a", "completed"), _trial("b", "failed", "boom")), True, 0,
     "warning: 1 of 2 trials failed (the first, 'b': boom); exit status 0 (--allow-failed-trials)"),
    (_result(_trial("a", "completed"), _trial("b", "unfinished"), stop_kind="time budget"), False, 4,
     "error: cut short (time budget): the time budget (2h) was spent; 1 of 2 trials ended, 0 failed; continue with: "
     "python run_ablation.py s.yaml --resume"),
    (_result(_trial("a", "unfinished"), stop_kind="pending timeout"), False, 5, "error: cut short (pending timeout)"),
    (_result(_trial("a", "unfinished"), stop_kind="SIGINT"), True, 130, "error: cut short (SIGINT)"),
    (_result(_trial("a", "unfinished"), stop_kind="SIGTERM"), False, 143, "error: cut short (SIGTERM)"),
]


@pytest.mark.parametrize("result,allow,code,last_line", OUTCOMES)
def test_exit_status_tells_how_the_run_ended(result, allow, code, last_line):
    got_code, got_line = exit_status(result, allow)
    assert got_code == code
    assert (got_line is None) if last_line is None else got_line.startswith(last_line)


def test_smoke_of_a_cifar_study_on_a_machine_without_gpu_or_cifar(tmp_path):
    study = load_study(ROOT / "ablations" / "icd_search.yaml",
                       [f"data.root={tmp_path / 'data'}", f"teacher.checkpoint={tmp_path / 'missing.pth'}"])
    point = study.first_point()
    setup = smoke_setup(study.base, study.settings, [point], cpus=64, gpus=1, local=True)
    notes = "\n".join(setup.notes)
    assert setup.gpus == 0 and setup.base["device"] == "cpu" and 1 <= setup.cpus < 64
    data = setup.base["data"]
    assert data["name"] == "synthetic" and data["num_classes"] == 100 and 256 < data["num_train"] < 1000
    assert "CIFAR-100 is not in" in notes and "synthetic 32x32 images of 100 classes" in notes
    assert setup.base["teacher"]["checkpoint"] is None and "does not exist: training a stand-in teacher" in notes
    assert setup.base["teacher"]["max_steps_per_epoch"] == study.settings.smoke.teacher_steps == 2
    assert "1 epoch(s) of at most 2 steps" in notes
    count = setup.point.overrides["loss.negatives.count"]
    assert count < point.overrides["loss.negatives.count"] and f"using {count}" in notes
    assert study.base["data"]["name"] == "cifar100"  # the study itself is left as loaded


def test_smoke_on_a_cluster_keeps_the_requested_resources(tmp_path):
    study = load_study(ROOT / "ablations" / "invariance_weight.yaml", [f"data.root={tmp_path / 'data'}"])
    setup = smoke_setup(study.base, study.settings, [study.first_point()], cpus=4, gpus=1, local=False)
    assert (setup.cpus, setup.gpus) == (4, 1) and setup.base["device"] == "auto"
