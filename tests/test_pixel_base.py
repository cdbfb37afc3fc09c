"""``python -m wilss pretrain --data``: a base from the user's own pixel labels (``wilss.pixel_base``) on a tiny
generated VOC tree: a checkpoint that add-class grows, per-class test IoU printed, and the same weights as the
research harness's ``Benchmark`` path it replaced (CPU, 64 px, the tiny network from scratch)."""
import csv

import pytest
import torch
from PIL import Image

from research import world
from research.cli import main as research_main
from research.experiments import Benchmark, LabelledSplit, Protocol
from wilss.checkpoint import load_checkpoint
from wilss.cli import main
from wilss.config import PretrainConfig, UpdateConfig
from wilss.datasets import read_labelled
from wilss.pixel_base import base_task, train_pixel_base

TREE = ["background", "disc", "square", "triangle", "star", "ring", "cross", "hexagon", "crescent", "arrow"]
SMALL = ["--epochs", "1", "--crop-size", "64", "--batch-size", "4", "--arch", "tiny", "--encoder", "none", "--quiet"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return world.write_voc_tree(tmp_path_factory.mktemp("data") / "voc", n_train=8, n_val=4, size=64)


def write_tagged(folder, n=8):
    """``n`` generated scenes, the first half tagged with a class the base does not know ('blob')."""
    folder.mkdir(parents=True)
    rows = []
    for i, (image, _) in enumerate(world.generate(n, seed=1, size=64)):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
        rows.append((f"{i:02d}.png", "blob" if i < n // 2 else ""))
    with open(folder / "tags.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "tags"), *rows])
    return folder


def test_product_pretrain_data_writes_a_base_that_add_class_grows(tree, tmp_path, capsys):
    base = tmp_path / "base.pt"
    assert main(["pretrain", "--data", str(tree), "--out", str(base), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "test mIoU over the 9 classes" in out
    per_class = next(line for line in out.splitlines() if line.startswith("per class IoU %: "))
    assert all(f"{name} " in per_class for name in TREE)
    ckpt = load_checkpoint(base)
    assert ckpt.class_names == TREE and ckpt.input_side == 64
    step = ckpt.history[-1]
    assert step["kind"] == "pretrain" and step["settings"]["encoder"] == "none" and "test_mIoU" in step["metrics"]
    grown = tmp_path / "grown.pt"
    assert main(["add-class", "--checkpoint", str(base), "--images", str(write_tagged(tmp_path / "images")),
                 "--class", "blob", "--out", str(grown), "--epochs", "2", "--warmup-epochs", "1", "--batch-size",
                 "4", "--crop-size", "64", "--localizer-channels", "16", "--device", "cpu", "--quiet"]) == 0
    assert load_checkpoint(grown).class_names == TREE + ["blob"]


def test_pretrain_bad_input(tree, tmp_path, capsys):
    flags = ["pretrain", "--out", str(tmp_path / "b.pt"), "--epochs", "1"]
    assert main([*flags, "--data", str(tmp_path / "nowhere")]) == 2
    assert "none of the layouts" in capsys.readouterr().err
    assert main([*flags, "--data", str(tree), "--arch", "tiny", "--encoder", "imagenet"]) == 2
    assert "no installed ImageNet weights" in capsys.readouterr().err
    assert main([*flags, "--data", str(tree), "--tags", str(tree)]) == 2   # one source
    assert not (tmp_path / "b.pt").exists()


def test_research_pretrain_data_is_the_product_command(tree, tmp_path, capsys):
    assert research_main(["pretrain", "--data", str(tree), "--out", str(tmp_path / "r.pt"), *SMALL]) == 0
    assert main(["pretrain", "--data", str(tree), "--out", str(tmp_path / "p.pt"), *SMALL]) == 0
    research, product = (load_checkpoint(tmp_path / name) for name in ("r.pt", "p.pt"))
    for key, value in research.model.state_dict().items():
        assert torch.equal(value, product.model.state_dict()[key]), key
    assert research.history[-1]["metrics"] == product.history[-1]["metrics"]


def test_same_weights_as_the_benchmark_path_it_replaced(tree):
    """The product trainer against ``Benchmark.train_base`` (the research path ``pretrain --data`` took before):
    same seed, same weights, same test mIoU."""
    source = read_labelled(tree)
    cfg = PretrainConfig(epochs=1, lr=0.05, batch_size=4, crop_size=64, scale_range=(0.75, 1.5))
    product = train_pixel_base(source, cfg, arch="tiny")
    protocol = Protocol(name="tree", dataset_classes=source.classes, task=base_task(source),
                        ignore_ids=source.ignore_ids, eval_batch_size=1)
    bench = Benchmark(protocol, LabelledSplit.from_pairs(source.train, source.ignore_ids),
                      LabelledSplit.from_pairs(source.test, source.ignore_ids), pretrain_cfg=cfg,
                      update_cfg=UpdateConfig(), arch="tiny")
    model = bench.train_base()
    row = bench.score("base", model, 0.0, step=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), product.checkpoint.model.state_dict()[key].cpu()), key
    assert product.miou == pytest.approx(row.new, nan_ok=True)
    assert product.per_class == pytest.approx(row.per_class, nan_ok=True)
    assert product.num_images == len(bench.base_indices())
