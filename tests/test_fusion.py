"""bench/fusion_model.py: students fused with torch.func train as separate Trainer runs do.

Why the exactness check runs in float64 and goes step by step. In fp32 a reordered sum moves
an activation by about 1e-7 (vmap applies BatchNorm's scale and shift after normalising, where
the native kernel folds them into one multiply-add, and its convolutions are grouped); now and
then an activation sits closer than that to a ReLU's kink and lands on the other side, and a
BatchNorm bias, whose gradient is a near-cancelling sum, then moves by up to 1e-2 of its size.
That is fp32 itself, not the fusion: two runs of the real Trainer that differ only in the
convolution kernels (oneDNN on and off) part the same way within three steps. So
``test_each_fused_step_equals_the_trainers_step`` runs the Trainers and the group in float64
(the loss terms still run in fp32, as the method writes them), starts every step from the
Trainers' exact state and asks for 1e-5; ``test_fused_students_stay_with_their_trainers_for_three_steps``
lets the group run on its own in fp32 with the default kernels and asks that each student stays
with its own trial, far closer to it than to its neighbours.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from bench.fusion_model import FusedStudents, VmapAutocast, check_fusable, kd_loss_batched
from icd_tune.method.config import TrialConfig
from icd_tune.method.data import load_data
from icd_tune.method.losses import kd_loss
from icd_tune.method.models import create_model
from icd_tune.method.train import Trainer

RTOL = 1e-5
# A gradient (hence a momentum buffer) is a sum of per-sample contributions that largely cancel; the
# loss terms' fp32 arithmetic rounds it at up to about 1e-5 of its size (measured: 8e-6), so 1e-4.
GRADIENT_RTOL = 1e-4
INVARIANCE_WEIGHTS = (0.0, 0.5, 2.0)
# ICD's terms do not change when every logit is shifted by the same bias, so the bias's gradient is
# zero in exact arithmetic: bias and momentum hold rounding noise and are checked to stay that small.
ZERO_GRADIENT = {"method.head.bias": 1e-7, "momentum.method.head.bias": 1e-5}


def config(invariance_weight: float, kd_weight: float = 0.0, **loss) -> TrialConfig:
    return TrialConfig.from_dict({
        "student": "resnet8", "device": "cpu", "seed": 3, "max_steps_per_epoch": 1, "eval_every": 1000,
        "teacher": {"arch": "resnet8"},
        "data": {"name": "synthetic", "num_train": 40, "num_test": 8, "num_classes": 4, "val_fraction": 0.0},
        "loss": {"kd_weight": kd_weight, "contrastive_weight": 1.0, "invariance_weight": invariance_weight,
                 "feat_dim": 16, **loss},
        # 240 epochs put the lr milestones far beyond the three epochs trained here.
        "optim": {"epochs": 240, "batch_size": 8, "lr": 0.05},
    })


def group() -> list[TrialConfig]:
    """Three levels of the invariance weight; the last also reweights CE and adds KD at its own temperature."""
    return [config(0.0), config(0.5), config(2.0, kd_weight=0.7, ce_weight=0.5, kd_temperature=2.0)]


def teacher_model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        return create_model("resnet8", 4)


def trainer_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    names = [n for n, _ in trainer.student.named_parameters()] + [f"method.{n}" for n, _ in trainer.method.named_parameters()]
    params = trainer.optimizer.param_groups[0]["params"]
    momentum = {f"momentum.{n}": trainer.optimizer.state[p]["momentum_buffer"] for n, p in zip(names, params)
                if p in trainer.optimizer.state}
    return {**trainer.student.state_dict(), **{f"method.{k}": v for k, v in trainer.method.state_dict().items()},
            **momentum}


def fused_state(fused: FusedStudents, b: int) -> dict[str, torch.Tensor]:
    return {**fused.student_state(b), **{f"method.{k}": v for k, v in fused.method_state(b).items()},
            **{f"momentum.{k}": v for k, v in fused.momentum_state(b).items()}}


def relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| over the largest |expected|: relative to the tensor's scale."""
    scale = expected.double().abs().max().item()
    return (actual.double() - expected.double()).abs().max().item() / max(scale, 1e-30)


