"""The transfer linear probe: it learns, its two feature paths agree, its targets load, bad blocks are refused."""

import textwrap

import pytest
import torch

from icd_tune.method.config import DataConfig, TrialConfig
from icd_tune.method.data import DataUnavailableError, Normalizer, augment, load_data
from icd_tune.method.models import create_model, feature_dim
from icd_tune.method.schema import ConfigError
from icd_tune.method.transfer import (feature_bank, features_of, frozen_student, linear_probe, run_transfer,
                                      transfer_metric)
from icd_tune.method.transfer_config import TransferConfig
from icd_tune.method.transfer_data import TargetSet, load_target, missing_target, prepare_targets
from icd_tune.platform import metrics
from icd_tune.platform.cli.main import main
from icd_tune.platform.study.trials import definition

CPU = torch.device("cpu")
SOURCE = DataConfig(name="synthetic", num_train=200, num_test=80, num_classes=4, val_fraction=0.0)


def _student(seed=0):
    torch.manual_seed(seed)
    model = create_model("resnet8", 4)
    return frozen_student(TrialConfig(student="resnet8"), model.state_dict(), 4, CPU)


def _target():
    return load_target("synthetic", TransferConfig(datasets=["synthetic"]), SOURCE)


def _normalizer():
    data = load_data(SOURCE)
    return Normalizer(data.mean, data.std, CPU)


def test_probe_learns_separable_synthetic_data():
    target = _target()
    assert target.num_classes == 4 and target.train_x.shape == (200, 3, 32, 32) and target.test_x.shape[0] == 80
    cfg = TransferConfig(datasets=["synthetic"], epochs=10, batch_size=25, lr=0.2, augment=False, features="cached")
    trained = linear_probe(_student(), target, cfg, _normalizer(), CPU, seed=0, dim=feature_dim("resnet8"))
    assert trained.features == "cached"
    assert trained.acc1 >= 70.0, trained  # chance is 25%
    # The same probe shown shuffled labels has nothing to learn: held-out accuracy falls to about chance.
    shuffled = TargetSet("synthetic", target.train_x, target.train_y[torch.randperm(200, generator=torch.Generator().manual_seed(1))],
                         target.test_x, target.test_y, 4)
    blind = linear_probe(_student(), shuffled, cfg, _normalizer(), CPU, seed=0, dim=feature_dim("resnet8"))
    assert blind.acc1 < trained.acc1 - 25.0, (blind, trained)


def test_live_and_cached_features_train_the_same_probe():
    target, student, normalizer = _target(), _student(), _normalizer()
    results = [linear_probe(student, target, TransferConfig(datasets=["synthetic"], epochs=2, batch_size=50,
                                                            augment=False, features=mode), normalizer, CPU, 0, 64)
               for mode in ("live", "cached")]
    assert [r.features for r in results] == ["live", "cached"]
    assert abs(results[0].acc1 - results[1].acc1) <= 100.0 / 80 + 1e-9  # at most one test image apart (float order)


def test_auto_caches_features_when_the_bank_costs_fewer_epochs_than_the_probe_runs():
    from icd_tune.method.transfer import feature_mode

    recipe = TransferConfig(datasets=["stl10"])  # 120 augmented epochs, 8 GiB
    assert feature_mode(recipe, 5000, 128) == "cached"  # STL-10, wrn_16_2: 0.19 GiB
    assert feature_mode(recipe, 100000, 128) == "cached"  # Tiny-ImageNet: 3.9 GiB
    assert feature_mode(TransferConfig(datasets=["stl10"], cache_memory_budget_gb=2.0), 100000, 128) == "live"
    assert feature_mode(TransferConfig(datasets=["stl10"], epochs=100), 5000, 128) == "live"  # 162 x 0.7 > 100
    assert feature_mode(TransferConfig(datasets=["stl10"], epochs=2, augment=False), 5000, 128) == "cached"
    assert feature_mode(TransferConfig(datasets=["stl10"], max_steps_per_epoch=3), 5000, 128) == "live"
    assert feature_mode(TransferConfig(datasets=["stl10"], epochs=500, features="live"), 5000, 128) == "live"


