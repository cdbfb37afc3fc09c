"""Each equation against values computed by hand on tiny tensors."""
import math

import pytest
import torch

from wilss import losses as L

LN3 = math.log(3.0)


def two_pixel_scores() -> torch.Tensor:
    """1 image, 2 classes, 1x2 pixels. Pixel a: z = (0, ln 3) -> m = (1/4, 3/4); pixel b: z = (0, 0) -> m = (1/2, 1/2)."""
    return torch.tensor([[[[0.0, 0.0]], [[LN3, 0.0]]]])


def test_aggregation_eq1_eq2_by_hand():
    y = L.aggregate_scores(two_pixel_scores(), gamma=3.0, lam=0.01, eps=0.0)
    # class 1: nGWP = (3/4 ln3 + 1/2 * 0) / (3/4 + 1/2); mean mass 5/8
    ngwp1 = (0.75 * LN3) / 1.25
    foc1 = (1 - 5 / 8) ** 3 * math.log(0.01 + 5 / 8)
    # class 0: nGWP = 0 (z = 0 everywhere); mean mass 3/8
    foc0 = (1 - 3 / 8) ** 3 * math.log(0.01 + 3 / 8)
    assert y.shape == (1, 2)
    assert y[0, 1].item() == pytest.approx(ngwp1 + foc1, abs=1e-6)
    assert y[0, 0].item() == pytest.approx(foc0, abs=1e-6)


def test_aggregation_eps_of_reference_code():
    y = L.aggregate_scores(two_pixel_scores(), eps=1.0)
    ngwp1 = (0.75 * LN3) / (1.0 + 1.25)
    assert y[0, 1].item() == pytest.approx(ngwp1 + (3 / 8) ** 3 * math.log(0.01 + 5 / 8), abs=1e-6)


def bce(x: float, y: float) -> float:
    s = 1 / (1 + math.exp(-x))
    return -(y * math.log(s) + (1 - y) * math.log(1 - s))


def test_classification_loss_eq3_by_hand():
    logits = torch.tensor([[2.0, -1.0]])
    tags = torch.tensor([[1.0, 0.0]])
    assert L.classification_loss(logits, tags).item() == pytest.approx((bce(2, 1) + bce(-1, 0)) / 2, abs=1e-6)


def test_localization_loss_eq4_by_hand():
    z = torch.tensor([[[[1.0]], [[-2.0]]]])
    old = torch.tensor([[[[0.0]], [[3.0]]]])
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = (bce(1.0, s(0.0)) + bce(-2.0, s(3.0))) / 2
    assert L.localization_loss(z, torch.sigmoid(old)).item() == pytest.approx(expected, abs=1e-6)


def test_pseudo_label_eq5_to_eq7_by_hand():
    # 3 classes: background, one old, one new; one pixel with m = softmax(z) = (0.2, 0.3, 0.5)
    m = torch.tensor([0.2, 0.3, 0.5])
    z = m.log().view(1, 3, 1, 1)
    old = torch.sigmoid(torch.tensor([0.0, 1.0]).view(1, 2, 1, 1))  # 0.5, 0.7311
    target = L.pseudo_label(z, old, torch.tensor([[1.0]]), alpha=0.5)
    q = 0.5 * torch.tensor([0.0, 0.0, 1.0]) + 0.5 * m  # Eq. 6: (0.1, 0.15, 0.75)
    assert target[0, :, 0, 0].tolist() == pytest.approx([min(0.5, q[0].item()), 1 / (1 + math.exp(-1)), 0.75])
    # untagged new class gets 0; background still the min with the old model
    untagged = L.pseudo_label(z, old, torch.tensor([[0.0]]), alpha=0.5)
    assert untagged[0, 2, 0, 0].item() == 0.0
    # FT: no old model -> q itself
    assert L.pseudo_label(z, None, torch.tensor([[1.0]]))[0, :, 0, 0].tolist() == pytest.approx(q.tolist())


def test_segmentation_loss_eq8_sum_over_classes_mean_over_pixels():
    p = torch.tensor([[[[1.0, 0.0]], [[-1.0, 2.0]]]])
    t = torch.tensor([[[[1.0, 0.5]], [[0.0, 0.25]]]])
    pixel_a = bce(1.0, 1.0) + bce(-1.0, 0.0)
    pixel_b = bce(0.0, 0.5) + bce(2.0, 0.25)
    assert L.segmentation_loss(p, t).item() == pytest.approx((pixel_a + pixel_b) / 2, abs=1e-6)
    weights = torch.tensor([0.0])
    assert L.segmentation_loss(p, t, weights).item() == 0.0


def test_localized_weights_zero_when_a_tagged_class_wins_no_pixel():
    target = torch.zeros(2, 3, 1, 2)
    target[0, 2] = 1.0          # image 0: the new class wins both pixels
    target[1, 0] = 1.0          # image 1: background everywhere although the new class is tagged
    weights = L.localized_weights(target, torch.tensor([[1.0], [1.0]]))
    assert weights.tolist() == [1.0, 0.0]


def test_feature_distillation_is_mse():
    a, b = torch.zeros(1, 2, 1, 1), torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    assert L.feature_distillation(a, b).item() == pytest.approx(5.0)


