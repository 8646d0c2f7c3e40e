"""Checks across a study's fields and trials: each refused before anything runs, one table row per case (no Ray)."""

import textwrap

import pytest

from icd_tune.method.schema import ConfigError
from icd_tune.platform.cli.main import main
from icd_tune.platform.metrics import trial_metrics
from icd_tune.platform.study.definition import load_study

BASE = """
name: checks
student: resnet8
teacher: {arch: resnet8, optim: {epochs: 1}}
data: {name: synthetic, num_train: 200, num_test: 20, num_classes: 4, val_fraction: 0.2}
optim: {epochs: 4, batch_size: 16}
"""

GRID = BASE + """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
baseline: 0.0
seeds: [0, 1]
"""

SEARCH = BASE + """
mode: search
search:
  space:
    loss.invariance_weight: {type: uniform, low: 0.0, high: 2.0}
  num_samples: 4
asha: {enabled: true, grace_period: 1, reduction_factor: 2}
seeds: [0]
"""

NO_WEIGHTS = "loss: {contrastive_weight: 0.0, invariance_weight: 0.0, kd_weight: 0.0}\n"

# (label, study text, --set overrides, key path refused, pattern of the message)
REFUSED = [
    # metric names: the one registry, with a close match
    ("metric misspelt", GRID, ["metric=val/acc"], "metric", r"'val/acc': not a metric the trainer reports; did you mean 'val/acc1'\?"),
    ("metric unknown", GRID, ["metric=accuracy"], "metric", r"not a metric the trainer reports.*allowed: train/loss"),
    ("metric selects nothing", GRID, ["metric=train/lr"], "metric", r"'train/lr': it measures neither quality nor cost"),
    ("metric is the epoch", GRID, ["metric=epoch"], "metric", r"'epoch': it measures neither quality nor cost"),
    ("metric against its direction", GRID, ["metric=train/loss"], "metric_mode", r"'max': train/loss is better lower.*set metric_mode: min"),
    ("accuracy minimised", GRID, ["metric_mode=min"], "metric_mode", r"val/acc1 is better higher.*set metric_mode: max"),
    ("report metric misspelt", GRID, ["report_metric=test/acc1_at_best"], "report_metric", r"did you mean 'test/acc1_at_best_val'\?"),
    ("loss term of no trial", GRID + NO_WEIGHTS, ["metric=train/loss_kd", "metric_mode=min"], "metric",
     r"trial 'invariance_weight=0.0 seed=0' does not report it: with loss.kd_weight 0.0, loss.contrastive_weight 0.0, "
     r"loss.invariance_weight 0.0 its loss terms are train/loss_ce"),
    ("logit scale without a head", GRID + NO_WEIGHTS, ["report_metric=train/logit_scale"], "report_metric",
     r"trial 'invariance_weight=0.0 seed=0' does not report it: it has no ICD head"),
    ("loss term at a corner of the space", SEARCH, [
        "search.space={loss.invariance_weight: {type: uniform, low: 0.0, high: 1.0}, "
        "loss.contrastive_weight: {type: uniform, low: 0.0, high: 1.0}}",
        "metric=train/loss_contrastive", "metric_mode=min"], "metric",
     r"trial 'search space at invariance_weight=0.0 contrastive_weight=0.0 seed=0' does not report it"),
    # split presence
    ("val metric without a split", GRID, ["data.val_fraction=0"], "metric",
     r"'val/acc1': trial .* has no validation split \(data.val_fraction 0.0 holds out 0 training images\); set data.val_fraction > 0"),
    ("a split that rounds to nothing", GRID, ["data.val_fraction=0.001"], "metric", r"holds out 0 training images"),
    ("report metric needs the split", GRID, ["data.val_fraction=0", "metric=train/acc1"], "report_metric",
     r"'test/acc1_at_best_val': trial .* has no validation split"),
    ("val metric of one level without a split", GRID.replace("invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}",
                                                             "split: {key: data.val_fraction, levels: [0.0, 0.2]}").replace("baseline: 0.0", "baseline: 0.2"),
     [], "metric", r"trial 'split=0.0 seed=0' does not report it: it has no validation split"),
    # cadence
    ("search reads val every epoch", SEARCH, ["eval_every=2"], "eval_every",
     r"bad value 2: val/acc1 drives the Optuna search and ASHA, which read it after every epoch.*set eval_every: 1"),
    ("ASHA on a grid reads val every epoch", GRID, ["eval_every=3", "asha.enabled=true", "asha.grace_period=1"], "eval_every", r"drives ASHA, which"),
    # budget against schedule
    ("ASHA budget below the schedule", SEARCH, ["optim.epochs=8", "asha.max_epochs=4"], "asha.max_epochs",
     r"every trial would stop at epoch 4 of the 8 its optim.epochs schedules, before its learning-rate decays at epochs \[5, 6, 7\]"
     r"; to tune on a 4-epoch budget set optim.epochs: 4"),
    ("trials with different budgets", GRID.replace("invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}",
                                                   "epochs: {key: optim.epochs, levels: [2, 4]}")
     .replace("baseline: 0.0", "baseline: 4"), [], "optim.epochs", r"trials plan different epoch budgets \(2 in 'epochs=2 seed=0', 4 in"),
    # mode, grid, search, baseline, seeds
    ("grid mode without a grid", BASE + "mode: grid\nseeds: [0]\n", [], "grid", r"mode: grid needs a grid"),
    ("grid mode with search settings", GRID, ["search.num_samples=8"], "search", r"search settings are for mode: search, and this study is mode: grid"),
    ("search mode with a grid", GRID, ["mode=search", "search.space={optim.lr: {type: uniform, low: 0.01, high: 0.1}}"], "grid",
     r"a grid is for mode: grid, and this study is mode: search"),
    ("search mode with a baseline", SEARCH, ["baseline=0.5"], "baseline", r"a search has no levels; remove 'baseline'"),
    ("search mode with several seeds", SEARCH, ["seeds=[0, 1, 2]"], "seeds", r"a search runs every sample at one seed"),
    ("search mode without a space", BASE + "mode: search\n", [], "search", r"a search needs parameters"),
    ("baseline not a level", GRID, ["baseline=0.25"], "baseline", r"the baseline must be one of the first factor's levels \[0.0, 0.5\]"),
    ("baseline without a factor", BASE + "mode: grid\nbaseline: 0\n", [], "grid", r"mode: grid needs a grid"),
    # protocols
    ("a test metric selects under protocol validation", GRID, ["metric=test/acc1"], "metric",
     r"selection never touches the test set"),
    ("the paper's number under protocol validation", GRID, ["report_metric=test/best_acc1"], "report_metric",
     r"only protocol paper reports the best test accuracy over epochs.*set protocol: paper"),
    ("protocol paper keeps a validation split", GRID, ["protocol=paper"], "data.val_fraction",
     r"protocol paper trains on every training image and holds out none"),
    ("protocol paper searches", SEARCH, ["protocol=paper", "data.val_fraction=0"], "mode",
     r"'search': protocol paper has no validation split .* tuning under it would select on the test set"),
    ("protocol paper with ASHA", GRID, ["protocol=paper", "data.val_fraction=0", "asha.enabled=true"], "asha.enabled",
     r"ASHA would stop trials by it"),
    ("protocols differ across trials", GRID.replace(
        "invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}",
        "protocol: {levels: [{label: v, set: {protocol: validation}}, "
        "{label: p, set: {protocol: paper, data.val_fraction: 0}}]}").replace("baseline: 0.0", "baseline: v"),
     [], "protocol", r"trials plan different protocols \(paper, validation\)"),
]


