import math

import pytest
import torch

from icd_tune.method.config import TeacherConfig
from icd_tune.method.models import create_model
from icd_tune.method.teachers import TeacherCheckpointError, get_teacher, load_teacher_checkpoint, save_teacher
from icd_tune.method.train import DivergenceError, Trainer
from icd_tune.platform.study.trials import trial_config

BASE = {
    "student": "resnet8",
    "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4, "val_fraction": 0.2},
    "optim": {"epochs": 4, "batch_size": 16, "lr": 0.05},
    "loss": {"kd_weight": 1.0, "feat_dim": 16, "negatives": {"source": "memory", "count": 32}},
    "max_steps_per_epoch": 3,
    "device": "cpu",
}


def trial(seed=0, **overrides):
    return trial_config(BASE, overrides, seed)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("resnet8", 4).eval()


def test_epoch_metrics_have_stable_names(tiny_data, teacher):
    trainer = Trainer(trial(**{"optim.epochs": 2}), tiny_data, teacher)
    history = list(trainer.epochs())
    assert [m["epoch"] for m in history] == [1, 2]
    expected = {"train/loss", "train/loss_ce", "train/loss_kd", "train/loss_contrastive", "train/loss_invariance",
                "train/acc1", "train/lr", "train/logit_scale", "val/acc1", "val/acc5", "val/best_acc1",
                "test/acc1", "test/acc5", "time/epoch_seconds", "time/images_per_second", "epoch"}
    assert expected <= set(history[-1])
    for m in history:
        assert all(math.isfinite(v) for v in m.values())
        assert 0 <= m["test/acc1"] <= m["test/acc5"] <= 100
    # Total is the weighted sum of the terms (w_ce 1, w_kd 1, w_con 1, w_inv 0.5).
    m = history[-1]
    total = m["train/loss_ce"] + m["train/loss_kd"] + m["train/loss_contrastive"] + 0.5 * m["train/loss_invariance"]
    assert m["train/loss"] == pytest.approx(total, rel=1e-5)


@pytest.mark.parametrize("source", ["batch", "memory"])
def test_resume_is_bit_exact(tiny_data, teacher, tmp_path, source):
    cfg = trial(**{"loss.negatives.source": source})
    straight = Trainer(cfg, tiny_data, teacher)
    straight_history = list(straight.epochs())

    first = Trainer(cfg, tiny_data, teacher)
    for _ in range(2):
        first.run_epoch()
    first.save(tmp_path / "ckpt.pt")
    del first
    resumed = Trainer(cfg, tiny_data, teacher)
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.epoch == 2
    resumed_history = list(resumed.epochs())

    for name, tensor in straight.student.state_dict().items():
        assert torch.equal(tensor, resumed.student.state_dict()[name]), name
    for name, tensor in straight.method.state_dict().items():
        assert torch.equal(tensor, resumed.method.state_dict()[name]), name
    assert straight_history[-1]["train/loss"] == resumed_history[-1]["train/loss"]
    assert straight_history[-1]["test/acc1"] == resumed_history[-1]["test/acc1"]


def test_same_seed_same_start_across_levels(tiny_data, teacher):
    a = Trainer(trial(**{"loss.invariance_weight": 0.1}), tiny_data, teacher)
    b = Trainer(trial(**{"loss.invariance_weight": 2.0, "loss.temperature": 0.1}), tiny_data, teacher)
    c = Trainer(trial(seed=1), tiny_data, teacher)
    assert all(torch.equal(a.student.state_dict()[k], v) for k, v in b.student.state_dict().items())
    assert not all(torch.equal(a.student.state_dict()[k], v) for k, v in c.student.state_dict().items())
    order_a = [i.tolist() for _, _, i, _ in a.stream.epoch()]
    order_b = [i.tolist() for _, _, i, _ in b.stream.epoch()]
    assert order_a == order_b


def test_step_decay_follows_fractional_milestones(tiny_data):
    cfg = trial(**{"optim.epochs": 4, "optim.milestones": [0.5, 0.75], "loss.kd_weight": 0.0,
                   "loss.contrastive_weight": 0.0, "loss.invariance_weight": 0.0})
    lrs = [m["train/lr"] for m in Trainer(cfg, tiny_data).epochs()]
    assert lrs == pytest.approx([0.05, 0.05, 0.005, 0.0005])


def test_divergence_names_epoch_and_term(tiny_data, teacher):
    cfg = trial(**{"optim.lr": 1e30, "optim.epochs": 3})
    trainer = Trainer(cfg, tiny_data, teacher)
    with pytest.raises(DivergenceError, match=r"diverged at epoch \d+, step \d+: loss term '\w+' became non-finite") as info:
        list(trainer.epochs())
    assert info.value.epoch >= 1 and info.value.term in {"ce", "kd", "contrastive", "invariance"}


def test_teacher_is_trained_once_then_reused(tiny_data, tmp_path):
    from icd_tune.method.schema import from_dict

    cfg = from_dict(TeacherConfig, {"arch": "resnet8", "optim": {"epochs": 1, "batch_size": 32}, "cache_dir": str(tmp_path)})
    data_cfg = trial().data
    logs = []
    model, info = get_teacher(cfg, tiny_data, data_cfg, device="cpu", log=logs.append)
    assert info["source"] == "trained"
    again, info2 = get_teacher(cfg, tiny_data, data_cfg, device="cpu", log=logs.append)
    assert info2["source"] == "cache" and info2["path"] == info["path"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    # A different recipe is a different teacher.
    other = from_dict(TeacherConfig, {"arch": "resnet8", "seed": 1, "optim": {"epochs": 1, "batch_size": 32}, "cache_dir": str(tmp_path)})
    _, info3 = get_teacher(other, tiny_data, data_cfg, device="cpu", log=logs.append)
    assert info3["source"] == "trained" and info3["path"] != info["path"]


def test_teacher_checkpoint_formats_and_errors(tmp_path):
    model = create_model("resnet8", 4)
    theirs = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": model.state_dict(), "epoch": 240}, theirs)  # RepDistiller's layout
    loaded = load_teacher_checkpoint(theirs, "resnet8", 4)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    ours = save_teacher(model, tmp_path / "ours.pt", "resnet8", 4, {})
    load_teacher_checkpoint(ours, "resnet8", 4)

    with pytest.raises(TeacherCheckpointError, match="does not exist"):
        load_teacher_checkpoint(tmp_path / "nope.pt", "resnet8", 4)
    with pytest.raises(TeacherCheckpointError, match="holds a 'resnet8', but the study asks for 'resnet14'"):
        load_teacher_checkpoint(ours, "resnet14", 4)
    with pytest.raises(TeacherCheckpointError, match="does not fit 'resnet14'.*missing keys"):
        load_teacher_checkpoint(theirs, "resnet14", 4)
    with pytest.raises(TeacherCheckpointError, match="does not fit 'resnet8' with 10 classes.*shape mismatches"):
        load_teacher_checkpoint(theirs, "resnet8", 10)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(theirs.read_bytes()[:200])
    with pytest.raises(TeacherCheckpointError, match="could not be read"):
        load_teacher_checkpoint(corrupt, "resnet8", 4)
