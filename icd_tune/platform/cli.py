"""``run_ablation.py STUDY.yaml``: validate, plan, run on Ray Tune, log to MLflow, report."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_ablation.py",
        description="Run an ICD ablation or search study on Ray Tune, logging every trial to MLflow.")
    p.add_argument("study", help="study file, e.g. ablations/invariance_weight.yaml")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true",
                      help="one short local trial of the study's first point (capped epochs and steps)")
    mode.add_argument("--dry-run", action="store_true", help="print the resolved config and trial plan; run nothing")
    mode.add_argument("--resume", action="store_true", help="continue this study's latest interrupted run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, value parsed as YAML, e.g. --set loss.invariance_weight=0.5 (repeatable)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto or 127.0.0.1:6379)")
    p.add_argument("--storage", help="experiment storage: a path, shared file system, s3:// or gs:// URI")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in results)")
    p.add_argument("--data-dir", help="where datasets are found or downloaded (overrides data.root)")
    p.add_argument("--results-dir", help="results folder (overrides results_dir in the study)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs reserved per trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions pack several trials on one GPU")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's own logs and tables")
    return p


def print_plan(study, out=None, on_cluster: bool = False) -> None:
    from ..method.schema import to_dict

    out = out or sys.stdout

    settings = study.settings
    resolved = {"name": settings.name, **study.base, **{k: v for k, v in to_dict(settings).items() if k != "name"}}
    print("# resolved study", file=out)
    print(yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None).rstrip(), file=out)
    print("", file=out)
    epochs = study.max_epochs()
    if settings.mode == "grid":
        points = study.grid_points()
        print(f"# trial plan: grid, {len(points)} trials x {epochs} epochs = {len(points) * epochs} trial-epochs"
              + (" at most (ASHA stops some early)" if settings.asha.enabled else ""), file=out)
        for i, p in enumerate(points):
            print(f"{i + 1:4d}. {p.name}", file=out)
    else:
        n = settings.search.num_samples
        asha = settings.asha
        print(f"# trial plan: Optuna TPE search (seed {settings.search.seed}), {n} samples, "
              f"optimising {settings.metric} ({settings.metric_mode}), seed {settings.seeds[0]}", file=out)
        if asha.enabled:
            print(f"# ASHA: grace period {asha.grace_period}, reduction factor {asha.reduction_factor}, "
                  f"max {epochs} epochs; budget at most {n * epochs} trial-epochs", file=out)
        else:
            print(f"# budget: {n} x {epochs} = {n * epochs} trial-epochs", file=out)
        for key, spec in study.space.items():
            print(f"  {key}: {spec}", file=out)
    _print_cache_plan(study, out, on_cluster)
    teacher = study.base["teacher"]
    if teacher.get("checkpoint"):
        print(f"# teacher: {teacher['arch']} loaded from {teacher['checkpoint']}", file=out)
    else:
        print(f"# teacher: {teacher['arch']} trained once with cross-entropy for {teacher['optim']['epochs']} epochs "
              f"(cached and reused)", file=out)


def _print_cache_plan(study, out, on_cluster: bool = False) -> None:
    from ..method.data import num_classes, train_size
    from ..method.models import feature_dim
    from .stages.plan import planned_trial_epochs
    from .stages.prepare import cache_decision
    from ..method.output_cache import build_cost_teacher_epochs, cache_size_bytes

    trial0 = study.trial_config(study.settings.seeds[0], study.first_point().overrides)
    t = trial0.teacher
    size = cache_size_bytes(train_size(trial0.data), feature_dim(t.arch), num_classes(trial0.data), t.cache_dtype)
    enabled, reason = cache_decision(study, trial0, train_size(trial0.data), feature_dim(t.arch),
                                     num_classes(trial0.data), on_cluster=on_cluster)
    print(f"# teacher-output cache: {'on' if enabled else 'off'} ({reason})", file=out)
    print(f"#   size {size / 2**30:.2f} GiB ({t.cache_dtype}), build cost {build_cost_teacher_epochs()} teacher-epochs; "
          f"the study runs {planned_trial_epochs(study)} trial-epochs", file=out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..method.schema import ConfigError
    from .study import load_study

    try:
        study = load_study(args.study, args.set)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        print_plan(study, on_cluster=bool(args.address))
        return 0

    from ..method.data import DataUnavailableError
    from .runner import RunOptions, StudyRunError, run_study
    from ..method.teachers import TeacherCheckpointError

    opts = RunOptions(smoke=args.smoke, resume=args.resume, address=args.address, storage=args.storage,
                      tracking_uri=args.tracking_uri, data_dir=args.data_dir, cpus_per_trial=args.cpus_per_trial,
                      gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, verbose=args.verbose,
                      results_dir=args.results_dir)
    try:
        run_study(study, opts)
    except (DataUnavailableError, TeacherCheckpointError, StudyRunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    sys.exit(main())
