"""graph_exact: the captured step against the eager one, both in fp32, over a learning-rate milestone.

ICD with memory negatives (the banks and the registered negatives generator), teacher -> student,
cuDNN's deterministic kernels: the same trial eager and with ``step: graph``, two epochs with a
milestone between them, so the graph trainer captures its step twice. Per-epoch loss terms must
agree within RTOL/ATOL below (only the order of summation may differ), the final weights and memory
banks within 1e-3, and the negatives generator must end in the same state. On the CPU the graph
trainer runs its static-buffer step un-captured (``graph_step._static_step_on_cpu``), so the part
runs there too and must agree exactly.
"""

from __future__ import annotations

import contextlib

import torch

from icd_tune.method import graph_step
from icd_tune.method.config import TrialConfig
from icd_tune.method.data import load_data
from icd_tune.method.train import Trainer

from .common import has_step_option, make_teacher

RTOL, ATOL = 1e-4, 1e-5  # fp32 with deterministic kernels


def agree_config(size: dict, device: str, step: str) -> TrialConfig:
    steps, negatives = size["exact_steps"], size["exact_negatives"]
    return TrialConfig.from_dict({
        "student": size["student"], "device": device, "step": step, "seed": 0, "max_steps_per_epoch": steps,
        "eval_every": 100, "teacher": {"arch": size["teacher"]},
        "loss": {"kd_weight": 1.0, "negatives": {"source": "memory", "count": negatives}},
        "data": {"name": "synthetic", "num_train": (steps + 1) * size["batch"] + negatives,
                 "num_test": size["batch"], "num_classes": size["classes"], "val_fraction": 0.0},
        # A milestone after the first of the two epochs: the graph trainer captures its step again.
        "optim": {"epochs": 2, "batch_size": size["batch"], "lr": 0.05, "milestones": [0.5]},
    })


def fp32_trainer(cfg: TrialConfig, teacher) -> Trainer:
    on_cpu = cfg.step == "graph" and cfg.device == "cpu"
    with graph_step._static_step_on_cpu() if on_cpu else contextlib.nullcontext():
        built = Trainer(cfg, load_data(cfg.data), teacher)
    built.amp_dtype = None
    return built


def graph_exact(ctx: dict) -> dict:
    if not has_step_option():
        return {"skipped": "no step option", "ok": True}
    size, device = ctx["size"], ctx["device"].type
    teacher = make_teacher(size)
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        runs, history = {}, {}
        for step in ("eager", "graph"):
            runs[step] = fp32_trainer(agree_config(size, device, step), teacher)
            history[step] = [{k: v for k, v in m.items() if k.startswith("train/loss")} for m in runs[step].epochs()]
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    eager, graph = runs["eager"], runs["graph"]
    excess = max(abs(g - e) - (ATOL + RTOL * abs(e))
                 for a, b in zip(history["eager"], history["graph"]) for e, g in zip(a.values(), b.values()))
    weights = max(float((p - q).detach().abs().max()) for p, q in zip(eager.student.parameters(), graph.student.parameters()))
    banks = max(float((p - q).abs().max()) for p, q in zip(eager.method.buffers(), graph.method.buffers()))
    same_rng = torch.equal(eager.negatives_generator.get_state(), graph.negatives_generator.get_state())
    captures = graph.graph_step.captures if graph.graph_step is not None else 0
    result = {"pair": f"{size['teacher']} -> {size['student']}", "steps_per_epoch": size["exact_steps"],
              "step_mode": graph.step_mode, "captures": captures, "eager": history["eager"], "graph": history["graph"],
              "worst_term_excess": excess, "max_weight_diff": weights, "max_bank_diff": banks,
              "same_negatives_rng": same_rng}
    result["ok"] = (graph.step_mode == "graph" and captures == 2 and excess <= 0 and same_rng
                    and weights <= 1e-3 and banks <= 1e-3)
    return result
