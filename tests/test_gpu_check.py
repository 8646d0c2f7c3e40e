"""bench/gpu_check.py: its CPU mode runs every part the GPU run executes, on tiny models; the command
line chooses parts; the projections and the targets are arithmetic checked on hand-made figures."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpucheck import fused, plan, projections  # noqa: E402
from gpucheck.report import table  # noqa: E402


def gpu_check(*args, timeout=120):
    return subprocess.run([sys.executable, "bench/gpu_check.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One CPU-mode run of every part, shared by the assertions below."""
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    proc = gpu_check("--cpu", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())["parts"], proc.stdout


@pytest.mark.slow
def test_cpu_mode_runs_every_part_and_the_existing_checks(cpu_run):
    parts, stdout = cpu_run
    assert list(parts) == list(plan.ORDER)
    assert all(p["status"] == "ok" for p in parts.values()), {n: p.get("error") for n, p in parts.items()}
    # The CPU mode compares bf16 autocast against fp32, so agreement is a real check, not x == x.
    correct = parts["correctness"]
    assert correct["agree"] and correct["trial_losses_finite"]
    assert 0 < correct["max_abs_diff"] < 0.05
    assert set(correct["device"]) == {"ce", "kd", "contrastive", "invariance"}
    assert parts["cache"]["agree"] and parts["cache"]["ms_per_image_variant"] > 0
    steps = parts["step_time"]
    assert all(steps[k]["ms_per_step"] > 0 for k in plan.STEP_VARIANTS)
    assert steps["projected_240_epochs_hours"] > 0
    assert "skipped" in parts["compile"]
    for name in plan.ORDER:
        assert name in stdout
    assert "240-epoch CIFAR-100 trial" in stdout and "targets:" in stdout


@pytest.mark.slow
def test_cpu_mode_step_graph_checks_each_variant_against_fp32(cpu_run):
    graph = cpu_run[0]["step_graph"]
    from icd_tune.method.config import TrialConfig

    has_option = "step" in {f.name for f in dataclasses.fields(TrialConfig)}
    names = ["eager_live", "eager_cached"] + (["graph_live", "graph_cached"] if has_option else [])
    for name in names:
        v = graph[name]
        assert v["agree"] and v["ms_per_step"] > 0 and v["losses_finite"]
        # bf16 against fp32 over the first steps: differences exist, within tolerance
        assert len(v["max_abs_diff_per_step"]) == plan.SIZES["cpu"]["check_steps"]
        assert all(0 < d < 0.05 for d in v["max_abs_diff_per_step"])
        assert set(v["first_step"]["device"]) == {"ce", "kd", "contrastive", "invariance"}
    if has_option:  # on the CPU the graph step runs eager, and the trainer says why
        assert graph["graph_live"]["step_mode"] == "eager" and graph["graph_live"]["step_note"]
    else:
        assert graph["skipped"] == "no step option" and "graph_live" not in graph
    assert graph["eval_images_per_s"] > 0
    assert "skipped" in graph["compile_reduce_overhead"] and "reduce-overhead" in graph["compile_reduce_overhead"]["compile_mode"]


@pytest.mark.slow
def test_cpu_mode_graph_exact_runs_the_static_buffer_step_over_a_milestone(cpu_run):
    exact = cpu_run[0]["graph_exact"]
    assert exact["ok"] and exact["step_mode"] == "graph" and exact["captures"] == 2 and exact["same_negatives_rng"]
    # Un-captured on the CPU the graph trainer runs the eager step's arithmetic exactly.
    assert exact["max_weight_diff"] == 0 and exact["max_bank_diff"] == 0 and exact["eager"] == exact["graph"]
    assert len(exact["eager"]) == 2 and all("train/loss_invariance" in epoch for epoch in exact["eager"])


