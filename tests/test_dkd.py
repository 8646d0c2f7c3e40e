"""DKD's terms against a loop-by-loop reference on fixed inputs, its warm-up, and a short training run."""

import math

import pytest
import torch

from icd_tune.method.distillers import get_method
from icd_tune.method.distillers.base import StepInputs
from icd_tune.method.distillers.dkd import DKDLossConfig, dkd_terms
from icd_tune.method.train import Trainer
from icd_tune.platform.study.trials import trial_config


def reference(student, teacher, labels, T):
    """TCKD and NCKD one sample and one class at a time, straight from the paper's definitions."""
    n, c = student.shape
    tckd = nckd = 0.0
    for i in range(n):
        zs = [student[i, k] / T for k in range(c)]
        zt = [teacher[i, k] / T for k in range(c)]
        es = [torch.exp(z) for z in zs]
        et = [torch.exp(z) for z in zt]
        total_s, total_t = sum(es), sum(et)
        g = int(labels[i])
        ps_t, pt_t = es[g] / total_s, et[g] / total_t  # the target class's probability
        tckd = tckd + pt_t * torch.log(pt_t / ps_t) + (1 - pt_t) * torch.log((1 - pt_t) / (1 - ps_t))
        rest_s = sum(es[k] for k in range(c) if k != g)
        rest_t = sum(et[k] for k in range(c) if k != g)
        for k in range(c):
            if k != g:
                q_s, q_t = es[k] / rest_s, et[k] / rest_t  # among the non-target classes only
                nckd = nckd + q_t * torch.log(q_t / q_s)
    return tckd / n * T * T, nckd / n * T * T


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_terms_and_gradients_match_the_loop_reference(temperature):
    g = torch.Generator().manual_seed(3)
    student = (torch.randn(5, 7, generator=g) * 2).double().requires_grad_()
    teacher = (torch.randn(5, 7, generator=g) * 3).double()
    labels = torch.tensor([0, 3, 6, 3, 1])
    s_ref = student.detach().clone().requires_grad_()

    tckd, nckd = dkd_terms(student.double(), teacher, labels, temperature)
    ref_tckd, ref_nckd = reference(s_ref, teacher, labels, temperature)
    assert tckd.item() == pytest.approx(ref_tckd.item(), rel=1e-5)
    assert nckd.item() == pytest.approx(ref_nckd.item(), rel=1e-5)
    assert tckd.item() > 0 and nckd.item() > 0

    (1.0 * tckd + 8.0 * nckd).backward()
    (1.0 * ref_tckd + 8.0 * ref_nckd).backward()
    assert torch.allclose(student.grad.float(), s_ref.grad.float(), rtol=1e-4, atol=1e-6)


def test_dkd_warms_up_over_a_share_of_the_epochs_and_reads_only_teacher_logits():
    cls = get_method("dkd")
    assert cls.teacher_outputs == ("logits",) and not cls.student_features
    loss = DKDLossConfig()
    assert (loss.dkd_alpha, loss.dkd_beta, loss.dkd_temperature, loss.dkd_warmup) == (1.0, 8.0, 4.0, 20 / 240)
    method = cls(loss, 8, None, num_train=10, batch_size=4)
    g = torch.Generator().manual_seed(0)
    logits, t_logits, y = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3])
    full = sum(w * v for w, v in zip((1.0, 8.0), dkd_terms(logits, t_logits, y, 4.0)))

    def term(epoch):
        inputs = StepInputs(logits, y, None, None, logits, None, t_logits, None, epoch, 240, None)
        return method.step(inputs)["dkd"]

    assert term(1).item() == pytest.approx(full.item() / 20)
    assert term(10).item() == pytest.approx(full.item() / 2)
    assert term(20).item() == pytest.approx(full.item()) and term(200).item() == pytest.approx(full.item())
    off = DKDLossConfig(dkd_weight=0.0)
    assert cls.loss_terms(off) == () and not cls.needs_teacher(off)


def test_dkd_without_ce_trains_and_reports_its_term(tiny_data):
    cfg = trial_config({"method": "dkd", "student": "resnet8", "device": "cpu", "max_steps_per_epoch": 2,
                        "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4,
                                 "val_fraction": 0.2},
                        "optim": {"epochs": 2, "batch_size": 16}, "loss": {"ce_weight": 0.0}}, {}, 0)
    from icd_tune.method.models import create_model

    trainer = Trainer(cfg, tiny_data, create_model("resnet8", 4).eval())
    assert trainer.weights == {"ce": 0.0, "kd": 0.0, "dkd": 1.0}
    metrics = trainer.run_epoch()
    assert math.isfinite(metrics["train/loss_dkd"]) and metrics["train/loss"] == pytest.approx(metrics["train/loss_dkd"])