def test_feature_bank_holds_each_variants_features():
    target, student, normalizer = _target(), _student(), _normalizer()
    images = target.train_x[:4]
    bank = feature_bank(student, images, normalizer, augmented=True)
    assert bank.shape == (162, 4, 64) and bank.dtype == torch.float16
    for v, i in [(0, 0), (81, 1), (161, 3), (40, 2)]:
        expected = features_of(student, normalizer(augment(images[i:i + 1], torch.tensor([v]))))[0]
        torch.testing.assert_close(bank[v, i].float(), expected, atol=2e-2, rtol=1e-2)


def test_run_transfer_reports_each_target_with_the_platform_names(tiny_data):
    from icd_tune.method.train import Trainer

    cfg = TrialConfig.from_dict({"student": "resnet8", "device": "cpu", "data": {"name": "synthetic", "num_train": 160,
                                 "num_test": 40, "num_classes": 4, "val_fraction": 0.2},
                                 "loss": {"contrastive_weight": 0, "invariance_weight": 0},
                                 "optim": {"epochs": 1, "batch_size": 32}, "max_steps_per_epoch": 2,
                                 "transfer": {"datasets": ["synthetic", "digits"], "epochs": 1, "batch_size": 32,
                                              "max_steps_per_epoch": 2}})
    trainer = Trainer(cfg, tiny_data)
    trainer.fit()
    assert trainer.best_student is not None  # the probe reads the best-validation weights
    out = run_transfer(trainer)
    assert sorted(out) == sorted(metrics.transfer_metrics(cfg)) == ["transfer/digits/acc1", "transfer/synthetic/acc1"]
    assert all(0.0 <= v <= 100.0 for v in out.values())
    assert transfer_metric("stl10") == metrics.transfer_metric("stl10")
    assert all(metrics.is_trainer_metric(k) and metrics.metric_direction(k) == "max" for k in out)