def write(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("label,text,sets,key,pattern", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_before_anything_runs(tmp_path, label, text, sets, key, pattern):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_study(path, sets)
    assert info.value.key_path == key
    assert info.value.source == str(path)


ACCEPTED = [
    ("eval_every > 1 where nothing reads the metric between evaluations", GRID, ["eval_every=2"]),
    ("a train metric drives a search at any cadence", SEARCH, ["eval_every=2", "metric=train/loss", "metric_mode=min"]),
    ("ASHA budget equal to the schedule", SEARCH, ["asha.max_epochs=4"]),
    ("a loss term every trial reports", GRID, ["metric=train/loss_contrastive", "metric_mode=min"]),
    ("the final test accuracy as the headline without a split", GRID,
     ["data.val_fraction=0", "metric=train/acc1", "report_metric=test/acc1"]),
]


@pytest.mark.parametrize("label,text,sets", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted(tmp_path, label, text, sets):
    assert load_study(write(tmp_path, text), sets).name == "checks"


@pytest.mark.parametrize("label,text,sets,key,pattern", REFUSED[::4], ids=[c[0] for c in REFUSED[::4]])
def test_cli_exits_2_naming_file_key_and_value(tmp_path, capsys, label, text, sets, key, pattern):
    path = write(tmp_path, text)
    args = [str(path), "--results-dir", str(tmp_path / "results")]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}, key '{key}': bad value") or f"key '{key}'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


@pytest.mark.parametrize("loss,val_fraction,protocol", [
    ({"kd_weight": 0.0, "contrastive_weight": 0.0, "invariance_weight": 0.0}, 0.2, "validation"),  # cross-entropy only
    ({"kd_weight": 1.0, "contrastive_weight": 0.0, "invariance_weight": 0.0}, 0.0, "validation"),  # KD, no val split
    ({"kd_weight": 0.0, "contrastive_weight": 1.0, "invariance_weight": 0.0, "feat_dim": 8}, 0.2, "validation"),
    ({"kd_weight": 1.0, "contrastive_weight": 1.0, "invariance_weight": 0.5, "feat_dim": 8}, 0.0, "paper"),
], ids=["ce", "kd-no-val", "contrastive", "paper"])
def test_trial_metrics_are_what_such_a_trial_reports(loss, val_fraction, protocol):
    import torch

    from icd_tune.method.data import load_data
    from icd_tune.method.models import create_model
    from icd_tune.method.train import Trainer
    from icd_tune.platform.study.trials import trial_config

    base = {"student": "resnet8", "data": {"name": "synthetic", "num_train": 64, "num_test": 16, "num_classes": 4,
                                           "val_fraction": val_fraction},
            "optim": {"epochs": 1, "batch_size": 16}, "loss": loss, "max_steps_per_epoch": 1, "device": "cpu",
            "protocol": protocol}
    cfg = trial_config(base, {}, 0)
    torch.manual_seed(0)
    teacher = create_model("resnet8", 4).eval() if cfg.uses_teacher else None
    (metrics,) = Trainer(cfg, load_data(cfg.data), teacher).epochs()
    assert set(metrics) == set(trial_metrics(cfg))


def test_protocol_paper_reports_the_best_test_accuracy_and_selects_nothing(tmp_path):
    study = load_study(write(tmp_path, GRID.replace(", val_fraction: 0.2", "")), ["protocol=paper"])
    assert study.settings.metric == study.settings.report_metric == "test/best_acc1"
    cfg = study.trial_config({}, 0)
    assert cfg.protocol == "paper" and cfg.data.val_fraction == 0.0
    assert "test/best_acc1" in trial_metrics(cfg) and "val/acc1" not in trial_metrics(cfg)
    honest = load_study(write(tmp_path, GRID), [])
    assert honest.settings.metric == "val/acc1" and honest.settings.report_metric == "test/acc1_at_best_val"
    assert "test/best_acc1" not in trial_metrics(honest.trial_config({}, 0))


@pytest.mark.parametrize("student,lr,expected", [
    ("resnet8x4", "auto", 0.05), ("MobileNetV2", "auto", 0.01), ("ShuffleV1", "auto", 0.01),
    ("ShuffleV2", "auto", 0.01), ("wrn_16_2", "auto", 0.05), ("ShuffleV2", 0.03, 0.03)])
def test_lr_auto_follows_the_student(student, lr, expected):
    from icd_tune.method.config import TrialConfig, resolve_lr

    cfg = TrialConfig.from_dict({"student": student, "optim": {"lr": lr}})
    assert resolve_lr(cfg.optim.lr, cfg.student) == expected
    assert TrialConfig().optim.lr == "auto"


@pytest.mark.parametrize("protocol", ["validation", "paper"])
def test_quickstart_plans_under_both_protocols(capsys, protocol):
    from pathlib import Path

    quickstart = Path(__file__).resolve().parents[1] / "ablations" / "quickstart.yaml"
    assert main([str(quickstart), "--dry-run", "--set", f"protocol={protocol}"]) == 0
    out = capsys.readouterr().out
    assert f"# protocol {protocol}:" in out
    assert ("metric: test/best_acc1" in out) == (protocol == "paper")