@pytest.mark.slow
def test_cpu_mode_packing_baseline_projections_fusion(cpu_run):
    parts = cpu_run[0]
    pack = parts["packing"]
    assert pack["counts"] == [1, 2] and set(pack["runs"]) == {"1", "2"}
    two = pack["runs"]["2"]
    assert len(two["images_per_s"]) == 2 and all(r > 0 for r in two["images_per_s"])
    assert two["memory"] == "peak RSS" and all(m > 50 for m in two["peak_memory_mib"])
    assert two["slowest_vs_alone"] == pytest.approx(min(two["images_per_s"]) / pack["single_images_per_s"])
    assert pack["best"]["aggregate_images_per_s"] == max(r["aggregate_images_per_s"] for r in pack["runs"].values())
    base = parts["baseline"]
    assert base["loader_workers"] == 2 and base["steps"] == plan.SIZES["cpu"]["graph_steps"]
    assert base["ms_per_step"] > 0 and base["losses_finite"]
    proj = parts["projections"]
    figures = proj["figures"]
    assert figures["eager_ms_per_step"] == parts["step_graph"]["eager_live"]["ms_per_step"]
    assert proj["trial_hours_eager"] == pytest.approx(
        projections.trial_hours(figures["eager_ms_per_step"], figures["eval_images_per_s"]))
    assert proj["study_gpu_hours_baseline"] == pytest.approx(
        18 * projections.trial_hours(base["ms_per_step"], figures["eval_images_per_s"]))
    assert [t["target"] for t in proj["targets"]][0] == "graph step <= 5 ms" and len(proj["targets"]) == 4
    if (ROOT / "bench" / "fusion.py").exists():
        assert parts["fusion"]["runs"]
    else:
        assert parts["fusion"]["skipped"] == "no fusion prototype"


