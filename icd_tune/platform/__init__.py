"""The platform layer: study files, the trial plan, the stages of a study run
(plan -> prepare -> track -> tune -> record, in ``stages``), Ray Tune, Optuna,
MLflow, reports and the CLI.

It uses ``icd_tune.method``; the method layer never imports it. Private
attributes of Ray and Optuna are reached only through ``ray_internals``.
"""
