"""The published table as a study: its plan, its teachers, its published numbers, refusals (no Ray)."""

import re
from pathlib import Path

import pytest

from icd_tune.method.config import resolve_lr
from icd_tune.method.schema import ConfigError
from icd_tune.platform.cli.main import main
from icd_tune.platform.study.definition import load_study
from icd_tune.platform.study.teachers import teacher_uses

PAPER_TABLE = Path(__file__).resolve().parents[1] / "ablations" / "paper_table.yaml"
TEACHERS = ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"]


def checkpoint(folder: Path, arch: str) -> Path:
    import torch

    from icd_tune.method.models import create_model

    path = folder / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model": create_model(arch, 100).state_dict()}, path)
    return path


# Each method level: (method, CE weight, KD weight, the method's own weights), as RepDistiller's -r -a -b.
LEVELS = {"KD": ("icd", 0.1, 0.9, {"contrastive_weight": 0.0, "invariance_weight": 0.0}),
          "CRD": ("crd", 1.0, 0.0, {"crd_weight": 0.8}), "CRD+KD": ("crd", 1.0, 1.0, {"crd_weight": 0.8}),
          "RRD": ("rrd", 1.0, 0.0, {"rrd_weight": 1.0}), "RRD+KD": ("rrd", 1.0, 1.0, {"rrd_weight": 1.0}),
          "DKD": ("dkd", 1.0, 0.0, {"dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_temperature": 4.0}),
          "ICD": ("icd", 1.0, 0.0, {"contrastive_weight": 1.0, "invariance_weight": 0.5}),
          "ICD+KD": ("icd", 1.0, 1.0, {"contrastive_weight": 1.0, "invariance_weight": 0.5})}


def test_paper_table_is_104_points_per_seed_with_the_published_weights(tmp_path):
    study = load_study(PAPER_TABLE, [f"teachers_dir={tmp_path}", "seeds=[0, 1, 2]"])
    points = study.grid_points()
    assert len(points) == 13 * 8 * 3 and study.settings.metric == study.settings.report_metric == "test/best_acc1"
    uses = teacher_uses(study.base, points)
    assert [u.cfg.arch for u in uses.values()] == TEACHERS and all(u.missing for u in uses.values())
    assert {u.cfg.checkpoint for u in uses.values()} == {str(tmp_path / f"{a}_vanilla" / "ckpt_epoch_240.pth")
                                                         for a in TEACHERS}
    for point in points:
        cfg = study.trial_config(point.overrides, point.seed)
        method, ce, kd, own = LEVELS[point.levels["method"]]
        assert (cfg.method, cfg.loss.ce_weight, cfg.loss.kd_weight, cfg.loss.kd_temperature) == (method, ce, kd, 4.0)
        assert {k: getattr(cfg.loss, k) for k in own} == own
        assert point.levels["pair"] == f"{cfg.teacher.arch}->{cfg.student}"
        assert cfg.protocol == "paper" and cfg.data.val_fraction == 0 and cfg.optim.epochs == 240
        assert resolve_lr(cfg.optim.lr, cfg.student) == (0.01 if cfg.student.startswith(("Mobile", "Shuffle")) else 0.05)
    reported = study.settings.reported
    every = {"teacher", "student", *LEVELS}
    assert len(reported) == 13
    # DKD's published pairs (mdistiller) leave out two of the thirteen.
    assert [pair for pair, v in reported.items() if set(v) != every] == ["resnet110->resnet20", "ResNet50->vgg8"]
    assert all(set(v) == every - {"DKD"} for pair, v in reported.items() if pair in ("resnet110->resnet20", "ResNet50->vgg8"))
    assert reported["resnet32x4->ShuffleV2"]["ICD+KD"] == 76.95
    row = reported["resnet32x4->resnet8x4"]
    assert (row["KD"], row["CRD"], row["CRD+KD"], row["RRD"], row["RRD+KD"], row["ICD"], row["ICD+KD"], row["DKD"]) == \
        (73.33, 75.51, 75.46, 74.48, 75.08, 74.23, 75.09, 76.32)
    # The claim the study tests: CRD alone above ICD alone on 12 of 13 pairs; ICD+KD above CRD+KD on 8 of 13.
    assert sum(v["CRD"] > v["ICD"] for v in reported.values()) == 12
    assert sum(v["ICD+KD"] > v["CRD+KD"] for v in reported.values()) == 8


