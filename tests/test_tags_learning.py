"""Step 0 from tags alone learns to segment (slow): three shapes of the generated world, 64 px scenes of one or two
objects, the tiny network from the shipped pretext encoder, 300 tagged images, 12 epochs (228 iterations, 3 of them
l_CLS alone). Measured on the project's CPU machine (2026-11-30, one thread): foreground mIoU 0.6 before training,
15.7 after (background 53 IoU in an earlier 20-epoch run). A low figure for three shapes: the tiny network scores at
stride 8 (8x8 on a 64 px scene); the floor checks that the recipe learns from tags, not how well."""
import numpy as np
import pytest
import torch

from models import DEFAULT_ENCODER, build_segmenter
from research import world
from wilss.checkpoint import load_checkpoint
from wilss.config import TagsBaseConfig
from wilss.inference import evaluate
from wilss.tags_base import train_tags_base
from wilss.training_data import PixelDataset, TagDataset
from wilss.transforms import train_transform

pytestmark = pytest.mark.slow   # about a minute of training on an idle two-core machine, several on a busy one

CLASSES = [1, 2, 3]             # world ids of the three shapes learnt
SIZE = 64
CFG = TagsBaseConfig(epochs=12, warmup_epochs=3, batch_size=16, crop_size=SIZE, scale_range=(1.0, 1.0), lr=0.05,
                     encoder_lr=0.01)
FLOOR = 10.0                    # foreground mIoU (%) the tags-only network must exceed (measured 15.7)


def scenes(n: int, seed: int):
    return world.generate(n, seed=seed, size=SIZE, min_objects=1, max_objects=2, allowed=CLASSES)


def foreground_miou(model, test) -> float:
    lut = np.zeros(256, np.uint8)
    lut[CLASSES] = np.arange(1, len(CLASSES) + 1)
    matrix = evaluate(model, PixelDataset([(image, lut[mask]) for image, mask in test]), num_classes=4, device="cpu")
    return float(matrix.iou()[1:].mean()) * 100


def test_a_base_from_tags_alone_segments_the_tagged_shapes(one_thread):
    if not DEFAULT_ENCODER.exists():
        pytest.skip(f"{DEFAULT_ENCODER} is missing")
    train, test = scenes(300, seed=5), scenes(60, seed=6)
    tags = np.array([[c in np.unique(mask) for c in CLASSES] for _, mask in train], np.float32)
    torch.manual_seed(0)
    model = build_segmenter(arch="tiny", num_classes=len(CLASSES) + 1)
    model.encoder.load_state_dict(load_checkpoint(DEFAULT_ENCODER).model.encoder.state_dict())
    before = foreground_miou(model, test)
    dataset = TagDataset([image for image, _ in train], tags, transform=train_transform(SIZE, (1.0, 1.0), True))
    for _ in train_tags_base(model, dataset, CFG, device="cpu"):
        pass
    after = foreground_miou(model, test)
    print(f"foreground mIoU before {before:.1f}, after {after:.1f}")
    assert after > FLOOR and after > before + 5