def mismatches(fused: FusedStudents, fused_metrics: dict, trainers: list[Trainer], metrics: list[dict]) -> list[str]:
    bad = []
    for b, (trainer, m) in enumerate(zip(trainers, metrics)):
        for name in [*(f"train/loss_{n}" for n in fused.names), "train/loss"]:
            # The invariance term is a KL, a difference of log-probabilities of size ln(batch): its
            # rounding is relative to those, not to the (small) difference.
            scale = abs(m[name]) + (math.log(fused.cfg.optim.batch_size) if name == "train/loss_invariance" else 0)
            if abs(fused_metrics[name][b] - m[name]) > RTOL * scale:
                bad.append(f"student {b} {name}: fused {fused_metrics[name][b]!r}, trainer {m[name]!r}")
        actual, expected = fused_state(fused, b), trainer_state(trainer)
        assert set(actual) == set(expected) and any(k.startswith("momentum.") for k in expected)
        for k, e in expected.items():
            if k in ZERO_GRADIENT:
                ok = max(actual[k].abs().max().item(), e.abs().max().item()) < ZERO_GRADIENT[k]
            else:
                ok = relative_difference(actual[k], e) <= (GRADIENT_RTOL if k.startswith("momentum.") else RTOL)
            if not ok:
                bad.append(f"student {b} {k}: {relative_difference(actual[k], e):.2e}")
    return bad


def in_float64(trainer: Trainer) -> Trainer:
    """The same Trainer computing in float64: its modules keep their parameters (the optimiser's), cast in place."""
    trainer.student.double()
    trainer.method.double()
    trainer.normalizer.scale, trainer.normalizer.shift = trainer.normalizer.scale.double(), trainer.normalizer.shift.double()
    return trainer


def test_each_fused_step_equals_the_trainers_step():
    steps = 3  # the first step from the initial state; the later ones with momentum and moved statistics
    configs = group()
    data = load_data(configs[0].data)
    teacher = teacher_model().double()
    trainers = [in_float64(Trainer(c, data, teacher, device="cpu")) for c in configs]
    fused = FusedStudents(configs, data, teacher, device="cpu", dtype=torch.float64)
    assert fused.names == ["ce", "kd", "contrastive", "invariance"]
    for step in range(1, steps + 1):
        fused.load_trials([t.state_dict() for t in trainers])
        fused_metrics = fused.train_epoch(configs[0].max_steps_per_epoch)
        metrics = [t.run_epoch() for t in trainers]
        assert mismatches(fused, fused_metrics, trainers, metrics) == [], f"step {step}"
    # Each step's running-statistics update was compared, and from the second step on the momentum.
    assert int(fused.student_state(0)["bn1.num_batches_tracked"]) == steps and fused.epoch == steps
    assert fused.student_state(0)["bn1.running_var"].dtype == torch.float64


def test_fused_students_stay_with_their_trainers_for_three_steps():
    configs = group()
    data = load_data(configs[0].data)
    teacher = teacher_model()
    trainers = [Trainer(c, data, teacher, device="cpu") for c in configs]
    fused = FusedStudents(configs, data, teacher, device="cpu")
    for _ in range(3):
        metrics = [t.run_epoch() for t in trainers]
        fused_metrics = fused.train_epoch(configs[0].max_steps_per_epoch)
    states = [trainer_state(t) for t in trainers]

    def distance(b: int, c: int) -> float:  # fused student b against trial c, over every tensor they hold
        actual = fused_state(fused, b)
        num = sum(float((actual[k].double() - v.double()).pow(2).sum()) for k, v in states[c].items())
        return (num / sum(float(v.double().pow(2).sum()) for v in states[c].values())) ** 0.5

    for b in range(3):
        own = distance(b, b)
        assert own < 1e-4, f"student {b}: {own:.2e} from its own trial"
        assert all(own * 100 < distance(b, c) for c in range(3) if c != b), f"student {b}: closer to another trial"
        for name in [f"train/loss_{n}" for n in fused.names]:
            assert fused_metrics[name][b] == pytest.approx(metrics[b][name], rel=1e-4)
    assert int(fused.student_state(2)["layer3.0.bn2.num_batches_tracked"]) == 3


