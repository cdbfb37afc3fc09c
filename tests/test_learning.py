"""The update learns: on a small generated world, from the shipped base model (trained by `wilss pretrain`).

New classes (crescent, arrow) are learnt from image tags only. Floors and ceilings are set from measured runs
with a safety margin (see the constants); the full-size figures are in docs/results.md.
"""
from dataclasses import replace

import pytest
import torch

from models import DEFAULT_CHECKPOINT
from wilss import recipes, world
from wilss.checkpoint import load_checkpoint
from wilss.experiments import Benchmark, LabelledSplit

# A short schedule of the world recipe (a few minutes on two CPU cores).
UPDATE = replace(recipes.WORLD_UPDATE, epochs=6, warmup_epochs=2)
NEW_FLOOR = 10.0        # new-class mIoU (%) the update must exceed; the base model scores 0
OLD_DROP_CEILING = 8.0  # at most this many mIoU points lost on the old classes


@pytest.fixture(scope="module")
def rows():
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"{DEFAULT_CHECKPOINT} is missing: create it with `python -m wilss pretrain --out {DEFAULT_CHECKPOINT}`")
    torch.set_num_threads(2)
    train = LabelledSplit.from_pairs(world.generate(500, seed=101, size=recipes.WORLD_SIZE))
    test = LabelledSplit.from_pairs(world.generate(100, seed=102, size=recipes.WORLD_SIZE))
    bench = Benchmark(recipes.world_protocol(), train, test, pretrain_cfg=recipes.WORLD_PRETRAIN, update_cfg=UPDATE)
    base = load_checkpoint(DEFAULT_CHECKPOINT).model
    return {row.method: row for row in bench.run(base=base, methods=("wilss", "ft"))}


def test_wilss_learns_the_new_classes(rows):
    assert rows["base"].new == 0.0
    assert rows["wilss"].new > NEW_FLOOR, rows


def test_wilss_keeps_the_old_classes(rows):
    assert rows["base"].old - rows["wilss"].old < OLD_DROP_CEILING, rows


def test_wilss_beats_fine_tuning_on_old_classes(rows):
    assert rows["wilss"].old > rows["ft"].old, rows
