"""Beyond the paper, measured: single-class sequences and the few-image curve run at fixed budgets (tiny network,
32 px world scenes)."""

import pytest

from research import world
from research.cli import main
from research.experiments import Benchmark, LabelledSplit, Protocol
from research.protocol import parse_task
from research.studies import few_image_curve, fixed_budget, format_study, multi_vs_single, single_class_task
from research.world import WORLD_CLASSES
from wilss.checkpoint import new_checkpoint
from wilss.config import PretrainConfig, UpdateConfig

PRETRAIN = PretrainConfig(epochs=1, batch_size=8, crop_size=32, scale_range=(1.0, 1.0), lr=0.05)
UPDATE = UpdateConfig(epochs=10, warmup_epochs=2, batch_size=8, crop_size=32, scale_range=(1.0, 1.0),
                      localizer_channels=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_single_class_task_and_fixed_budget():
    task = parse_task("7-2", len(WORLD_CLASSES))
    assert single_class_task(task).steps == (tuple(range(1, 8)), (8,), (9,))
    cfg = fixed_budget(UPDATE, num_images=20, iterations=30)      # batch 8: 2 iterations an epoch
    assert (cfg.epochs, cfg.warmup_epochs) == (15, 3)                # warm-up keeps its 20 % share
    assert fixed_budget(UPDATE, num_images=5, iterations=3).epochs == 3   # one batch of 5 an epoch
    assert fixed_budget(UPDATE, num_images=500, iterations=1).epochs == 2  # at least a warm-up and a joint epoch


@pytest.fixture(scope="module")
def bench_and_base():
    train = LabelledSplit.from_pairs(world.generate(60, seed=7, size=32, min_objects=1, max_objects=3))
    test = LabelledSplit.from_pairs(world.generate(6, seed=8, size=32))
    protocol = Protocol("world", WORLD_CLASSES, parse_task("7-2", len(WORLD_CLASSES)), "disjoint")
    bench = Benchmark(protocol, train, test, pretrain_cfg=PRETRAIN, update_cfg=UPDATE, device="cpu",
                      arch_options={"width": 8, "head_channels": 16})
    return bench, new_checkpoint(bench.train_base(), protocol.model_class_names(0))


def test_multi_vs_single_splits_one_budget(bench_and_base):
    bench, base = bench_and_base
    rows = multi_vs_single(bench, base, iterations=8)
    assert [r.label for r in rows] == ["base", "WILSS, one multi-class step", "WILSS, 2 single-class steps"]
    assert len(rows[2].row.per_class) == 10
    assert rows[1].images == len(bench.step_indices(1)) and 8 <= rows[1].iterations <= 9
    assert 8 <= rows[2].iterations <= 10                               # 4 (+ rounding) per single-class step
    assert bench.update_cfg == UPDATE                                  # the recipe is restored
    assert "| WILSS, 2 single-class steps |" in format_study(rows, "t")


def test_few_image_curve_limits_images_at_one_budget(bench_and_base):
    bench, base = bench_and_base
    rows = few_image_curve(bench, base, counts=[4, None], iterations=4)
    assert [r.images for r in rows] == [4, len(bench.step_indices(1))]
    assert [r.label for r in rows] == ["WILSS, 4 images", "WILSS, all images"]
    assert rows[0].iterations == 4 and rows[1].iterations >= 4 and bench.images_per_step is None


def test_study_refuses_bad_counts(capsys):
    assert main(["study", "world", "--images", "10,none"]) == 2
    assert "image counts" in capsys.readouterr().err
