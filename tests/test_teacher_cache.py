import copy
import dataclasses
import pickle
import shutil

import pytest
import torch

from icd_tune.method.config import DataConfig, TrialConfig
from icd_tune.method.data import NUM_VARIANTS, Normalizer, augment, load_data
from icd_tune.method.models import create_model
from icd_tune.method.output_cache import (CacheInvalidError, build_cache, build_cost_teacher_epochs, cache_key,
                                         cache_size_bytes, get_or_build_cache, header_path, open_cache)
from icd_tune.method.teacher_outputs import CachedTeacher, decide_cache
from icd_tune.method.train import Trainer


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(name="synthetic", num_train=40, num_test=8, num_classes=4, val_fraction=0.0))


@pytest.fixture(scope="module")
def small(data):
    # Six images keep the rebuild tests to a second each; same identity, different bytes.
    return dataclasses.replace(data, train_x=data.train_x[:6].clone(), train_y=data.train_y[:6].clone())


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("resnet8", 4).eval()


@pytest.fixture(scope="module")
def fp32_cache(data, teacher, tmp_path_factory):
    return get_or_build_cache(teacher, data, tmp_path_factory.mktemp("fp32"), "float32", "cpu", log=lambda m: None,
                              progress=False)


@pytest.fixture(scope="module")
def fp16_dir(small, teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16")
    get_or_build_cache(teacher, small, root, "float16", "cpu", log=lambda m: None, progress=False)
    return root


def live(teacher, data, index, variant):
    x = Normalizer(data.mean, data.std, "cpu")(augment(data.train_x[index], variant))
    with torch.no_grad():
        return teacher(x, with_features=True)


def pairs_for(images, num_random, num_train, seed=0):
    """All 162 variants of ``images`` followed by random (index, variant) pairs."""
    g = torch.Generator().manual_seed(seed)
    index = torch.cat([torch.full((NUM_VARIANTS,), i) for i in images] + [torch.randint(0, num_train, (num_random,), generator=g)])
    variant = torch.cat([torch.arange(NUM_VARIANTS)] * len(images) + [torch.randint(0, NUM_VARIANTS, (num_random,), generator=g)])
    return index, variant


def test_fp32_cache_matches_live_teacher(data, teacher, fp32_cache):
    cached = CachedTeacher(fp32_cache)
    assert cached.feature_dim == 64 and fp32_cache.header["shape"] == [40, NUM_VARIANTS, 64 + 4]
    index, variant = pairs_for([0, 17, 39], 64, data.num_train)
    for lo in range(0, index.shape[0], 100):  # batches unlike the build's, so batch composition must not matter
        idx, var = index[lo:lo + 100], variant[lo:lo + 100]
        t_logits, t_feats = live(teacher, data, idx, var)
        c_logits, c_feats = cached(torch.empty(idx.shape[0], 3, 32, 32), idx, var)
        assert c_logits.dtype == torch.float32 and c_logits.shape == t_logits.shape
        assert t_feats.abs().max() > 0.1
        torch.testing.assert_close(c_logits, t_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(c_feats, t_feats, rtol=0, atol=1e-5)


def test_fp16_cache_matches_within_half_precision(small, teacher, fp16_dir):
    cache = get_or_build_cache(teacher, small, fp16_dir, "float16", "cpu", log=lambda m: None, progress=False)
    assert cache.dtype == "float16" and cache.rows.dtype.name == "float16"
    index, variant = pairs_for([0, 5], 40, small.num_train)
    t_logits, t_feats = live(teacher, small, index, variant)
    c_logits, c_feats = CachedTeacher(cache)(None, index, variant)
    for c, t in ((c_logits, t_logits), (c_feats, t_feats)):
        torch.testing.assert_close(c, t, rtol=1e-3, atol=1e-3 * float(t.abs().max()))


def trial_config(source):
    return TrialConfig.from_dict({
        "student": "resnet8",
        "data": {"name": "synthetic", "num_train": 40, "num_test": 8, "num_classes": 4, "val_fraction": 0.0},
        "optim": {"epochs": 1, "batch_size": 8, "lr": 0.05},
        "loss": {"kd_weight": 1.0, "contrastive_weight": 1.0, "invariance_weight": 0.5, "feat_dim": 16,
                 "negatives": {"source": source, "count": 16}},
        "max_steps_per_epoch": 3,
        "device": "cpu",
    })


@pytest.mark.parametrize("source", ["batch", "memory"])
def test_trial_with_cache_matches_live_teacher(data, teacher, fp32_cache, source):
    cfg = trial_config(source)
    with_live = Trainer(cfg, data, teacher).fit()
    # No teacher model at all: the cache alone must be enough to run the trial.
    with_cache = Trainer(cfg, data, None, teacher_outputs=CachedTeacher(fp32_cache)).fit()
    terms = ["train/loss_ce", "train/loss_kd", "train/loss_contrastive", "train/loss_invariance", "train/loss"]
    for name in terms:
        assert with_cache[name] == pytest.approx(with_live[name], rel=1e-4), name
    assert with_cache["test/acc1"] == with_live["test/acc1"]


def test_key_covers_weights_data_and_dtype(data, small, teacher):
    base = cache_key(teacher, data, "float16")
    assert cache_key(teacher, data, "float16") == base
    assert cache_key(teacher, data, "float32") != base
    assert cache_key(teacher, small, "float16") != base
    one_pixel = dataclasses.replace(data, train_x=data.train_x.clone())
    one_pixel.train_x[3, 1, 2, 2] ^= 1
    assert one_pixel.identity == data.identity and cache_key(teacher, one_pixel, "float16") != base
    relabelled = dataclasses.replace(data, train_y=data.train_y.clone())
    relabelled.train_y[0] = (relabelled.train_y[0] + 1) % 4
    assert cache_key(teacher, relabelled, "float16") != base
    renormalised = dataclasses.replace(data, mean=(0.5, 0.5, 0.5))
    assert cache_key(teacher, renormalised, "float16") != base


def test_changed_teacher_weights_build_a_new_cache(small, teacher, tmp_path):
    messages = []
    first = get_or_build_cache(teacher, small, tmp_path, "float32", "cpu", log=messages.append, progress=False)
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert cache_key(changed, small, "float32") != first.key
    second = get_or_build_cache(changed, small, tmp_path, "float32", "cpu", log=messages.append, progress=False)
    assert second.path != first.path and first.path.is_file()
    assert [m.split(" ")[2] for m in messages if m.startswith("teacher cache: buil")] == ["building", "built"] * 2
    # The old file, asked for under the new key, is refused rather than used.
    with pytest.raises(CacheInvalidError, match="built for key"):
        open_cache(first.path, second.key)
    index, variant = torch.tensor([0, 1, 2]), torch.tensor([0, 80, 161])
    torch.testing.assert_close(CachedTeacher(second)(None, index, variant)[0], live(changed, small, index, variant)[0],
                               rtol=0, atol=1e-5)
    # Unchanged weights reuse the first file.
    messages.clear()
    again = get_or_build_cache(teacher, small, tmp_path, "float32", "cpu", log=messages.append, progress=False)
    assert again.path == first.path and messages[0].startswith("teacher cache: reusing")


def damage_flip(path):
    blob = bytearray(path.read_bytes())
    middle = len(blob) // 2
    for i in range(middle, middle + 3):
        blob[i] ^= 0x5A
    path.write_bytes(bytes(blob))


def damage_truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)


def damage_header(path):
    header_path(path).unlink()


@pytest.mark.parametrize("damage, reason", [(damage_flip, "corrupt"), (damage_truncate, "truncated"),
                                            (damage_header, "never finished")])
def test_damaged_cache_is_refused_and_rebuilt(small, teacher, fp16_dir, tmp_path, damage, reason):
    root = tmp_path / "cache"
    shutil.copytree(fp16_dir, root)
    key = cache_key(teacher, small, "float16")
    good = open_cache(next(root.glob("*.bin")), key)
    expected = good.lookup(range(6), [7] * 6).copy()
    del good
    path = next(root.glob("*.bin"))
    damage(path)
    with pytest.raises(CacheInvalidError, match=reason):
        open_cache(path, key)
    messages = []
    rebuilt = get_or_build_cache(teacher, small, root, "float16", "cpu", log=messages.append, progress=False)
    assert messages[0].startswith("teacher cache: rebuilding") and reason in messages[0]
    assert rebuilt.path == path and not list(path.parent.glob("*.tmp"))
    assert (rebuilt.lookup(range(6), [7] * 6) == expected).all()
    open_cache(path, key)  # valid again


def test_build_reports_progress_and_writes_header(small, teacher, tmp_path, capsys):
    path = build_cache(teacher, small, tmp_path / "outputs.bin", dtype="float16", device="cpu", batch_size=300)
    err = capsys.readouterr().err
    assert "100.0%" in err and "teacher-epochs" in err and "images/s" in err
    cache = open_cache(path, cache_key(teacher, small, "float16"))
    assert cache.header["complete"] is True and cache.header["checksum"]["algorithm"] == "sha256"
    assert path.stat().st_size == cache_size_bytes(6, 64, 4, "float16") == cache.nbytes
    assert teacher.training is False and next(teacher.parameters()).device.type == "cpu"


def test_decide_cache_and_sizes():
    cifar = cache_size_bytes(45000, 256, 100, "float16")
    assert cifar == 45000 * 162 * (256 + 100) * 2
    assert cache_size_bytes(45000, 256, 100, "float32") == 2 * cifar
    assert build_cost_teacher_epochs() == 162

    assert decide_cache("off", True, 1, 8.0)[0] is False
    on, reason = decide_cache("on", False, cifar, 1.0)
    assert on and "teacher.cache: on" in reason
    on, reason = decide_cache("auto", True, cifar, 8.0)
    assert on and "fits" in reason
    on, reason = decide_cache("auto", True, cifar, 4.0)
    assert not on and reason == "cache off: 4.8 GiB exceeds the 4.0 GiB budget (teacher.cache_memory_budget_gb)"
    on, reason = decide_cache("auto", False, 1000, 8.0)
    assert not on and "augmentation is off" in reason
    with pytest.raises(ValueError, match="off, on or auto"):
        decide_cache("sometimes", True, 1, 8.0)


def test_cached_teacher_pickles_and_stays_eval(data, fp32_cache, tmp_path):
    cached = CachedTeacher(fp32_cache)
    assert list(cached.parameters()) == [] and list(cached.buffers()) == [] and cached.state_dict() == {}
    cached.train()
    assert cached.training is False
    index, variant = torch.tensor([3, 9, 3, 39]), torch.tensor([0, 161, 80, 17])
    before = cached(None, index, variant)

    blob = pickle.dumps(cached)
    assert len(blob) < 10_000  # path and header, not the array
    restored = pickle.loads(blob)
    assert restored.cache._rows is None and restored.feature_dim == 64
    after = restored(None, index, variant)
    assert all(torch.equal(a, b) for a, b in zip(before, after))

    with pytest.raises(IndexError, match="variant out of range"):
        cached(None, torch.tensor([0]), torch.tensor([NUM_VARIANTS]))

    # A worker whose file was truncated after pickling refuses it at first use.
    copy_dir = tmp_path / "copy"
    shutil.copytree(fp32_cache.path.parent, copy_dir)
    moved = open_cache(copy_dir / fp32_cache.path.name, fp32_cache.key)
    blob = pickle.dumps(CachedTeacher(moved))
    del moved
    damage_truncate(copy_dir / fp32_cache.path.name)
    with pytest.raises(CacheInvalidError, match="truncated"):
        pickle.loads(blob)(None, index, variant)
