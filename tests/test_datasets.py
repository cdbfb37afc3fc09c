"""Datasets on disk: the VOC layout (standard and MiB-style lists), the split-folder layout, the generated VOC tree,
and a clear DataError for each wrong layout."""
import numpy as np
import pytest
import torch
from torchvision.models import resnet50

from models import build_segmenter
from models.builders import load_backbone_weights
from research.experiments import LabelledSplit
from research import world
from research.world import WORLD_CLASSES
from wilss import datasets
from wilss.data import DataError, load_mask


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return world.write_voc_tree(tmp_path_factory.mktemp("voc") / "VOC2012", n_train=10, n_val=4, size=48, seed=3)


def test_voc_tree_reads_back(tree):
    pairs = datasets.read_voc(tree, "train")
    assert len(pairs) == 10 and pairs[0][0].name == "train_00000.jpg" and pairs[0][1].parent.name == "SegmentationClass"
    assert len(datasets.read_voc(tree, "trainval")) == 14
    assert datasets.read_class_names(tree, default=datasets.VOC_CLASSES) == WORLD_CLASSES
    assert datasets.default_train_split(tree) == "train"
    split = LabelledSplit.from_pairs(pairs)
    assert all(isinstance(m, type(pairs[0][1])) for m in split.masks)          # masks stay paths
    assert split.present[3] == set(np.unique(load_mask(pairs[3][1])).tolist())
    assert all(1 <= len(p - {0}) <= 3 for p in split.present)                 # 1-3 objects per scene
    with pytest.raises(FileExistsError):
        world.write_voc_tree(tree)


def test_voc_train_aug_list_with_paths(tree):
    aug = tree / "SegmentationClassAug"
    aug.mkdir()
    for _, mask in datasets.read_voc(tree, "train")[:3]:
        (aug / mask.name).write_bytes(mask.read_bytes())
    lists = tree / "ImageSets" / "SegmentationAug"
    lists.mkdir()
    (lists / "train_aug.txt").write_text("".join(f"/JPEGImages/train_0000{i}.jpg /SegmentationClassAug/train_0000{i}.png\n"
                                                 for i in range(3)))
    try:
        assert datasets.default_train_split(tree) == "train_aug"
        pairs = datasets.read_voc(tree, "train_aug")
        assert [m.parent.name for _, m in pairs] == ["SegmentationClassAug"] * 3
        assert datasets.voc_mask_dir(tree, "val").name == "SegmentationClass"
    finally:
        (lists / "train_aug.txt").unlink()


@pytest.mark.parametrize("breakage, message", [
    ("no_root", "does not exist"),
    ("no_images", "no JPEGImages/ folder"),
    ("no_masks", "neither SegmentationClass/ nor SegmentationClassAug/"),
    ("no_list", "no list for the split 'test'"),
    ("missing_image", "names 1 image(s) that do not exist: JPEGImages/ghost.jpg"),
    ("bad_line", "Line 2 of"),
    ("empty_list", "is empty"),
])
def test_voc_layout_errors(tmp_path, breakage, message):
    root = world.write_voc_tree(tmp_path / "voc", n_train=3, n_val=2, size=32)
    lists = root / "ImageSets" / "Segmentation"
    split = "train"
    if breakage == "no_root":
        root = tmp_path / "nowhere"
    elif breakage == "no_images":
        (root / "JPEGImages").rename(tmp_path / "elsewhere")
    elif breakage == "no_masks":
        (root / "SegmentationClass").rename(tmp_path / "elsewhere")
    elif breakage == "no_list":
        split = "test"
    elif breakage == "missing_image":
        (lists / "train.txt").write_text("train_00000\nghost\n")
    elif breakage == "bad_line":
        (lists / "train.txt").write_text("train_00000\na b c\n")
    else:
        (lists / "train.txt").write_text("\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        datasets.read_voc(root, split)


def test_voc_parent_folder_gets_a_hint(tmp_path):
    world.write_voc_tree(tmp_path / "VOCdevkit" / "VOC2012", n_train=2, n_val=1, size=32)
    with pytest.raises(DataError, match="Did you mean .*VOCdevkit/VOC2012"):
        datasets.read_voc(tmp_path, "train")


def test_split_folder_and_class_names(tmp_path):
    from research.world import write_world

    write_world(tmp_path, size=32, n_train=3, n_val=0, n_test=2)
    assert len(datasets.read_split_folder(tmp_path, "test")) == 2
    assert datasets.read_class_names(tmp_path) == WORLD_CLASSES          # from world.json
    with pytest.raises(DataError, match="no 'holdout' folder .*found: test, train, val"):
        datasets.read_split_folder(tmp_path, "holdout")
    (tmp_path / "classes.txt").write_text("background\nbackground\n")
    with pytest.raises(DataError, match="each once"):
        datasets.read_class_names(tmp_path)
    with pytest.raises(DataError, match="has no classes.txt"):
        datasets.read_class_names(tmp_path / "test")


def test_backbone_weights_load_offline(tmp_path):
    torch.manual_seed(0)
    imagenet = resnet50(weights=None).state_dict()
    torch.save(imagenet, tmp_path / "resnet50.pth")
    model = build_segmenter(arch="deeplabv3_resnet50", num_classes=3)
    assert load_backbone_weights(model, tmp_path / "resnet50.pth") == len(imagenet) - 2   # all but fc.weight/bias
    assert torch.equal(model.encoder.body.layer4[2].conv3.weight, imagenet["layer4.2.conv3.weight"])
    torch.save({"conv1.weight": imagenet["conv1.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="encoder weights missing"):
        load_backbone_weights(model, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="no ImageNet backbone"):
        load_backbone_weights(build_segmenter(arch="tiny", num_classes=3), tmp_path / "resnet50.pth")
