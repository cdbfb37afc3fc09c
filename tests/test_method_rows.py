"""The benchmark's rows for the other incremental methods (ILT, the offline pipeline, MiB with masks) on a tiny
world, and the shortened schedules of ``benchmark --epochs-step / --epochs-base``."""
import argparse
import math

import numpy as np
import pytest

from research import world
from research.experiment_setup import shortened_schedules, with_epochs
from research.experiments import Benchmark, LabelledSplit, Protocol
from research.protocol import parse_task
from research.world import WORLD_CLASSES
from wilss.config import ILT_OUTPUT_DISTILLATION, PretrainConfig, UpdateConfig

PRETRAIN = PretrainConfig(epochs=1, batch_size=8, crop_size=32, scale_range=(1.0, 1.0), lr=0.05)
UPDATE = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=8, crop_size=32, scale_range=(1.0, 1.0),
                      localizer_channels=8)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ilt_offline_and_mib_rows_on_a_tiny_world():
    train = LabelledSplit.from_pairs(world.generate(32, seed=7, size=32, min_objects=1, max_objects=3))
    test = LabelledSplit.from_pairs(world.generate(6, seed=8, size=32))
    protocol = Protocol("world", WORLD_CLASSES, parse_task("7-2", len(WORLD_CLASSES)), "disjoint")
    bench = Benchmark(protocol, train, test, pretrain_cfg=PRETRAIN, update_cfg=UPDATE, device="cpu",
                      arch_options={"width": 8, "head_channels": 16})
    assert bench.method_config("ilt").output_distillation == ILT_OUTPUT_DISTILLATION
    assert bench.method_config("wilss").output_distillation == 0.0   # defaults stay WILSON's
    seen = []
    bench.on_progress = lambda name, p: seen.append((name, p.phase))
    rows = bench.run(methods=("ilt", "offline", "mib"))
    assert [r.method for r in rows] == ["base", "ilt", "offline", "mib"]
    assert all(not math.isnan(r.all) and len(r.per_class) == 10 for r in rows)
    assert {phase for name, phase in seen if name == "offline"} == {"warmup", "mib"}
    assert {phase for name, phase in seen if name == "mib"} == {"mib"}
    assert ("ilt", "joint") in seen


def test_shortened_schedules_scale_the_warmup():
    cfg = UpdateConfig(epochs=40, warmup_epochs=8)
    assert (with_epochs(cfg, 10).epochs, with_epochs(cfg, 10).warmup_epochs) == (10, 2)
    assert with_epochs(cfg, 2).warmup_epochs == 1 and with_epochs(cfg, 1).warmup_epochs == 0
    assert with_epochs(PretrainConfig(epochs=30), 5).epochs == 5
    args = argparse.Namespace(quick=False, epochs_step=4, epochs_base=None)
    pre, upd, title = shortened_schedules(args, PretrainConfig(epochs=30), cfg, "world")
    assert (pre.epochs, upd.epochs, upd.warmup_epochs) == (30, 4, 1) and title == "world (schedule: steps 4 epochs)"
    np.testing.assert_equal(shortened_schedules(argparse.Namespace(quick=False, epochs_step=None, epochs_base=None),
                                                PretrainConfig(), cfg, "t")[2], "t")


@pytest.mark.slow
def test_benchmark_command_runs_the_new_rows_on_a_small_world(monkeypatch, tmp_path, capsys):
    from research import recipes
    from research.cli import main

    small = (LabelledSplit.from_pairs(world.generate(24, seed=1, size=64, min_objects=1, max_objects=3)),
             LabelledSplit.from_pairs(world.generate(4, seed=2, size=64)))
    monkeypatch.setattr(recipes, "world_splits", lambda: small)
    out = tmp_path / "table.md"
    code = main(["benchmark", "world", "--methods", "ilt,offline,mib", "--epochs-step", "1", "--epochs-base", "1",
                 "--device", "cpu", "--quiet", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "(schedule: steps 1 epochs, base and joint 1 epochs)" in text
    assert [line.split("|")[1].strip() for line in out.read_text().splitlines()[4:8]] == ["base", "ilt", "offline",
                                                                                          "mib"]
