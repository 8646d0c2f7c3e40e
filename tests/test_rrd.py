"""RRD's relational term against a loop-by-loop reference, its FIFO queue as state, and a short training run."""

import math

import pytest
import torch
import torch.nn.functional as F

from icd_tune.method.distillers import get_method
from icd_tune.method.distillers.base import StepInputs
from icd_tune.method.distillers.rrd import RRDLossConfig

B, D_S, D_T = 3, 6, 5


def reference(method, f_s, f_t, queue):
    """Per anchor: the teacher's softmax over the queue against the student's log-softmax, one key at a time."""
    t_s, t_t = method.loss.rrd_student_temperature, method.loss.rrd_teacher_temperature
    total = 0.0
    for i in range(B):
        z_s = F.normalize(method.embed_s(f_s[i]), dim=0)
        z_t = F.normalize(method.embed_t(f_t[i]), dim=0).detach()
        s = [torch.dot(z_s, q) / t_s for q in queue]
        t = [torch.dot(z_t, q) / t_t for q in queue]
        norm_s = torch.log(sum(torch.exp(v) for v in s))
        norm_t = sum(torch.exp(v) for v in t)
        total = total - sum(torch.exp(tv) / norm_t * (sv - norm_s) for sv, tv in zip(s, t))
    return total / B


def test_rrd_term_gradient_and_queue_match_the_loop_reference():
    cfg = RRDLossConfig(rrd_feat_dim=4, rrd_queue=8)
    method = get_method("rrd")(cfg, D_S, D_T, num_train=20, batch_size=B).double()
    assert cfg.rrd_student_temperature == 0.1 and cfg.rrd_teacher_temperature == 0.02  # the script's defaults
    g = torch.Generator().manual_seed(2)
    f_s, f_t = torch.randn(B, D_S, generator=g).double(), torch.randn(B, D_T, generator=g).double()
    before = method.queue.clone()
    # The batch's teacher embeddings take the oldest rows first, then the similarities are taken.
    z_t = F.normalize(method.embed_t(f_t), dim=1).detach()
    queue = torch.cat([z_t, before[B:]])
    ref = reference(method, f_s, f_t, queue)
    ref.backward()
    ref_grads = [None if p.grad is None else p.grad.clone() for p in method.parameters()]
    method.zero_grad()

    term = method.step(StepInputs(f_s, None, None, None, None, f_s, None, f_t, 1, 10, None))["rrd"]
    assert term.item() == pytest.approx(ref.item(), rel=1e-6)
    term.backward()
    for got, want in zip((p.grad for p in method.parameters()), ref_grads):
        assert (got is None) == (want is None) and (got is None or torch.allclose(got, want, rtol=1e-6, atol=1e-9))
    assert method.embed_t.weight.grad is None  # the teacher side is detached, as in the reference
    assert torch.allclose(method.queue, queue) and int(method.queue_ptr) == B

    for _ in range(2):  # 3 + 3 + 3 rows into a queue of 8: the pointer wraps
        method.step(StepInputs(f_s, None, None, None, None, f_s, None, f_t, 1, 10, None))
    assert int(method.queue_ptr) == (3 * B) % 8
    assert {"queue", "queue_ptr"} <= set(method.state_dict())


def test_rrd_trains_in_the_trainer_and_weighs_nothing_when_off(tiny_data):
    from icd_tune.method.models import create_model
    from icd_tune.method.train import Trainer
    from icd_tune.platform.study.trials import trial_config

    cfg = trial_config({"method": "rrd", "student": "resnet8", "device": "cpu", "max_steps_per_epoch": 2,
                        "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4,
                                 "val_fraction": 0.2},
                        "optim": {"epochs": 2, "batch_size": 16}, "loss": {"rrd_queue": 64, "rrd_feat_dim": 16}},
                       {}, 0)
    trainer = Trainer(cfg, tiny_data, create_model("resnet8", 4).eval())
    assert trainer.weights == {"ce": 1.0, "kd": 0.0, "rrd": 1.0}
    assert math.isfinite(trainer.run_epoch()["train/loss_rrd"])
    assert int(trainer.method.queue_ptr) == 32 % 64
    off = RRDLossConfig(rrd_weight=0.0)
    assert get_method("rrd").loss_terms(off) == () and not get_method("rrd").needs_teacher(off)
