"""``benchmark world --sequence``: the forgetting table of a long sequence (WILSS, + HRHF replay, + ILT), at a tiny
scale (32 px scenes, a width-8 base, one inversion step): the rows print, the steps run in turn, the hrhf row alone
replays."""
import pytest
import torch

from models import build_segmenter
from research import recipes, world
from wilss.checkpoint import new_checkpoint, save_checkpoint
from research.cli import main
from research.experiments import LabelledSplit
from wilss.recipes import WORLD_CLASSES

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["--epochs-step", "2", "--batch-size", "4", "--crop-size", "32", "--localizer-channels", "8",
         "--pamr-refine-stride", "0", "--no-localizer-detail", "--replay-images", "2", "--replay-steps", "1",
         "--device", "cpu", "--quiet"]


def tiny_world():
    return (LabelledSplit.from_pairs(world.generate(40, seed=7, size=32, min_objects=1, max_objects=2)),
            LabelledSplit.from_pairs(world.generate(6, seed=8, size=32)))


def test_sequence_prints_old_miou_after_each_step_per_method(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(recipes, "world_splits", tiny_world)
    torch.manual_seed(0)
    base = save_checkpoint(new_checkpoint(build_segmenter(arch="tiny", num_classes=8, width=8, head_channels=16),
                                          list(WORLD_CLASSES[:8])), tmp_path / "base.pt")
    out = tmp_path / "forgetting.md"
    code = main(["benchmark", "world", "--sequence", "7-1-1", "--base", str(base), "--methods", "wilss,hrhf,ilt",
                 "--out", str(out), *SMALL])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "| method | base | old after step 1 | old after step 2 | new (last) | all (last) | train time (s) |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| wilss |", "| hrhf |", "| ilt |"))]
    assert [r.split(" | ")[0] for r in rows[:3]] == ["| wilss", "| hrhf", "| ilt"]
    assert all(len(r.split("|")) == 9 for r in rows[:3])
    assert "| hrhf | 2 | arrow |" in text and "Goals (issue 21" in text and "HRHF old" in text
    assert out.read_text().startswith("### world 7-1-1 disjoint: old mIoU after each step")


def test_sequence_refuses_what_it_cannot_run(tmp_path, capsys):
    code = main(["benchmark", "world", "--sequence", "7-2", "--quiet"])
    assert code == 2 and "at least two weak steps" in capsys.readouterr().err
    code = main(["benchmark", "world", "--sequence", "7-1-1", "--methods", "wilss,mib", "--quiet"])
    assert code == 2 and "not mib" in capsys.readouterr().err


def test_only_the_hrhf_row_replays():
    from research.experiments import Benchmark, Protocol
    from wilss.tasks import parse_task

    train, test = tiny_world()
    cfg = recipes.WORLD_UPDATE.__class__(replay_images=5, replay_steps=3)
    bench = Benchmark(Protocol("world", WORLD_CLASSES, parse_task("7-2", len(WORLD_CLASSES))), train, test,
                      pretrain_cfg=recipes.WORLD_PRETRAIN, update_cfg=cfg)
    assert bench.method_config("wilss").replay_images == 0 and bench.method_config("ilt").replay_images == 0
    assert bench.method_config("ft").replay_images == 0
    hrhf = bench.method_config("hrhf")
    assert (hrhf.replay_images, hrhf.replay_steps) == (5, 3) and hrhf.old_model_prior
    plain = Benchmark(bench.protocol, train, test, pretrain_cfg=recipes.WORLD_PRETRAIN,
                      update_cfg=recipes.WORLD_UPDATE)
    assert plain.method_config("hrhf").replay_images == 64
