"""A method written outside the package, named by import path: it trains, resumes and runs in a study.

The test writes its own small method, ``drifting``: one term, the student's squared
distance to the teacher's logits scaled by a step counter the method keeps as its own
state, and warmed up over the first epoch. A counter that was not checkpointed or not
restored would change every loss after the interruption, so the resume checks fail.
"""


import pytest
import torch

from icd_tune.method.config import TrialConfig
from icd_tune.method.models import create_model
from icd_tune.method.train import CHECKPOINT_FORMAT, Trainer
from icd_tune.platform.study.trials import trial_config

MODULE = '''
from dataclasses import dataclass

import torch

from icd_tune.method.distillers.base import Distiller
from icd_tune.method.loss_config import LossConfig


@dataclass
class DriftLoss(LossConfig):
    drift_weight: float = 0.5
    drift_rate: float = 0.25  # how much each step adds to the term's scale
    restore_log: str = ""  # a file each restore of the method's state is noted in


class Drifting(Distiller):
    config_class = DriftLoss
    teacher_outputs = ("logits",)

    def __init__(self, loss, student_dim, teacher_dim, num_train, batch_size, seed=0):
        super().__init__(loss, student_dim, teacher_dim, num_train, batch_size, seed)
        self.register_buffer("steps", torch.zeros((), dtype=torch.float32))
        self.weights = {"drift": loss.drift_weight}

    @classmethod
    def needs_teacher(cls, loss):
        return loss.drift_weight > 0

    @classmethod
    def loss_terms(cls, loss):
        return ("drift",)

    @classmethod
    def metric_names(cls, loss):
        return ("train/drift_steps",)

    def step(self, inputs):
        self.steps += 1  # on the device: no host synchronisation
        warm = min(1.0, inputs.epoch / (inputs.epochs / 2))
        gap = (inputs.logits.float() - inputs.teacher_logits.float()).pow(2).mean()
        return {"drift": warm * (1 + self.loss.drift_rate * self.steps) * gap}

    def epoch_metrics(self):
        return {"train/drift_steps": float(self.steps)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.loss.restore_log:
            with open(self.loss.restore_log, "a") as log:
                log.write(f"restored at step {float(state_dict[prefix + 'steps'])}\\n")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class NoStep(Distiller):
    @classmethod
    def loss_terms(cls, loss):
        return ()
'''

BASE = {
    "method": "drifting_method:Drifting",
    "student": "resnet8",
    "teacher": {"arch": "resnet8"},
    "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4, "val_fraction": 0.2},
    "optim": {"epochs": 4, "batch_size": 16, "lr": 0.05},
    "loss": {"kd_weight": 0.5, "drift_weight": 0.5},
    "max_steps_per_epoch": 3,
    "device": "cpu",
}