def test_parts_chooses_a_subset_and_the_table_lists_every_part(tmp_path):
    out = tmp_path / "x.json"
    proc = gpu_check("--cpu", "--parts", "environment", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert list(report["parts"]) == ["environment"] and report["chosen"] == ["environment"]
    assert report["parts"]["environment"]["torch"]
    rows = [line.split("|")[0].strip() for line in proc.stdout.splitlines() if "|" in line]
    assert rows == ["part", *plan.ORDER]
    assert proc.stdout.count("not run") == len(plan.ORDER) - 1


def test_unknown_part_is_refused_with_the_known_ones(tmp_path):
    proc = gpu_check("--cpu", "--parts", "environment,warp_drive", "--out", str(tmp_path / "x.json"), timeout=30)
    assert proc.returncode == 2 and "warp_drive" in proc.stderr
    assert all(name in proc.stderr for name in plan.ORDER)
    assert not (tmp_path / "x.json").exists()


def test_parts_come_in_the_default_order_and_pack_counts_parse():
    assert plan.chosen_parts(None) == list(plan.ORDER)
    assert plan.chosen_parts("projections, environment,packing") == ["environment", "packing", "projections"]
    with pytest.raises(plan.UsageError, match="known parts: environment"):
        plan.chosen_parts(",")
    assert plan.pack_counts("4,8,16") == (1, 4, 8, 16)
    assert plan.pack_counts(None) is None
    for bad in ("four", "0,4"):
        with pytest.raises(plan.UsageError):
            plan.pack_counts(bad)


def test_budget_is_parsed_and_a_non_positive_one_refused():
    args, _, _ = plan.parse_args(["--cpu", "--budget", "165"])
    assert args.budget == 165.0
    assert plan.parse_args([])[0].budget == plan.RUN_BUDGET
    with pytest.raises(plan.UsageError, match="--budget"):
        plan.parse_args(["--budget", "0"])


def test_gpu_check_refuses_without_a_gpu_unless_told_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = gpu_check("--out", str(tmp_path / "x.json"))
    assert proc.returncode == 2 and "--cpu" in proc.stderr


FIGURES = {"eager_ms_per_step": 10.0, "eager_images_per_s": 6400.0, "graph_ms_per_step": 4.0,
           "eval_images_per_s": 300_000.0, "packing_single_images_per_s": 16_000.0,
           "packing_best_images_per_s": 96_000.0, "packing_best_processes": 16, "baseline_ms_per_step": 20.0,
           "graph_step_mode": "graph"}


def test_projections_from_given_figures():
    p = projections.project(FIGURES)
    # 240 x (703 x 4 ms + 15,000 / 300,000 s) = 240 x 2.862 s
    assert p["trial_hours_graph"] == pytest.approx(240 * 2.862 / 3600)
    assert p["trial_minutes_graph"] == pytest.approx(11.448)
    assert p["trial_hours_eager"] == pytest.approx(240 * (7.03 + 0.05) / 3600)
    assert p["packing_gain"] == pytest.approx(6.0)
    assert p["packing_vs_one_eager_trial"] == pytest.approx(15.0)
    # 18 trials, each its graph time alone over the packing gain of 6
    assert p["study_gpu_hours_packed"] == pytest.approx(18 * 0.1908 / 6)
    assert p["study_gpu_hours_baseline"] == pytest.approx(18 * 240 * (14.06 + 0.05) / 3600)
    assert p["study_saving_vs_baseline"] == pytest.approx(16.932 / 0.5724)
    missing = projections.project({**FIGURES, "graph_ms_per_step": None})
    assert missing["trial_hours_graph"] is None and missing["study_gpu_hours_packed"] is None
    assert missing["trial_hours_eager"] is not None


def test_targets_met_and_not_met():
    met = projections.targets(FIGURES, projections.project(FIGURES))
    assert [t["met"] for t in met] == [True, True, True, True]
    assert met[0]["text"] == "4.00 ms" and "16 processes" in met[2]["text"]
    # exactly on a limit is met; past it is not
    edge = {**FIGURES, "graph_ms_per_step": 5.0}
    assert projections.targets(edge, projections.project(edge))[0]["met"] is True
    slow = {**FIGURES, "graph_ms_per_step": 6.0, "packing_best_images_per_s": 32_000.0, "graph_step_mode": "eager"}
    found = projections.targets(slow, projections.project(slow))
    # 240 x (4.218 + 0.05) s = 17.07 min; 32,000 / 6,400 = 5x; 18 x 0.2845 h / 2 = 2.56 GPU-hours
    assert [t["met"] for t in found] == [False, False, False, False]
    assert "ran eager" in found[0]["text"]
    cheap_but_close = {**FIGURES, "baseline_ms_per_step": 4.0}  # under an hour, but not 10x cheaper
    assert projections.targets(cheap_but_close, projections.project(cheap_but_close))[3]["met"] is False
    unmeasured = projections.targets({}, projections.project({}))
    assert [t["met"] for t in unmeasured] == [None] * 4
    lines = projections.target_lines(found + unmeasured[:1])
    assert lines[0] == "graph step <= 5 ms: NOT MET (6.00 ms (the graph variant ran eager))"
    assert lines[-1] == "graph step <= 5 ms: not measured"


def test_figures_are_read_from_the_parts_a_run_finished():
    parts = {"step_graph": {"eager_live": {"ms_per_step": 10.0, "images_per_s": 6400.0}, "eval_images_per_s": 3e5,
                            "graph_live": {"ms_per_step": 4.0, "step_mode": "graph"}},
             "packing": {"single_images_per_s": 16_000.0, "best": {"processes": 16, "aggregate_images_per_s": 96_000.0}},
             "baseline": {"ms_per_step": 20.0}}
    assert projections.figures_from(parts) == FIGURES
    cut_off = projections.figures_from({"step_graph": {"eager_live": {"ms_per_step": 10.0}}, "baseline": {"skipped": "x"}})
    assert cut_off["eager_ms_per_step"] == 10.0 and cut_off["baseline_ms_per_step"] is None
    report = {"parts": {"projections": projections.projections({"report": {"parts": parts}}) | {"status": "ok"}}}
    assert "graph step <= 5 ms: met (4.00 ms)" in table(report, plan.ORDER)


def test_fusion_slot_calls_the_prototype_when_it_exists(tmp_path):
    assert fused.load_prototype(tmp_path / "fusion.py") is None
    (tmp_path / "fusion.py").write_text("def other():\n    pass\n")
    assert fused.load_prototype(tmp_path / "fusion.py") is None
    (tmp_path / "fusion.py").write_text(
        "def fused_rate(device, students, steps, size):\n"
        "    return {'images_per_s': 1000.0 * students, 'steps': steps, 'device': device}\n")
    ctx = {"fusion_path": tmp_path / "fusion.py", "device": torch.device("cpu"), "out": tmp_path / "r.json",
           "size": {**plan.SIZES["gpu"], "fusion_students": (8, 4, 16)}, "part_left": lambda: 100.0,
           "report": {"parts": {"packing": {"best": {"processes": 4, "aggregate_images_per_s": 4000.0}}}}}
    result = fused.fusion(ctx)
    assert result["ok"] and list(result["runs"]) == ["8", "4", "16"]
    assert result["runs"]["8"]["vs_best_packing"] == pytest.approx(2.0) and result["runs"]["8"]["steps"] == 30
    ctx["part_left"] = lambda: -1.0  # no time left after B = 8: the others are skipped, and say so
    result = fused.fusion(ctx)
    assert "images_per_s" in result["runs"]["8"] and "skipped" in result["runs"]["4"] and "skipped" in result["runs"]["16"]
    assert fused.fusion({**ctx, "fusion_path": tmp_path / "none.py"}) == {"skipped": "no fusion prototype", "ok": True}