def test_dry_run_plans_without_checkpoints_marking_each_missing(tmp_path, capsys):
    present = checkpoint(tmp_path, "resnet56")
    assert main([str(PAPER_TABLE), "--dry-run", "--set", f"teachers_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "# study points: 104 x 1 seed(s) = 104 trials" in out
    for method in ("crd", "rrd", "dkd"):  # ICD's settings in the shared loss section, ignored by the others
        assert f"# ignored by the {method} trials (other methods' settings in the shared loss section): " \
               f"loss.temperature, loss.feat_dim, loss.negatives" in out
    assert "5 checkpoint(s) MISSING" in out and f"MISSING {present}" not in out and str(present) in out
    assert "# GPU-hours estimate:" in out and "basis: measured: resnet32x4 -> resnet8x4 ICD" in out
    assert "| resnet32x4->ShuffleV2 | 79.42 | 71.82 | ICD+KD | - | 76.95 | - |" in re.sub(" +", " ", out)
    assert out.count("| ICD+KD ") == 13 and out.count("| DKD ") == 11


def test_a_real_run_without_the_teachers_exits_2_listing_every_missing_one(tmp_path, capsys):
    checkpoint(tmp_path, "resnet56")
    results = tmp_path / "results"
    assert main([str(PAPER_TABLE), "--set", f"teachers_dir={tmp_path}", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert "5 teacher checkpoint(s) do not exist" in err
    for arch in TEACHERS:
        assert (str(tmp_path / f"{arch}_vanilla" / "ckpt_epoch_240.pth") in err) == (arch != "resnet56")
    assert not results.exists()


TINY = """
name: t
student: resnet8
teacher: {arch: resnet8, checkpoint: "%s"}
data: {name: synthetic, num_train: 64, num_test: 16, num_classes: 4}
optim: {epochs: 1, batch_size: 16}
grid:
  pair: {levels: [{label: a, set: {teacher.arch: resnet8}}]}
  method: {levels: [{label: ICD, set: {loss.kd_weight: 0.0}}]}
"""


@pytest.mark.parametrize("template,extra,key,pattern", [
    ("{teachers_dir}/{arch}.pth", "", "teacher.checkpoint", r"the study sets no teachers_dir.*--set teachers_dir=PATH"),
    ("{root}/{arch}.pth", "teachers_dir: x\n", "teacher.checkpoint", r"unknown placeholder \{root\}"),
    ("x/{arch}.pth", "reported: {b: {ICD: 1.0}}\n", "reported.b", r"not a level of grid factor 'pair'"),
    ("x/{arch}.pth", "reported: {a: {KD: 1.0}}\n", "reported.a.KD", r"expected teacher, student or a level"),
    ("x/{arch}.pth", "reported: {a: {ICD: high}}\n", "reported.a.ICD", r"expected a number"),
])
def test_templates_and_published_numbers_are_checked(tmp_path, template, extra, key, pattern):
    path = tmp_path / "s.yaml"
    path.write_text(TINY % template + extra)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_study(path)
    assert info.value.key_path == key


def test_arch_fills_the_template_per_trial(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY % "{teachers_dir}/{arch}_vanilla/ckpt_epoch_240.pth" + f"teachers_dir: {tmp_path}\n")
    study = load_study(path, ["grid.pair.levels=[{label: a, set: {teacher.arch: resnet14}}]"])
    cfg = study.trial_config(study.grid_points()[0].overrides, 0)
    assert cfg.teacher.checkpoint == str(tmp_path / "resnet14_vanilla" / "ckpt_epoch_240.pth")


def test_each_trial_gets_its_own_teacher_and_only_its_own_cache(tmp_path):
    from icd_tune.method.teachers import teacher_identity
    from icd_tune.platform.raytune.trainable import OutputCacheSpec, cached_teacher_outputs, own_teacher

    study = load_study(PAPER_TABLE, [f"teachers_dir={tmp_path}"])
    points = study.grid_points()
    uses = teacher_uses(study.base, points)
    teachers = {identity: object() for identity in uses}  # stand-ins: only which one is picked matters here
    for point in points:
        cfg = study.trial_config(point.overrides, point.seed)
        assert own_teacher(cfg, None, teachers) is teachers[teacher_identity(cfg.teacher)]
    cfg = study.trial_config(points[0].overrides, points[0].seed)
    # A teacher whose cache is off (too large, say) trains from the live teacher: nothing is opened or built.
    spec = OutputCacheSpec(folder=str(tmp_path / "caches"), dtype="float16", teachers=["another teacher"])
    assert cached_teacher_outputs(cfg, None, None, spec) is None and not (tmp_path / "caches").exists()
