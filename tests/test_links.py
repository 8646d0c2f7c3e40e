"""The compare-view link: its encoding, and which runs it opens (a real MLflow sqlite store, no Ray)."""

import json
from urllib.parse import parse_qs, unquote, urlsplit

from icd_tune.platform.tracking.links import compare_link, compare_runs_url, optuna_dashboard_command


def test_compare_url_carries_url_encoded_json_lists():
    url = compare_runs_url("http://host:5000/", ["7"], ["a1", "b2"])
    assert url.startswith("http://host:5000/#/compare-runs?runs=%5B%22a1%22")
    query = parse_qs(urlsplit(urlsplit(url).fragment).query)
    assert json.loads(query["runs"][0]) == ["a1", "b2"] and json.loads(query["experiments"][0]) == ["7"]
    assert "[" not in url and '"' not in url and json.loads(unquote(url.split("runs=")[1].split("&")[0])) == ["a1", "b2"]


def test_compare_link_opens_the_top_runs_by_the_metric_and_says_so(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("links", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, run_name="study").info.run_id
    other = client.create_run(experiment, run_name="another study").info.run_id
    ids = {}
    for i, value in enumerate([3.0, 9.0, None, 5.0, 1.0]):
        run = client.create_run(experiment, run_name=f"t{i}", tags={"mlflow.parentRunId": parent}).info.run_id
        if value is not None:
            client.log_metric(run, "val/acc1", value)
        ids[f"t{i}"] = run
    client.create_run(experiment, run_name="stranger", tags={"mlflow.parentRunId": other})

    url, what = compare_link(client, uri, experiment, parent, "val/acc1", "max", limit=3)
    runs = json.loads(parse_qs(urlsplit(urlsplit(url).fragment).query)["runs"][0])
    assert runs == [ids["t1"], ids["t3"], ids["t0"]]
    assert what == "the top 3 of 5 trial runs by val/acc1 (max)"
    url, what = compare_link(client, uri, experiment, parent, "val/acc1", "min")
    runs = json.loads(parse_qs(urlsplit(urlsplit(url).fragment).query)["runs"][0])
    assert runs == [ids["t4"], ids["t0"], ids["t3"], ids["t1"], ids["t2"]] and what == "all 5 trial runs"
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs")
    assert compare_link(client, uri, experiment, other, "val/acc1", "max")[0].count("%22") == 4  # one run, one experiment
    assert compare_link(client, "http://mlflow.lab:8000", experiment, parent, "val/acc1", "max")[0].startswith(
        "http://mlflow.lab:8000/#/compare-runs")


def test_dashboard_command_names_the_storage():
    assert optuna_dashboard_command("sqlite:////r/optuna.db").endswith(" sqlite:////r/optuna.db")
