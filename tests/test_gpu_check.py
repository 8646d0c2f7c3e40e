"""bench/gpu_check.py in its CPU mode: the same parts the GPU run executes, on tiny models."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == ["environment", "correctness", "cache", "step_time", "packing", "compile"]
    assert all(p["status"] == "ok" for p in parts.values()), {n: p.get("error") for n, p in parts.items()}
    # The CPU mode compares bf16 autocast against fp32, so agreement is a real check, not x == x.
    correct = parts["correctness"]
    assert correct["agree"] and correct["trial_losses_finite"]
    assert 0 < correct["max_abs_diff"] < 0.05
    assert set(correct["device"]) == {"ce", "kd", "contrastive", "invariance"}
    assert parts["cache"]["agree"] and parts["cache"]["ms_per_image_variant"] > 0
    steps = parts["step_time"]
    assert all(steps[k]["ms_per_step"] > 0 for k in ("eager_bf16", "eager_fp16", "cached_bf16", "cached_bf16_host_lookup"))
    assert steps["projected_240_epochs_hours"] > 0
    assert parts["packing"]["processes"] == 2 and len(parts["packing"]["packed_images_per_s"]) == 2
    assert "skipped" in parts["compile"]
    assert "packing" in proc.stdout and "240-epoch CIFAR-100 trial" in proc.stdout


def test_gpu_check_refuses_without_a_gpu_unless_told_cpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path / "x.json")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--cpu" in proc.stderr
