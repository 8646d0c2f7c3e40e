import os

# Ray must bind to loopback only; set before any test imports ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_data():
    from icd_tune.config import DataConfig
    from icd_tune.data import load_data

    return load_data(DataConfig(name="synthetic", num_train=160, num_test=40, num_classes=4, val_fraction=0.2))
