import pytest
import torch
import torch.nn.functional as F

from icd_tune.method.config import DataConfig
from icd_tune.method.data import (NUM_VARIANTS, DataUnavailableError, Normalizer, TrainStream, augment, decode_variant,
                           encode_variant, load_data, train_size)


def reference_augment(img, oy, ox, flip):
    padded = F.pad(img, (4, 4, 4, 4))
    crop = padded[:, oy:oy + 32, ox:ox + 32]
    return crop.flip(-1) if flip else crop


def test_every_variant_matches_pad_crop_flip():
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    variants = torch.arange(NUM_VARIANTS)
    out = augment(img.expand(NUM_VARIANTS, -1, -1, -1).contiguous(), variants)
    seen = set()
    for v in range(NUM_VARIANTS):
        oy, ox, flip = (int(t) for t in decode_variant(torch.tensor(v)))
        assert encode_variant(oy, ox, flip) == v
        assert torch.equal(out[v], reference_augment(img, oy, ox, flip))
        seen.add((oy, ox, flip))
    assert len(seen) == 162  # 9 x 9 crop offsets x 2 flips


def test_digits_offline_split_is_deterministic():
    a = load_data(DataConfig(name="digits", val_fraction=0.1, split_seed=3))
    b = load_data(DataConfig(name="digits", val_fraction=0.1, split_seed=3))
    assert a.train_x.dtype == torch.uint8 and a.train_x.shape[1:] == (3, 32, 32)
    assert a.num_classes == 10
    assert a.num_train + a.val_x.shape[0] + a.test_x.shape[0] == 1797
    assert a.num_train == train_size(DataConfig(name="digits", val_fraction=0.1))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    c = load_data(DataConfig(name="digits", val_fraction=0.1, split_seed=4))
    assert not torch.equal(a.val_y, c.val_y)
    # The test split is fixed whatever the validation seed.
    assert torch.equal(a.test_x, c.test_x)


def test_synthetic_any_size_and_classes():
    d = load_data(DataConfig(name="synthetic", num_train=100, num_test=30, num_classes=7, val_fraction=0.2))
    assert d.num_train == 80 and d.val_x.shape[0] == 20 and d.test_x.shape[0] == 30
    assert int(d.train_y.max()) < 7 and d.num_classes == 7


def test_synthetic_noise_sets_how_far_images_stray_from_their_class():
    def spread(noise):
        d = load_data(DataConfig(name="synthetic", num_train=400, num_test=10, num_classes=2, val_fraction=0.0,
                                 synthetic_noise=noise))
        x = d.train_x.float()
        return sum(float(x[d.train_y == c].std(0).mean()) for c in (0, 1)) / 2, d.identity["synthetic_noise"]

    assert spread(0.0) == (0.0, 0.0)  # every image is its class prototype
    quiet, loud = spread(48.0), spread(160.0)
    assert 35 < quiet[0] < loud[0] and quiet[1] == 48.0 and loud[1] == 160.0
    with pytest.raises(Exception, match="synthetic_noise"):
        DataConfig(name="synthetic", synthetic_noise=-1.0).validate("data")


def test_cifar100_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError, match=r"not found in .*download is off.*Fix"):
        load_data(DataConfig(name="cifar100", root=str(tmp_path), download=False))


def test_cifar100_loads_an_existing_copy(tmp_path, monkeypatch):
    # A tiny file in torchvision's on-disk format: the real loading path, made locally.
    import pickle

    import numpy as np
    from torchvision.datasets import CIFAR100

    folder = tmp_path / CIFAR100.base_folder
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 20), ("test", 10)):
        blob = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [int(v) for v in rng.integers(0, 100, n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(blob, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    import torchvision.datasets.cifar as cifar_module

    # md5 checksums are for the real files; everything else is torchvision's own loading.
    monkeypatch.setattr(CIFAR100, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args, **kwargs: True)
    d = load_data(DataConfig(name="cifar100", root=str(tmp_path), download=False, val_fraction=0.1))
    assert d.num_classes == 100 and d.num_train == 18 and d.test_x.shape == (10, 3, 32, 32)


def test_stream_epoch_is_a_permutation_with_variants():
    d = load_data(DataConfig(name="synthetic", num_train=64, num_test=8, val_fraction=0.0))
    norm = Normalizer(d.mean, d.std, "cpu")
    stream = TrainStream(d.train_x, d.train_y, 16, torch.device("cpu"), torch.Generator().manual_seed(0), norm)
    batches = list(stream.epoch())
    assert len(batches) == 4
    idx = torch.cat([b[2] for b in batches])
    assert sorted(idx.tolist()) == list(range(64))
    for x, y, index, variant in batches:
        assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
        assert torch.equal(y, d.train_y[index])
        expected = norm(augment(d.train_x[index], variant))
        assert torch.equal(x, expected)
        assert int(variant.min()) >= 0 and int(variant.max()) < NUM_VARIANTS
