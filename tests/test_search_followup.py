"""A finished tiny search: its compare link in a real browser, and a follow-up search warm-started from it."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from icd_tune.platform.runner import RunOptions, run_study
from icd_tune.platform.study.definition import load_study

pytestmark = pytest.mark.slow

SEARCH = """
mode: search
search:
  space:
    loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}
    optim.lr: {type: loguniform, low: 0.001, high: 0.2}
  num_samples: 4
  seed: 1
asha: {enabled: true, grace_period: 1, reduction_factor: 2}
max_concurrent: 2
seeds: [0]
"""


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, ray_session):
    from conftest import TINY_STUDY

    import textwrap

    work = tmp_path_factory.mktemp("followup")
    path = work / "first.yaml"
    path.write_text(textwrap.dedent(TINY_STUDY.format(name="first", epochs=2, steps=1)) + textwrap.dedent(SEARCH))
    lines = []
    out = run_study(load_study(path), RunOptions(results_dir=str(work / "results")), log=lines.append)
    return work, out, lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def rendered_page(url: str) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts (MLflow's UI is a single-page app)."""
    done = subprocess.run(["chromium", "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom",
                           "--virtual-time-budget=15000", url], capture_output=True, text=True, timeout=180)
    return done.stdout


def test_printed_compare_link_shows_every_trial_in_a_browser(finished_search):
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    work, out, lines = finished_search
    printed = [ln for ln in lines if ln.startswith("compare the trials")]
    assert printed and "all 4 trial runs" in printed[0]
    url = printed[0].split(":  ", 1)[1]
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=")
    assert any(ln.startswith("runs table:") for ln in lines)
    dashboard = [ln for ln in lines if ln.startswith("Optuna dashboard:")]
    assert dashboard and f"sqlite:///{out['run_folder'] / 'optuna.db'}" in dashboard[0]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(out["tracking_uri"])
    parent = client.get_run(out["parent_run_id"])
    assert parent.data.tags["icd_tune.compare_url"] == url
    # Importance covers the search's two keys, over the trials ASHA let finish (or says why not).
    assert "Factor importance on val/acc1 (max)" in out["report"]
    assert "importance.json" in {a.path for a in client.list_artifacts(out["parent_run_id"])}
    shares = {k for k in parent.data.metrics if k.startswith("importance/")}
    assert shares == {f"importance/{e}/{k}" for e in ("fanova", "pedanova")
                      for k in ("loss.invariance_weight", "optim.lr")} or parent.data.tags["icd_tune.importance"].startswith("none: ")
    import optuna

    storage = f"sqlite:///{out['run_folder'] / 'optuna.db'}"
    assert optuna.load_study(study_name="first", storage=storage).metric_names == ["val/acc1"]
    names = [t["name"] for t in out["trials"]]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", out["tracking_uri"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, "MLFLOW_TRACKING_URI": out["tracking_uri"]})
    try:
        wait_for(f"http://127.0.0.1:{port}/health", 120)
        page = rendered_page(url.replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}"))
        assert "Compare" in page, page[:2000]
        missing = [n for n in names if n not in page]
        assert not missing, f"trial runs not on the compare page: {missing}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_warm_start_seeds_a_follow_up_search_and_refuses_another_space(finished_search, capsys):
    import textwrap

    import optuna
    from conftest import TINY_STUDY
    from optuna.trial import TrialState

    from icd_tune.platform.cli.main import main

    work, out, _ = finished_search
    earlier = optuna.load_study(study_name="first", storage=f"sqlite:///{out['run_folder'] / 'optuna.db'}")
    finished = [t for t in earlier.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    follow = SEARCH.replace("num_samples: 4", f"num_samples: 2\n  warm_start: {out['run_folder']}")
    path = work / "second.yaml"
    path.write_text(textwrap.dedent(TINY_STUDY.format(name="second", epochs=2, steps=1)) + textwrap.dedent(follow))
    notes = []
    second = run_study(load_study(path), RunOptions(results_dir=str(work / "results")), log=notes.append)
    assert any(n.startswith("warm start: 4 finished trials of 'first'") for n in notes)
    assert len(second["trials"]) == 2  # Ray ran only the new samples
    seeded = optuna.load_study(study_name="second", storage=f"sqlite:///{second['run_folder'] / 'optuna.db'}")
    copied = [t for t in seeded.trials if "warm_start_from" in t.user_attrs]
    assert len(seeded.trials) == 6 and len(copied) == 4
    assert sorted((t.state, t.value, tuple(sorted(t.params.items())), tuple(sorted(t.intermediate_values.items())))
                  for t in copied) == sorted(
        (t.state, t.value, tuple(sorted(t.params.items())), tuple(sorted(t.intermediate_values.items())))
        for t in finished)
    assert [t.state for t in seeded.trials[4:]] != [TrialState.RUNNING] * 2

    other = follow.replace("optim.lr: {type: loguniform, low: 0.001, high: 0.2}",
                           "loss.temperature: {type: choice, values: [0.05, 0.1]}")
    bad = work / "third.yaml"
    bad.write_text(textwrap.dedent(TINY_STUDY.format(name="third", epochs=2, steps=1)) + textwrap.dedent(other))
    capsys.readouterr()
    assert main([str(bad), "--results-dir", str(work / "results")]) == 2
    err = capsys.readouterr().err
    assert "loss.temperature (not sampled by the earlier search)" in err
    assert "optim.lr (sampled by the earlier search, not by this one)" in err
