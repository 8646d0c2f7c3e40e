"""``run_ablation.py STUDY.yaml``: validate, plan, run on Ray Tune, log to MLflow, report."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import yaml

EXIT_OK, EXIT_ALL_FAILED, EXIT_BAD_INPUT, EXIT_SOME_FAILED = 0, 1, 2, 3
EXIT_TIME_BUDGET, EXIT_PENDING_TIMEOUT, EXIT_SIGINT, EXIT_SIGTERM = 4, 5, 130, 143
EXIT_TRACKING_INCOMPLETE = 6

EXIT_STATUS_TABLE = """exit status:
  0    every trial completed or was stopped early by the scheduler (ASHA); also --dry-run
  1    every trial failed (the first failure's reason is printed last), or an unexpected error
  2    refused before any work: a bad study file or option, a request no node of a cluster that
       cannot grow can meet, sizes the data rules out, missing data or teacher, unwritable folders
  3    some trials failed, the others completed (0 with --allow-failed-trials)
  4    cut short: the --time-budget was spent (resume with --resume)
  5    gave up waiting for resources (--pending-timeout); before the trials started nothing is
       written, after it the run can be resumed with --resume
  6    the study finished and wrote its report, but the MLflow tracking server stayed unreachable past
       --tracking-wait (tracking.outage_timeout): MLflow's records are incomplete; fill them from the run
       folder with the printed --sync-tracking command (or --resume). It wins over 1 and 3 (the last
       line counts the failed trials); 4, 5, 130 and 143 win over it (their --resume also fills MLflow)
  130  interrupted by SIGINT (Ctrl+C); 143 by SIGTERM (resume with --resume)"""


def duration(text: str) -> float:
    from ..preflight import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_ablation.py", epilog=EXIT_STATUS_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an ICD ablation or search study on Ray Tune, logging every trial to MLflow.")
    p.add_argument("study", help="study file, e.g. ablations/invariance_weight.yaml")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true",
                      help="one short local trial of the study's first point (capped epochs and steps)")
    mode.add_argument("--dry-run", action="store_true", help="print the resolved config and trial plan; run nothing")
    mode.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                      help="continue this study's latest run whose trials it defines as given (another --set makes "
                           "another study), or the run folder PATH")
    mode.add_argument("--sync-tracking", nargs="?", const=True, default=False, metavar="PATH",
                      help="run nothing: fill MLflow from the run folder (the latest run, as --resume finds it, or "
                           "PATH) after the tracking server was away (exit status 6); nothing is logged twice")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, value parsed as YAML, e.g. --set loss.invariance_weight=0.5 (repeatable)")
    p.add_argument("--register", metavar="NAME",
                   help="register the study's best student (on its validation metric) as a new version of registered "
                        "model NAME; the alias champion moves to it only when it beats the current champion on the "
                        "same metric and data (overrides the study key register; never under --smoke)")
    p.add_argument("--address", help="join an existing Ray cluster (e.g. auto or 127.0.0.1:6379)")
    p.add_argument("--storage", help="experiment storage: a path, shared file system, s3:// or gs:// URI")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in results)")
    p.add_argument("--data-dir", help="where datasets are found or downloaded (overrides data.root)")
    p.add_argument("--results-dir", help="results folder (overrides results_dir in the study)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs reserved per trial")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial; fractions pack several trials on one GPU")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once (omit for no limit)")
    p.add_argument("--time-budget", type=duration, metavar="DURATION",
                   help="stop starting trials and end the running ones (resumably) when this is spent, counted from "
                        "the start, e.g. 90m, 2h, 1.5h")
    p.add_argument("--pending-timeout", type=float, metavar="MINUTES",
                   help="give up when the cluster has not provided a trial's resources for this long "
                        "(default: 30 on a cluster that can grow, no limit otherwise)")
    p.add_argument("--autoscaling", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the cluster adds nodes on demand (wait for them) or not (refuse requests no node "
                        "meets); default: detected from Ray's autoscaler")
    p.add_argument("--tracking-wait", type=duration, metavar="DURATION",
                   help="how long an unreachable MLflow tracking server is waited for while the trials go on, e.g. "
                        "10m (default: the study's tracking.outage_timeout, 30m); then the study finishes without "
                        "it and exits 6")
    p.add_argument("--allow-failed-trials", action="store_true",
                   help="exit 0 when some (not all) trials failed")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's, Ray Tune's, MLflow's and Optuna's own output too (by default it goes to "
                        "third_party.log in the run folder)")
    return p


def print_plan(study, out=None, on_cluster: bool = False) -> None:
    from ..study.definition import resolved_study

    out = out or sys.stdout

    settings = study.settings
    resolved = resolved_study(study)
    print("# resolved study", file=out)
    print(yaml.safe_dump(resolved, sort_keys=False, default_flow_style=None).rstrip(), file=out)
    print("", file=out)
    epochs = study.max_epochs()
    from ..report.paper import PROTOCOL_TEXT

    protocol = study.base.get("protocol", "validation")
    print(f"# protocol {PROTOCOL_TEXT[protocol]}", file=out)
    if study.compare is not None:
        from .compare_plan import compare_plan_lines

        print("\n".join(compare_plan_lines(study)), file=out)
        study = study.compare.confirm_study(study.compare.default_best())  # the comparison's teachers and caches
    elif settings.mode == "grid":
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
    _print_ignored_loss_keys(study, out)
    _print_cache_plan(study, out, on_cluster)
    if _print_teachers(study, out):
        return
    teacher = study.base["teacher"]
    if teacher.get("checkpoint"):
        print(f"# teacher: {teacher['arch']} loaded from {teacher['checkpoint']}", file=out)
    else:
        print(f"# teacher: {teacher['arch']} trained once with cross-entropy for {teacher['optim']['epochs']} epochs "
              f"(cached and reused)", file=out)


def print_publish_plan(study, register: str | None, out=None) -> None:
    """What the end of the study exports as MLflow Models and registers."""
    out = out or sys.stdout
    settings = study.settings
    name = register or settings.register
    count = max(settings.export_models, 1 if name else 0)
    which = f"{settings.metric} ({settings.metric_mode})"
    print(f"# student models: the best {count} trial(s) on {which} exported as MLflow Models (torch.export, uint8 "
          f"images in, logits out) when the study ends" if count else "# student models: none (export_models: 0)",
          file=out)
    if name:
        print(f"# register: the best trial on {which} as a new version of registered model {name}; alias champion "
              f"moves to it only if it beats the current champion on {settings.metric} with the same dataset digest",
              file=out)


def _print_ignored_loss_keys(study, out) -> None:
    from ..study.method_keys import ignored_loss_keys

    for method, keys in ignored_loss_keys(study).items():
        print(f"# ignored by the {method} trials (other methods' settings in the shared loss section): "
              f"{', '.join(keys)}", file=out)


def _print_teachers(study, out) -> bool:
    """A study of several teachers or with published numbers: each teacher (missing ones marked), the published
    table and a GPU-hours estimate. False for a single-teacher study, which prints its one teacher line."""
    from ..report.gpu_estimate import estimate_lines
    from ..report.published import published_lines
    from ..study.teachers import teacher_uses

    points = study.grid_points() if study.settings.mode == "grid" else [study.first_point()]
    uses = teacher_uses(study.base, points)
    if len(uses) < 2 and not study.settings.reported:
        return False
    seeds = len(study.settings.seeds)
    print(f"# study points: {len(points) // seeds} x {seeds} seed(s) = {len(points)} trials", file=out)
    missing = sum(u.missing for u in uses.values())
    print(f"# teachers: {len(uses)}, each loaded once and shared by the trials that use it, with its own output cache"
          + (f"; {missing} checkpoint(s) MISSING (a real run refuses to start, exit status 2)" if missing else ""),
          file=out)
    decisions = _cache_decisions(study)
    for use in uses.values():
        where = use.cfg.checkpoint or "trained once with cross-entropy (cached and reused)"
        flag = "MISSING " if use.missing else ""
        cache = decisions[use.identity]
        print(f"#   {use.cfg.arch:12s} {len(use.trials):3d} trial(s)  output cache {'on ' if cache.enabled else 'off'} "
              f"{cache.size_bytes / 2**30:5.2f} GiB  {flag}{where}", file=out)
    if study.settings.mode == "grid":
        for line in estimate_lines(study):
            print(line, file=out)
    methods = [str(label) for label, _ in study.factors[1].levels] if len(study.factors) > 1 else []
    lines = published_lines(study.settings, [f.name for f in study.factors], methods, [], study.settings.report_metric)
    if lines:
        print("", file=out)
        print("\n".join(lines), file=out)
    return True


def _cache_decisions(study, on_cluster: bool = False) -> dict:
    """The real run's teacher-output cache decisions (stages.cache_plan), from the study file alone."""
    from ...method.data import num_classes, train_size
    from ..stages.cache_plan import teacher_cache_decisions

    points = study.grid_points() if study.settings.mode == "grid" else None
    first = points[0] if points else study.first_point()
    data_cfg = study.trial_config(first.overrides, first.seed).data
    return teacher_cache_decisions(study, study.base, points, study.max_epochs(), train_size(data_cfg),
                                   num_classes(data_cfg), on_cluster=on_cluster)


def _print_cache_plan(study, out, on_cluster: bool = False) -> None:
    from ..stages.plan import planned_trial_epochs
    from ...method.output_cache import build_cost_teacher_epochs

    decisions = _cache_decisions(study, on_cluster)
    several = len(decisions) > 1
    for identity, d in decisions.items():
        of = f" of {identity}" if several else ""
        print(f"# teacher-output cache{of}: {'on' if d.enabled else 'off'} ({d.reason})", file=out)
        runs = (f"its {d.trials} trial(s) run {d.trial_epochs}" if several
                else f"the study runs {planned_trial_epochs(study)}")
        print(f"#   size {d.size_bytes / 2**30:.2f} GiB ({d.trial.teacher.cache_dtype}), build cost "
              f"{build_cost_teacher_epochs()} teacher-epochs; {runs} trial-epochs", file=out)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from ...method.schema import ConfigError
    from ..preflight import StudyRunError
    from ..study.definition import load_study

    try:
        study = load_study(args.study, args.set)
        check_options(args, study)
    except (ConfigError, StudyRunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.dry_run:
        print_plan(study, on_cluster=bool(args.address or os.environ.get("RAY_ADDRESS")))
        print_publish_plan(study, args.register)
        return EXIT_OK
    return run(args, argv, study)


def check_options(args, study) -> None:
    from ..preflight import StudyRunError, check_run_options, check_trial_request

    from ..study.settings import register_refusal

    if args.register is not None:
        refused = register_refusal(args.register, study.base.get("protocol", "validation"), study.settings.metric)
        if refused:
            raise StudyRunError(f"--register {args.register}: {refused}")
        if args.smoke:
            print(f"note: --smoke never registers; --register {args.register} is ignored", file=sys.stderr)
    pending = None if args.pending_timeout is None else args.pending_timeout * 60
    check_run_options(args.max_concurrent, args.time_budget, pending)
    if not args.smoke:  # a smoke run fits the request to the machine first
        settings = study.settings
        cpus = settings.cpus_per_trial if args.cpus_per_trial is None else args.cpus_per_trial
        gpus = settings.gpus_per_trial if args.gpus_per_trial is None else args.gpus_per_trial
        check_trial_request(cpus, gpus, study.base.get("device", "auto"))


def run(args, argv: list[str], study) -> int:
    from ...method.data import DataUnavailableError
    from ...method.teachers import TeacherCheckpointError
    from ..raytune.resources import PendingTimeoutError
    from ..runner import RunOptions, StudyRunError, run_study
    from ..raytune.watchdog import Terminated, raise_terminated

    opts = RunOptions(smoke=args.smoke, resume=args.resume or args.sync_tracking, sync_tracking=bool(args.sync_tracking),
                      tracking_wait_s=args.tracking_wait, address=args.address, storage=args.storage,
                      tracking_uri=args.tracking_uri, data_dir=args.data_dir, cpus_per_trial=args.cpus_per_trial,
                      gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, verbose=args.verbose,
                      results_dir=args.results_dir, time_budget_s=args.time_budget,
                      pending_timeout_s=None if args.pending_timeout is None else args.pending_timeout * 60,
                      autoscaling=args.autoscaling, register=args.register, command=argv)
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM (a scheduler, `kill`, `ray job stop`) ends the run as Ctrl+C does, with a --resume hint.
    previous = signal.signal(signal.SIGTERM, raise_terminated) if main_thread else None
    try:
        result = run_study(study, opts)
    except (DataUnavailableError, TeacherCheckpointError, StudyRunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except PendingTimeoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PENDING_TIMEOUT
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        print("error: interrupted (SIGINT)", file=sys.stderr)
        return EXIT_SIGINT
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    code, message = exit_status(result, args.allow_failed_trials)
    if message:
        sys.stdout.flush()
        print(message, file=sys.stderr if code else sys.stdout, flush=True)
    return code


def exit_status(result: dict, allow_failed: bool = False) -> tuple[int, str | None]:
    """The exit status of a finished run and the line printed last (README "Exit status")."""
    from ..raytune.watchdog import PENDING, SIGINT, SIGTERM, TIME_BUDGET

    trials = result["trials"]
    failed = [t for t in trials if t["status"] == "failed"]
    first = f"'{failed[0]['name']}': {failed[0]['error']}" if failed else ""
    if result.get("stop_kind"):  # before 6: the --resume it asks for also fills MLflow
        code = {TIME_BUDGET: EXIT_TIME_BUDGET, PENDING: EXIT_PENDING_TIMEOUT, SIGINT: EXIT_SIGINT,
                SIGTERM: EXIT_SIGTERM}[result["stop_kind"]]
        done = sum(t["status"] in ("completed", "stopped") for t in trials)
        return code, (f"error: cut short ({result['stop_kind']}): {result['stop_reason']}; {done} of {len(trials)} "
                      f"trials ended, {len(failed)} failed; continue with: {result['resume_command']}"
                      + ("; MLflow's records are incomplete until then (the tracking server went away)"
                         if result.get("tracking_incomplete") else ""))
    if result.get("tracking_incomplete"):
        return EXIT_TRACKING_INCOMPLETE, (
            f"error: the study finished ({len(trials)} trials, {len(failed)} failed; report in {result['run_folder']}), "
            f"but the tracking server stayed unreachable: MLflow's records are incomplete; with the server up, fill "
            f"them with: {result['sync_command']}")
    if trials and len(failed) == len(trials):
        return EXIT_ALL_FAILED, f"error: all {len(trials)} trials failed; the first failure, {first}"
    if failed:
        summary = f"{len(failed)} of {len(trials)} trials failed (the first, {first})"
        if allow_failed:
            return EXIT_OK, f"warning: {summary}; exit status 0 (--allow-failed-trials)"
        return EXIT_SOME_FAILED, f"error: {summary}; exit status 3 (--allow-failed-trials makes it 0)"
    return EXIT_OK, None


if __name__ == "__main__":
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    sys.exit(main())
