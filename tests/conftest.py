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
    from icd_tune.method.config import DataConfig
    from icd_tune.method.data import load_data

    return load_data(DataConfig(name="synthetic", num_train=160, num_test=40, num_classes=4, val_fraction=0.2))


# A study small enough for end-to-end runs on 2 cores: synthetic data, resnet8 teacher and student.
TINY_STUDY = """
name: {name}
student: resnet8
teacher: {{arch: resnet8, optim: {{epochs: 1, batch_size: 32}}}}
data: {{name: synthetic, num_train: 240, num_test: 40, num_classes: 4, val_fraction: 0.2}}
loss: {{feat_dim: 16, kd_weight: 1.0}}
optim: {{epochs: {epochs}, batch_size: 32, lr: 0.05}}
max_steps_per_epoch: {steps}
device: cpu
cpus_per_trial: 1
"""


@pytest.fixture
def tiny_study(tmp_path):
    """Writes ``<name>.yaml``: the tiny trial defaults plus the study keys in ``body``."""
    import textwrap

    def write(name: str, body: str, epochs: int = 2, steps: int = 2):
        path = tmp_path / f"{name}.yaml"
        path.write_text(textwrap.dedent(TINY_STUDY.format(name=name, epochs=epochs, steps=steps))
                        + textwrap.dedent(body))
        return path

    return write


@pytest.fixture(scope="module")
def ray_session():
    import ray

    # address="local": a private instance even when another Ray cluster runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
