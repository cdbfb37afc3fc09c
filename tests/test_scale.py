"""One scale from training to prediction: a checkpoint records the input scale it was trained at (the images' longer
side), an update inherits it, and predict / evaluate resize images to it and answer at the images' own size."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from models import DEFAULT_CHECKPOINT, build_segmenter
from wilss import service
from wilss.checkpoint import WORLD_INPUT_SIDE, CheckpointError, load_checkpoint, new_checkpoint, save_checkpoint
from wilss.config import UpdateConfig
from wilss.conventions import prepare_image
from wilss.data import DataError
from wilss.inference import Predictor
from wilss.tags import TaggedSet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NAMES = ["background", "disc", "square"]
TINY = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, localizer_channels=8)


def tiny_checkpoint(input_side: int):
    torch.manual_seed(0)
    return new_checkpoint(build_segmenter(arch="tiny", num_classes=3, width=8), NAMES, input_side=input_side)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def four_times(array: np.ndarray) -> np.ndarray:
    return array.repeat(4, axis=0).repeat(4, axis=1)


# ------------------------------------------------------------------------------------------- checkpoint
def test_a_checkpoint_round_trips_its_input_scale(tmp_path):
    path = save_checkpoint(tiny_checkpoint(240), tmp_path / "a.pt")
    assert torch.load(path, weights_only=True)["input_side"] == 240
    assert load_checkpoint(path).input_side == 240


def test_files_without_an_input_scale_still_load_at_the_scale_they_were_trained_at(tmp_path):
    payload = torch.load(save_checkpoint(tiny_checkpoint(240), tmp_path / "a.pt"), weights_only=True)
    del payload["input_side"]                                     # a file written before the field existed
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").input_side == WORLD_INPUT_SIDE == 128
    payload["history"] = [{"step": 0, "kind": "pretrain", "classes": NAMES[1:], "num_images": 9,
                           "settings": {"size": [180, 240]}, "metrics": {}, "date": ""}]   # pretrain --size 180,240
    torch.save(payload, tmp_path / "old_sized.pt")
    assert load_checkpoint(tmp_path / "old_sized.pt").input_side == 240
    payload["history"][0]["settings"] = {"supervision": "tags", "crop_size": 176}           # a base from tags alone
    torch.save(payload, tmp_path / "old_tags.pt")
    assert load_checkpoint(tmp_path / "old_tags.pt").input_side == 176
    assert load_checkpoint(DEFAULT_CHECKPOINT).input_side == 128  # the shipped base: the world's 128 px
    payload["input_side"] = "large"
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="'input_side' must be a whole number of pixels"):
        load_checkpoint(tmp_path / "bad.pt")


# ----------------------------------------------------------------------------------------------- update
@pytest.fixture(scope="module")
def wide_images(tmp_path_factory):
    """4 images of 64x96 px: two tagged 'cow', two negatives."""
    folder = tmp_path_factory.mktemp("wide")
    paths = []
    for i in range(4):
        Image.fromarray(random_image(64, 96, seed=i)).save(folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return TaggedSet(tuple(paths), (frozenset({"cow"}),) * 2 + (frozenset(),) * 2)


def test_an_update_trains_at_the_base_scale_and_its_result_records_it(wide_images, tmp_path):
    plan = service.UpdateRequest(tiny_checkpoint(48), wide_images, [("cow", None)], TINY).validate()
    assert plan.input_side == 48 and "images at 48 px" in plan.describe()
    run = service.run_update(plan, device="cpu")
    assert run.dataset.load(0).shape == (32, 48, 3) and run.item(0)[0].shape == (32, 48, 3)
    assert tuple(run.dataset[0][0].shape) == (3, 32, 32)          # the crop stays the training crop
    list(run)
    path = save_checkpoint(run.checkpoint(), tmp_path / "cow.pt")
    grown = load_checkpoint(path)
    assert grown.input_side == 48 and grown.steps[-1].input_side == 48


def test_an_update_takes_another_scale_when_asked(wide_images):
    request = service.UpdateRequest(tiny_checkpoint(48), wide_images, [("cow", None)], TINY, input_side=80)
    run = service.run_update(request, device="cpu")
    assert run.plan.input_side == 80 and run.dataset.load(0).shape == (53, 80, 3)
    with pytest.raises(DataError, match="input scale must be 16-"):
        service.UpdateRequest(tiny_checkpoint(48), wide_images, [("cow", None)], TINY, input_side=8).validate()


def test_masked_steps_fit_image_and_mask_to_the_scale():
    from wilss.training_data import masked_training_set

    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[:, 48:] = 3
    data = masked_training_set([(random_image(64, 96), mask)], UpdateConfig(crop_size=32, hflip=False,
                                                                            scale_range=(1.0, 1.0)), side=48)
    image, label = data.transform(*data.load(0))
    assert image.shape == (32, 32, 3) and set(np.unique(label)) <= {0, 3, 255}


# ---------------------------------------------------------------------------------------- predict, score
def test_predicting_an_image_four_times_the_scale_gives_the_upsampled_mask_of_the_downscaled_one():
    ckpt = tiny_checkpoint(32)
    small = random_image(24, 32)
    big = four_times(small)
    assert np.array_equal(prepare_image(big, 32), small)          # area averaging of 4x4 equal pixels is exact
    predictor = Predictor(ckpt, device="cpu")
    at_scale, from_big = predictor.predict(small), predictor.predict(big)
    assert from_big.mask.shape == (96, 128) and from_big.scores.shape == (3, 24, 32)
    assert np.array_equal(from_big.mask, four_times(at_scale.mask))
    assert np.array_equal(at_scale.mask, Predictor(ckpt.model, device="cpu").predict(small).mask)   # bare: own size
    assert Predictor(ckpt, device="cpu", max_side=16).predict(big).scores.shape == (3, 12, 16)      # the cap holds


def test_evaluate_scores_at_the_recorded_scale_and_at_the_masks_size(tmp_path):
    ckpt = tiny_checkpoint(32)
    for name, scale in (("small", 1), ("big", 4)):
        (tmp_path / name / "i").mkdir(parents=True)
        (tmp_path / name / "m").mkdir()
        for k in range(3):
            mask = np.random.default_rng(k).integers(0, 3, (6, 8)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
            image = random_image(24, 32, seed=k)
            if scale == 4:
                image, mask = four_times(image), four_times(mask)
            Image.fromarray(image).save(tmp_path / name / "i" / f"{k}.png")
            Image.fromarray(mask).save(tmp_path / name / "m" / f"{k}.png")
    small, big = (service.score(ckpt, service.mask_eval_set(tmp_path / n / "i", tmp_path / n / "m", 3), device="cpu")
                  for n in ("small", "big"))
    assert torch.allclose(small.iou, big.iou, equal_nan=True)


def test_export_records_the_input_scale(tmp_path):
    onnx = pytest.importorskip("onnx")
    path = service.export_onnx(tiny_checkpoint(48), tmp_path / "a.onnx")
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(meta["input_side"]) == 48
    dims = onnx.load(path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["height", "width"]
