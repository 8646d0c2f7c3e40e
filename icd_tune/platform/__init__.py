"""The platform layer: study files, the trial plan, the stages of a study run
(plan -> prepare -> tune -> record), Ray Tune, Optuna, MLflow, reports and the CLI.

It uses ``icd_tune.method``; the method layer never imports it.
"""
