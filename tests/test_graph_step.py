"""``step: graph``: the static-buffer step that a GPU captures as one CUDA graph, run un-captured on the CPU.

The CPU cannot capture, so ``graph_step._static_step_on_cpu`` makes a trainer run the very
function a GPU captures (static input buffers, warm-up steps, a "capture", replays that keep
the epoch and optimiser settings of their capture) and these tests hold it to the eager loop:
the same epoch metrics and the same final weights, bit for bit.
"""


import pytest
import torch

from icd_tune.method import graph_step
from icd_tune.method.config import TrialConfig
from icd_tune.method.models import create_model
from icd_tune.method.schema import ConfigError
from icd_tune.method.train import DivergenceError, Trainer
from icd_tune.platform.study.definition import load_study
from icd_tune.platform.study.trials import trial_config

DATA = {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4, "val_fraction": 0.2}
METHODS = {
    "icd batch negatives": {"loss": {"kd_weight": 1.0, "feat_dim": 16}},
    "icd memory negatives": {"loss": {"kd_weight": 1.0, "feat_dim": 16, "negatives": {"source": "memory", "count": 32}}},
    "crd": {"method": "crd", "loss": {"kd_weight": 1.0, "crd_negatives": 32, "crd_feat_dim": 16}},
    # A warm-up over the whole budget: the term's factor, which a captured step holds, changes every epoch.
    "dkd": {"method": "dkd", "loss": {"dkd_warmup": 1.0}},
    "rrd": {"method": "rrd", "loss": {"rrd_queue": 48, "rrd_feat_dim": 16}},
}


GRID = """
mode: grid
grid:
  invariance_weight: {key: loss.invariance_weight, levels: [0.0, 0.5]}
baseline: 0.0
"""


def config(step="eager", epochs=2, steps=2, **overrides) -> TrialConfig:
    # No milestone inside the run unless a test sets one (0.9 of 2 or 3 epochs falls after the last).
    optim = {"epochs": epochs, "batch_size": 8, "lr": 0.05, "milestones": [0.9]}
    base = {"student": "resnet8", "data": DATA, "optim": optim,
            "max_steps_per_epoch": steps, "eval_every": 10, "device": "cpu", "step": step}
    return trial_config(base, overrides, 0)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("resnet8", 4).eval()


def static_trainer(cfg, data, teacher, **counts) -> Trainer:
    with graph_step._static_step_on_cpu(**counts):
        trainer = Trainer(cfg, data, teacher)
    assert trainer.step_mode == "graph" and trainer.step_note is None and trainer.graph_step is not None
    return trainer


def same_metrics(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b):
        untimed = {k: v for k, v in left.items() if not k.startswith("time/")}
        assert untimed == {k: v for k, v in right.items() if not k.startswith("time/")}


def same_state(a: Trainer, b: Trainer) -> None:
    for part in ("student", "method"):
        theirs = getattr(b, part).state_dict()
        for name, tensor in getattr(a, part).state_dict().items():
            assert torch.equal(tensor, theirs[name]), f"{part}.{name}"
    # RRD's teacher-side embedding gets no gradient, so it has no momentum buffer either way.
    momentum = [[t.optimizer.state[p].get("momentum_buffer") for g in t.optimizer.param_groups for p in g["params"]]
                for t in (a, b)]
    assert all(x is y is None or torch.equal(x, y) for x, y in zip(*momentum))
    assert any(x is not None for x in momentum[0])
    assert torch.equal(a.negatives_generator.get_state(), b.negatives_generator.get_state())


@pytest.mark.parametrize("name", list(METHODS))
def test_static_step_reproduces_the_eager_loop(tiny_data, teacher, name):
    eager = Trainer(config(**METHODS[name]), tiny_data, teacher)
    static = static_trainer(config("graph", **METHODS[name]), tiny_data, teacher, warmup=1)
    same_metrics(list(eager.epochs()), list(static.epochs()))
    same_state(eager, static)
    # Epoch 1: a warm-up step, then the capture and its replay; DKD's warm-up factor changes every epoch, and a
    # new capture takes a warm-up step first.
    assert static.graph_step.captures == (2 if name == "dkd" else 1)
    assert eager.graph_step is None and eager.step_mode == "eager"


