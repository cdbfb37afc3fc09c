"""``evaluate --data``: a checkpoint scored on a dataset in its own ids, mapped by class name or through a task (the
protocols' mapping), at the checkpoint's input scale; CamVid's layout (no background, 11 = void)."""
import numpy as np
import pytest
import torch
from PIL import Image

from models import build_segmenter
from wilss.checkpoint import new_checkpoint, save_checkpoint
from wilss.cli import main
from wilss.data import DataError
from wilss.datasets import CAMVID_CLASSES, read_labelled
from wilss.scoring import dataset_eval_set, task_label_map

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

STEP1 = ["background", "Sky", "Road", "Car"]          # task '0,3|8' after step 1


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    """A CamVid-layout tree: train.txt / test.txt of 'IMAGE MASK' lines, 48x64 images, masks in ids 0-10, 11 void."""
    root = tmp_path_factory.mktemp("camvid")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        lines = []
        for k in range(2):
            mask = rng.integers(0, 12, (6, 8)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{split}{k}.png")
            Image.fromarray(mask).save(root / "masks" / f"{split}{k}.png")
            lines.append(f"images/{split}{k}.png masks/{split}{k}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_a_task_maps_dataset_ids_as_the_protocols_score_a_step(camvid):
    source = read_labelled(camvid)
    lut, new = task_label_map(source, "0,3|8", None, STEP1)
    assert [lut[c] for c in (0, 3, 8)] == [1, 2, 3] and lut[11] == 255 and new == ["Car"]
    assert all(lut[c] == 0 for c in (1, 2, 4, 5, 6, 7, 9, 10))      # classes of no step count as background
    step0, new0 = task_label_map(source, "0,3|8", None, STEP1[:3])    # the base: Car is a future class
    assert [step0[c] for c in (0, 3, 8)] == [1, 2, 0] and new0 == ["Sky", "Road"]
    joint, new = task_label_map(source, "0,3|8", 1, ["background", "Car", "Sky", "Road"])   # another order: by name
    assert [joint[c] for c in (0, 3, 8)] == [2, 3, 1] and joint[11] == 255 and joint[5] == 0 and new == ["Car"]
    with pytest.raises(DataError, match="not the task's after step 1"):
        task_label_map(source, "0,3|8", 1, ["background", "Road", "Sky", "Tree"])
    with pytest.raises(DataError, match="not the task's after step 1"):
        task_label_map(source, "0,3|8", 1, ["Road", "background", "Sky", "Car"])   # background stays id 0
    with pytest.raises(DataError, match="does not fit 11 dataset classes"):
        task_label_map(source, "0,3|12", None, STEP1)
    by_name = dataset_eval_set(camvid, STEP1)
    assert np.array_equal(by_name.label_map, lut) and not by_name.include_background   # CamVid: no background


def test_evaluate_scores_a_checkpoint_on_a_dataset_with_a_task(camvid, tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = new_checkpoint(build_segmenter(arch="tiny", num_classes=4, width=8), STEP1, input_side=32)
    path = save_checkpoint(ckpt, tmp_path / "step1.pt")
    assert main(["evaluate", "--checkpoint", str(path), "--data", str(camvid), "--task", "0,3|8",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "input scale (32 px" in out and "(test split)" in out and "background left out" in out
    assert all(name in out for name in STEP1)
    joint = new_checkpoint(build_segmenter(arch="tiny", num_classes=4, width=8), STEP1, input_side=32)
    assert main(["evaluate", "--checkpoint", str(save_checkpoint(joint, tmp_path / "joint.pt")), "--data", str(camvid),
                 "--task", "0|3,8", "--device", "cpu"]) == 0   # a base by its history: no class added
    out = capsys.readouterr().out
    assert "scored as new (the task's step): Road, Car" in out
    assert main(["evaluate", "--checkpoint", str(path), "--task", "0,3|8"]) == 2
    assert "--data DIR" in capsys.readouterr().err
    assert len(CAMVID_CLASSES) == 11
