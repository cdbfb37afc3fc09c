"""Step 0 from image tags alone (wilss.tags_base): the stochastic gate, the pseudo ground truth, `pretrain --tags`
giving a checkpoint that add-class grows, and (slow) that the recipe learns to segment a small generated world."""
from pathlib import Path

import numpy as np
import pytest
import torch

from models import build_segmenter
from wilss.checkpoint import load_checkpoint
from wilss.config import TagsBaseConfig
from wilss.conventions import IGNORE_INDEX
from wilss.tags_base import GatedScores, pseudo_ground_truth, stochastic_gate, tags_losses, train_tags_base
from wilss.training_data import TagDataset

from test_cli import FAST, NEW, run, write_tagged


def tiny(num_classes: int = 3):
    torch.manual_seed(0)
    return build_segmenter(arch="tiny", num_classes=num_classes, width=8, head_channels=16)


def test_the_gate_mixes_at_random_in_training_and_is_its_expectation_at_test():
    torch.manual_seed(0)
    deep, shallow = torch.randn(2, 3, 40, 40), torch.randn(2, 3, 40, 40)
    mixed = stochastic_gate(deep, shallow, 0.3, training=True)
    took_shallow = torch.isclose(mixed, shallow)
    assert 0.25 < took_shallow.float().mean() < 0.35                      # r ~ Bernoulli(0.3), element by element
    assert torch.allclose(mixed[~took_shallow], ((deep - 0.3 * shallow) / 0.7)[~took_shallow])
    mean = torch.stack([stochastic_gate(deep, shallow, 0.3, training=True) for _ in range(400)]).mean(0)
    assert (mean - deep).abs().mean() < 0.05                               # E[x] = x_deep
    assert torch.equal(stochastic_gate(deep, shallow, 0.3, training=False), deep)
    assert torch.equal(stochastic_gate(deep, shallow, 0.0, training=True), deep)


def test_the_gated_network_is_the_plain_one_at_test_time():
    model = tiny()
    net = GatedScores(model, 0.3)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(images), model.decode(model.encode(images)))
        net.train()
        assert not torch.allclose(net(images), model.decode(model.encode(images)))
    model.detail_key = None
    with pytest.raises(ValueError, match="no detail map"):
        GatedScores(model, 0.3)


def test_pseudo_ground_truth_never_names_an_untagged_class():
    torch.manual_seed(0)
    images, scores = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 4, 4) * 3
    tags = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    labels = pseudo_ground_truth(images, scores, tags, stride=4, iterations=2)
    assert labels.shape == (2, 8, 8)
    named = set(labels[0].unique().tolist()) | set(labels[1].unique().tolist())
    assert 2 not in named and 1 not in set(labels[1].unique().tolist()) and named <= {0, 1, IGNORE_INDEX}


def test_losses_by_phase_and_a_short_run(one_thread):
    images = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(8)]
    tags = np.array([[i % 2, (i // 2) % 2] for i in range(8)], np.float32)
    cfg = TagsBaseConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=32, lr=0.01, encoder_lr=0.01)
    net = GatedScores(tiny(), cfg.gate_rate).train()
    x, y = torch.randn(4, 3, 32, 32), torch.from_numpy(tags[:4])
    assert set(tags_losses(net, x, y, "warmup", cfg)) == {"cls"}
    assert set(tags_losses(net, x, y, "joint", cfg)) == {"cls", "seg"}
    model = tiny()
    progress = list(train_tags_base(model, TagDataset(images, tags), cfg, device="cpu"))
    assert [p.phase for p in progress] == ["warmup"] * 2 + ["joint"] * 2
    assert all(np.isfinite(v) for p in progress for v in p.losses.values())
    assert model.activation == "softmax" and not model.training


@pytest.mark.parametrize("bad", [{"warmup_epochs": 20}, {"gate_rate": 1.0}, {"pamr_stride": 0}])
def test_tags_base_config_refuses_bad_settings(bad):
    with pytest.raises(ValueError):
        TagsBaseConfig(**bad)


@pytest.mark.slow   # two full commands
def test_pretrain_from_tags_then_add_class_grows_it(tmp_path, capsys):
    folder = write_tagged(tmp_path / "tagged", tags=lambda i: ["disc", "square", "disc;square", ""][i % 4])
    base = tmp_path / "tags_base.pt"
    code, out, err = run(["pretrain", "--tags", folder, "--out", base, "--arch", "tiny", "--epochs", "2",
                          "--batch-size", "4", "--crop-size", "64", "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert "disc (4)" in out and "square (4)" in out
    ckpt = load_checkpoint(base)
    assert ckpt.class_names == ["background", "disc", "square"] and ckpt.model.activation == "softmax"
    assert ckpt.history[0]["settings"]["supervision"] == "tags"
    grown = tmp_path / "grown.pt"
    code, _, err = run(["add-class", "--checkpoint", base, "--images", write_tagged(tmp_path / "new"),
                        "--class", NEW, "--out", grown, *FAST], capsys)
    assert code == 0, err
    assert load_checkpoint(grown).class_names == ["background", "disc", "square", NEW]
    code, _, err = run(["pretrain", "--tags", folder, "--data", folder, "--out", tmp_path / "x.pt"], capsys)
    assert code == 2 and "--tags trains from tagged images alone" in err


def test_the_benchmark_scores_the_tags_only_base_next_to_the_pixel_base():
    import argparse
    from dataclasses import replace

    from research import recipes, world
    from research.cli_tags import tags_base, tags_summary
    from research.experiments import Benchmark, LabelledSplit

    train = LabelledSplit.from_pairs(world.generate(8, seed=0, size=32))
    test = LabelledSplit.from_pairs(world.generate(4, seed=1, size=32))
    pixel_cfg = replace(recipes.WORLD_PRETRAIN, epochs=1, batch_size=4, crop_size=32)
    bench = Benchmark(recipes.world_protocol(), train, test, pretrain_cfg=pixel_cfg, update_cfg=recipes.WORLD_UPDATE,
                      device="cpu", arch_options={"width": 8})
    pixel = bench.train_base()
    bench.score("base", pixel, 0.0)
    model = tags_base(bench, pixel, argparse.Namespace(quick=True))   # 3 epochs of the recipe, 1 of warm-up
    assert [r.method for r in bench.rows] == ["pixel base", "base"]
    assert model.num_classes == pixel.num_classes and model.activation == "softmax"
    bench.rows[0].old, bench.rows[1].old = 40.0, 30.0
    assert "= 75 % of the pixel base's 40.0" in tags_summary(bench.rows)[-1]


def test_tags_on_nearly_every_image_are_warned_about():
    from wilss.tags import TaggedSet
    from wilss.tags_base import check_tags_only
    tags = [{"road", "car"}] * 9 + [{"car"}]
    tagged = TaggedSet(paths=[Path(f"{i}.png") for i in range(10)], tags=tags)
    classes, note = check_tags_only(tagged)
    assert classes == ["car", "road"]
    assert note.startswith("car, road tag every or nearly every image")
    tagged = TaggedSet(paths=[Path(f"{i}.png") for i in range(10)], tags=[{"road"}] * 8 + [set()] * 2)
    assert check_tags_only(tagged)[1].startswith("2 image(s) carry no tag")
