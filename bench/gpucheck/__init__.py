"""The parts of ``bench/gpu_check.py``: one module per group of parts, ``common`` for what they share.

Imports only the method layer (PyTorch), so it runs where Ray, Optuna and MLflow are not installed.
"""
