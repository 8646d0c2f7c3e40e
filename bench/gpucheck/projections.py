"""What the measured figures mean for a CIFAR-100 trial and for a study, and the four targets.

Pure arithmetic over the other parts' figures (``step_graph``, ``packing``, ``baseline``), so it
is tested with hand-made inputs and recomputed from whatever a run finished.

* One 240-epoch trial: 240 x (703 steps x the step time + 15,000 images / the evaluation rate).
* A packed trial's GPU time is its time alone divided by the packing gain (the best aggregate
  images/s over the one process's), evaluation assumed to pack as training does.
* The invariance-weight study: 18 trials (6 levels x 3 seeds) of 240 epochs, in GPU-hours, under
  the best packing of graph-step trials, and one trial per GPU by the baseline loop. The baseline
  is charged the same evaluation rate, which flatters it.
"""

from __future__ import annotations

from .plan import BATCH, CIFAR_EVAL, CIFAR_TRAIN, EPOCHS, STUDY_TRIALS

STEPS_PER_EPOCH = CIFAR_TRAIN // BATCH  # 703
GRAPH_STEP_MS, TRIAL_MINUTES, PACKING_GAIN, STUDY_GPU_HOURS, STUDY_SAVING = 5.0, 15.0, 6.0, 1.0, 10.0


def trial_hours(ms_per_step: float | None, eval_images_per_s: float | None) -> float | None:
    """One 240-epoch CIFAR-100 trial alone on the device; None when a figure is missing."""
    if not _number(ms_per_step) or not _number(eval_images_per_s) or eval_images_per_s <= 0:
        return None
    seconds = EPOCHS * (STEPS_PER_EPOCH * ms_per_step / 1000 + CIFAR_EVAL / eval_images_per_s)
    return seconds / 3600


def figures_from(parts: dict) -> dict:
    """The figures the projections read, from a report's parts; None for each one not measured."""
    graph_part, pack, base = (parts.get(n) or {} for n in ("step_graph", "packing", "baseline"))
    eager, graph, best = graph_part.get("eager_live") or {}, graph_part.get("graph_live") or {}, pack.get("best") or {}
    figures = {
        "eager_ms_per_step": eager.get("ms_per_step"),
        "eager_images_per_s": eager.get("images_per_s"),
        "graph_ms_per_step": graph.get("ms_per_step"),
        "eval_images_per_s": graph_part.get("eval_images_per_s"),
        "packing_single_images_per_s": pack.get("single_images_per_s"),
        "packing_best_images_per_s": best.get("aggregate_images_per_s"),
        "packing_best_processes": best.get("processes"),
        "baseline_ms_per_step": base.get("ms_per_step"),
    }
    figures = {k: v if _number(v) else None for k, v in figures.items()}
    figures["graph_step_mode"] = graph.get("step_mode")
    return figures


def project(figures: dict) -> dict:
    """Trial hours (eager, graph), the study's GPU-hours packed and by the baseline, and their ratios."""
    f = figures
    eager_h = trial_hours(f.get("eager_ms_per_step"), f.get("eval_images_per_s"))
    graph_h = trial_hours(f.get("graph_ms_per_step"), f.get("eval_images_per_s"))
    baseline_h = trial_hours(f.get("baseline_ms_per_step"), f.get("eval_images_per_s"))
    gain = _ratio(f.get("packing_best_images_per_s"), f.get("packing_single_images_per_s"))
    study_packed = STUDY_TRIALS * graph_h / gain if graph_h is not None and gain else None
    study_baseline = STUDY_TRIALS * baseline_h if baseline_h is not None else None
    return {
        "trial_hours_eager": eager_h,
        "trial_hours_graph": graph_h,
        "trial_minutes_graph": graph_h * 60 if graph_h is not None else None,
        "packing_gain": gain,
        "packing_vs_one_eager_trial": _ratio(f.get("packing_best_images_per_s"), f.get("eager_images_per_s")),
        "study_trials": STUDY_TRIALS,
        "study_gpu_hours_packed": study_packed,
        "study_gpu_hours_baseline": study_baseline,
        "study_saving_vs_baseline": _ratio(study_baseline, study_packed),
    }


def targets(figures: dict, projection: dict) -> list[dict]:
    """The four targets, each with its figure and met: True, False, or None when a figure is missing."""
    graph_ms, minutes = figures.get("graph_ms_per_step"), projection.get("trial_minutes_graph")
    gain, study = projection.get("packing_vs_one_eager_trial"), projection.get("study_gpu_hours_packed")
    saving = projection.get("study_saving_vs_baseline")
    mode = figures.get("graph_step_mode")
    ran = f" (the graph variant ran {mode})" if mode not in (None, "graph") else ""
    return [
        _target(f"graph step <= {GRAPH_STEP_MS:g} ms", graph_ms, lambda: graph_ms <= GRAPH_STEP_MS,
                lambda: f"{graph_ms:.2f} ms{ran}"),
        _target(f"240-epoch trial <= {TRIAL_MINUTES:g} min", minutes, lambda: minutes <= TRIAL_MINUTES,
                lambda: f"{minutes:.1f} min{ran}"),
        _target(f"best packing >= {PACKING_GAIN:g}x one eager trial's images/s", gain, lambda: gain >= PACKING_GAIN,
                lambda: f"{gain:.2f}x ({_processes(figures.get('packing_best_processes'))})"),
        _target(f"study <= {STUDY_GPU_HOURS:g} GPU-hour and >= {STUDY_SAVING:g}x cheaper than the baseline",
                None if study is None or saving is None else study,
                lambda: study <= STUDY_GPU_HOURS and saving >= STUDY_SAVING,
                lambda: f"{study:.2f} GPU-hours, {saving:.1f}x cheaper than "
                        f"{projection['study_gpu_hours_baseline']:.2f}"),
    ]


def _target(name: str, figure, met, text) -> dict:
    if figure is None:
        return {"target": name, "figure": None, "met": None, "text": "not measured"}
    return {"target": name, "figure": figure, "met": bool(met()), "text": text()}


def target_lines(found: list[dict]) -> list[str]:
    """One line per target: met / not met / not measured, with its figure."""
    state = {True: "met", False: "NOT MET", None: "not measured"}
    return [f"{t['target']}: {state[t['met']]}" + (f" ({t['text']})" if t["met"] is not None else "") for t in found]


def projections(ctx: dict) -> dict:
    figures = figures_from(ctx["report"]["parts"])
    projection = project(figures)
    return {"figures": figures, **projection, "targets": targets(figures, projection), "ok": True}


def _processes(count) -> str:
    return f"{count} process" + ("" if count == 1 else "es")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _ratio(top, bottom) -> float | None:
    return top / bottom if _number(top) and _number(bottom) and bottom > 0 else None
