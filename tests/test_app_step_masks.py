"""The app's update with a method chosen and pixel masks uploaded (``app.update_handlers``): masks make a MiB step,
checked as ``add-class --masks`` checks them; bad masks and the offline pipeline with masks end in one message and
no new version, the staged masks removed."""
import numpy as np
import pytest
from PIL import Image

from app.handlers import CLASS_ROWS
from app.update import ADVANCED
import test_app_logic
from wilss.checkpoint import load_checkpoint
from test_app_logic import tagged_upload

page = test_app_logic.page   # the fixture: a page's handlers over a tiny checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

NEW_ID = 8   # the tiny checkpoint knows the world's 7 base classes and background: the new class is id 8
TINY = {"epochs": 2, "warmup_epochs": 1, "batch_size": 4, "crop_size": 32, "localizer_channels": 8}


def add_values(method=None, name="arrow"):
    """``add_classes``' inputs: one class, no watched images, the tiny settings, the method (None: left out)."""
    names, colours = [name] + [""] * (CLASS_ROWS - 1), ["#ff8000"] * CLASS_ROWS
    advanced = [TINY.get(field) for field, *_ in ADVANCED]
    return [*names, *colours, [], *advanced, *([] if method is None else [method])]


def write_masks(folder, n=8, *, skip=(), size=32, bad_id=None):
    """Masks of ``tagged_upload``'s images: the new class in a square of the first half, background elsewhere."""
    folder.mkdir(parents=True)
    files = []
    for i in range(n):
        if i in skip:
            continue
        mask = np.zeros((size, size), np.uint8)
        if i < n // 2:
            mask[8:20, 8:20] = NEW_ID
        if bad_id is not None and i == 1:
            mask[0, 0] = bad_id
        Image.fromarray(mask).save(folder / f"{i:02d}.png")
        files.append(str(folder / f"{i:02d}.png"))
    return files


@pytest.fixture
def with_data(page, tmp_path):
    handlers, u = page
    files, tags = tagged_upload(tmp_path / "up", ["arrow"] * 4 + [""] * 4)
    assert handlers.bring_data(None, files, tags)[0].startswith("**Done:**")
    return handlers, u


@pytest.mark.parametrize("masks, method, words", [
    (dict(skip=(2, 5)), None, ["2 of the 8 images have no mask", "02.png", "05.png"]),
    (dict(bad_id=12), None, ["name no class", "'01.png' has [12]", "8 arrow (new)"]),
    (dict(size=24), None, ["is 24x24 pixels but its image is 32x32"]),
    (dict(), "offline", ["The offline pipeline learns from the tags", "with pixel masks the step trains MiB"]),
])
def test_bad_masks_and_offline_with_masks_are_refused_and_nothing_is_written(with_data, tmp_path, masks, method,
                                                                           words):
    handlers, u = with_data
    assert "kept: the update will train MiB" in u.set_step_masks(None, write_masks(tmp_path / "m", **masks))
    outs = list(u.add_classes(None, *add_values(method)))
    assert len(outs) == 1 and outs[0][1].startswith("**Error:**") and all(w in outs[0][1] for w in words), outs
    s = handlers.session(None)
    assert [v.name for v in s.versions] == ["v000"] and not list(s.folder.glob("step-masks-*"))


def test_masks_make_a_mib_step_and_the_offline_method_runs_without_them(with_data, tmp_path):
    handlers, u = with_data
    s = handlers.session(None)
    u.set_step_masks(None, write_masks(tmp_path / "m"))
    outs = list(u.add_classes(None, *add_values()))   # an old client's values: no method, WILSON's default
    assert "Method mib" in outs[0][1] and outs[-1][1].startswith("**Done:**"), outs[-1]
    assert load_checkpoint(s.current.path).history[-1]["method"] == "mib" and s.ckpt.class_names[-1] == "arrow"
    assert "nothing to review" in u.review_page(None, 1, [])[1]
    assert u.set_step_masks(None, None).startswith("No masks") and s.step_masks == []
    handlers.rollback(None, "v000")
    outs = list(u.add_classes(None, *add_values("offline")))
    assert outs[-1][1].startswith("**Done:**"), outs[-1]
    entry = load_checkpoint(s.current.path).history[-1]
    assert s.current.name == "v002" and entry["method"] == "offline" and entry["tool"] == "app"
