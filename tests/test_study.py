"""Study files: validation, extends, --set, trial plans; and the CLI's bad-input exits (no Ray)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from icd_tune.platform.cli.main import main
from icd_tune.method.schema import ConfigError
from icd_tune.platform.study.definition import load_study

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
name: tiny
student: resnet8
teacher: {arch: resnet8, optim: {epochs: 1}}
data: {name: synthetic, num_train: 200, num_test: 20, num_classes: 4}
optim: {epochs: 2, batch_size: 16}
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
baseline: 0.0
seeds: [0, 1]
"""


def write(tmp_path, text, name="study.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_grid_plan_crosses_levels_and_seeds(tmp_path):
    study = load_study(write(tmp_path, GOOD))
    points = study.grid_points()
    assert [p.name for p in points] == ["invariance_weight=0.0 seed=0", "invariance_weight=0.5 seed=0",
                                        "invariance_weight=0.0 seed=1", "invariance_weight=0.5 seed=1"]
    cfg = study.trial_config(points[1].overrides, points[1].seed)
    assert cfg.loss.invariance_weight == 0.5 and cfg.seed == 0 and cfg.optim.epochs == 2


def test_extends_chain_and_set_overrides(tmp_path):
    write(tmp_path, GOOD, "base.yaml")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "extends: ../base.yaml\nname: child\noptim: {lr: 0.1}\n", "mid.yaml")
    leaf = write(tmp_path, "extends: sub/mid.yaml\nname: leaf\n", "leaf.yaml")
    study = load_study(leaf, ["optim.epochs=7", "loss.temperature=0.1", "seeds=[3]"])
    assert study.name == "leaf"
    cfg = study.trial_config({}, 3)
    assert cfg.optim.lr == 0.1 and cfg.optim.epochs == 7 and cfg.loss.temperature == 0.1
    assert cfg.optim.batch_size == 16  # from the grandparent
    assert [p.seed for p in study.grid_points()] == [3, 3]


def test_multi_key_levels(tmp_path):
    text = GOOD.replace("""  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
baseline: 0.0""", """  negatives:
    levels:
      - {label: batch, set: {loss.negatives.source: batch}}
      - {label: 64, set: {loss.negatives.source: memory, loss.negatives.count: 64}}
baseline: batch""")
    study = load_study(write(tmp_path, text))
    points = study.grid_points()
    assert points[1].levels == {"negatives": 64}
    cfg = study.trial_config(points[1].overrides, 0)
    assert cfg.loss.negatives.source == "memory" and cfg.loss.negatives.count == 64


def test_search_space_from_files_and_inline(tmp_path):
    write(tmp_path, "loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}\n", "space.yaml")
    text = GOOD.split("mode: grid")[0] + textwrap.dedent("""
    mode: search
    search:
      spaces: [space.yaml]
      space:
        optim.lr: {type: loguniform, low: 0.01, high: 0.1}
      num_samples: 3
    asha: {enabled: true, grace_period: 1, reduction_factor: 2}
    """)
    study = load_study(write(tmp_path, text))
    assert set(study.space) == {"loss.invariance_weight", "optim.lr"}
    assert study.space["optim.lr"]["log"] is True
    assert study.planned_trials() == 3


BAD_CASES = [
    ("malformed", "name: x\nloss: {a: 1\n", r"malformed YAML at line"),
    ("unknown key", GOOD.replace("student: resnet8", "studnet: resnet8"), r"key 'studnet'.*did you mean 'student'"),
    ("nested unknown", GOOD.replace("optim: {epochs: 2", "optim: {epoch: 2"), r"key 'optim.epoch'.*did you mean 'epochs'"),
    ("wrong type", GOOD.replace("batch_size: 16", "batch_size: sixteen"), r"key 'optim.batch_size': bad value 'sixteen': expected an integer"),
    ("negative weight", GOOD.replace("levels: [0.0, 0.5]", "levels: [0.0, -0.5]"), r"loss.invariance_weight.*-0.5.*>= 0"),
    ("bad temperature", GOOD + "loss: {temperature: 0}\n", r"loss.temperature.*temperature > 0"),
    ("too many negatives", GOOD + "loss: {negatives: {source: memory, count: 5000}}\n", r"loss.negatives.count.*more than the data allows"),
    ("seed not int", GOOD.replace("seeds: [0, 1]", "seeds: [0, 1.5]"), r"seeds\[1\].*seeds must be integers"),
    ("empty grid", GOOD.replace("levels: [0.0, 0.5]", "levels: []").replace("baseline: 0.0", ""), r"the grid is empty"),
    ("unknown model", GOOD.replace("student: resnet8", "student: resnet9"), r"unknown model 'resnet9'; did you mean"),
    ("unknown dataset", GOOD.replace("name: synthetic", "name: cifar10"), r"data.name.*'cifar10'.*allowed: cifar100, digits, synthetic"),
    ("extends nowhere", "extends: nope.yaml\n" + GOOD, r"extends.*no such file"),
    ("bad baseline", GOOD.replace("baseline: 0.0", "baseline: 3.0"), r"baseline must be one of"),
    ("factor key", GOOD.replace("key: loss.invariance_weight", "key: loss.invariance_wieght"), r"grid.invariance_weight.key.*did you mean 'invariance_weight'"),
]


@pytest.mark.parametrize("label,text,pattern", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_study_is_a_clear_error(tmp_path, label, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_study(path)
    assert str(path) in str(info.value)  # errors name the file


def test_extends_cycle(tmp_path):
    write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(ConfigError, match=r"'extends' forms a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_study(tmp_path / "a.yaml")


def test_set_naming_no_key(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"--set.*names no key.*did you mean 'invariance_weight'"):
        load_study(path, ["loss.invariance_wieght=0.5"])
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_study(path, ["loss.invariance_weight"])


@pytest.mark.parametrize("label,text,pattern", BAD_CASES[:4], ids=[c[0] for c in BAD_CASES[:4]])
def test_cli_exits_2_and_writes_nothing(tmp_path, capsys, label, text, pattern):
    path = write(tmp_path, text)
    results = tmp_path / "results"
    code = main([str(path), "--results-dir", str(results)])
    assert code == 2
    assert "error:" in capsys.readouterr().err
    assert not results.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    path = write(tmp_path, GOOD)
    out = subprocess.run([sys.executable, str(ROOT / "run_ablation.py"), str(path), "--dry-run",
                          "--set", "optim.epochs=3"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "# trial plan: grid, 4 trials x 3 epochs = 12 trial-epochs" in out.stdout
    assert "invariance_weight=0.5 seed=1" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


@pytest.mark.parametrize("study", sorted((ROOT / "ablations").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_passes_dry_run(study, capsys):
    assert main([str(study), "--dry-run"]) == 0
    assert "# trial plan" in capsys.readouterr().out