def test_warm_up_steps_continue_into_the_next_epoch(tiny_data, teacher):
    # Two steps an epoch: the default three warm-up steps span two epochs before the first capture.
    cfg = dict(epochs=3, **METHODS["icd memory negatives"])
    eager = Trainer(config(**cfg), tiny_data, teacher)
    static = static_trainer(config("graph", **cfg), tiny_data, teacher)
    same_metrics(list(eager.epochs()), list(static.epochs()))
    same_state(eager, static)
    assert static.graph_step.captures == 1 and static.graph_step.warmed == 3


def test_a_milestone_captures_the_step_again(tiny_data, teacher):
    overrides = {"optim.epochs": 4, "optim.milestones": [0.5, 0.75], "loss.feat_dim": 16}
    eager = Trainer(config(**overrides), tiny_data, teacher)
    static = static_trainer(config("graph", **overrides), tiny_data, teacher, warmup=1)
    eager_history, static_history = list(eager.epochs()), list(static.epochs())
    assert [m["train/lr"] for m in static_history] == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    same_metrics(eager_history, static_history)
    same_state(eager, static)
    assert static.graph_step.captures == 3  # the first, then one at each milestone


def test_divergence_is_reported_as_the_eager_loop_reports_it(tiny_data, teacher):
    cfg = {"optim.lr": 1e30, "loss.feat_dim": 16}
    with pytest.raises(DivergenceError) as eager:
        list(Trainer(config(**cfg), tiny_data, teacher).epochs())
    # One warm-up step: the step that goes non-finite is a replay of the captured step.
    static = static_trainer(config("graph", **cfg), tiny_data, teacher, warmup=1)
    with pytest.raises(DivergenceError) as replayed:
        list(static.epochs())
    assert (replayed.value.epoch, replayed.value.step, replayed.value.term) == \
        (eager.value.epoch, eager.value.step, eager.value.term)
    assert static.graph_step.captures == 1 and replayed.value.step > 1


def test_a_resume_captures_again_and_continues_identically(tiny_data, teacher, tmp_path):
    cfg = config("graph", **METHODS["icd memory negatives"])
    straight = static_trainer(cfg, tiny_data, teacher, warmup=1)
    straight_history = list(straight.epochs())

    resumed = static_trainer(cfg, tiny_data, teacher, warmup=1)
    resumed.run_epoch()
    resumed.save(tmp_path / "epoch1.pt")
    resumed.run_epoch()  # trained on, then taken back to the checkpoint
    assert resumed.graph_step.captures == 1
    resumed.load(tmp_path / "epoch1.pt")
    assert resumed.graph_step.graph is None
    history = list(resumed.epochs())
    assert resumed.graph_step.captures == 2  # one warm-up step, then the step captured again
    same_metrics(straight_history[1:], history)
    same_state(straight, resumed)
    eager = Trainer(config(**METHODS["icd memory negatives"]), tiny_data, teacher)
    list(eager.epochs())
    same_state(eager, resumed)


def test_on_the_cpu_graph_runs_eager_and_says_so_once(tiny_data, teacher, capsys):
    graph_step._notes_given.discard(graph_step.CPU_NOTE)
    first = Trainer(config("graph", steps=1, epochs=1), tiny_data, teacher)
    second = Trainer(config("graph", steps=1, epochs=1), tiny_data, teacher)
    for trainer in (first, second):
        assert trainer.step_mode == "eager" and trainer.step_note == graph_step.CPU_NOTE
        assert trainer.graph_step is None
    assert capsys.readouterr().err.count(graph_step.CPU_NOTE) == 1
    plain = Trainer(config(steps=1, epochs=1), tiny_data, teacher)
    assert plain.step_mode == "eager" and plain.step_note is None
    assert "step: graph" not in capsys.readouterr().err
    assert first.run_epoch()["epoch"] == 1


def test_step_key_in_a_study_and_its_refusals(tiny_study):
    path = tiny_study("graph", GRID)
    assert load_study(path).trial_config({}, 0).step == "eager"
    assert load_study(path, ["step=graph"]).trial_config({}, 0).step == "graph"
    with pytest.raises(ConfigError, match=r"bad value 'grpah'; did you mean 'graph'\? allowed: eager, graph") as bad:
        TrialConfig.from_dict({"step": "grpah"})
    assert bad.value.key_path == "step"
    with pytest.raises(ConfigError, match=r"step: graph and compile: true cannot be combined.*set compile: false "
                                          r"or step: eager") as both:
        load_study(path, ["step=graph", "compile=true"])
    assert "key 'step'" in str(both.value)
    assert TrialConfig.from_dict({"step": "eager", "compile": True}).compile
