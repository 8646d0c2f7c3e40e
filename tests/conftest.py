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
export_models: 0  # the MLflow Model export is tested on the shared grid, which exports its best trial
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


@pytest.fixture(scope="session")
def ray_session():
    """One private local Ray instance (2 CPUs) for every test that asks, started once and shut down at the end.

    The tests using it run after all others (see ``pytest_collection_modifyitems``), so the ones that need no
    Ray, or start a cluster of their own, never find it running, and none of them shuts it down under another.
    """
    import ray

    # address="local": a private instance even when another Ray cluster runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# The finished grid that tests only read: 2 levels x 2 seeds, 2 epochs, a transfer probe after the last one,
# a study file that extends another and an override from the command line.
FINISHED_GRID = """
extends: common.yaml
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
baseline: 0.0
seeds: [0, 1]
transfer: {datasets: [synthetic], epochs: 2, batch_size: 32, max_steps_per_epoch: 3}
export_models: 1
"""


@pytest.fixture(scope="session")
def finished_grid(tmp_path_factory, ray_session):
    """One grid study run to the end, shared by the tests that only read what it recorded (never change it).

    ``path`` is the study file, ``extended`` the file it extends, ``study`` the loaded study with ``argv``'s
    override, ``out`` what ``run_study`` returned.
    """
    import textwrap
    from types import SimpleNamespace

    from icd_tune.platform.runner import RunOptions, run_study
    from icd_tune.platform.study.definition import load_study

    work = tmp_path_factory.mktemp("finished_grid")
    extended = work / "common.yaml"
    extended.write_text("description: written in the file it extends\n")
    path = work / "grid.yaml"
    path.write_text(textwrap.dedent(TINY_STUDY.format(name="grid", epochs=2, steps=2)) + textwrap.dedent(FINISHED_GRID))
    study = load_study(path, ["optim.lr=0.05"])
    argv = [str(path), "--set", "optim.lr=0.05"]
    out = run_study(study, RunOptions(results_dir=str(work / "results"), command=argv), log=lambda *_: None)
    return SimpleNamespace(path=path, extended=extended, study=study, argv=argv, out=out)


def pytest_collection_modifyitems(config, items):
    # Stable: file order is kept within each group; the tests on the shared Ray instance come last.
    items.sort(key=lambda item: "ray_session" in getattr(item, "fixturenames", ()))
