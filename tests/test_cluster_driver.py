"""The driver on a cluster that has started only its head: joined through RAY_ADDRESS, a GPU it cannot see.

``ray job submit`` sets RAY_ADDRESS and passes no --address; an autoscaling cluster
starts with its CPU head alone, so the driver sees one host. The head here declares
a GPU that torch cannot see, as a driver on a GPU-less head would find one declared
on a worker. Loopback only.
"""

import pytest

from icd_tune.platform.cli.main import main
from icd_tune.platform.runner import RunOptions, run_study
from icd_tune.platform.study.definition import load_study

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ONE_TRIAL = """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.5]}
seeds: [0]
device: auto
gpus_per_trial: 0.5
# Few images: the cache holds 162 variants of each, and it is built on the CPU here.
data: {name: synthetic, num_train: 40, num_test: 8, num_classes: 4, val_fraction: 0.2}
optim: {epochs: 1, batch_size: 16, lr: 0.05}
teacher: {arch: resnet8, optim: {epochs: 1, batch_size: 16}, cache: on}
"""


@pytest.fixture(scope="module")
def head_only():
    """Head only, workers to come: 2 CPUs and a declared GPU that torch cannot see."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def joined(head_only, monkeypatch):
    import ray

    monkeypatch.setenv("RAY_ADDRESS", head_only.address)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield head_only
    ray.shutdown()  # each study joins afresh, as each `ray job submit` does


def test_ray_address_counts_as_a_cluster_and_the_driver_builds_no_cache(tmp_path, tiny_study, joined):
    import torch

    assert not torch.cuda.is_available()  # the scenario: a GPU declared to Ray that this process cannot use
    path = tiny_study("head_only", ONE_TRIAL, epochs=1, steps=2)
    logs = []
    out = run_study(load_study(path), RunOptions(results_dir=str(tmp_path / "results")), log=logs.append)
    assert [t["status"] for t in out["trials"]] == ["completed"]
    cache_line = next(m for m in logs if m.startswith("teacher-output cache:"))
    assert "on a cluster each node builds its own copy once" in cache_line, cache_line
    assert not any("teacher cache: building" in m for m in logs)  # not built by the driver
    # Built once, by the trial, on the node's own device.
    assert len(list((tmp_path / "results" / "teachers").glob("outputs-*.bin"))) == 1


def test_client_address_resume_is_refused_before_anything(tmp_path, tiny_study, joined, capsys):
    # Refused before connecting, so no Ray Client server (the ray[client] extra) is needed: the cluster's
    # own address under ray:// stands in for one.
    path = tiny_study("client", ONE_TRIAL, epochs=1, steps=2)
    address = "ray://" + joined.address
    results = tmp_path / "results"
    code = main([str(path), "--address", address, "--resume", "--results-dir", str(results)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--resume cannot work through a Ray Client address ({address})" in err
    assert "Resume from a driver on the cluster" in err
    assert not results.exists()


def test_driver_without_the_trials_gpu_leaves_the_cache_to_the_trials(tmp_path, tiny_study, head_only, monkeypatch):
    """The same one-host cluster joined by code, not as a cluster: still no cache built where the GPU is missing."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ray.init(address=head_only.address)
    try:
        path = tiny_study("no_gpu_here", ONE_TRIAL, epochs=1, steps=2)
        logs = []
        out = run_study(load_study(path), RunOptions(results_dir=str(tmp_path / "results")), log=logs.append)
    finally:
        ray.shutdown()
    assert [t["status"] for t in out["trials"]] == ["completed"]
    cache_line = next(m for m in logs if m.startswith("teacher-output cache:"))
    assert "this driver sees no GPU while each trial gets one, so each node builds its own copy" in cache_line
    assert not any("teacher cache: building" in m for m in logs)
    assert len(list((tmp_path / "results" / "teachers").glob("outputs-*.bin"))) == 1


def test_a_cluster_without_node_types_cannot_grow_and_refuses_what_no_node_has(tmp_path, tiny_study, joined, capsys):
    import time

    import ray

    from icd_tune.platform.raytune.ray_internals import autoscaler_report
    from icd_tune.platform.raytune.resources import cluster_growth

    ray.init(address=joined.address)
    deadline = time.time() + 60
    while autoscaler_report() is None and time.time() < deadline:
        time.sleep(1)  # the monitor reports once it has the raylets' load
    report = autoscaler_report()
    growth = cluster_growth(joined=True, forced=None)
    ray.shutdown()
    assert report is not None and report["version"] == "v1"
    assert not growth.can_grow and "read-only" in growth.reason

    path = tiny_study("too_big_here", ONE_TRIAL, epochs=1, steps=2)
    results = tmp_path / "results"
    assert main([str(path), "--results-dir", str(results), "--cpus-per-trial", "8"]) == 2
    err = capsys.readouterr().err
    assert "cpus_per_trial 8 exceeds the largest node (2 CPUs)" in err and "its autoscaler runs read-only" in err
    assert "pass --autoscaling if this cluster adds nodes on demand" in err and not results.exists()
