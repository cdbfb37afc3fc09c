"""The update learns: on a small generated world, from the shipped base model (trained by `wilss pretrain` from the
shipped pretext encoder).

New classes (crescent, arrow) are learnt from image tags only, on 287 step images for 12 epochs (~220 iterations),
with the world recipe's PAMR-refined pseudo-labels at the paper's learning rates: at the recipe's raised rates a
schedule this short forgets more (measured old 65.6 / new 25.7). Measured with this schedule on the project's CPU
machine (2026-11-26, one thread, PAMR refinement with 30 iterations): base old 74.3 / new 0.0; WILSS old 70.7 /
new 19.5; FT old 1.0 / new 5.8; MiB with the step's masks (same schedule and rates, 2026-11-30) old 74.2 / new 11.9.
The floors below keep a margin under those figures; the full-schedule figures are in docs/results.md.
"""
from dataclasses import replace

import pytest
import torch

from models import DEFAULT_CHECKPOINT
from research import recipes, world
from research.experiments import Benchmark, LabelledSplit
from wilss.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # ~25 minutes of training on a busy two-core machine

# A short schedule of the world recipe at the paper's learning rates and with the paper's localizer on the stride-16
# map (a few minutes on two CPU cores; the recipe's stride-4 localizer would double that, and the figures above were
# measured without it).
UPDATE = replace(recipes.WORLD_UPDATE, epochs=12, warmup_epochs=2, lr_backbone=1e-3, lr_head=1e-2,
                 localizer_detail=False)
NEW_FLOOR = 15.0         # new-class mIoU (%) the update must exceed; the base model scores 0 (measured 19.5)
OLD_DROP_CEILING = 10.0  # at most this many mIoU points lost on the old classes (measured 3.6)


@pytest.fixture(scope="module")
def rows():
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"{DEFAULT_CHECKPOINT} is missing: create it with `python -m research pretrain --out {DEFAULT_CHECKPOINT}`")
    torch.set_num_threads(2)
    train = LabelledSplit.from_pairs(world.generate(500, seed=101, size=recipes.WORLD_SIZE))
    test = LabelledSplit.from_pairs(world.generate(100, seed=102, size=recipes.WORLD_SIZE))
    bench = Benchmark(recipes.world_protocol(), train, test, pretrain_cfg=recipes.WORLD_PRETRAIN, update_cfg=UPDATE)
    base = load_checkpoint(DEFAULT_CHECKPOINT).model
    return {row.method: row for row in bench.run(base=base, methods=("wilss", "ft", "mib"))}


def test_wilss_learns_the_new_classes(rows):
    assert rows["wilss"].new > NEW_FLOOR, rows


def test_wilss_keeps_the_old_classes(rows):
    assert rows["base"].old - rows["wilss"].old < OLD_DROP_CEILING, rows


def test_wilss_beats_fine_tuning_on_old_classes(rows):
    # Without the old model's prior and targets, fine-tuning on pseudo-labels forgets the old classes (measured 1.0)
    assert rows["wilss"].old > 2 * rows["ft"].old, rows


def test_mib_with_masks_learns_and_keeps_the_old_classes(rows):
    # MiB's unbiased distillation keeps the old classes (measured 74.2 of the base's 74.3); the masks teach the new
    assert rows["mib"].new > 8.0 and rows["base"].old - rows["mib"].old < 3.0, rows