def test_kd_loss_batched_equals_kd_loss_per_student():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 8, 5, generator=g) * 3
    teacher = torch.randn(8, 5, generator=g) * 3
    temperatures = torch.tensor([4.0, 2.0, 0.5])
    batched = vmap(kd_loss_batched, in_dims=(0, None, 0))(student, teacher, temperatures)
    for b, t in enumerate(temperatures.tolist()):
        assert float(batched[b]) == pytest.approx(float(kd_loss(student[b], teacher, t)), rel=1e-6)


def test_vmapped_convolutions_and_batchnorm_run_in_the_autocast_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 8, 8, generator=g)
    weights, fc = torch.randn(3, 5, 2, 3, 3, generator=g), torch.randn(3, 6, 5, generator=g)
    stats = torch.zeros(3, 5), torch.ones(3, 5)

    def student(w, fc, mean, var):
        h = F.relu(F.batch_norm(F.conv2d(x, w, padding=1), mean, var, training=True))
        return F.linear(h.mean(dim=(2, 3)), fc)

    with torch.autocast("cpu", dtype=torch.bfloat16), VmapAutocast():
        out = vmap(student)(weights, fc, *stats)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 4, 6)
    assert float(stats[0].abs().sum()) > 0  # the running statistics were updated through the fp32 BatchNorm
    reference = torch.stack([student(weights[b], fc[b], torch.zeros(5), torch.ones(5)) for b in range(3)])
    assert torch.allclose(out.float(), reference, rtol=0.05, atol=0.05)


def test_fused_bf16_step_agrees_with_the_trainers_autocast_step():
    # The CUDA path's mixed precision, run with the CPU's bf16 autocast, against the Trainer's autocast step
    # within the GPU check's tolerance for bf16 against fp32.
    configs = group()
    data = load_data(configs[0].data)
    teacher = teacher_model()
    fused = FusedStudents(configs, data, teacher, device="cpu")
    fused.amp_dtype = torch.bfloat16
    x, y, index, variant = next(iter(fused.stream.epoch(1)))
    _, values, logits = fused.step(x, y, index, variant, epoch=1)
    assert logits.dtype == torch.bfloat16 and logits.shape == (3, 8, 4)
    for b, cfg in enumerate(configs):
        trainer = Trainer(cfg, data, teacher, device="cpu")
        trainer.amp_dtype = torch.bfloat16
        with trainer._autocast():
            _, reference = trainer.step_terms(x, y, index, variant, epoch=1)
        expected = torch.stack([reference[n].float() for n in fused.names]).detach()
        assert bool(((values[b] - expected).abs() <= 0.05 + 0.02 * expected.abs()).all()), (b, values[b], expected)


def test_groups_that_differ_beyond_loss_weights_are_refused():
    other = config(0.5)
    other.optim.lr = 0.1
    with pytest.raises(ValueError, match="optim.lr"):
        check_fusable([config(0.0), other])
    with pytest.raises(ValueError, match="memory"):
        check_fusable([config(0.5, negatives={"source": "memory", "count": 16})])
    data = load_data(config(0.0).data)
    # No ICD head in one trial (both ICD weights 0): the terms summed differ.
    with pytest.raises(ValueError, match="same terms"):
        FusedStudents([config(0.5), config(0.0, kd_weight=1.0, contrastive_weight=0.0)], data, teacher_model(),
                      device="cpu")


def test_fused_rate_reports_the_group_and_its_images_per_second():
    from bench.fusion import SIZES, fused_rate, group_sizes

    rate = fused_rate("cpu", 2, 2, SIZES["cpu"], warmup=1)
    assert rate["students"] == 2 and rate["steps"] == 2 and rate["losses_finite"]
    # Aggregate student-images: two students over two batches of eight in the time measured.
    assert rate["images_per_s"] == pytest.approx(2 * 2 * 8 / (2 * rate["ms_per_step"] / 1000), rel=1e-6)
    assert rate["peak_memory_mb"] > 0
    assert group_sizes(8) == [1, 2, 4, 8] and group_sizes(6) == [1, 2, 4, 6]