def test_pixel_bce_one_hot_sum_over_classes_void_ignored():
    logits = torch.tensor([[[[2.0, 0.0]], [[-1.0, 1.0]]]])      # 2 classes, 1x2 pixels
    labels = torch.tensor([[[1, 255]]])
    expected = bce(2.0, 0.0) + bce(-1.0, 1.0)                     # only the first pixel counts
    assert L.pixel_bce(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_confident_presence_reads_old_tags_by_hand():
    # 1 image, 2 classes, 10 pixels: class 0 confident on 1 pixel (10 %), class 1 on none (0.69 < 0.7).
    probs = torch.zeros(1, 2, 1, 10)
    probs[0, 0, 0, 3] = 0.9
    probs[0, 1] = 0.69
    assert L.confident_presence(probs, threshold=0.7, min_fraction=0.1).tolist() == [[1.0, 0.0]]
    assert L.confident_presence(probs, threshold=0.7, min_fraction=0.11).tolist() == [[0.0, 0.0]]
    assert L.confident_presence(probs, threshold=0.6, min_fraction=0.0).tolist() == [[1.0, 1.0]]


def test_new_targets_capped_by_the_old_background_where_asked():
    # one pixel, background + 1 old + 1 new class; the localizer is sure of the new class (q_new = 1)
    z = torch.tensor([0.0, 0.0, 10.0]).view(1, 3, 1, 1)
    old_probs = torch.tensor([0.2, 0.9]).view(1, 2, 1, 1)   # the old model: 'old class', background 0.2
    tags = torch.ones(1, 1)
    plain = L.pseudo_label(z, old_probs, tags, alpha=0.5)
    capped = L.pseudo_label(z, old_probs, tags, alpha=0.5, new_on_old_background=True)
    assert plain[0, 2].item() > 0.99                      # Eq. 7: target_new = q_new
    assert capped[0, 2].item() == pytest.approx(0.2)      # min(q_new, sigmoid(o_bg))
    torch.testing.assert_close(capped[:, :2], plain[:, :2])   # background and old targets unchanged


def test_no_background_hands_the_old_background_to_the_tagged_new_classes_by_hand():
    # two pixels; channels background, one old class, two new classes (A, B); the localizer prefers A on pixel 1,
    # B on pixel 2, by e^1 : 1
    z = torch.tensor([[[[5.0, 5.0]], [[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]]])
    old_probs = torch.tensor([[[[0.8, 0.1]], [[0.3, 0.9]]]])   # the old model: background, then its old class
    both, only_b, none = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2)
    target = L.pseudo_label(z, old_probs, both, alpha=0.5, no_background=True)
    r = math.e / (math.e + 1)   # pixel 1's share for A: alpha one-hot + (1 - alpha) softmax over A, B
    torch.testing.assert_close(target[0, 2, 0], torch.tensor([0.8 * (0.5 + 0.5 * r), 0.1 * 0.5 * (1 - r)]))
    torch.testing.assert_close(target[0, 3, 0], torch.tensor([0.8 * 0.5 * (1 - r), 0.1 * (0.5 + 0.5 * r)]))
    torch.testing.assert_close(target[0, 0], torch.zeros(1, 2))          # no background left to learn
    torch.testing.assert_close(target[0, 1], old_probs[0, 1])            # old classes: the old model (Eq. 7)
    # one tagged class takes the whole old background, whatever the localizer prefers
    alone = L.pseudo_label(z, old_probs, only_b, alpha=0.5, no_background=True)
    torch.testing.assert_close(alone[0, 3], old_probs[0, 0])
    assert alone[0, 2].abs().max().item() == 0.0
    # an image without new tags keeps the paper's targets
    torch.testing.assert_close(L.pseudo_label(z, old_probs, none, no_background=True),
                               L.pseudo_label(z, old_probs, none))


def test_unbiased_ce_background_is_background_or_old_by_hand():
    # channels: background, one old class, one new class (num_old = 2); four pixels in a row
    logits = torch.tensor([[[[0.0, math.log(2), 0.0, 5.0]],
                            [[math.log(3), 0.0, 0.0, 5.0]],
                            [[math.log(4), 0.0, 0.0, 5.0]]]])
    labels = torch.tensor([[[0, 2, 1, 255]]])   # background, new, old (counts as background), void
    # pixel a: p = (1, 3, 4)/8, background or old = 4/8; pixel b: p = (2, 1, 1)/4, new = 1/4;
    # pixel c: p = (1, 1, 1)/3, background or old = 2/3; pixel d: void, left out of the mean
    expected = -(math.log(1 / 2) + math.log(1 / 4) + math.log(2 / 3)) / 3
    assert L.unbiased_ce(logits, labels, num_old=2).item() == pytest.approx(expected, abs=1e-6)
    # with no old class it is the ordinary cross-entropy
    plain = torch.nn.functional.cross_entropy(logits, torch.tensor([[[0, 2, 1, 255]]]), ignore_index=255)
    assert L.unbiased_ce(logits, torch.tensor([[[0, 2, 1, 255]]]), num_old=1).item() == pytest.approx(plain.item())


def test_unbiased_kd_old_background_matched_by_background_and_new_by_hand():
    new = torch.tensor([0.0, math.log(2), math.log(3)]).view(1, 3, 1, 1)   # p = (1, 2, 3)/6: bg, old, new
    old = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)                # q = (1, 3)/4: bg, old
    expected = -(0.25 * math.log(1 / 6 + 3 / 6) + 0.75 * math.log(2 / 6)) / 2
    assert L.unbiased_kd(new, old).item() == pytest.approx(expected, abs=1e-6)


def test_output_distillation_ilt_on_the_old_channels_by_hand():
    new = torch.tensor([0.0, math.log(2), 7.0]).view(1, 3, 1, 1)   # the new class's logit is left out
    old = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)        # q = (1, 3)/4
    expected = -(0.25 * math.log(1 / 3) + 0.75 * math.log(2 / 3)) / 2   # p~ = (1, 2)/3 over the old channels
    assert L.output_distillation(new, old).item() == pytest.approx(expected, abs=1e-6)
    # its minimum over the new model's logits is where they equal the old model's
    assert L.output_distillation(torch.cat([old, new[:, 2:]], 1), old).item() < L.output_distillation(new, old).item()
