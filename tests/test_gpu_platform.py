"""bench/gpu_platform.py's checks: the pure parts on hand-made records, then on a real finished study."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_platform  # noqa: E402
import gpu_platform_checks as checks  # noqa: E402


def test_max_overlap_counts_the_intervals_that_share_an_instant():
    assert checks.max_overlap([]) == 0
    assert checks.max_overlap([(0, 10)]) == 1
    # [0,10) [2,5) [4,8) hold 4..5 together; [5,6) starts as [2,5) ends, so it never makes four.
    assert checks.max_overlap([(0, 10), (2, 5), (4, 8), (5, 6), (10, 12)]) == 3
    assert checks.max_overlap([(0, 10), (2, 5), (4, 8), (4.5, 4.6)]) == 4
    assert checks.max_overlap([(0, 1), (1, 2), (2, 3)]) == 1  # end to end, one at a time
    assert checks.max_overlap([(3, 7)] * 5) == 5
    assert checks.max_overlap([(5, 5), (6, 4), (0, 1)]) == 1  # empty and reversed spans hold nothing


def _trial(i, epochs=3, start=0, end=10_000, gpu=None, util=None, status="completed"):
    return checks.TrialRun(f"t{i}", status, epochs, run_id=f"r{i}", run_status="FINISHED", start_ms=start,
                           end_ms=end, val_steps=list(range(1, epochs + 1)), gpu_memory=list(gpu or []),
                           gpu_utilization=list(util or []))


def _record(trials, tmp_path=None):
    return checks.PhaseRecord("grid", Path(tmp_path or "."), {}, trials, 0)


def test_gpu_checks_on_hand_made_runs():
    four = [_trial(i, start=i * 100, end=5_000 + i, gpu=[900.0, 950.0, 950.0], util=[90, 95, 97]) for i in range(4)]
    gpu = checks.Expect(trials=4, gpu=True, min_concurrent=4, nvml=True)
    assert checks.gpu_metrics_check(_record(four), gpu).status == checks.PASS
    assert checks.concurrency_check(_record(four), gpu).status == checks.PASS
    # One epoch without its memory figure fails; so does a missing utilisation where NVML is there.
    short = four[:3] + [_trial(3, gpu=[900.0, 950.0], util=[90, 95, 97])]
    assert checks.gpu_metrics_check(_record(short), gpu).status == checks.FAIL
    no_util = [_trial(i, gpu=[900.0] * 3) for i in range(4)]
    assert checks.gpu_metrics_check(_record(no_util), gpu).status == checks.FAIL
    without_nvml = checks.gpu_metrics_check(_record(no_util), checks.Expect(trials=4, gpu=True, nvml=False))
    assert without_nvml.status == checks.PASS and "no NVML bindings" in without_nvml.figure
    # Three at once is not four: the last starts as the first ends.
    staggered = [_trial(i, start=1_000 * i, end=1_000 * i + 3_000, gpu=[1.0] * 3, util=[1] * 3) for i in range(4)]
    check = checks.concurrency_check(_record(staggered), gpu)
    assert check.status == checks.FAIL and "at most 3 trials" in check.figure
    # On the CPU the GPU checks are n/a, unless a CPU trial logged GPU figures.
    cpu = checks.Expect(trials=4, gpu=False)
    assert checks.gpu_metrics_check(_record(no_util), cpu).status == checks.FAIL
    assert checks.gpu_metrics_check(_record([_trial(i) for i in range(4)]), cpu).status == checks.NA_CPU
    assert checks.concurrency_check(_record(staggered), cpu).status == checks.NA_CPU


def test_history_trials_and_runs_checks_on_hand_made_runs():
    runs = [_trial(i) for i in range(3)]
    assert checks.history_check(_record(runs)).status == checks.PASS
    runs[1].val_steps = [1, 3]  # epoch 2 missing from the run
    check = checks.history_check(_record(runs))
    assert check.status == checks.FAIL and check.figure.startswith("2/3 runs") and "8 epochs logged, 9 run" in check.figure
    runs[2].run_status = "RUNNING"
    assert checks.runs_check(_record(runs)).figure == "2/3 FINISHED"
    failed = [_trial(0), _trial(1, status="failed")]
    assert checks.trials_check(_record(failed), checks.Expect(trials=2, gpu=False)).status == checks.FAIL
    assert checks.trials_check(_record(failed[:1]), checks.Expect(trials=2, gpu=False)).status == checks.FAIL


def test_exit_wall_time_and_the_table():
    assert checks.exit_check("grid", 0).status == checks.PASS
    assert checks.exit_check("grid", 4).status == checks.FAIL and checks.exit_check("grid", None).figure == "did not run"
    wall = checks.wall_check("grid", 120.0, 100.0, 8, gpu=True)
    assert wall.status == checks.FAIL and "240 trials per GPU-hour" in wall.figure  # 8 / (120 / 3600)
    assert checks.wall_check("grid", 90.0, 100.0, 8, gpu=False).figure.endswith("320 trials per hour (cpu)")
    found = [checks.Check("a", checks.PASS, "1"), checks.Check("a longer name", checks.NA_CPU, "x")]
    lines = checks.table(found).splitlines()
    assert lines[0].startswith("check") and lines[2] == "a              PASS       1"
    assert checks.all_passed(found) and not checks.all_passed(found + [checks.Check("b", checks.FAIL, "")])
    assert not checks.all_passed([])


def test_the_study_files_load_and_pass_the_study_checks(tmp_path):
    import yaml

    from icd_tune.method.data import train_size
    from icd_tune.platform.study.definition import load_study

    for mode, size in gpu_platform.SIZES.items():
        for name, study in gpu_platform.study_files(size).items():
            path = tmp_path / f"{mode}_{study['name']}.yaml"
            path.write_text(yaml.safe_dump(study))
            loaded = load_study(path, [])  # refused (StudyError) where a check fails, e.g. an ASHA grace too long
            assert loaded.settings.mode == name
            if name == "grid":
                assert len(loaded.grid_points()) == len(size["levels"]) * len(size["seeds"])
    # The sizes the budget's arithmetic assumes: 2,160 training images, 8 trials in each GPU phase.
    gpu = gpu_platform.SIZES["gpu"]
    assert train_size(_data_cfg(gpu)) == 2160
    assert gpu["samples"] >= 8 and len(gpu["levels"]) * len(gpu["seeds"]) >= 8 and gpu["gpus"] == 0.25


def _data_cfg(size):
    from icd_tune.method.config import DataConfig

    return DataConfig(name="synthetic", num_train=size["num_train"], num_test=size["num_test"],
                      num_classes=size["classes"], val_fraction=size["val_fraction"])


def test_gpu_platform_refuses_without_a_gpu_unless_told_cpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "bench/gpu_platform.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--cpu" in proc.stderr


@pytest.mark.slow
def test_the_checks_on_a_finished_study_and_its_students_on_the_cpu(finished_grid, tmp_path):
    out = finished_grid.out
    rec = checks.read_phase("grid", out["run_folder"])
    assert len(rec.trials) == 4 and rec.orphan_runs == 0
    # A CPU run whose teacher trained in-process and whose cache stayed off (too few trial-epochs).
    expect = checks.Expect(trials=4, gpu=False, teacher_source="trained", teacher_outputs="live teacher")
    found = {c.name.split(": ", 1)[1]: c for c in checks.phase_checks(rec, expect)}
    assert all(c.status != checks.FAIL for c in found.values()), checks.table(list(found.values()))
    assert found["MLflow child runs"].figure == "4/4 FINISHED"
    assert found["per-epoch val/acc1"].figure.startswith("4/4 runs hold every epoch; 8 epochs logged, 8 run")
    assert found["system/gpu_*"].status == found["concurrent trials"].status == checks.NA_CPU
    # The shared Ray instance has 2 CPUs and each trial takes one.
    assert "at most 1 trials" in found["concurrent trials"].figure or "at most 2 trials" in found["concurrent trials"].figure
    wrong = checks.teacher_check(rec, checks.Expect(trials=4, gpu=False, teacher_outputs="exact cache"))
    assert wrong.status == checks.FAIL

    probe = checks.cpu_probe([rec])
    student, ckpt = checks.probe_checks(probe)
    assert student.status == checks.PASS and ckpt.status == checks.PASS, (student, ckpt)
    assert probe["cuda_visible"] is False and probe["checkpoints"]["files"] == 4  # each trial's latest, the rest pruned
    assert probe["student"]["max_abs_diff"] < 1e-5

    # A report file gone from a copy of the run folder fails the files check.
    copy = tmp_path / "copy"
    shutil.copytree(out["run_folder"], copy, ignore=shutil.ignore_patterns("ray"))
    (copy / "learning_curves.png").unlink()
    gone = checks.report_files_check(checks.PhaseRecord("grid", copy, rec.state, rec.trials, 0))
    assert gone.status == checks.FAIL and "missing learning_curves.png" in gone.figure


def test_the_teacher_task_trains_on_the_gpu_it_holds_else_the_cpu():
    from icd_tune.platform.stages.prepare import teacher_task_device

    # Ray leaves every GPU visible to a task that asks for none: "auto" there would take one unreserved.
    assert teacher_task_device(0) == teacher_task_device(0.0) == "cpu"
    assert teacher_task_device(1) == "auto"


@pytest.mark.slow
def test_the_teacher_task_runs_as_a_ray_task_and_returns_a_cpu_model(ray_session, tiny_data):
    import torch

    from icd_tune.method.config import TrialConfig
    from icd_tune.platform.stages.prepare import remote_teacher_training

    trial0 = TrialConfig.from_dict({
        "student": "resnet8", "device": "cpu",
        "teacher": {"arch": "resnet8", "optim": {"epochs": 1, "batch_size": 16}, "max_steps_per_epoch": 2},
        "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4, "val_fraction": 0.2}})
    model = remote_teacher_training(trial0, tiny_data, cpus=1, gpus=0)()
    assert not model.training and "test/acc1" in model.final_metrics
    assert all(t.device == torch.device("cpu") for t in model.state_dict().values())
    with torch.no_grad():
        assert torch.isfinite(model(torch.zeros(2, 3, 32, 32))).all()
