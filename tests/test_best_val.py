"""Selection on validation inside a trial: test accuracy and weights at the epoch of best val/acc1."""

import torch

from icd_tune.method.config import TrialConfig
from icd_tune.method.models import create_model
from icd_tune.method.train import Trainer

CONFIG = {
    "student": "resnet8", "device": "cpu", "max_steps_per_epoch": 3,
    "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4, "val_fraction": 0.2},
    "optim": {"epochs": 5, "batch_size": 16, "lr": 0.2},
    "loss": {"kd_weight": 1.0, "feat_dim": 16},
}


def teacher():
    torch.manual_seed(0)
    return create_model("resnet8", 4).eval()


def test_test_accuracy_is_recorded_at_the_best_validation_epoch(tiny_data, tmp_path):
    trainer = Trainer(TrialConfig.from_dict(CONFIG), tiny_data, teacher())
    history, weights = [], []
    for metrics in trainer.epochs():
        history.append(metrics)
        weights.append({k: v.clone() for k, v in trainer.student.state_dict().items()})
    best = max(range(len(history)), key=lambda i: (history[i]["val/acc1"], -i))  # earliest best wins
    last = history[-1]
    assert last["val/best_epoch"] == best + 1
    assert last["test/acc1_at_best_val"] == history[best]["test/acc1"]
    assert last["test/acc5_at_best_val"] == history[best]["test/acc5"]
    # The kept weights are the best epoch's, not the last epoch's.
    assert all(torch.equal(v, weights[best][k]) for k, v in trainer.best_student.items())
    # And they survive a checkpoint round trip (weights_only load).
    trainer.save(tmp_path / "ckpt.pt")
    again = Trainer(TrialConfig.from_dict(CONFIG), tiny_data, teacher())
    again.load(tmp_path / "ckpt.pt")
    assert again.best_val_epoch == best + 1 and again.test_at_best_val == trainer.test_at_best_val
    assert all(torch.equal(v, again.best_student[k]) for k, v in trainer.best_student.items())


def test_best_validation_moves_only_on_improvement(tiny_data):
    trainer = Trainer(TrialConfig.from_dict(CONFIG), tiny_data, teacher())
    seen_best = float("-inf")
    for metrics in trainer.epochs():
        if metrics["val/acc1"] > seen_best:
            seen_best = metrics["val/acc1"]
            assert metrics["val/best_epoch"] == metrics["epoch"]
            assert metrics["test/acc1_at_best_val"] == metrics["test/acc1"]
        else:
            assert metrics["val/best_epoch"] < metrics["epoch"]
        assert metrics["val/best_acc1"] == seen_best


def test_no_validation_split_means_no_selected_test_number():
    from icd_tune.method.data import load_data

    cfg = TrialConfig.from_dict({**CONFIG, "data": {**CONFIG["data"], "val_fraction": 0.0}, "optim": {
        **CONFIG["optim"], "epochs": 1}})
    metrics = Trainer(cfg, load_data(cfg.data), teacher()).run_epoch()
    assert "test/acc1" in metrics and "test/acc1_at_best_val" not in metrics and "val/best_epoch" not in metrics
    assert "test/best_acc1" not in metrics and trainer_lr(cfg) == 0.2


def trainer_lr(cfg, data=None):
    from icd_tune.method.data import load_data

    return Trainer(cfg, data or load_data(cfg.data), teacher()).optimizer.param_groups[0]["initial_lr"]


def test_protocol_paper_reports_the_best_test_epoch_and_keeps_its_weights(tmp_path):
    from icd_tune.method.data import load_data
    from icd_tune.platform.tracking.students import student_state

    cfg = TrialConfig.from_dict({**CONFIG, "protocol": "paper", "data": {k: v for k, v in CONFIG["data"].items()
                                                                         if k != "val_fraction"}})
    data = load_data(cfg.data)
    assert cfg.data.val_fraction == 0.0 and data.val_x.shape[0] == 0
    trainer = Trainer(cfg, data, teacher())
    history, weights = [], []
    for metrics in trainer.epochs():
        history.append(metrics)
        weights.append({k: v.clone() for k, v in trainer.student.state_dict().items()})
    best = max(range(len(history)), key=lambda i: (history[i]["test/acc1"], -i))
    assert [m["test/best_acc1"] for m in history] == [max(m["test/acc1"] for m in history[:i + 1])
                                                      for i in range(len(history))]
    assert history[-1]["test/best_epoch"] == best + 1 and "test/acc1_at_best_val" not in history[-1]
    assert all(torch.equal(v, weights[best][k]) for k, v in trainer.best_student.items())
    # The weights a study logs are these, labelled as selected on the test set.
    from ray import tune

    trainer.save(tmp_path / "ckpt" / "trainer.pt")
    state, which = student_state(tune.Checkpoint.from_directory(str(tmp_path / "ckpt")), "trainer.pt")
    assert which.startswith(f"best test/acc1 (selected on the test set, protocol paper), epoch {best + 1}")
    assert all(torch.equal(v, weights[best][k]) for k, v in state.items())


def test_lr_auto_is_lower_for_the_mobile_students():
    auto = {**CONFIG, "optim": {**CONFIG["optim"], "lr": "auto"}, "loss": {"kd_weight": 0.0, "contrastive_weight": 0.0,
                                                                          "invariance_weight": 0.0}}
    assert trainer_lr(TrialConfig.from_dict(auto)) == 0.05
    assert trainer_lr(TrialConfig.from_dict({**auto, "student": "ShuffleV2"})) == 0.01
