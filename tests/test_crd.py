"""CRD's NCE terms against a loop-by-loop reference on fixed inputs, its Z kept as state, its banks' update."""

import math

import pytest
import torch
import torch.nn.functional as F

from icd_tune.method.distillers import get_method
from icd_tune.method.distillers.base import StepInputs
from icd_tune.method.distillers.crd import CRDLossConfig
from icd_tune.method.losses import sample_excluding

N, B, D_S, D_T = 40, 4, 6, 5


def reference_crd(method, f_s, f_t, index, negatives, z=None):
    """Both NCE directions, one anchor and one key at a time; returns (loss, Z used)."""
    t, n = method.loss.crd_temperature, method.num_train
    v_s = [F.normalize(method.embed_s(f_s[i]), dim=0) for i in range(B)]
    v_t = [F.normalize(method.embed_t(f_t[i]), dim=0) for i in range(B)]
    raw = {"s": [], "t": []}
    for i in range(B):
        keys = [int(index[i])] + [int(k) for k in negatives]
        raw["s"].append([torch.exp(torch.dot(v_s[i], method.bank_t[k]) / t) for k in keys])
        raw["t"].append([torch.exp(torch.dot(v_t[i], method.bank_s[k]) / t) for k in keys])
    if z is None:  # estimated on the first batch: the mean score times the training-set size
        z = [sum(float(x.detach()) for row in raw[d] for x in row) / (B * (1 + len(negatives))) * n for d in ("s", "t")]
    k = len(negatives)
    total = 0.0
    for d, zd in zip(("s", "t"), z):
        for row in raw[d]:
            p = [x / zd for x in row]
            total = total - torch.log(p[0] / (p[0] + k / n + 1e-7))
            for x in p[1:]:
                total = total - torch.log((k / n) / (x + k / n + 1e-7))
    return total / B, z


def make(seed=0):
    cfg = CRDLossConfig(crd_feat_dim=3, crd_negatives=7, crd_temperature=0.5)
    return get_method("crd")(cfg, D_S, D_T, num_train=N, batch_size=B, seed=seed).double()


def test_crd_terms_gradients_and_z_match_the_loop_reference():
    method = make()
    g = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(B, D_S, generator=g).double(), torch.randn(B, D_T, generator=g).double()
    index = torch.tensor([3, 17, 8, 30])
    banks = (method.bank_s.clone(), method.bank_t.clone())
    negatives = sample_excluding(N, index, 7, torch.Generator().manual_seed(5))

    ref_loss, z = reference_crd(method, f_s, f_t, index, negatives)
    ref_loss.backward()
    ref_grads = [p.grad.clone() for p in method.parameters()]
    method.zero_grad()
    inputs = StepInputs(f_s, None, index, None, None, f_s, None, f_t, 1, 10, torch.Generator().manual_seed(5))
    term = method.step(inputs)["crd"]
    assert term.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    term.backward()
    for got, want in zip((p.grad for p in method.parameters()), ref_grads):
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)
    assert method.z.tolist() == pytest.approx(z, rel=1e-9) and bool(method.z_ready)

    # Each anchor's own row moved towards its embedding, with momentum 0.5, and renormalised; others untouched.
    v_s = F.normalize(method.embed_s(f_s), dim=1).detach()
    want = F.normalize(banks[0][index] * 0.5 + v_s * 0.5, dim=1)
    assert torch.allclose(method.bank_s[index], want)
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(method.bank_s[untouched], banks[0][untouched])

    # The second batch keeps the first batch's Z: the reference given that Z agrees again.
    index2 = torch.tensor([1, 2, 5, 9])
    negatives2 = sample_excluding(N, index2, 7, torch.Generator().manual_seed(6))
    ref2, _ = reference_crd(method, f_s, f_t, index2, negatives2, z=z)
    inputs2 = StepInputs(f_s, None, index2, None, None, f_s, None, f_t, 1, 10, torch.Generator().manual_seed(6))
    assert method.step(inputs2)["crd"].item() == pytest.approx(ref2.item(), rel=1e-6)


def test_crd_state_carries_z_and_both_banks_and_the_defaults_are_published():
    loss = CRDLossConfig()
    assert (loss.crd_weight, loss.crd_feat_dim, loss.crd_negatives, loss.crd_temperature, loss.crd_momentum) == (
        0.8, 128, 16384, 0.07, 0.5)
    method = make()
    assert {"bank_s", "bank_t", "z", "z_ready"} <= set(method.state_dict())
    bound = 1 / math.sqrt(3 / 3)
    assert float(make(seed=1).bank_s.abs().max()) <= bound
    cls = get_method("crd")
    assert cls.check_sizes(CRDLossConfig(crd_negatives=100), 40, 4)[1] == "loss.crd_negatives"
    assert cls.fit_to_sizes(CRDLossConfig(), 40, 4) == {"loss.crd_negatives": 36}
    assert cls.loss_terms(CRDLossConfig(crd_weight=0.0)) == () and not cls.needs_teacher(CRDLossConfig(crd_weight=0))


def test_crd_trains_with_kd_in_the_trainer(tiny_data):
    from icd_tune.method.models import create_model
    from icd_tune.method.train import Trainer
    from icd_tune.platform.study.trials import trial_config

    cfg = trial_config({"method": "crd", "student": "resnet8", "device": "cpu", "max_steps_per_epoch": 2,
                        "data": {"name": "synthetic", "num_train": 160, "num_test": 40, "num_classes": 4,
                                 "val_fraction": 0.2},
                        "optim": {"epochs": 2, "batch_size": 16},
                        "loss": {"kd_weight": 1.0, "crd_negatives": 64, "crd_feat_dim": 16}}, {}, 0)
    trainer = Trainer(cfg, tiny_data, create_model("resnet8", 4).eval())
    assert trainer.weights == {"ce": 1.0, "kd": 1.0, "crd": 0.8}
    first, second = trainer.run_epoch(), trainer.run_epoch()
    assert all(math.isfinite(m["train/loss_crd"]) for m in (first, second))
    state = trainer.state_dict()["method"]
    assert bool(state["z_ready"]) and state["bank_s"].shape == (128, 16)
