import math

import pytest
import torch
import torch.nn.functional as F

from icd_tune.method.config import NegativesConfig
from icd_tune.method.distillers.icd import ICDLossConfig
from icd_tune.method.losses import (ICDHead, check_negative_count, icd_terms, icd_terms_with_keys, kd_loss,
                             sample_excluding)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_icd_terms_hand_computed_two_samples():
    # z_s = [e1, e2], z_t = [e1, (e1+e2)/sqrt2]: L = s * [[1, a], [0, a]], a = 1/sqrt2.
    a = 1 / math.sqrt(2)
    z_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_t = torch.tensor([[1.0, 0.0], [a, a]])
    s = 2.0
    L = [[s * 1, s * a], [0.0, s * a]]

    def lse(xs):
        return math.log(sum(math.exp(x) for x in xs))

    contrastive = ((lse(L[0]) - L[0][0]) + (lse(L[1]) - L[1][1])) / 2
    P = [[math.exp(L[i][j] - lse(L[i])) for j in range(2)] for i in range(2)]
    cols = [[L[0][i], L[1][i]] for i in range(2)]
    Q = [[math.exp(cols[i][j] - lse(cols[i])) for j in range(2)] for i in range(2)]
    invariance = sum(sum(Q[i][j] * math.log(Q[i][j] / P[i][j]) for j in range(2)) for i in range(2)) / 2
    c, inv = icd_terms(z_s, z_t, s)
    assert c.item() == pytest.approx(contrastive, abs=1e-6)
    assert inv.item() == pytest.approx(invariance, abs=1e-6)
    # A bias shifts every logit equally: neither term may change.
    c_b, inv_b = icd_terms(z_s, z_t, s, 0.7)
    assert c_b.item() == pytest.approx(contrastive, abs=1e-6)
    assert inv_b.item() == pytest.approx(invariance, abs=1e-6)


def test_icd_terms_identical_embeddings():
    # z_s = z_t = orthonormal rows: L = s*I, contrastive = log(1 + (B-1) e^{-s}).
    B, s = 4, 3.0
    z = torch.eye(B)
    c, inv = icd_terms(z, z, s)
    assert c.item() == pytest.approx(math.log(1 + (B - 1) * math.exp(-s)), abs=1e-6)
    assert inv.item() == pytest.approx(0.0, abs=1e-7)


def test_invariance_zero_when_logits_symmetric():
    # z_t = z_s makes L = s * Z Z^T symmetric, so row and column distributions coincide.
    z = unit(8, 16)
    _, inv = icd_terms(z, z, 5.0, -0.3)
    assert abs(inv.item()) < 1e-6
    _, inv_asym = icd_terms(z, unit(8, 16, seed=1), 5.0)
    assert inv_asym.item() > 1e-3


def test_kd_matches_definition():
    s, t, T = torch.randn(5, 7), torch.randn(5, 7), 4.0
    p_t = F.softmax(t / T, 1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_memory_formulation_with_batch_keys_equals_batch_mode():
    B, D, s, b = 6, 12, 7.0, 0.4
    z_s, z_t = unit(B, D, seed=2), unit(B, D, seed=3)
    others = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, B)]) for i in range(B)])
    c_mem, inv_mem = icd_terms_with_keys(z_s, z_t, z_t[others], z_s[others], s, b)
    c_batch, inv_batch = icd_terms(z_s, z_t, s, b)
    assert c_mem.item() == pytest.approx(c_batch.item(), abs=1e-6)
    assert inv_mem.item() == pytest.approx(inv_batch.item(), abs=1e-6)


def test_gradients_reach_heads_theta_and_bias():
    for source in ("batch", "memory"):
        cfg = ICDLossConfig(feat_dim=8, negatives=NegativesConfig(source=source, count=10))
        head = ICDHead(5, 7, cfg, num_train=40, batch_size=4)
        g = torch.Generator().manual_seed(0)
        f_s, f_t = torch.randn(4, 5, generator=g), torch.randn(4, 7, generator=g)
        index = torch.tensor([3, 17, 0, 39])
        c, inv = head(f_s, f_t, index, torch.Generator().manual_seed(0))
        (c + inv).backward()
        for name, p in [("proj_s", head.proj_s.weight), ("proj_t", head.proj_t.weight), ("theta", head.theta)]:
            assert p.grad is not None and p.grad.abs().sum() > 0, (source, name)
        # The bias is in the graph, but both terms are softmax-based and a shared shift of every
        # logit leaves them unchanged, so its gradient is zero up to rounding.
        assert head.bias.grad is not None, source
        assert abs(head.bias.grad.item()) < 1e-5, source


