"""``--dry-run`` of a comparison: each phase's trials and trial-epochs, and the GPU-hours they would take."""

from __future__ import annotations


def compare_plan_lines(study) -> list[str]:
    from ..report.gpu_estimate import BASIS, trial_hours

    comparison = study.compare
    seeds = study.settings.seeds
    lines = [f"# trial plan: comparison of {len(comparison.arms)} methods, reference {comparison.reference}: each tuned by "
             f"its own Optuna search on {study.settings.metric} ({study.settings.metric_mode}), then its best "
             f"configuration and its default retrained on seeds {', '.join(str(s) for s in seeds)}"]
    if comparison.unequal_budgets():
        lines.append("# UNEQUAL TUNING BUDGETS (compare.allow_unequal_budgets: true): the report says so first")
    low = high = 0.0
    search_epochs = 0
    for arm in comparison.arms:
        search = arm.search
        epochs = search.planned_trials() * search.max_epochs()
        search_epochs += epochs
        cfg = search.trial_config(search.first_point().overrides, search.settings.seeds[0])
        _, hours, how = trial_hours(cfg)
        share = epochs / cfg.optim.epochs  # trials' worth of epochs at most
        low, high = low + share * hours[0], high + share * hours[1]
        lines.append(f"#   search-{arm.slug}: {arm.describe_budget()}, seed {search.settings.search.seed}: at most "
                     f"{epochs} trial-epochs ({arm.method}; {how} step time)")
        lines += [f"#     {key}: {spec}" for key, spec in search.space.items()]
    confirm = comparison.confirm_study(comparison.default_best())
    points = confirm.grid_points()
    confirm_epochs = len(points) * confirm.epochs
    for point in points:
        _, hours, _ = trial_hours(confirm.trial_config(point.overrides, point.seed))
        low, high = low + hours[0], high + hours[1]
    lines.append(f"#   confirm: {len(comparison.arms)} methods x (tuned, default) x {len(seeds)} seed(s) = "
                 f"{len(points)} trials x {confirm.epochs} epochs = {confirm_epochs} trial-epochs at most (one arm "
                 f"where a search's best is its default)")
    lines.append(f"# budget: at most {search_epochs + confirm_epochs} trial-epochs ({search_epochs} search, "
                 f"{confirm_epochs} confirm); ASHA stops some search trials early")
    lines.append(f"# GPU-hours estimate: at most {low:.0f} to {high:.0f} GPU-hours, one trial per H200-class GPU")
    lines.append(f"#   basis: {BASIS}")
    return lines
