"""Joint (image, mask) transforms: padding with void, flips in sync, nearest-only masks, seeding."""
import numpy as np
import pytest
import torch

from wilss.conventions import IGNORE_INDEX
from wilss.transforms import (CenterCrop, Compose, RandomCrop, RandomHorizontalFlip, RandomScale, Resize,
                              eval_transform, train_transform)


def pair(h=6, w=8, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), size=(h, w))
    return image, mask


def test_crop_pads_image_with_zero_and_mask_with_ignore():
    image, mask = pair(4, 5)
    out_img, out_mask = RandomCrop(8)(image, mask, rng=np.random.default_rng(0))
    assert out_img.shape == (8, 8, 3) and out_mask.shape == (8, 8)
    # Padding goes bottom/right, so the original sits at the top-left corner whatever the offset.
    np.testing.assert_array_equal(out_img[:4, :5], image)
    np.testing.assert_array_equal(out_mask[:4, :5], mask)
    assert (out_img[4:] == 0).all() and (out_img[:, 5:] == 0).all()
    assert (out_mask[4:] == IGNORE_INDEX).all() and (out_mask[:, 5:] == IGNORE_INDEX).all()


def test_crop_of_larger_image_is_a_window_of_it():
    image, mask = pair(20, 30)
    out_img, out_mask = RandomCrop((5, 7))(image, mask, rng=np.random.default_rng(3))
    assert out_img.shape == (5, 7, 3)
    hits = [(t, l) for t in range(16) for l in range(24)
            if np.array_equal(image[t:t + 5, l:l + 7], out_img)]
    assert hits and any(np.array_equal(mask[t:t + 5, l:l + 7], out_mask) for t, l in hits)


def test_flip_flips_image_and_mask_together():
    image, mask = pair()
    out_img, out_mask = RandomHorizontalFlip(p=1.0)(image, mask, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out_img, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])
    same_img, same_mask = RandomHorizontalFlip(p=0.0)(image, mask, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(same_img, image)
    np.testing.assert_array_equal(same_mask, mask)


@pytest.mark.parametrize("seed", range(5))
def test_scale_keeps_mask_ids_a_subset_of_input_ids(seed):
    image, mask = pair(17, 23, seed)
    out_img, out_mask = RandomScale(0.5, 2.0)(image, mask, rng=np.random.default_rng(seed))
    assert out_img.shape[:2] == out_mask.shape and out_mask.dtype == np.uint8
    assert set(np.unique(out_mask)) <= set(np.unique(mask))


def test_resize_shorter_side_and_exact():
    image, mask = pair(10, 20)
    img, m = Resize(5)(image, mask)
    assert img.shape == (5, 10, 3) and m.shape == (5, 10)
    img, m = Resize((7, 3))(image, mask)
    assert img.shape == (7, 3, 3) and m.shape == (7, 3)
    assert set(np.unique(m)) <= set(np.unique(mask))


def test_center_crop():
    image, mask = pair(10, 10)
    img, m = CenterCrop(4)(image, mask)
    np.testing.assert_array_equal(img, image[3:7, 3:7])
    np.testing.assert_array_equal(m, mask[3:7, 3:7])


def test_train_transform_is_deterministic_under_a_seed_and_handles_no_mask():
    image, mask = pair(30, 40)
    t = train_transform(16)
    a = t(image, mask, rng=np.random.default_rng(7))
    b = t(image, mask, rng=np.random.default_rng(7))
    assert a[0].shape == (16, 16, 3) and a[1].shape == (16, 16)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    torch.manual_seed(1)
    c = t(image, mask)
    torch.manual_seed(1)
    d = t(image, mask)
    np.testing.assert_array_equal(c[0], d[0])
    img_only, none = t(image)
    assert img_only.shape == (16, 16, 3) and none is None


def test_eval_transform_identity_and_resize():
    image, mask = pair()
    img, m = eval_transform()(image, mask)
    assert img is image and m is mask
    img, m = eval_transform((3, 4))(image, mask)
    assert img.shape == (3, 4, 3) and m.shape == (3, 4)


def test_compose_rejects_mismatched_mask():
    image, _ = pair(6, 8)
    with pytest.raises(ValueError):
        Compose([])(image, np.zeros((5, 8), np.uint8))
