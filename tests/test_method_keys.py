"""Several methods in one study: which ``loss:`` keys each trial keeps, ignores or refuses (before any work)."""

import dataclasses
from pathlib import Path

import pytest

from icd_tune.method.distillers.crd import CRDLossConfig
from icd_tune.method.distillers.icd import ICDLossConfig
from icd_tune.method.loss_config import LossConfig
from icd_tune.platform.cli.main import main
from icd_tune.platform.smoke import smoke_points
from icd_tune.platform.study.definition import load_study
from icd_tune.platform.study.method_keys import ignored_loss_keys
from icd_tune.platform.study.trials import trial_config

ROOT = Path(__file__).resolve().parents[1]

# ICD's settings in the shared section (as a base file gives them), and CRD's negatives scaled to the tiny data.
MIXED = """
loss: {feat_dim: 16, kd_weight: 1.0, invariance_weight: 0.25, crd_negatives: 64}
mode: grid
grid:
  method:
    levels:
      - {label: ICD, set: {method: icd}}
      - {label: CRD, set: {method: crd, loss.crd_weight: 0.5}}
      - {label: CE, set: {method: ce, loss.kd_weight: 0.0}}
"""


def test_other_methods_settings_are_ignored_by_their_trials_and_listed_by_the_dry_run(tiny_study, capsys):
    path = tiny_study("mixed", MIXED)
    study = load_study(path)
    configs = {p.levels["method"]: study.trial_config(p.overrides, p.seed) for p in study.grid_points()}
    icd, crd, ce = configs["ICD"], configs["CRD"], configs["CE"]
    assert type(icd.loss) is ICDLossConfig and (icd.loss.feat_dim, icd.loss.invariance_weight) == (16, 0.25)
    assert type(crd.loss) is CRDLossConfig and (crd.loss.crd_weight, crd.loss.crd_negatives) == (0.5, 64)
    assert crd.loss.kd_weight == 1.0  # the trainer's keys are every method's
    assert type(ce.loss) is LossConfig and ce.loss.kd_weight == 0.0 and not ce.uses_teacher
    assert study.trial_methods == ["icd", "crd", "ce"]
    assert ignored_loss_keys(study) == {"icd": ["loss.crd_negatives"],
                                        "crd": ["loss.feat_dim", "loss.invariance_weight"],
                                        "ce": ["loss.feat_dim", "loss.invariance_weight", "loss.crd_negatives"]}
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("# ignored by the crd trials (other methods' settings in the shared loss section): loss.feat_dim, "
            "loss.invariance_weight") in out
    assert "# ignored by the icd trials (other methods' settings in the shared loss section): loss.crd_negatives" in out
    # What a trial logs and records is its own method's section only.
    assert "crd_negatives" not in icd.to_dict()["loss"] and "feat_dim" not in crd.to_dict()["loss"]


@pytest.mark.parametrize("body, extra, key, owner, method", [
    # A level of an ICD trial that gives it CRD's weight.
    (MIXED.replace("{method: icd}", "{method: icd, loss.crd_weight: 0.8}"), [], "loss.crd_weight", "crd", "icd"),
    # A factor over a DKD key crossed with a CRD level.
    (MIXED + "  beta: {key: loss.dkd_beta, levels: [2.0, 8.0]}\n", [], "loss.dkd_beta", "dkd", "icd"),
    # A search space over RRD's queue for an ICD search.
    ("mode: search\nsearch: {num_samples: 2, space: {loss.rrd_queue: {type: int, low: 8, high: 16}}}\n", [],
     "loss.rrd_queue", "rrd", "icd"),
])
def test_another_methods_setting_given_to_a_trial_is_refused_naming_the_key(tiny_study, capsys, body, extra, key,
                                                                            owner, method):
    path = tiny_study("refused", body)
    assert main([str(path), "--dry-run", *extra]) == 2
    err = capsys.readouterr().err
    name = key.split(".")[1]
    assert f"key '{key}'" in err and f"'{name}' is a setting of method '{owner}', not of this trial's method " \
                                     f"'{method}'" in err


def test_a_set_that_reaches_no_trial_is_refused_and_one_that_reaches_some_is_kept(tiny_study, capsys):
    path = tiny_study("mixed_set", MIXED)
    assert main([str(path), "--dry-run", "--set", "loss.rrd_weight=2.0"]) == 2
    err = capsys.readouterr().err
    assert "key 'loss.rrd_weight'" in err and "no trial of this study reads it (its methods: icd, crd, ce)" in err
    assert "it is a setting of method 'rrd'" in err
    study = load_study(path, ["loss.crd_momentum=0.9"])
    crd = next(study.trial_config(p.overrides, p.seed) for p in study.grid_points() if p.levels["method"] == "CRD")
    assert crd.loss.crd_momentum == 0.9 and "loss.crd_momentum" in ignored_loss_keys(study)["icd"]


def test_a_setting_of_no_method_is_an_unknown_key_with_a_suggestion(tiny_study, capsys):
    path = tiny_study("typo", MIXED.replace("crd_negatives: 64", "crd_negatvies: 64"))
    assert main([str(path), "--dry-run"]) == 2
    assert "key 'loss.crd_negatvies': unknown key 'crd_negatvies'; did you mean 'crd_negatives'?" in capsys.readouterr().err


