"""A real multi-node Ray cluster on this machine (a head and worker raylets, loopback only)."""

import sqlite3
import threading
import time

import pytest

from icd_tune.platform.runner import RunOptions, run_study
from icd_tune.platform.study.definition import load_study

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

GRID = """
max_retries: 3
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
seeds: [0, 1]
"""


@pytest.fixture(scope="module")
def started_cluster():
    """One cluster for this file: the spread test leaves it as it found it, the removed-worker test comes last."""
    import ray
    from ray.cluster_utils import Cluster

    # The head takes no trials, so every trial runs on a worker node.
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1) for _ in range(3)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.fixture
def cluster(started_cluster):
    import ray

    c, workers = started_cluster
    assert len(c.list_all_nodes()) == 4, "a test before this one removed a node"  # a head and 3 workers
    yield c, workers
    ray.shutdown()  # each study connects afresh


def _children(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    runs = client.search_runs([out["experiment_id"]])
    return client, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == out["parent_run_id"]]


def test_study_spreads_over_nodes(tmp_path, tiny_study, cluster):
    c, workers = cluster
    # Few images: each node builds the cache (162 variants of every image) on its CPU; the spread needs no more.
    path = tiny_study("multi", GRID + "teacher: {arch: resnet8, optim: {epochs: 1, batch_size: 16}, cache: on}\n"
                      "data: {name: synthetic, num_train: 60, num_test: 20, num_classes: 4, val_fraction: 0.2}\n"
                      "optim: {epochs: 2, batch_size: 16, lr: 0.05}\n", epochs=2, steps=3)
    logs = []
    out = run_study(load_study(path), RunOptions(address=c.address, results_dir=str(tmp_path / "results")),
                    log=logs.append)
    # The driver (a head without CPUs) builds no cache; the first trial on a node builds it there.
    assert any("each node builds its own copy once" in str(m) for m in logs)
    assert len(list((tmp_path / "results" / "teachers").glob("outputs-*.bin"))) == 1
    assert [t["status"] for t in out["trials"]] == ["completed"] * 4
    _, children = _children(out)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    nodes = {r.data.tags["ray.node_id"] for r in children}
    worker_ids = {w.node_id for w in workers}
    assert nodes <= worker_ids and len(nodes) >= 2


def test_removed_worker_node_trials_are_rescheduled(tmp_path, tiny_study, cluster):
    c, workers = cluster
    path = tiny_study("lose_node", GRID, epochs=6, steps=4)
    db = tmp_path / "results" / "lose_node" / "mlflow.db"
    removed = {}

    def remove_a_busy_worker():
        # Wait until a trial has reported from some worker, then take that node away mid-study.
        deadline = time.time() + 240
        by_id = {w.node_id: w for w in workers}
        while time.time() < deadline and not removed:
            time.sleep(0.3)
            if not db.exists():
                continue
            try:
                con = sqlite3.connect(db)
                rows = con.execute("select value from tags where key = 'ray.node_id'").fetchall()
                con.close()
            except sqlite3.OperationalError:
                continue
            for (node_id,) in rows:
                if node_id in by_id:
                    c.remove_node(by_id[node_id])
                    removed["id"] = node_id
                    return

    thread = threading.Thread(target=remove_a_busy_worker, daemon=True)
    thread.start()
    out = run_study(load_study(path), RunOptions(address=c.address, results_dir=str(tmp_path / "results")),
                    log=lambda *_: None)
    thread.join(timeout=5)
    assert removed, "no worker was removed"
    assert [t["status"] for t in out["trials"]] == ["completed"] * 4
    assert all(t["epochs"] == 6 for t in out["trials"])
    client, children = _children(out)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    # The trials that were on the removed node finished elsewhere, each epoch logged once.
    for run in children:
        assert run.data.tags["ray.node_id"] != removed["id"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4, 5, 6]
