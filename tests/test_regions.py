"""The offline region prior (wilss.regions): region means by hand, superpixels of flat regions, and its place in the
weak step's target (after PAMR, l_SEG at the image's resolution)."""
import numpy as np
import pytest
import torch

from research.world import generate
from wilss.config import UpdateConfig
from wilss.conventions import normalize
from wilss.engine import last
from wilss.regions import region_average, region_prior_target, superpixels
from wilss.trainer import WeakUpdate

from test_trainer import small_model, tag_dataset


@pytest.fixture(scope="module")
def scenes():
    return generate(8, seed=0, size=32)


def test_region_average_by_hand():
    target = torch.tensor([[[0.2, 0.4, 0.9],
                            [0.0, 0.6, 1.0]],
                           [[0.8, 0.6, 0.1],
                            [1.0, 0.4, 0.0]]])[None]            # 1x2x2x3
    segments = torch.tensor([[[0, 0, 1],
                              [0, 2, 1]]])                      # three regions
    out = region_average(target, segments)
    # region 0: pixels (0,0), (0,1), (1,0); region 1: (0,2), (1,2); region 2: (1,1)
    want0 = torch.tensor([[0.2, 0.2, 0.95], [0.2, 0.6, 0.95]])
    assert torch.allclose(out[0, 0], want0)
    assert torch.allclose(out[0, 1], 1.0 - want0)               # channel 1 = 1 - channel 0 everywhere


def test_region_average_keeps_images_apart_and_resizes_the_target():
    target = torch.zeros(2, 1, 2, 2)
    target[1] = 1.0                                             # image 1 all ones, image 0 all zeros
    segments = torch.zeros(2, 4, 4, dtype=torch.long)           # both images: region 0 alone, same ids
    out = region_average(target, segments)
    assert out.shape == (2, 1, 4, 4)                            # at the segments' resolution
    assert torch.equal(out[0], torch.zeros(1, 4, 4)) and torch.equal(out[1], torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="BxHxW segments"):
        region_average(target, segments[0])


def two_flat_regions(size: int = 64) -> np.ndarray:
    """An image of two flat halves: red on the left, blue on the right."""
    image = np.zeros((size, size, 3), np.uint8)
    image[:, : size // 2] = (200, 30, 30)
    image[:, size // 2:] = (30, 30, 200)
    return image


def blurry_cam(size: int = 16) -> torch.Tensor:
    """1x2xSxS soft target: class 1 rises linearly from left to right (no edge), class 0 = 1 - class 1."""
    ramp = torch.linspace(0.0, 1.0, size).expand(size, size)
    return torch.stack([1.0 - ramp, ramp])[None]


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_a_blurry_cam_becomes_piecewise_constant_on_two_flat_regions(method):
    image = two_flat_regions()
    labels = superpixels(image[None], method=method, segments=4)
    assert labels.shape == (1, 64, 64) and labels.dtype == np.int64
    assert not set(np.unique(labels[0, :, :32])) & set(np.unique(labels[0, :, 32:]))   # no region crosses the edge
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    out = region_prior_target(images, blurry_cam(), method=method, segments=4)
    assert out.shape == (1, 2, 64, 64)
    for region in np.unique(labels):   # one value per region
        values = out[0, 1][torch.from_numpy(labels[0] == region)]
        assert torch.allclose(values, values[0].expand_as(values))
    # away from the edge (Felzenszwalb's smoothing makes the two edge columns regions of their own) each half takes
    # the ramp's mean over it: about 1/4 and 3/4; the CAM's blur across the edge is gone
    left, right = out[0, 1, :, :28], out[0, 1, :, 36:]
    assert torch.allclose(left, left[0, 0].expand_as(left)) and torch.allclose(right, right[0, 0].expand_as(right))
    assert left[0, 0].item() == pytest.approx(0.25, abs=0.04) and right[0, 0].item() == pytest.approx(0.75, abs=0.04)
    assert torch.allclose(out.sum(1), torch.ones(1, 64, 64))   # distributions stay distributions
    half = region_prior_target(images, blurry_cam(), method=method, segments=4, weight=0.5)
    upsampled = torch.nn.functional.interpolate(blurry_cam(), size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(half, 0.5 * out + 0.5 * upsampled)


def test_superpixels_refuse_an_unknown_method():
    with pytest.raises(ValueError, match="unknown superpixel method"):
        superpixels(np.zeros((1, 8, 8, 3), np.uint8), method="sam")


@pytest.mark.parametrize("field, value, message", [("region_prior", "sam", "region_prior"),
                                                   ("region_segments", 1, "region_segments"),
                                                   ("region_scale", 0.0, "region_scale"),
                                                   ("region_weight", 0.0, "region_weight"),
                                                   ("region_segments", 5000, "at most")])
def test_update_config_refuses_bad_region_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        UpdateConfig(**{field: value})


def test_the_weak_step_refines_its_target_by_the_region_prior(scenes):
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8,
                       region_prior="slic", region_segments=4)
    items = [(scenes[0][0], np.array([0, 0, 1], np.float32))]
    update = WeakUpdate(small_model(), tag_dataset(scenes), num_new=1, cfg=cfg, snapshot_items=items,
                        snapshot_every=1)
    image = two_flat_regions(32)
    refined = update._refined(normalize(image)[None], torch.cat([blurry_cam(4)] * 2, 1))   # 4 channels, 4x4
    assert refined.shape == (1, 4, 32, 32)                    # l_SEG's target at the image's resolution
    left, right = refined[0, 1, :, :16], refined[0, 1, :, 16:]
    assert torch.allclose(left, left[0, 0].expand_as(left)) and torch.allclose(right, right[0, 0].expand_as(right))
    assert left[0, 0] < 0.5 < right[0, 0]
    final = last(update.run())
    assert set(final.losses) == {"cls", "loc", "seg"} and all(np.isfinite(v) for v in final.losses.values())
    assert final.snapshots[0].pseudo_label.shape == (32, 32)


def test_the_command_line_sets_the_region_prior(capsys, tmp_path):
    from research.cli import build_parser as research_parser, main as research_main
    from wilss.cli import build_parser
    from wilss.cli_common import update_config

    args = research_parser().parse_args(["benchmark", "world", "--region-prior", "Felzenszwalb", "--region-scale", "50"])
    cfg = update_config(args, UpdateConfig())
    assert (cfg.region_prior, cfg.region_scale, cfg.region_segments) == ("felzenszwalb", 50.0, 800)
    args = research_parser().parse_args(["benchmark", "camvid", "--region-prior", "slic", "--region-segments", "150"])
    assert (args.region_prior, args.region_segments, args.region_scale) == ("slic", 150, None)
    assert research_main(["benchmark", "world", "--region-prior", "sam"]) == 2
    assert "is not a region prior" in capsys.readouterr().err
    args = build_parser().parse_args(["add-class", "--out", "x.pt", "--region-prior", "slic"])   # both faces take it
    assert update_config(args, UpdateConfig()).region_prior == "slic"
    assert research_main(["benchmark", "demo", "--tags-base"]) == 2
    assert "is for world and camvid" in capsys.readouterr().err
    args = research_parser().parse_args(["benchmark", "camvid", "--pamr-refine-stride", "2"])
    assert update_config(args, UpdateConfig()).pamr_refine_stride == 2
