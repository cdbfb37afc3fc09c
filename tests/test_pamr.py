import math

import pytest
import torch
import torch.nn.functional as F

from wilss.conventions import IGNORE_INDEX
from wilss.pamr import balanced_ce, pamr, pamr_pseudo_label, refine_target


def _boundary(row: torch.Tensor) -> int:
    """First column where the foreground score reaches 0.5."""
    return int((row >= 0.5).nonzero()[0])


def test_pamr_moves_mask_boundary_to_image_edge():
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1.0                       # true edge at column 16
    fg = torch.zeros(1, 1, 32, 32)
    fg[..., 12:] = 1.0                          # mask boundary 4 px off
    refined = pamr(image, torch.cat([1 - fg, fg], 1))
    before = abs(_boundary(fg[0, 0, 16]) - 16)
    after = abs(_boundary(refined[0, 1, 16]) - 16)
    assert before == 4 and after <= before / 2


def test_refine_target_upsamples_a_coarse_target_onto_the_image_edge():
    image = torch.zeros(1, 3, 64, 64)
    image[..., 26:] = 1.0                       # true edge at column 26, inside a coarse cell (cells of 8 px)
    fg = torch.zeros(1, 1, 8, 8)
    fg[..., 3:] = 0.9                           # a stride-8 target whose boundary is at column 24
    target = torch.cat([1 - fg, fg, torch.zeros_like(fg)], 1)   # third class: absent from the image's tags
    refined = refine_target(image, target, stride=2)
    assert refined.shape == (1, 3, 32, 32)
    assert 0.0 <= refined.min() and refined.max() <= 1.0 and refined[:, 2].abs().max() == 0.0
    coarse = F.interpolate(target, size=(32, 32), mode="bilinear", align_corners=False)
    before = abs(_boundary(coarse[0, 1, 16]) - 13)   # the edge is at column 13 at stride 2
    after = abs(_boundary(refined[0, 1, 16]) - 13)
    assert before >= 1 and after < before
    # more iterations spread each region's value further along it: the new class fades on the far side of the edge
    longer = refine_target(image, target, stride=2, iterations=30)
    assert longer[0, 1, 16, :13].max() < refined[0, 1, 16, :13].max() < coarse[0, 1, 16, :13].max()
    # alpha mixes the refined target with its one-hot argmax again (Eq. 6): the winner of each pixel gains
    sharp = refine_target(image, target, stride=2, alpha=0.5)
    torch.testing.assert_close(sharp.amax(1), 0.5 + 0.5 * refined.amax(1))
    assert sharp[:, 2].abs().max() == 0.0


def test_refine_target_coarse_to_fine_traces_a_thin_part_at_full_resolution():
    image = torch.zeros(1, 3, 64, 64)
    image[..., 30:32] = 1.0                     # a 2-px line: one pixel wide at stride 2
    fg = torch.zeros(1, 1, 8, 8)
    fg[..., 3] = 0.9                            # the stride-8 cell over it
    target = torch.cat([1 - fg, fg], 1)
    coarse = refine_target(image, target, stride=2)
    fine = refine_target(image, target, stride=2, fine_iterations=10)
    assert fine.shape == (1, 2, 64, 64)
    upsampled = F.interpolate(coarse, size=(64, 64), mode="bilinear", align_corners=False)[0, 1, 32]
    row = fine[0, 1, 32]
    # the stride-2 result, upsampled, spills onto the pixels beside the line; full-resolution iterations take it back
    beside = [29, 32]
    assert upsampled[beside].min() > 0.2 and row[beside].max() < 0.11
    torch.testing.assert_close(row[30:32], upsampled[30:32], atol=0.02, rtol=0)
    torch.testing.assert_close(fine.sum(1), torch.ones(1, 64, 64))


def test_pamr_keeps_distributions_and_shape():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 64, 64)
    masks = torch.randn(2, 4, 64, 64).softmax(1)
    refined = pamr(image, masks)
    assert refined.shape == masks.shape and not refined.requires_grad
    assert torch.allclose(refined.sum(1), torch.ones(2, 64, 64), atol=1e-5)
    assert (refined >= 0).all()
    # a constant image gives uniform affinities: a constant mask stays constant
    flat = pamr(torch.full((1, 3, 8, 8), 0.3), torch.full((1, 2, 8, 8), 0.5))
    assert torch.allclose(flat, torch.full_like(flat, 0.5))


def test_pseudo_label_thresholds_ambiguity_and_tags():
    masks = torch.tensor([[
        [[0.9, 0.1], [0.8, 0.1]],      # background: max 0.9 -> threshold 0.63
        [[0.1, 0.8], [0.7, 0.15]],     # class 1 (tagged): max 0.8 -> threshold 0.48
        [[0.0, 0.0], [0.0, 0.9]],      # class 2 (untagged): never assigned
    ]])
    labels, confident = pamr_pseudo_label(masks, torch.tensor([[1.0, 0.0]]))
    # (1,0) is confident for background and class 1 -> ambiguous; (1,1) confident for nothing.
    assert labels.tolist() == [[[0, 1], [IGNORE_INDEX, IGNORE_INDEX]]]
    assert labels.dtype == torch.long and confident.shape == masks.shape and not confident[0, 2].any()
    # the floor: a weak class (max 0.15 < 0.2) is never confident even at its maximum
    weak = masks.clone()
    weak[0, 1] = torch.tensor([[0.1, 0.15], [0.05, 0.1]])
    labels, _ = pamr_pseudo_label(weak, torch.tensor([[1.0, 0.0]]))
    assert labels.tolist() == [[[0, IGNORE_INDEX], [0, IGNORE_INDEX]]]
    with pytest.raises(ValueError):
        pamr_pseudo_label(masks, torch.ones(1, 3))


def test_balanced_ce_hand_computed():
    logits = torch.tensor([[[[0.0, 2.0, 0.0, 9.0]], [[0.0, 0.0, 1.0, -9.0]]]], requires_grad=True)  # 1x2x1x4
    labels = torch.tensor([[[0, 0, 1, IGNORE_INDEX]]])
    loss = balanced_ce(logits, labels)
    class0 = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    class1 = math.log(1 + math.exp(-1))
    assert loss.item() == pytest.approx((class0 + class1) / 2, rel=1e-6)
    loss.backward()
    assert logits.grad[0, :, 0, 3].abs().sum() == 0          # the void pixel gets no gradient
    plain = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
    assert plain.item() != pytest.approx(loss.item())         # differs from the pixel mean
    empty = balanced_ce(logits, torch.full((1, 1, 4), IGNORE_INDEX))
    assert empty.item() == 0.0
