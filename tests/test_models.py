"""Model zoo: exact RepDistiller parameter counts, feature widths and key names.

Parameter counts and key names are what make RepDistiller teacher checkpoints
load with ``strict=True``, so they are pinned literally here.
"""

import pytest
import torch

from icd_tune.method.models import MODEL_NAMES, create_model, feature_dim

NUM_CLASSES = 100

# name -> (parameter count for 100 classes, pooled feature width)
EXPECTED = {
    "resnet8": (83_892, 64),
    "resnet14": (181_108, 64),
    "resnet20": (278_324, 64),
    "resnet32": (472_756, 64),
    "resnet44": (667_188, 64),
    "resnet56": (861_620, 64),
    "resnet110": (1_736_564, 64),
    "resnet8x4": (1_233_540, 256),
    "resnet32x4": (7_433_860, 256),
    "ResNet50": (23_705_252, 2048),
    "wrn_16_1": (180_916, 64),
    "wrn_16_2": (703_284, 128),
    "wrn_40_1": (569_780, 64),
    "wrn_40_2": (2_255_156, 128),
    "vgg8": (3_965_028, 512),
    "vgg11": (9_277_284, 512),
    "vgg13": (9_462_180, 512),
    "vgg16": (14_774_436, 512),
    "vgg19": (20_086_692, 512),
    "MobileNetV2": (812_836, 1280),
    "ShuffleV1": (949_258, 960),
    "ShuffleV2": (1_355_528, 1024),
}

# Only forward a single sample through the heavy nets to keep the suite fast.
BIG = {"ResNet50", "vgg16", "vgg19", "resnet32x4"}

# (key, shape) pairs from the RepDistiller zoo's state dicts.
REFERENCE_KEYS = {
    "resnet8x4": [
        ("conv1.weight", (32, 3, 3, 3)),
        ("bn1.running_mean", (32,)),
        ("layer1.0.conv1.weight", (64, 32, 3, 3)),
        ("layer1.0.downsample.0.weight", (64, 32, 1, 1)),
        ("layer1.0.downsample.1.running_var", (64,)),
        ("layer3.0.bn2.num_batches_tracked", ()),
        ("fc.weight", (100, 256)),
        ("fc.bias", (100,)),
    ],
    "resnet32x4": [
        ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("layer3.4.conv2.weight", (256, 256, 3, 3)),
        ("fc.weight", (100, 256)),
    ],
    "wrn_40_2": [
        ("conv1.weight", (16, 3, 3, 3)),
        ("block1.layer.0.bn1.weight", (16,)),
        ("block1.layer.0.conv1.weight", (32, 16, 3, 3)),
        ("block1.layer.0.convShortcut.weight", (32, 16, 1, 1)),
        ("block3.layer.5.bn2.running_var", (128,)),
        ("bn1.weight", (128,)),
        ("fc.weight", (100, 128)),
    ],
    "vgg13": [
        ("block0.0.weight", (64, 3, 3, 3)),
        ("block0.0.bias", (64,)),
        ("block0.1.running_mean", (64,)),
        ("block0.3.weight", (64, 64, 3, 3)),
        ("block0.4.weight", (64,)),
        ("block4.3.weight", (512, 512, 3, 3)),
        ("classifier.weight", (100, 512)),
    ],
    "MobileNetV2": [
        ("conv1.0.weight", (16, 3, 3, 3)),
        ("conv1.1.weight", (16,)),
        ("blocks.0.0.conv.0.weight", (16, 16, 1, 1)),
        ("blocks.1.0.conv.3.weight", (48, 1, 3, 3)),
        ("blocks.6.0.conv.7.running_var", (160,)),
        ("conv2.0.weight", (1280, 160, 1, 1)),
        ("classifier.0.weight", (100, 1280)),
    ],
    "ShuffleV1": [
        ("conv1.weight", (24, 3, 1, 1)),
        ("bn1.weight", (24,)),
        ("layer1.0.conv1.weight", (54, 24, 1, 1)),
        ("layer1.0.conv3.weight", (216, 18, 1, 1)),
        ("layer3.3.bn3.running_mean", (960,)),
        ("linear.weight", (100, 960)),
    ],
}

# Keys that must NOT exist (the reference has no module there).
ABSENT_KEYS = {
    "resnet8x4": ["layer1.1.downsample.0.weight", "linear.weight"],
    "wrn_40_2": ["block1.layer.1.convShortcut.weight", "block3.layer.0.downsample.0.weight"],
    "vgg13": ["block0.2.weight", "block0.5.weight", "classifier.0.weight"],
    "MobileNetV2": ["classifier.weight", "avgpool.weight"],
}


def test_names_cover_expectations():
    assert MODEL_NAMES == tuple(EXPECTED)
    assert len(MODEL_NAMES) == 22


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_params_and_forward(name):
    n_params, width = EXPECTED[name]
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES).eval()
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert feature_dim(name) == width
    assert model.feature_dim == width

    batch = 1 if name in BIG else 2
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        logits, feats = model(x, with_features=True)
        plain = model(x)
    assert logits.shape == (batch, NUM_CLASSES)
    assert feats.shape == (batch, width)
    assert torch.allclose(plain, logits)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_reference_state_dict_keys(name):
    sd = create_model(name, NUM_CLASSES).state_dict()
    for key, shape in REFERENCE_KEYS[name]:
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    for key in ABSENT_KEYS.get(name, []):
        assert key not in sd, key


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "ShuffleV2"])
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    src = create_model(name, NUM_CLASSES)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": src.state_dict()}, path)

    dst = create_model(name, NUM_CLASSES)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    dst.load_state_dict(ckpt["model"], strict=True)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))


def test_channels_last_matches_contiguous():
    model = create_model("ShuffleV1", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.allclose(ref, out, atol=1e-5)


def test_torch_compile_fullgraph():
    model = create_model("ShuffleV2", 10).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        ref_logits, ref_feats = model(x, with_features=True)
        logits, feats = compiled(x, with_features=True)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert torch.allclose(feats, ref_feats, atol=1e-5)


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError) as exc:
        create_model("resnet32x8", NUM_CLASSES)
    msg = str(exc.value)
    assert "'resnet32x8'" in msg
    assert "did you mean 'resnet32x4'" in msg
    assert "allowed:" in msg and "ShuffleV2" in msg

    with pytest.raises(ValueError, match="unknown model 'zzz'"):
        feature_dim("zzz")
