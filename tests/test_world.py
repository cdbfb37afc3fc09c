"""Tests for the procedural world: determinism, exact masks under occlusion, colour-free classes, PNG round trip."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from research.world import WORLD_CLASSES, _draw_scene, generate, render_scene, sample_scene, write_split, write_world

K = len(WORLD_CLASSES)
OBJECTS = list(range(1, K))


def _interior_gradient_fraction(image: np.ndarray, inside: np.ndarray) -> float:
    """Fraction of pixels deep inside an object (> 6 px from its edge) on a strong colour edge."""
    f = image.astype(np.float32)
    mag = np.abs(cv2.Sobel(f, cv2.CV_32F, 1, 0)).max(2) + np.abs(cv2.Sobel(f, cv2.CV_32F, 0, 1)).max(2)
    deep = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 3) > 6
    return float((mag[deep] > 60).mean()) if deep.any() else float("nan")


def test_classes_are_background_plus_distinct_categories():
    assert WORLD_CLASSES[0] == "background"
    assert len(WORLD_CLASSES) >= 9 and len(set(WORLD_CLASSES)) == len(WORLD_CLASSES)


def test_generate_is_deterministic_per_seed():
    a, b, c = generate(3, seed=7), generate(3, seed=7), generate(3, seed=8)
    for (ia, ma), (ib, mb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    assert not np.array_equal(a[0][0], c[0][0])


def test_render_scene_shapes_ids_and_requested_classes_present():
    rng = np.random.default_rng(0)
    for _ in range(40):
        classes = rng.choice(OBJECTS, int(rng.integers(1, 6)))
        image, mask = render_scene(rng, classes, 96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert mask.shape == (96, 96) and mask.dtype == np.uint8 and mask.max() < K
        assert set(classes.tolist()) <= set(np.unique(mask).tolist())  # placement keeps >= 40% of each visible
    with pytest.raises(ValueError):
        render_scene(rng, [0])
    with pytest.raises(ValueError):
        render_scene(rng, [K])


def test_mask_is_top_most_layer_and_occlusion_hides_pixels():
    rng = np.random.default_rng(1)
    occluded = 0
    for _ in range(10):
        _, mask, layers = _draw_scene(rng, rng.choice(OBJECTS, 8), 128)
        expected = np.zeros_like(mask)
        for cls, shape in layers:  # bottom-up: later layers overwrite earlier ones
            expected[shape] = cls
        assert np.array_equal(mask, expected)
        for cls in {c for c, _ in layers}:
            alone = np.logical_or.reduce([s for c, s in layers if c == cls])  # its shapes unoccluded
            assert (mask == cls).sum() <= alone.sum()
            occluded += int((mask == cls).sum() < alone.sum())
    assert occluded >= 10  # crowded scenes do occlude


def test_colour_carries_no_class_information():
    rng = np.random.default_rng(2)
    for cls in OBJECTS:
        means = []
        for _ in range(2):
            image, mask = render_scene(rng, [cls])
            means.append(image[mask == cls].mean(0))
        assert np.abs(means[0] - means[1]).sum() > 15, WORLD_CLASSES[cls]


def test_texture_differs_between_categories():
    rng = np.random.default_rng(3)

    def mean_fraction(name: str) -> float:
        cls = WORLD_CLASSES.index(name)
        fractions = []
        for _ in range(6):
            image, mask = render_scene(rng, [cls])
            fractions.append(_interior_gradient_fraction(image, mask == cls))
        return float(np.nanmean(fractions))

    solid = mean_fraction("arrow")  # solid fill with a border: flat inside
    assert solid < 0.2
    assert mean_fraction("square") > solid + 0.4  # checkerboard
    assert mean_fraction("crescent") > solid + 0.4  # speckle


def test_sample_scene_respects_allowed_and_required():
    rng = np.random.default_rng(4)
    for _ in range(20):
        _, mask = sample_scene(rng, size=64, min_objects=1, max_objects=3, allowed=[1, 2], required=[5])
        present = set(np.unique(mask).tolist()) - {0}
        assert 5 in present and present <= {1, 2, 5}


def test_write_split_round_trip_and_refuses_non_empty(tmp_path):
    samples = generate(3, seed=5, size=64)
    write_split(tmp_path, "train", samples)
    meta = json.loads((tmp_path / "world.json").read_text())
    assert meta["classes"] == list(WORLD_CLASSES)
    for i, (image, mask) in enumerate(samples):
        stem = f"{i:05d}"
        png = Image.open(tmp_path / "train" / "masks" / f"{stem}.png")
        assert png.mode == "P"
        assert np.array_equal(np.array(png), mask)
        assert np.array_equal(np.array(Image.open(tmp_path / "train" / "images" / f"{stem}.png")), image)
        assert meta["splits"]["train"][stem] == sorted(set(np.unique(mask).tolist()) - {0})
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporaries left
    with pytest.raises(FileExistsError, match="not empty"):
        write_split(tmp_path, "train", samples)
    write_split(tmp_path, "val", samples[:1])  # another split updates world.json, keeps the first
    assert set(json.loads((tmp_path / "world.json").read_text())["splits"]) == {"train", "val"}


def test_write_world_writes_three_splits(tmp_path):
    root = write_world(tmp_path / "w", seed=1, size=48, n_train=2, n_val=1, n_test=1)
    meta = json.loads((root / "world.json").read_text())
    assert {s: len(v) for s, v in meta["splits"].items()} == {"train": 2, "val": 1, "test": 1}
    train0 = np.array(Image.open(root / "train" / "images" / "00000.png"))
    val0 = np.array(Image.open(root / "val" / "images" / "00000.png"))
    assert not np.array_equal(train0, val0)  # splits use different seeds
