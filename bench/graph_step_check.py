#!/usr/bin/env python
"""``step: graph`` on one GPU in one short run: the captured step against the eager one, and its speed.

    PYTHONPATH=. python3 bench/graph_step_check.py               # on a GPU, about a minute
    PYTHONPATH=. python3 bench/graph_step_check.py --cpu         # the same code on the CPU, tiny sizes
    PYTHONPATH=. python3 bench/graph_step_check.py --out r.json  # the JSON also written to a file

Imports only the method layer. On the CPU the graph trainer runs the static-buffer step
un-captured (``graph_step._static_step_on_cpu``), so the script itself is tested without a GPU.
Exit status 1 when a check fails, else 0.

Parts
  agree   ICD with memory negatives (the bank and the registered generator), teacher -> student,
          fp32 with cuDNN's deterministic kernels: the same trial eager and with step: graph, two
          epochs with a milestone between them (so the step is captured twice). Per-epoch loss
          terms, final weights and the negatives generator's state against the eager run.
  speed   ms per step at the trial batch, bf16: eager, then graph (its capture in an untimed
          first epoch); the ratio graph / eager.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icd_tune.method import graph_step  # noqa: E402
from icd_tune.method.config import TrialConfig  # noqa: E402
from icd_tune.method.data import load_data  # noqa: E402
from icd_tune.method.models import create_model  # noqa: E402
from icd_tune.method.train import Trainer  # noqa: E402

SIZES = {
    "gpu": dict(teacher="resnet32x4", student="resnet8x4", classes=100, batch=64, agree_steps=20, negatives=1024,
                timed_steps=100),
    "cpu": dict(teacher="resnet8", student="resnet8", classes=4, batch=8, agree_steps=4, negatives=16, timed_steps=2),
}
RTOL, ATOL = 1e-4, 1e-5  # fp32, deterministic kernels: only summation order may differ


def trial(size: dict, device: str, step: str, steps: int, memory: bool, milestone: float) -> TrialConfig:
    loss = {"kd_weight": 1.0, "feat_dim": 128}
    if memory:
        loss["negatives"] = {"source": "memory", "count": size["negatives"]}
    return TrialConfig.from_dict({
        "student": size["student"], "device": device, "step": step, "seed": 0, "max_steps_per_epoch": steps,
        "eval_every": 100, "teacher": {"arch": size["teacher"]}, "loss": loss,
        "data": {"name": "synthetic", "num_train": (steps + 1) * size["batch"] + size["negatives"],
                 "num_test": size["batch"], "num_classes": size["classes"], "val_fraction": 0.0},
        "optim": {"epochs": 2, "batch_size": size["batch"], "lr": 0.05, "milestones": [milestone]},
    })


def trainer(cfg: TrialConfig, data, teacher, amp: bool) -> Trainer:
    hook = graph_step._static_step_on_cpu() if cfg.step == "graph" and cfg.device == "cpu" else contextlib.nullcontext()
    with hook:
        built = Trainer(cfg, data, teacher)
    if not amp:
        built.amp_dtype = None
    return built


def agree(size: dict, device: str, teacher) -> dict:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    runs = {}
    for step in ("eager", "graph"):
        # A milestone after the first of the two epochs: the graph trainer captures its step again.
        cfg = trial(size, device, step, size["agree_steps"], memory=True, milestone=0.5)
        runs[step] = trainer(cfg, load_data(cfg.data), teacher, amp=False)
        runs[step].history = [{k: v for k, v in m.items() if k.startswith("train/loss")} for m in runs[step].epochs()]
    eager, graph = runs["eager"], runs["graph"]
    worst = max(abs(graph_value - value) - (ATOL + RTOL * abs(value))
                for a, b in zip(eager.history, graph.history) for graph_value, value in zip(b.values(), a.values()))
    weights = max(float((p - q).detach().abs().max()) for p, q in zip(eager.student.parameters(), graph.student.parameters()))
    banks = max(float((p - q).abs().max()) for p, q in zip(eager.method.buffers(), graph.method.buffers()))
    same_rng = torch.equal(eager.negatives_generator.get_state(), graph.negatives_generator.get_state())
    result = {"step_mode": graph.step_mode, "captures": graph.graph_step.captures if graph.graph_step else 0,
              "eager": eager.history, "graph": graph.history, "worst_term_excess": worst,
              "max_weight_diff": weights, "max_bank_diff": banks, "same_negatives_rng": same_rng}
    result["ok"] = (graph.step_mode == "graph" and result["captures"] == 2 and worst <= 0 and same_rng
                    and weights <= 1e-3 and banks <= 1e-3)
    return result


def speed(size: dict, device: str, teacher) -> dict:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    result = {}
    for step in ("eager", "graph"):
        cfg = trial(size, device, step, size["timed_steps"], memory=False, milestone=0.99)  # none in the run
        run = trainer(cfg, load_data(cfg.data), teacher, amp=True)
        run.cfg.max_steps_per_epoch = max(4, size["timed_steps"] // 5)
        run.train_epoch()  # warm-up, and for graph the capture
        run.cfg.max_steps_per_epoch = size["timed_steps"]
        metrics = run.train_epoch()  # synchronises the device before and after
        result[step] = {"ms_per_step": 1000 * metrics["time/epoch_seconds"] / size["timed_steps"],
                        "losses_finite": all(math.isfinite(v) for k, v in metrics.items() if k.startswith("train/loss")),
                        "step_mode": run.step_mode}
    result["graph_over_eager"] = result["graph"]["ms_per_step"] / result["eager"]["ms_per_step"]
    result["ok"] = result["eager"]["losses_finite"] and result["graph"]["losses_finite"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the static-buffer step un-captured)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no GPU: run with --cpu")
    size, device = SIZES["cpu" if args.cpu else "gpu"], "cpu" if args.cpu else "cuda"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # random weights serve: the check compares two paths, not accuracy
        teacher = create_model(size["teacher"], size["classes"])
    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "agree": agree(size, device, teacher), "speed": speed(size, device, teacher)}
    report["ok"] = report["agree"]["ok"] and report["speed"]["ok"]
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