@pytest.fixture
def outside_module(tmp_path, monkeypatch):
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "drifting_method.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_an_outside_method_trains_and_resumes_bit_exact(outside_module, tiny_data, tmp_path):
    cfg = trial_config(BASE, {}, 0)
    assert type(cfg.loss).__name__ == "DriftLoss" and cfg.uses_teacher
    assert not trial_config(BASE, {"loss.drift_weight": 0.0, "loss.kd_weight": 0.0}, 0).uses_teacher
    torch.manual_seed(0)
    teacher = create_model("resnet8", 4).eval()

    straight = Trainer(cfg, tiny_data, teacher)
    history = list(straight.epochs())
    assert [m["train/drift_steps"] for m in history] == [3.0, 6.0, 9.0, 12.0]
    assert set(history[0]) >= {"train/loss_ce", "train/loss_kd", "train/loss_drift"}
    assert straight.weights == {"ce": 1.0, "kd": 0.5, "drift": 0.5}

    first = Trainer(cfg, tiny_data, teacher)
    head = [first.run_epoch() for _ in range(2)]
    first.save(tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert saved["format"] == CHECKPOINT_FORMAT and set(saved["method"]) == {"steps"}  # no teacher in it
    resumed = Trainer(cfg, tiny_data, teacher)
    resumed.load(tmp_path / "ckpt.pt")
    untimed = lambda rows: [{k: v for k, v in m.items() if not k.startswith("time/")} for m in rows]  # noqa: E731
    assert untimed(head + list(resumed.epochs())) == untimed(history)

    # Without its state the method's loss differs after the interruption: the check above can fail.
    forgetful = Trainer(cfg, tiny_data, teacher)
    state = dict(saved, method={"steps": torch.zeros(())})
    forgetful.load_state_dict(state)
    assert list(forgetful.epochs())[0]["train/loss_drift"] != history[2]["train/loss_drift"]


@pytest.mark.parametrize("method, message", [
    ("no_such_module:Drifting", "cannot import module 'no_such_module'"),
    ("drifting_method:Missing", "module 'drifting_method' has no 'Missing'"),
    ("drifting_method:NoStep", "does not fit the method contract (icd_tune.method.distillers.base): it needs step()"),
    ("drifting_method:DriftLoss", "it needs a subclass of icd_tune.method.distillers.base.Distiller"),
    ("drifting", "unknown method 'drifting'"),
])
def test_a_method_that_cannot_be_used_exits_2_naming_what_is_missing(outside_module, tiny_study, capsys, method,
                                                                     message):
    from icd_tune.platform.cli.main import main

    path = tiny_study("bad_method", f"method: '{method}'\nmode: grid\ngrid:\n  w: {{key: optim.lr, levels: [0.05]}}\n")
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "key 'method'" in err and message in err


def test_study_keys_of_an_outside_method_are_checked_against_its_own_section(outside_module, tiny_study, capsys):
    from icd_tune.platform.cli.main import main
    from icd_tune.platform.study.definition import load_study

    body = ("method: drifting_method:Drifting\nloss: {kd_weight: 1.0}\nmode: grid\n"
            "grid:\n  w: {key: loss.drift_weight, levels: [0.0, 0.5]}\n")
    study = load_study(tiny_study("drift_keys", body))
    assert [p.overrides for p in study.grid_points()] == [{"loss.drift_weight": 0.0}, {"loss.drift_weight": 0.5}]
    # An ICD key set by a level is no key of this method: refused naming its owner and the method's own keys.
    path = tiny_study("drift_icd_key", body.replace("loss.drift_weight", "loss.invariance_weight"))
    assert main([str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "'invariance_weight' is a setting of method 'icd', not of this trial's method 'drifting_method:Drifting'" in err
    assert "drift_rate, drift_weight" in err and "restore_log" in err
    # A key of no method at all is unknown, with a suggestion.
    path = tiny_study("drift_typo", body.replace("loss.drift_weight", "loss.drift_wieght"))
    assert main([str(path), "--dry-run"]) == 2
    assert "unknown key 'drift_wieght'; did you mean 'drift_weight'?" in capsys.readouterr().err


def test_a_format_1_checkpoint_loads_for_icd_and_is_refused_for_another_method(tiny_data, tmp_path):
    from icd_tune.method.train import method_state

    icd = {**BASE, "method": "icd", "loss": {"kd_weight": 1.0, "feat_dim": 16}}
    cfg = trial_config(icd, {}, 0)
    teacher = create_model("resnet8", 4).eval()
    trainer = Trainer(cfg, tiny_data, teacher)
    trainer.run_epoch()
    state = trainer.state_dict()
    old = {k: v for k, v in state.items() if k != "method"}
    old.update(format=1, head={k.removeprefix("head."): v for k, v in state["method"].items()})
    again = Trainer(cfg, tiny_data, teacher)
    again.load_state_dict(old)
    assert all(torch.equal(v, again.method.state_dict()[k]) for k, v in trainer.method.state_dict().items())
    assert again.epoch == 1
    with pytest.raises(ValueError, match=r"checkpoint format 1: this icd-tune reads format 2 and ICD's format 1"):
        method_state(old, "ce")
    with pytest.raises(ValueError, match=r"checkpoint format 7: .*start the trial afresh"):
        method_state({**state, "format": 7}, "icd")


def test_icd_keeps_its_loss_keys_and_plain_training_is_the_ce_method():
    icd = TrialConfig.from_dict({"loss": {"invariance_weight": 0.0, "contrastive_weight": 0.0}})
    assert list(icd.to_dict()["loss"]) == ["ce_weight", "kd_weight", "kd_temperature", "contrastive_weight",
                                           "invariance_weight", "temperature", "feat_dim", "negatives"]
    assert not icd.uses_teacher
    assert TrialConfig.from_dict({"loss": {"kd_weight": 1.0, "contrastive_weight": 0.0,
                                           "invariance_weight": 0.0}}).uses_teacher
    ce = TrialConfig.from_dict({"method": "ce", "loss": {"kd_weight": 1.0}})
    assert ce.to_dict()["loss"] == {"ce_weight": 1.0, "kd_weight": 1.0, "kd_temperature": 4.0} and ce.uses_teacher


TWO_POINTS = """
method: drifting_method:Drifting
loss: {{kd_weight: 0.5, drift_weight: 0.5, restore_log: {log}}}
mode: grid
grid:
  drift: {{key: loss.drift_rate, levels: [0.0, 0.25]}}
seeds: [0]
max_concurrent: 1
checkpoint_every: 1
"""


class SignalAt:
    """A Tune callback that sends this driver SIGTERM once a trial has reported ``epoch``: a scheduler's stop."""

    def __init__(self, epoch: int):
        import os
        import signal

        from ray import tune

        outer = self

        class Callback(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                if not outer.sent and result.get("epoch") == epoch:
                    outer.sent = True
                    os.kill(os.getpid(), signal.SIGTERM)

        self.sent = False
        self.callback = Callback()


@pytest.mark.slow
def test_an_outside_method_runs_in_a_study_and_resumes_to_the_same_epochs(outside_module, tiny_study, tmp_path,
                                                                         ray_session):
    from icd_tune.platform.runner import RunOptions, run_study
    from icd_tune.platform.study.definition import load_study

    def per_epoch(out) -> dict:
        names = {t["trial_id"]: t["name"] for t in out["trials"]}
        rows = {}
        for row in out["history"]:
            rows.setdefault(names[row["trial_id"]], []).append(
                (row["epoch"], row["train/loss"], row["train/loss_drift"], row["train/drift_steps"], row["val/acc1"]))
        return rows

    log = tmp_path / "restores.log"
    study = load_study(tiny_study("outside", TWO_POINTS.format(log=log), epochs=4, steps=2))
    stop = SignalAt(epoch=2)
    results = tmp_path / "interrupted"
    cut = run_study(study, RunOptions(results_dir=str(results), extra_callbacks=[stop.callback]), log=lambda *_: None)
    assert stop.sent and any(t["status"] != "completed" for t in cut["trials"])
    assert not log.exists()
    resumed = run_study(study, RunOptions(results_dir=str(results), resume=True), log=lambda *_: None)
    assert [t["status"] for t in resumed["trials"]] == ["completed", "completed"]
    assert log.read_text().startswith("restored at step")  # continued from its checkpoint, state and all

    # The same two trials uninterrupted, in this process, with the run's teacher and its thread count.
    from icd_tune.method.data import load_data
    from icd_tune.method.teachers import get_teacher

    expected = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for point in study.grid_points():
            cfg = study.trial_config(point.overrides, point.seed)
            data = load_data(cfg.data)
            teacher, info = get_teacher(cfg.teacher, data, cfg.data, device="cpu", cache_dir=results / "teachers",
                                        log=lambda *_: None)
            assert info["source"] == "cache"
            expected[point.name] = [(m["epoch"], m["train/loss"], m["train/loss_drift"], m["train/drift_steps"],
                                     m["val/acc1"]) for m in Trainer(cfg, data, teacher).epochs()]
    finally:
        torch.set_num_threads(threads)
    assert sorted(expected) == ["drift=0.0 seed=0", "drift=0.25 seed=0"]
    got = per_epoch(resumed)
    for name in expected:
        assert got[name] == expected[name], (name, got[name], expected[name])