def _write_tiny_imagenet(root, wnids=("n01", "n02"), per_class=3):
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for c, wnid in enumerate(wnids):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        for k in range(per_class):
            Image.new("RGB", (64, 64), (80 * c, 10 * k, 200)).save(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
        Image.new("L", (64, 64), 40 * c).save(folder / "val" / "images" / f"val_{c}.JPEG")  # grayscale, as some are
        annotations.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def test_tiny_imagenet_loads_from_its_folder_layout_and_is_kept_at_32x32(tmp_path):
    cfg = TransferConfig(datasets=["tiny_imagenet"], root=str(tmp_path))
    with pytest.raises(DataUnavailableError, match="tiny-imagenet-200.*wnids.txt"):
        prepare_targets(cfg, SOURCE)
    _write_tiny_imagenet(tmp_path)
    target = load_target("tiny_imagenet", cfg, SOURCE)
    assert target.num_classes == 2 and target.train_x.shape == (6, 3, 32, 32) and target.train_x.dtype == torch.uint8
    assert target.train_y.tolist() == [0, 0, 0, 1, 1, 1] and target.test_y.tolist() == [0, 1]
    assert int(target.train_x[3, 0].float().mean()) == pytest.approx(80, abs=3)  # the second class is red 80
    assert (tmp_path / "tiny-imagenet-200-32x32.pt").is_file()
    again = load_target("tiny_imagenet", cfg, SOURCE)
    assert torch.equal(again.train_x, target.train_x)


def test_missing_stl10_without_download_names_the_folder(tmp_path):
    cfg = TransferConfig(datasets=["stl10"], root=str(tmp_path), download=False)
    why = missing_target("stl10", cfg, SOURCE)
    assert why and str(tmp_path / "stl10_binary") in why
    with pytest.raises(DataUnavailableError, match="stl10_binary"):
        prepare_targets(cfg, SOURCE)


@pytest.mark.parametrize("block, key, pattern", [
    ({"datasets": ["stl-10"]}, "transfer.datasets[0]", "did you mean 'stl10'"),
    ({"datasets": []}, "transfer.datasets", "at least one target"),
    ({"datasets": ["digits", "digits"]}, "transfer.datasets", "repeat"),
    ({"datasets": ["digits"], "epochs": 0}, "transfer.epochs", "at least 1 epoch"),
    ({"datasets": ["digits"], "lr": -0.1}, "transfer.lr", "lr > 0"),
    ({"datasets": ["digits"], "momentum": 1.0}, "transfer.momentum", "momentum < 1"),
    ({"datasets": ["digits"], "milestones": [30, 60]}, "transfer.milestones[0]", "fractions"),
    ({"datasets": ["digits"], "batch_size": 0}, "transfer.batch_size", "at least 1"),
    ({"datasets": ["digits"], "epoch": 5}, "transfer.epoch", "did you mean 'epochs'"),
])
def test_bad_transfer_blocks_are_refused_with_their_key(block, key, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        TrialConfig.from_dict({"transfer": block})
    assert err.value.key_path == key


STUDY = """
name: refused
student: resnet8
teacher: {arch: resnet8, optim: {epochs: 1}}
data: {name: synthetic, num_train: 200, num_test: 20, num_classes: 4, val_fraction: 0.2}
optim: {epochs: 2, batch_size: 16}
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
"""


@pytest.mark.parametrize("extra, pattern", [
    ("transfer: {datasets: [imagenet]}\n", "transfer.datasets"),
    ("transfer: {datasets: [digits], weight_decay: -1}\n", "weight_decay"),
    ("transfer: {datasets: [digits]}\nmetric: transfer/digits/acc1\n", "nothing may select on them"),
    ("transfer: {datasets: [digits]}\nreport_metric: transfer/stl10/acc1\n", "targets are digits"),
    ("report_metric: transfer/digits/acc1\n", "it has no transfer: block"),
])
def test_the_command_refuses_a_bad_transfer_block_with_exit_2(tmp_path, capsys, extra, pattern):
    path = tmp_path / "refused.yaml"
    path.write_text(textwrap.dedent(STUDY) + extra)
    assert main([str(path), "--dry-run"]) == 2
    assert pattern in capsys.readouterr().err


def test_a_transfer_accuracy_may_be_the_reported_metric(tmp_path):
    from icd_tune.platform.study.definition import load_study

    path = tmp_path / "reported.yaml"
    path.write_text(textwrap.dedent(STUDY) + "transfer: {datasets: [digits]}\nreport_metric: transfer/digits/acc1\n")
    assert load_study(path).settings.report_metric == "transfer/digits/acc1"


def test_a_missing_target_refuses_the_run_with_exit_2_before_any_trial(tmp_path, capsys):
    path = tmp_path / "refused.yaml"
    path.write_text(textwrap.dedent(STUDY) + f"transfer: {{datasets: [tiny_imagenet], root: {tmp_path / 'nowhere'}}}\n")
    assert main([str(path), "--results-dir", str(tmp_path / "results")]) == 2
    assert "tiny-imagenet-200" in capsys.readouterr().err


def test_no_transfer_block_is_the_trial_that_had_none():
    plain = TrialConfig().to_dict()
    assert plain["transfer"] is None and "transfer" not in definition(plain)
    with_block = TrialConfig.from_dict({"transfer": {"datasets": ["digits"]}}).to_dict()
    assert definition(with_block)["transfer.epochs"] == 120


def test_report_shows_transfer_accuracy_per_level():
    from icd_tune.platform.report.markdown import render_report

    trials = [{"trial_id": f"t{i}", "name": f"w={w} seed={s}", "levels": {"w": w}, "seed": s, "status": "completed",
               "epochs": 2, "final": {"val/acc1": 50.0, "test/acc1_at_best_val": 40.0,
                                      "transfer/stl10/acc1": 60.0 + 2 * s + 10 * w}}
              for i, (w, s) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])]
    text = render_report("t", trials, ["w"])
    assert "## Transfer linear probe" in text and "transfer/stl10/acc1" in text
    assert "61.00 +- 1.41 (n=2)" in text and "71.00 +- 1.41 (n=2)" in text
    assert "Transfer linear probe" not in render_report("t", [{**t, "final": {"val/acc1": 1.0}} for t in trials], ["w"])


def test_smoke_caps_the_probe_and_stands_synthetic_in_for_missing_targets(tmp_path):
    from icd_tune.platform.smoke import smoke_setup
    from icd_tune.platform.study.definition import load_study

    path = tmp_path / "smoke.yaml"
    path.write_text(textwrap.dedent(STUDY) + f"transfer: {{datasets: [stl10, digits], root: {tmp_path / 'none'}}}\n"
                    "smoke: {epochs: 1, max_steps: 2}\n")
    study = load_study(path)
    setup = smoke_setup(dict(study.base), study.settings, [study.first_point()], 1, 0, local=True)
    transfer = setup.base["transfer"]
    assert transfer["datasets"] == ["digits", "synthetic"]
    assert transfer["epochs"] == 1 and transfer["max_steps_per_epoch"] == 2
    assert any("stl10" in note and "synthetic" in note for note in setup.notes)
