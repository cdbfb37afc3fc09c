"""Every network builds without weights, exposes its features, and grows without changing old predictions."""
import pytest
import torch

from models import ARCHITECTURES, TORCHVISION_NETS, build_segmenter
from models.imagenet import IMAGENET_NETS


# torchvision's networks (every head, pretrained weights): tests/test_bases.py
@pytest.mark.parametrize("arch", sorted(set(ARCHITECTURES) - set(TORCHVISION_NETS)))
def test_build_shapes_and_growth_keeps_old_predictions(arch):
    if arch in IMAGENET_NETS:
        pytest.importorskip("timm", reason="the ImageNet networks need timm (requirements.txt)")
    torch.manual_seed(0)
    model = build_segmenter(arch=arch, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, features = model.forward_features(x)
        full = model(x)
    assert features.shape[:2] == (2, model.feature_channels)
    assert logits.shape[-2:] == features.shape[-2:]
    assert full.shape == (2, 4, 64, 64) and torch.isfinite(full).all()
    with torch.no_grad():   # at the head's own resolution: what decode gives, unpooled
        at_head, _ = model.forward_features(x, head_resolution=True)
        torch.testing.assert_close(at_head, model.decode(model.encode(x)))
    if model.detail_key is not None:   # a higher-resolution map for the localizer, as its docstring says
        detail = model.encode(x)[model.detail_key]
        assert detail.shape[1] == model.detail_channels and detail.shape[-1] > features.shape[-1]

    model.grow(2, mib_init=True)
    with torch.no_grad():
        grown, _ = model.forward_features(x)
    assert model.num_classes == 6 and model.config["num_classes"] == 6
    # old-class logits unchanged to float tolerance
    torch.testing.assert_close(grown[:, 1:4], logits[:, 1:4], rtol=1e-5, atol=1e-5)
    # under a softmax, old-class probabilities unchanged; background mass shared with the new classes
    before, after = logits.softmax(1), grown.softmax(1)
    torch.testing.assert_close(after[:, 1:4], before[:, 1:4], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(after[:, [0, 4, 5]].sum(1), before[:, 0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(after[:, 4], after[:, 0])


def test_old_targets_at_the_head_resolution_change_only_a_head_that_decodes_finer():
    """``old_at_head_resolution`` (on by default) gives the very same tensor where the head decodes at the features'
    stride (tiny: the world and the demo), and the stride-8 map instead of a stride-16 pooling for LR-ASPP."""
    x = torch.randn(1, 3, 64, 64)
    tiny = build_segmenter(arch="tiny", num_classes=3).eval()
    with torch.no_grad():
        pooled, _ = tiny.forward_features(x)
        at_head, _ = tiny.forward_features(x, head_resolution=True)
    assert torch.equal(pooled, at_head)
    pytest.importorskip("timm", reason="the ImageNet networks need timm (requirements.txt)")
    lite = build_segmenter(arch="efficientnet_lite0", num_classes=3).eval()
    with torch.no_grad():
        pooled, features = lite.forward_features(x)
        at_head, _ = lite.forward_features(x, head_resolution=True)
    assert pooled.shape[-2:] == features.shape[-2:] == (4, 4) and at_head.shape[-2:] == (8, 8)


def test_growth_without_mib_keeps_old_logits():
    model = build_segmenter(arch="tiny", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before, _ = model.forward_features(x)
        model.grow(1, mib_init=False)
        after, _ = model.forward_features(x)
    torch.testing.assert_close(after[:, :3], before)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_segmenter(arch="nope", num_classes=3)
    with pytest.raises(ValueError, match="at least one"):
        build_segmenter(arch="tiny", num_classes=3).grow(0)


def test_probabilities_follow_the_training_activation():
    logits = torch.tensor([[[[2.0]], [[1.0]]]])
    sig = build_segmenter(arch="tiny", num_classes=2, width=8)
    soft = build_segmenter(arch="tiny", num_classes=2, width=8, activation="softmax")
    torch.testing.assert_close(sig.probabilities(logits), torch.sigmoid(logits))
    torch.testing.assert_close(soft.probabilities(logits), logits.softmax(1))
    assert soft.config["activation"] == "softmax"
    with pytest.raises(ValueError, match="activation"):
        build_segmenter(arch="tiny", num_classes=2, activation="relu")
