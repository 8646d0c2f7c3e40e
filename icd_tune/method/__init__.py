"""The method layer: pure PyTorch.

Models, data, losses, distillers, teachers, teacher outputs and the trainer for one
trial. Nothing here imports Ray, Optuna, MLflow or ``icd_tune.platform``; a test
scans the imports to keep it so.
"""