def test_fixed_temperature_and_learnable_cap():
    fixed = ICDHead(4, 4, ICDLossConfig(feat_dim=4, temperature=0.2))
    assert fixed.logit_scale().item() == pytest.approx(5.0, rel=1e-6)
    assert not any(n in dict(fixed.named_parameters()) for n in ("theta", "bias"))
    learn = ICDHead(4, 4, ICDLossConfig(feat_dim=4))
    assert learn.logit_scale().item() == pytest.approx(math.e, rel=1e-6)
    with torch.no_grad():
        learn.theta.fill_(5.0)
    assert learn.logit_scale().item() == pytest.approx(10.0)


def test_frozen_scale_is_the_learnable_start_untrained_and_temperature_one_over_e():
    frozen = ICDHead(4, 4, ICDLossConfig(feat_dim=4, temperature="frozen"))
    assert frozen.logit_scale().item() == pytest.approx(math.e, rel=1e-6)
    assert not any(n in dict(frozen.named_parameters()) for n in ("theta", "bias"))
    same = ICDHead(4, 4, ICDLossConfig(feat_dim=4, temperature=0.36787944117144233))
    assert same.logit_scale().item() == pytest.approx(frozen.logit_scale().item(), rel=1e-6)
    # The value the docs quote, 0.36788, is the same scale to 1e-5.
    assert ICDHead(4, 4, ICDLossConfig(feat_dim=4, temperature=0.36788)).logit_scale().item() == pytest.approx(math.e, rel=1e-5)
    learn = ICDHead(4, 4, ICDLossConfig(feat_dim=4))
    z = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    assert all(torch.equal(a, b) for a, b in zip(icd_terms(z, z.flip(0), frozen.logit_scale(), frozen.bias),
                                                 icd_terms(z, z.flip(0), learn.logit_scale(), learn.bias)))


def test_negatives_never_in_batch_and_distinct():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch = torch.randperm(100, generator=g)[:16]
        neg = sample_excluding(100, batch, 84, g)
        assert len(set(neg.tolist())) == 84
        assert not set(neg.tolist()) & set(batch.tolist())
        assert neg.min() >= 0 and neg.max() < 100


def test_memory_bank_updates_only_batch_rows():
    cfg = ICDLossConfig(feat_dim=4, negatives=NegativesConfig(source="memory", count=8, momentum=0.5))
    head = ICDHead(3, 3, cfg, num_train=20, batch_size=4)
    before = head.bank_s.clone()
    index = torch.tensor([1, 5, 9, 13])
    head(torch.randn(4, 3), torch.randn(4, 3), index, torch.Generator().manual_seed(1))
    changed = (head.bank_s != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [1, 5, 9, 13]
    assert torch.allclose(head.bank_s.norm(dim=1), torch.ones(20), atol=1e-5)


def test_too_many_negatives_is_a_clear_error():
    with pytest.raises(ValueError, match=r"negatives.count 100 is more than the data allows.*at most 96"):
        check_negative_count(100, 100, 4)
    cfg = ICDLossConfig(feat_dim=4, negatives=NegativesConfig(source="memory", count=100))
    with pytest.raises(ValueError, match="more than the data allows"):
        ICDHead(3, 3, cfg, num_train=100, batch_size=4)


@pytest.mark.parametrize("source", ["batch", "memory"])
def test_head_terms_stay_fp32_under_bf16_autocast(source):
    # The projections may run in bf16; the logits, softmaxes and KL must not. Given the
    # head's own (autocast) embeddings, its terms equal the fp32 terms of those embeddings.
    cfg = ICDLossConfig(feat_dim=32, negatives=NegativesConfig(source=source, count=40))
    torch.manual_seed(0)
    head = ICDHead(48, 64, cfg, num_train=128, batch_size=16)
    f_s, f_t = torch.randn(16, 48), torch.randn(16, 64)
    index = torch.arange(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_s, z_t = head.embed(f_s, f_t)
        banks = (head.bank_s.clone(), head.bank_t.clone()) if source == "memory" else None
        terms = head(f_s, f_t, index, torch.Generator().manual_seed(3))
    assert all(t.dtype == torch.float32 for t in terms)
    if source == "batch":
        expected = icd_terms(z_s, z_t, head.logit_scale(), head.bias)
    else:
        negatives = sample_excluding(128, index, 40, torch.Generator().manual_seed(3))
        expected = icd_terms_with_keys(z_s, z_t, banks[1][negatives], banks[0][negatives], head.logit_scale(), head.bias)
    for got, want in zip(terms, expected):
        assert got.item() == pytest.approx(want.item(), abs=1e-5)
    # And the functions themselves ignore an enclosing autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = icd_terms(z_s, z_t, 2.7)
    outside = icd_terms(z_s, z_t, 2.7)
    assert inside[0].item() == pytest.approx(outside[0].item(), abs=1e-6)
    assert inside[1].item() == pytest.approx(outside[1].item(), abs=1e-6)
