"""Multi-step protocols: every weak step in turn, a checkpoint history per step, the paper's columns after the last
step, and a seeded limit on the tagged images per weak step (tiny network, 32 px world scenes, one epoch)."""
from dataclasses import replace

import numpy as np
import pytest

from research import world
from research.experiments import Benchmark, LabelledSplit, Protocol
from research.protocol import parse_task, select_images
from research.sequence import format_steps, run_sequence
from research.world import WORLD_CLASSES
from wilss.config import PretrainConfig, UpdateConfig

PRETRAIN = PretrainConfig(epochs=1, batch_size=8, crop_size=32, scale_range=(1.0, 1.0), lr=0.05)
UPDATE = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=8, crop_size=32, scale_range=(1.0, 1.0),
                      localizer_channels=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def bench(images_per_step=None, seed=0, setting="overlap", negatives=0.0):
    train = LabelledSplit.from_pairs(world.generate(48, seed=7, size=32, min_objects=1, max_objects=3))
    test = LabelledSplit.from_pairs(world.generate(6, seed=8, size=32))
    protocol = Protocol("world", WORLD_CLASSES, parse_task("5-2", len(WORLD_CLASSES)), setting)
    return Benchmark(protocol, train, test, pretrain_cfg=PRETRAIN, update_cfg=UPDATE, device="cpu",
                     arch_options={"width": 8, "head_channels": 16}, images_per_step=images_per_step,
                     selection_seed=seed, negatives=negatives)


def test_images_per_step_is_a_seeded_subset():
    b = bench(images_per_step=5)
    full = select_images(b.train.present, b.protocol.task, 2, "overlap")
    chosen = b.step_indices(2)
    assert len(full) > 5 and len(chosen) == 5 and set(chosen) <= set(full) and chosen == sorted(chosen)
    assert bench(images_per_step=5).step_indices(2) == chosen               # same seed, same images
    assert bench(images_per_step=5, seed=1).step_indices(2) != chosen
    assert bench(images_per_step=500).step_indices(2) == full               # fewer than N: all of them
    assert b.joint_indices(2) == sorted(set(b.base_indices()) | set(full) | set(b.step_indices(1)) |
                                        set(select_images(b.train.present, b.protocol.task, 1, "overlap")))
    with pytest.raises(ValueError, match="images_per_step"):
        bench(images_per_step=0)


def test_negatives_are_old_only_images_tagged_without_the_new_classes():
    b = bench(images_per_step=6, setting="disjoint", negatives=0.5)
    task = b.protocol.task
    positives = bench(images_per_step=6, setting="disjoint").step_indices(1)
    chosen = b.step_indices(1)
    extra = sorted(set(chosen) - set(positives))
    assert set(positives) <= set(chosen) and len(extra) == 3 == len(chosen) - len(positives)
    later = set(task.step(1).new_classes) | set(task.step(2).new_classes)
    assert all(b.train.present[i] and not b.train.present[i] & later for i in extra)   # old classes only
    tags = b.tag_dataset(chosen, 1).targets
    new_columns = tags[:, len(task.old_classes(1)):]
    assert [bool(row.any()) for row in new_columns] == [i in positives for i in chosen]
    plain = bench(images_per_step=6, setting="disjoint")
    assert b.step_indices(1) == chosen and b.step_indices(0) == plain.step_indices(0)   # seeded; none at step 0
    with pytest.raises(ValueError, match="old-only images"):
        bench(setting="disjoint", negatives=4.0).step_indices(1)
    with pytest.raises(ValueError, match="negatives"):
        bench(negatives=-1)


@pytest.fixture(scope="module")
def sequence():
    b = bench(images_per_step=6)
    saved = []
    rows, results = run_sequence(b, methods=("wilss", "ft", "joint"), score_each_step=True,
                                 on_step=lambda r: saved.append((r.method, r.step)))
    return b, rows, results, saved


def test_every_step_runs_in_turn_and_is_saved(sequence):
    b, rows, results, saved = sequence
    assert saved == [("base", 0), ("wilss", 1), ("wilss", 2), ("ft", 1), ("ft", 2), ("joint", 2)]
    wilss2 = results[2].checkpoint
    assert wilss2.class_names == list(WORLD_CLASSES) and wilss2.model.num_classes == 10
    assert [(h["step"], h["kind"], h["num_images"]) for h in wilss2.history] == [
        (0, "pretrain", len(b.base_indices())), (1, "add-class", 6), (2, "add-class", 6)]
    assert wilss2.history[1]["classes"] == ["cross", "hexagon"] and wilss2.last_added == ["crescent", "arrow"]
    assert wilss2.history[2]["settings"]["method"] == "wilss" and results[3].checkpoint.history[1]["settings"][
        "old_model_prior"] is False                                          # ft = no old-model prior
    assert np.array_equal(wilss2.colours[:6], results[0].checkpoint.colours)  # base colours kept
    assert results[-1].checkpoint.history[-1]["num_images"] == len(b.joint_indices(2))
    assert "| wilss | 2 | crescent, arrow | 6 |" in format_steps(results)


def test_rows_use_the_paper_columns_after_the_last_step(sequence):
    b, rows, results, _ = sequence
    assert [r.method for r in rows] == ["base", "wilss", "ft", "joint"]
    by = {r.method: r for r in rows}
    iou = np.array(by["wilss"].per_class) / 100
    assert len(iou) == 10
    assert by["wilss"].old == pytest.approx(np.nanmean(iou[1:6]) * 100)     # old = step 0: ids 1-5
    assert by["wilss"].new == pytest.approx(np.nanmean(iou[6:10]) * 100)    # new = steps 1 and 2: ids 6-9
    assert by["wilss"].new == results[2].row.new                            # the last step's own score is reused
    assert by["wilss"].seconds == pytest.approx(results[1].seconds + results[2].seconds)
    assert results[1].checkpoint.history[-1]["metrics"]["test_mIoU_new"] == round(results[1].row.new, 2)


def test_single_step_run_still_works():
    b = bench()
    b.protocol = replace(b.protocol, task=parse_task("7-2", len(WORLD_CLASSES)))
    rows = b.run(methods=("ft",))
    assert [r.method for r in rows] == ["base", "ft"] and len(rows[1].per_class) == 10


def test_single_class_steps_without_negatives_get_automatic_old_tags():
    b = bench(setting="disjoint")
    b.protocol = replace(b.protocol, task=parse_task("7-1", len(WORLD_CLASSES)))
    assert all(8 in b.train.present[i] for i in b.step_indices(1))      # step 1 (crescent): every image shows it
    assert b.method_config("wilss", 1).auto_old_tags and not b.method_config("ft", 1).auto_old_tags
    two = bench(setting="disjoint")
    two.protocol = replace(two.protocol, task=parse_task("7-2", len(WORLD_CLASSES)))
    assert not two.method_config("wilss", 1).auto_old_tags              # crescent and arrow contrast each other