def test_a_study_of_one_method_keeps_its_defaults_exactly():
    # Nothing changes for a one-method study: the same defaults (and so the same resume fingerprint).
    study = load_study(ROOT / "ablations" / "quickstart.yaml")
    assert set(study.base["loss"]) == {f.name for f in dataclasses.fields(ICDLossConfig)}
    assert ignored_loss_keys(study) == {} and study.trial_methods == ["icd"]


LR_FIRST = MIXED.replace("grid:\n", "grid:\n  lr: {key: optim.lr, levels: [0.05]}\n")


@pytest.mark.parametrize("body, baseline, message", [
    (MIXED, "{method: ICD}", None),
    (LR_FIRST, "{method: CRD, lr: 0.05}", None),
    (MIXED, "{method: DKD}", "bad value 'DKD': not a level of grid factor 'method' ['ICD', 'CRD', 'CE']"),
    (MIXED, "{mehtod: ICD}", "unknown key 'mehtod'; did you mean 'method'?"),
    (LR_FIRST, "CRD", "the baseline must be one of the first factor's levels [0.05]"),
])
def test_a_baseline_names_a_level_of_the_first_factor_or_one_per_factor(tiny_study, capsys, body, baseline, message):
    path = tiny_study("baseline", body.replace("mode: grid", f"mode: grid\nbaseline: {baseline}"))
    code = main([str(path), "--dry-run"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
    else:
        assert code == 2 and message in err, err


def test_the_baselines_study_runs_every_method_at_its_published_setting():
    study = load_study(ROOT / "ablations" / "baselines.yaml", ["teachers_dir=/nowhere"])
    points = study.grid_points()
    assert len(points) == 10 * 3 and study.settings.baseline == {"method": "ICD"}
    first = {p.levels["method"]: study.trial_config(p.overrides, p.seed) for p in points if p.seed == 0}
    expected = {"CE": ("ce", 1.0, 0.0), "KD": ("ce", 0.1, 0.9), "CRD": ("crd", 1.0, 0.0), "CRD+KD": ("crd", 1.0, 1.0),
                "RRD": ("rrd", 1.0, 0.0), "RRD+KD": ("rrd", 1.0, 1.0), "RRD-Tswap": ("rrd", 1.0, 0.0),
                "DKD": ("dkd", 1.0, 0.0), "ICD": ("icd", 1.0, 0.0), "ICD+KD": ("icd", 1.0, 1.0)}
    assert {k: (c.method, c.loss.ce_weight, c.loss.kd_weight) for k, c in first.items()} == expected
    assert (first["CRD"].loss.crd_weight, first["CRD"].loss.crd_negatives, first["CRD"].loss.crd_temperature) == \
        (0.8, 16384, 0.07)
    assert (first["RRD"].loss.rrd_student_temperature, first["RRD"].loss.rrd_teacher_temperature) == (0.1, 0.02)
    assert (first["RRD-Tswap"].loss.rrd_student_temperature, first["RRD-Tswap"].loss.rrd_teacher_temperature) == \
        (0.02, 0.1)
    assert (first["DKD"].loss.dkd_alpha, first["DKD"].loss.dkd_beta, first["DKD"].loss.dkd_warmup) == (1.0, 8.0, 20 / 240)
    assert all(c.teacher.arch == "resnet32x4" and c.student == "resnet8x4" and c.optim.epochs == 240
               and c.protocol == "paper" and c.teacher.checkpoint == "/nowhere/resnet32x4_vanilla/ckpt_epoch_240.pth"
               for c in first.values())
    assert study.settings.reported["resnet32x4->resnet8x4"]["DKD"] == 76.32
    # --smoke runs the first trial of each method.
    assert [p.levels["method"] for p in smoke_points(study)] == ["ICD", "CE", "CRD", "RRD", "DKD"]


CIFAR_STUDIES = sorted(p for p in (ROOT / "ablations").glob("*.yaml")
                       if load_study(p).trial_config({}, 0).data.name == "cifar100")


@pytest.mark.parametrize("path", CIFAR_STUDIES, ids=lambda p: p.name)
def test_the_smoke_plan_of_every_cifar_study_resolves_offline(tmp_path, path):
    """Without CIFAR-100 or any teacher checkpoint here, --smoke plans one short trial per method on stand-ins
    (one such smoke runs end to end in test_never_hang_runs.py; baselines.yaml's was run by hand, 5 trials)."""
    from icd_tune.platform.stages.plan import RunOptions, resolve_plan

    study = load_study(path, [f"teachers_dir={tmp_path / 'no_teachers'}"] if "teachers_dir" in path.read_text() else [])
    if study.compare is not None:  # a comparison's smoke runs its confirm grid at each method's default
        study = study.compare.smoke_study()
    plan = resolve_plan(study, RunOptions(smoke=True, results_dir=str(tmp_path / "results"),
                                          data_dir=str(tmp_path / "no_data")))
    configs = [trial_config(plan.base, p.overrides, p.seed) for p in plan.points]
    assert sorted({c.method for c in configs}) == sorted(set(study.trial_methods))
    assert len(configs) == len(set(study.trial_methods))
    for cfg in configs:
        assert cfg.data.name == "synthetic" and cfg.data.num_classes == 100 and not cfg.data.download
        assert cfg.optim.epochs == study.settings.smoke.epochs and cfg.device == "cpu"
        assert cfg.teacher.checkpoint is None  # no checkpoint here: a briefly trained stand-in
    assert not (tmp_path / "results").exists() and not (tmp_path / "no_data").exists()
