"""step_graph: the eager step against the graph step (``step: graph``), live and cached teacher.

Each variant's terms are checked against the CPU in fp32 on the same images: a training set of
exactly one batch with augmentation off, so whatever order the device's generator draws, every
one-step epoch sees the same images, and the ICD terms (means over the batch, a B x B matrix
whose rows and columns move together) do not depend on the order. The terms of the first step and
of the steps after it (the weights updated by the step under test) must agree within ATOL/RTOL.
The CPU mode compares bf16 autocast with fp32, so the check is never fp32 against itself.

GPU sizes check five steps, so the graph step's are past its eager warm-up and its capture. The
trials' epoch budget is 240, so the learning rate (whose change means a new capture) stays put
over the checked and the timed steps.

Then each variant is timed on the timing set, and a ``torch.compile(mode="reduce-overhead")``
variant of the eager step is timed on a GPU.
"""

from __future__ import annotations

import torch

from icd_tune.method.data import load_data
from icd_tune.method.output_cache import open_cache
from icd_tune.method.teacher_outputs import CachedTeacher
from icd_tune.method.train import Trainer

from .common import compare, epoch_terms, has_step_option, make_teacher, shared_cache, step_mode, timed_steps, trial_config
from .plan import EPOCHS, write_partial
from .steps import eval_rate

COMPILE_MODE = "reduce-overhead, on the student's and the teacher's forward, inside the eager step"


def step_graph(ctx: dict) -> dict:
    size, device = ctx["size"], ctx["device"]
    option = has_step_option()
    modes = ("eager", "graph") if option else ("eager",)
    result: dict = {"pair": f"{size['teacher']} -> {size['student']}", "batch": size["batch"],
                    "steps": size["graph_steps"], "checked_steps": size["check_steps"]}
    if not option:
        result["skipped"] = "no step option"  # the eager variants are still measured
    check_cfg = trial_config(size, size["batch"], "cpu", steps=1, augment_images=False, epochs=EPOCHS)
    check_data = load_data(check_cfg.data)
    cpu = Trainer(check_cfg, check_data, make_teacher(size), device="cpu")
    reference = [epoch_terms(cpu.train_epoch(), cpu.weights) for _ in range(size["check_steps"])]
    data = load_data(trial_config(size, size["timing_images"], device.type).data)
    names = []
    for source in ("live", "cached"):
        for mode in modes:
            name = f"{mode}_{source}"
            result[name], trainer = variant(ctx, mode if option else None, source, (check_data, data), reference)
            names.append(name)
            if name == "eager_live":
                result["eval_images_per_s"] = eval_rate(trainer, data)
            write_partial(ctx, "step_graph", result)
    result["compile_reduce_overhead"] = reduce_overhead(ctx, data, "eager" if option else None)
    result["ok"] = all(result[n]["ok"] for n in names) and result["compile_reduce_overhead"]["ok"]
    return result


def variant(ctx: dict, step: str | None, source: str, datasets, reference: list[dict]) -> tuple[dict, Trainer]:
    """One step variant: its terms on the check batch against the CPU's, then its step time.

    Every trainer gets a teacher network of its own (same weights): a captured step holds the
    addresses of the teacher's weights, which another trainer's conversion must not move.
    """
    size, device = ctx["size"], ctx["device"]
    check_data, data = datasets
    check_cfg = trial_config(size, size["batch"], device.type, steps=1, step=step, augment_images=False,
                             epochs=EPOCHS)
    check = Trainer(check_cfg, check_data, make_teacher(size), device=device,
                    teacher_outputs=outputs(ctx, source, check_data))
    if device.type == "cpu":
        check.amp_dtype = torch.bfloat16
    seen = [epoch_terms(check.train_epoch(), check.weights) for _ in reference]
    checks = [compare(s, r) for s, r in zip(seen, reference)]
    timer = Trainer(trial_config(size, size["timing_images"], device.type, step=step, epochs=EPOCHS), data,
                    make_teacher(size), device=device, teacher_outputs=outputs(ctx, source, data))
    timing = timed_steps(timer, size["graph_steps"])
    ran, note = step_mode(timer)
    agree = all(c["agree"] for c in checks)
    return {"asked": step or "eager", "step_mode": ran, "step_note": note, "teacher": source, **timing,
            "agree": agree, "max_abs_diff_per_step": [c["max_abs_diff"] for c in checks],
            "first_step": checks[0], "after_first_step": checks[-1] if len(checks) > 1 else None,
            "ok": agree and timing["losses_finite"]}, timer


def outputs(ctx: dict, source: str, data) -> CachedTeacher | None:
    """None for the live teacher (the trainer wraps the network), else the run's cache of ``data``."""
    if source == "live":
        return None
    built = shared_cache(ctx, data)
    return CachedTeacher(open_cache(built["path"], built["key"]))


def reduce_overhead(ctx: dict, data, step: str | None) -> dict:
    """The eager step with the student's and the teacher's forward compiled in ``reduce-overhead`` mode."""
    if ctx["device"].type != "cuda":
        return {"skipped": "compile is measured on a GPU only", "compile_mode": COMPILE_MODE, "ok": True}
    size = ctx["size"]
    cfg = trial_config(size, size["timing_images"], "cuda", step=step, epochs=EPOCHS)
    trainer = Trainer(cfg, data, make_teacher(size), device=ctx["device"])
    student = torch.compile(trainer.student.forward, mode="reduce-overhead")
    trainer.teacher.forward = torch.compile(trainer.teacher.forward, mode="reduce-overhead")

    def student_forward(*args, **kwargs):
        # Each step starts with the student's forward: the graphs of the step before may be overwritten.
        torch.compiler.cudagraph_mark_step_begin()
        return student(*args, **kwargs)

    trainer.student.forward = student_forward
    timing = timed_steps(trainer, size["graph_steps"])
    return {"compile_mode": COMPILE_MODE, **timing, "ok": timing["losses_finite"]}
