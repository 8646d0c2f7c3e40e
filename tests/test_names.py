"""A study's name is a name, never a path: refused before any work, with nothing written anywhere."""

import json
import os

import pytest

from icd_tune.platform.cli.main import main
from icd_tune.platform.report import _safe_name
from icd_tune.platform.study.definition import load_study

REJECTED = ["../../escaped", "/tmp/absolute", "a/b", "a\\b", ".hidden", "..", "x" * 101, "with space", "tab\tname",
            "caf\u00e9", "semi;colon"]


@pytest.mark.parametrize("name", REJECTED, ids=repr)
@pytest.mark.parametrize("where", ["file", "--set"])
def test_a_study_name_that_is_not_plain_is_refused_and_nothing_is_written(tmp_path, tiny_study, capsys, monkeypatch,
                                                                         name, where):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = tiny_study("named", "mode: grid\ngrid:\n  w: {key: loss.invariance_weight, levels: [0.0]}\n")
    extra = []
    if where == "file":
        path.write_text(path.read_text().replace("name: named", f"name: {json.dumps(name)}"))  # JSON is YAML
    else:
        extra = ["--set", f"name={name}"]
    results = tmp_path / "results"
    before = sorted(os.listdir(tmp_path))
    assert main([str(path), "--results-dir", str(results), *extra]) == 2
    err = capsys.readouterr().err
    assert "key 'name'" in err and "a name must be plain: letters, digits, '-', '_' and '.', not starting with '.'" in err
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(work) == []
    assert not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("name", ["quickstart", "wrn_40_2-v1.2", "A" * 100, "_private", "-dash"])
def test_plain_names_are_accepted(tiny_study, name):
    path = tiny_study("named", "mode: grid\ngrid:\n  w: {key: loss.invariance_weight, levels: [0.0]}\n")
    assert load_study(path, [f"name={name}"]).name == name


def test_level_labels_stay_free_text_and_factor_files_stay_in_their_folder(tmp_path, tiny_study):
    # Labels are display text (trial names, MLflow tags); the only file a grid names is each factor's plot.
    path = tiny_study("labels", """
    mode: grid
    grid:
      pair:
        levels:
          - {label: wrn_40_2->wrn_16_2, set: {loss.invariance_weight: 0.0}}
          - {label: ../../up/ICD+KD, set: {loss.invariance_weight: 0.5}}
    """)
    study = load_study(path)
    assert [p.levels["pair"] for p in study.grid_points()] == ["wrn_40_2->wrn_16_2", "../../up/ICD+KD"]
    out = tmp_path / "report"
    for factor in ("../../up", "a/b", "..", "/abs"):
        assert (out / f"factor_{_safe_name(factor)}.png").resolve().parent == out.resolve()
