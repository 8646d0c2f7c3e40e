"""The table printed at the end of a run: one row per part, run or not, and the targets."""

from __future__ import annotations

from .plan import STEP_VARIANTS, fmt
from .projections import target_lines


def environment_text(p: dict) -> str:
    return f"{p.get('card')} | driver {p.get('driver')} | torch {p.get('torch')} | CUDA {p.get('cuda')}"


def correctness_text(p: dict) -> str:
    return (f"terms agree: {p.get('agree')} (max |d| {fmt(p.get('max_abs_diff'), 4)}, {p.get('tolerance')}); "
            f"trial losses finite: {p.get('trial_losses_finite')}")


def cache_text(p: dict) -> str:
    return (f"terms agree: {p.get('agree')} (max |d| {fmt(p.get('max_abs_diff'), 4)}, {p.get('tolerance')}); "
            f"build {fmt(p.get('ms_per_image_variant'), 4)} ms per image-variant, on device: {p.get('device_resident')}")


def step_graph_text(p: dict) -> str:
    parts = [f"skipped: {p['skipped']}"] if p.get("skipped") else []
    for name in ("eager_live", "graph_live", "eager_cached", "graph_cached"):
        v = p.get(name)
        if v:
            ran = "" if v.get("step_mode") == v.get("asked") else f" (ran {v.get('step_mode')})"
            parts.append(f"{name} {fmt(v.get('ms_per_step'))} ms/step{ran}, terms agree: {v.get('agree')}")
    c = p.get("compile_reduce_overhead") or {}
    if c:
        parts.append("reduce-overhead " + (f"skipped: {c['skipped']}" if c.get("skipped") else
                                           f"{fmt(c.get('ms_per_step'))} ms/step"))
    return " | ".join(parts)


def graph_exact_text(p: dict) -> str:
    if p.get("skipped"):
        return f"skipped: {p['skipped']}"
    return (f"fp32 eager vs graph ({p.get('step_mode')}, {p.get('captures')} captures): worst term excess "
            f"{fmt(p.get('worst_term_excess'), 6)}, max |d| weights {fmt(p.get('max_weight_diff'), 6)}, banks "
            f"{fmt(p.get('max_bank_diff'), 6)}, same negatives RNG: {p.get('same_negatives_rng')}")


def packing_text(p: dict) -> str:
    runs = []
    for count, r in (p.get("runs") or {}).items():
        if "error" in r:
            runs.append(f"{count}: error")
            continue
        runs.append(f"{count}: {fmt(r.get('aggregate_images_per_s'), 0)} img/s = {fmt(r.get('aggregate_vs_alone'))}x, "
                    f"slowest {fmt(r.get('slowest_vs_alone'))}x alone, peak {fmt(max(r.get('peak_memory_mib') or [0]), 0)}"
                    f" MiB")
    return f"{p.get('step')} step | " + " | ".join(runs)


def baseline_text(p: dict) -> str:
    if p.get("skipped"):
        return f"skipped: {p['skipped']}"
    return (f"fp32, DataLoader({p.get('loader_workers')} workers): {fmt(p.get('ms_per_step'))} ms/step, "
            f"{fmt(p.get('images_per_s'), 0)} img/s")


def projections_text(p: dict) -> str:
    return (f"240-epoch trial: eager {fmt(p.get('trial_hours_eager'))} h, graph {fmt(p.get('trial_hours_graph'))} h | "
            f"study of {p.get('study_trials')} trials: {fmt(p.get('study_gpu_hours_packed'))} GPU-h packed, "
            f"{fmt(p.get('study_gpu_hours_baseline'))} GPU-h by the baseline")


def fusion_text(p: dict) -> str:
    if p.get("skipped"):
        return f"skipped: {p['skipped']}"
    runs = [f"B={b}: " + (r["skipped"] if "skipped" in r else
                          f"{fmt(r.get('images_per_s'), 0)} img/s = {fmt(r.get('vs_best_packing'))}x best packing")
            for b, r in (p.get("runs") or {}).items()]
    return " | ".join(runs)


def step_time_text(p: dict) -> str:
    return (" | ".join(f"{k} {fmt((p.get(k) or {}).get('ms_per_step'))} ms/step" for k in STEP_VARIANTS)
            + f" | data {fmt(p.get('data_pipeline_images_per_s'), 0)} img/s | eval {fmt(p.get('eval_images_per_s'), 0)}"
            f" img/s | 240-epoch CIFAR-100 trial {fmt(p.get('projected_240_epochs_hours'))} h")


def compile_text(p: dict) -> str:
    if p.get("skipped"):
        return p["skipped"]
    timing = p.get("compiled_bf16") or {}
    return (f"terms agree: {(p.get('correctness') or {}).get('agree')} | {fmt(timing.get('ms_per_step'))} ms/step, "
            f"compile+warm-up {fmt(timing.get('warmup_seconds'), 1)} s")


TEXTS = {"environment": environment_text, "correctness": correctness_text, "step_graph": step_graph_text,
         "graph_exact": graph_exact_text,
         "packing": packing_text, "baseline": baseline_text, "projections": projections_text, "fusion": fusion_text,
         "step_time": step_time_text, "cache": cache_text, "compile": compile_text}


def table(report: dict, order) -> str:
    parts = report["parts"]
    rows = [("part", "status", "s", "figures")]
    for name in order:
        part = parts.get(name)
        if part is None:
            rows.append((name, "-", "-", "not run"))
            continue
        try:
            text = TEXTS[name](part)
        except (TypeError, ValueError, KeyError) as err:  # a part cut off early may lack figures the text reads
            text = f"(incomplete: {type(err).__name__})"
        rows.append((name, part.get("status", "-"), f"{part.get('seconds', 0):.1f}", text))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3]]) for r in rows]
    found = (parts.get("projections") or {}).get("targets")
    if found:
        lines += ["", "targets:", *(f"  {line}" for line in target_lines(found))]
    return "\n".join(lines)
