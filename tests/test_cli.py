"""``python -m wilss`` (and ``python -m research``'s generate, pretrain, benchmark): bad input ends in one 'error:' line with exit status 2 and nothing written; a tiny
add-class -> predict -> evaluate chain works end to end (CPU, 64 px images, a width-8 network)."""
import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import build_segmenter
from research import recipes, world
from research.cli import main as research_main
from research.cli_bench import quick
from wilss.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint
from wilss.cli import build_parser, main
from wilss.cli_common import update_config
from wilss.cli_update import cam_overlay
from wilss.config import UpdateConfig
from wilss.conventions import distinct_colours, extend_colours, voc_palette

NEW = "triangle"  # world id 3; the tiny checkpoint knows disc (1) and square (2)
FAST = ["--epochs", "2", "--warmup-epochs", "1", "--batch-size", "4", "--crop-size", "64",
        "--localizer-channels", "16", "--device", "cpu", "--quiet"]


RESEARCH = {"generate", "pretrain", "benchmark", "reproduce", "study", "bench"}   # python -m research's commands


def run(argv, capsys):
    """Run ``argv`` through the entry point that has its command (``python -m wilss`` or ``python -m research``)."""
    code = (research_main if str(argv[0]) in RESEARCH else main)([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def make_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_segmenter(arch="tiny", num_classes=3, width=8)
    return save_checkpoint(new_checkpoint(model, ["background", "disc", "square"]), path)


def write_tagged(folder: Path, n: int = 8, tags=None) -> Path:
    """``n`` generated 64 px scenes and tags.csv; default tags: the first half NEW, the rest negatives,
    plus the existing class 'disc' on image 0 (a tag the relaxed setting may use)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, _) in enumerate(world.generate(n, seed=0, size=64)):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
        default = ";".join([NEW] * (i < n // 2) + ["disc"] * (i == 0))
        rows.append((f"{i:02d}.png", default if tags is None else tags(i)))
    with open(folder / "tags.csv", "w", newline="") as f:
        csv.writer(f).writerows([("filename", "tags"), *rows])
    return folder


def write_eval_set(folder: Path, n: int = 3) -> tuple[Path, Path]:
    """Images with masks in the grown model's ids: disc 1, square 2, triangle 3, other shapes background."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[[1, 2, 3]] = [1, 2, 3]
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, (image, mask) in enumerate(world.generate(n, seed=5, size=64)):
        Image.fromarray(image).save(folder / "images" / f"e{i}.png")
        Image.fromarray(lut[mask]).save(folder / "masks" / f"e{i}.png")
    return folder / "images", folder / "masks"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "base.pt")


# ------------------------------------------------------------------------------------------- bad input
def _corrupt(folder):
    write_tagged(folder)
    (folder / "broken.png").write_bytes(b"this is not a png at all")
    with open(folder / "tags.csv", "a") as f:
        f.write("broken.png,\n")


def _unknown_tag(folder):
    write_tagged(folder, tags=lambda i: "cat" if i == 1 else (NEW if i < 4 else ""))


def _empty(folder):
    folder.mkdir()


def _no_negatives(folder):
    write_tagged(folder, tags=lambda i: NEW)


BAD_DATA = {  # case -> (make the folder, --class values, words the message must contain)
    "corrupt image": (_corrupt, [NEW], ["broken.png", "could not be opened"]),
    "unknown tag": (_unknown_tag, [NEW], ["Unknown tag 'cat'"]),
    "class exists": (write_tagged, ["disc"], ["'disc' already exists"]),
    "zero images": (_empty, [NEW], ["No images found"]),
    "bad colour": (write_tagged, [f"{NEW}=#12345"], ["#RRGGBB"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_before_anything_is_written(case, ckpt, tmp_path, capsys):
    make, classes, words = BAD_DATA[case]
    make(tmp_path / "images")
    out = tmp_path / "new.pt"
    argv = ["add-class", "--checkpoint", ckpt, "--images", tmp_path / "images", "--out", out,
            "--snapshot-dir", tmp_path / "snaps", *FAST]
    for name in classes:
        argv += ["--class", name]
    code, _, err = run(argv, capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(w in last for w in words), err
    assert not out.exists() and not (tmp_path / "snaps").exists()


def test_out_equal_to_input_is_refused_and_input_untouched(ckpt, tmp_path, capsys):
    before = ckpt.read_bytes()
    code, _, err = run(["add-class", "--checkpoint", ckpt, "--images", write_tagged(tmp_path / "images"),
                        "--class", NEW, "--out", ckpt, "--overwrite", *FAST], capsys)
    assert code == 2 and err.startswith("error: ") and "input checkpoint" in err
    assert ckpt.read_bytes() == before


def test_existing_out_is_refused(ckpt, tmp_path, capsys):
    out = tmp_path / "taken.pt"
    out.write_bytes(b"precious")
    code, _, err = run(["add-class", "--checkpoint", ckpt, "--images", write_tagged(tmp_path / "images"),
                        "--class", NEW, "--out", out, *FAST], capsys)
    assert code == 2 and err.startswith("error: ") and "already exists" in err
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("argv, base, expected", [
    ([], recipes.WORLD_UPDATE, True),                          # the world recipe reads the stride-4 map
    (["--no-localizer-detail"], recipes.WORLD_UPDATE, False),  # ... unless told not to (networks without one)
    ([], recipes.CAMVID_TINY.update, False),
    (["--localizer-detail"], recipes.CAMVID_TINY.update, True),
])
def test_localizer_detail_switches_both_ways(argv, base, expected, tmp_path):
    args = build_parser().parse_args(["add-class", "--out", str(tmp_path / "new.pt"), *argv])
    assert update_config(args, base).localizer_detail is expected


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "2", "--warmup-epochs", "2"], ["warmup_epochs"]),
    (["--alpha", "1.5"], ["--alpha", "[0, 1]"]),
    (["--snapshot-every", "3"], ["--snapshot-dir"]),
    (["--eval-images", "somewhere"], ["--eval-masks"]),
])
def test_bad_flags_are_one_error_line(argv, words, ckpt, tmp_path, capsys):
    images = write_tagged(tmp_path / "images")
    out = tmp_path / "new.pt"
    code, _, err = run(["add-class", "--checkpoint", ckpt, "--images", images, "--class", NEW, "--out", out,
                        "--quiet", *argv], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and all(w in last for w in words), err
    assert not out.exists()


def test_missing_and_foreign_checkpoints_are_clear_errors(tmp_path, capsys):
    images = write_tagged(tmp_path / "images")
    not_ours = tmp_path / "not_ours.pt"
    torch.save({"weights": torch.zeros(2)}, not_ours)
    for path, words in ((tmp_path / "nope.pt", "does not exist"), (not_ours, "not a wilss checkpoint")):
        code, _, err = run(["add-class", "--checkpoint", path, "--images", images, "--class", NEW,
                            "--out", tmp_path / "o.pt"], capsys)
        assert code == 2 and err.startswith("error: ") and words in err


# ------------------------------------------------------------------------------------------ happy path
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny add-class run with evaluation and snapshots, shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    base = make_checkpoint(root / "base.pt")
    eval_images, eval_masks = write_eval_set(root / "eval")
    out = root / "added.pt"
    code = main([str(a) for a in ["add-class", "--checkpoint", base, "--images", write_tagged(root / "images"),
                                  "--class", NEW, "--out", out, "--eval-images", eval_images,
                                  "--eval-masks", eval_masks, "--snapshot-dir", root / "snaps",
                                  "--snapshot-every", "1", *FAST]])
    return code, root, out


def test_add_class_writes_a_grown_checkpoint_with_history(trained):
    code, root, out = trained
    assert code == 0
    ckpt = load_checkpoint(out)
    assert ckpt.class_names == ["background", "disc", "square", NEW] and ckpt.model.num_classes == 4
    assert np.array_equal(ckpt.colours[3], distinct_colours(ckpt.colours[:3], 1)[0])  # far from those in use
    entry = ckpt.history[-1]
    assert entry["kind"] == "add-class" and entry["classes"] == [NEW] and entry["step"] == 0
    assert entry["num_images"] == 8 and entry["negatives"] == 4 and entry["settings"]["epochs"] == 2
    assert {"eval_mIoU_old", "eval_mIoU_new", "eval_mIoU_all"} <= set(entry["metrics"])
    snaps = sorted(p.name for p in (root / "snaps").iterdir())
    assert "it000001_img0_cam_triangle.png" in snaps and "it000004_img3_pred.png" in snaps
    assert len(snaps) == 4 * 4 * 3  # 4 iterations x 4 images x (cam, pseudo, prediction)


def test_predict_writes_palette_masks_and_refuses_to_overwrite(trained, tmp_path, capsys):
    _, root, out = trained
    image = root / "images" / "00.png"
    code, stdout, _ = run(["predict", "--checkpoint", out, "--input", image, "--out", tmp_path / "pred",
                           "--overlay", "--device", "cpu"], capsys)
    assert code == 0 and f"{NEW}:" in stdout and "#" in stdout
    with Image.open(tmp_path / "pred" / "00_mask.png") as png:
        assert png.mode == "P" and png.size == (64, 64)
        assert np.array(png).max() < 4
    assert (tmp_path / "pred" / "00_overlay.png").is_file()
    before = (tmp_path / "pred" / "00_mask.png").read_bytes()
    code, _, err = run(["predict", "--checkpoint", out, "--input", root / "images", "--out", tmp_path / "pred"],
                       capsys)
    assert code == 2 and "already exist" in err
    assert (tmp_path / "pred" / "00_mask.png").read_bytes() == before
    assert not (tmp_path / "pred" / "01_mask.png").exists()  # checked all before writing any


def test_evaluate_prints_per_class_iou_and_miou(trained, capsys):
    _, root, out = trained
    code, stdout, _ = run(["evaluate", "--checkpoint", out, "--images", root / "eval" / "images",
                           "--masks", root / "eval" / "masks", "--device", "cpu"], capsys)
    assert code == 0
    assert "last added: triangle" in stdout and "(new)" in stdout
    assert any(line.startswith("mIoU old") and "| new" in line and "| all" in line for line in stdout.splitlines())


def test_evaluate_refuses_masks_with_unknown_ids(ckpt, tmp_path, capsys):
    images, masks = write_eval_set(tmp_path / "eval")  # id 3 is unknown to the 3-class base
    code, _, err = run(["evaluate", "--checkpoint", ckpt, "--images", images, "--masks", masks], capsys)
    assert code == 2 and "class ids the model does not have" in err


# ----------------------------------------------------------------------------------------------- world
def test_generate_world_then_refuse_to_write_it_again(tmp_path, capsys):
    out = tmp_path / "world"
    argv = ["generate", "--out", out, "--size", 64, "--n-train", 3, "--n-val", 1, "--n-test", 2]
    code, stdout, _ = run(argv, capsys)
    assert code == 0 and "3 train, 1 val, 2 test" in stdout
    meta = json.loads((out / "world.json").read_text())
    assert [len(meta["splits"][s]) for s in ("train", "val", "test")] == [3, 1, 2]
    assert len(list((out / "test" / "masks").glob("*.png"))) == 2
    before = (out / "world.json").read_text()
    code, _, err = run(argv, capsys)
    assert code == 2 and err.startswith("error: ") and "already" in err
    assert (out / "world.json").read_text() == before


def test_add_class_from_a_world_and_evaluate_it(ckpt, tmp_path, capsys):
    root = tmp_path / "world"
    assert run(["generate", "--out", root, "--size", 64, "--n-train", 24, "--n-val", 0, "--n-test", 3], capsys)[0] == 0
    out = tmp_path / "step1.pt"
    code, stdout, err = run(["add-class", "--world", root, "--checkpoint", ckpt, "--out", out,
                             "--epochs", 1, "--warmup-epochs", 0, "--batch-size", 8, "--crop-size", 64,
                             "--localizer-channels", 16, "--device", "cpu", "--quiet"], capsys)
    assert code == 0, err
    assert "wall time" in stdout and f"wrote {out}" in stdout
    added = load_checkpoint(out)
    assert added.class_names == ["background", "disc", "square", "crescent", "arrow"]
    assert added.history[-1]["metrics"]["eval_images"] == 3  # scored on the world's test split
    code, stdout, _ = run(["evaluate", "--checkpoint", out, "--world", root, "--device", "cpu"], capsys)
    assert code == 0 and "mIoU old" in stdout


def test_world_flags_conflict_with_a_tags_folder(ckpt, tmp_path, capsys):
    code, _, err = run(["add-class", "--world", tmp_path, "--images", tmp_path, "--out", tmp_path / "o.pt"],
                       capsys)
    assert code == 2 and "leave out --images" in err


def test_benchmark_input_errors(tmp_path, capsys):
    code, _, err = run(["benchmark", "camvid", "--data", tmp_path / "nowhere"], capsys)
    assert code == 2 and "CamVid was not found" in err
    camvid = ["benchmark", "camvid", "--data", tmp_path / "nowhere"]
    code, _, err = run(["benchmark", "world", "--arch", "tiny"], capsys)
    assert code == 2 and "for the CamVid benchmark" in err
    code, _, err = run(["benchmark", "world", "--methods", "wilss,unicorn"], capsys)
    assert code == 2 and "subset of wilss,ft,ilt,offline,mib,joint,hrhf" in err
    code, _, err = run(["benchmark", "world", "--methods", "wilss,wilss"], capsys)
    assert code == 2 and "each once" in err
    code, _, err = run(["benchmark", "world", "--quick", "--epochs-step", "3"], capsys)
    assert code == 2 and "leave out --epochs-step" in err
    code, _, err = run([*camvid, "--base", tmp_path / "b.pt", "--save-base", tmp_path / "c.pt"], capsys)
    assert code == 2 and "with --base none is trained" in err
    code, _, err = run(["benchmark", "world", "--size", "native"], capsys)
    assert code == 2 and "for the CamVid benchmark" in err
    code, _, err = run([*camvid, "--size", "180"], capsys)
    assert code == 2 and "--size takes H,W" in err


@pytest.mark.parametrize("arch, size, resize", [(None, None, None), (None, "native", None), (None, (90, 120), (90, 120)),
                                                ("tiny", None, (180, 240)), ("tiny", "native", None)])
def test_benchmark_camvid_size_sets_the_protocols_image_size(tmp_path, arch, size, resize):
    from research.experiment_setup import benchmark_setup

    (tmp_path / "train.txt").write_text("")
    args = argparse.Namespace(dataset="camvid", data=tmp_path, arch=arch, task=None, size=size, encoder=None)
    protocol, *_, title = benchmark_setup(args)
    assert protocol.resize == resize
    assert title.endswith("images native)" if resize is None else f"images {resize[0]}x{resize[1]})")


@pytest.mark.parametrize("flags, no_background", [([], True), (["--background"], False)])
def test_benchmark_camvid_weak_step_defaults_to_no_background_like_add_class(tmp_path, flags, no_background):
    from research.cli import build_parser as research_parser
    from research.experiment_setup import benchmark_setup

    (tmp_path / "train.txt").write_text("")
    args = research_parser().parse_args(["benchmark", "camvid", "--data", str(tmp_path), *flags])
    protocol, _, pretrain_cfg, update_cfg, _ = benchmark_setup(args)
    assert update_config(args, update_cfg).no_background is no_background
    assert protocol.resize is None and pretrain_cfg.epochs == 60   # CamVid's own size, the native table's schedule


def test_pretrain_from_own_pixel_labels_writes_a_base_of_the_datasets_classes(tmp_path, capsys):
    from wilss.checkpoint import load_checkpoint

    assert run(["generate", "--voc-layout", tmp_path / "voc", "--n-train", "8", "--n-val", "4", "--size", "48"],
               capsys)[0] == 0
    flags = ["pretrain", "--data", tmp_path / "voc", "--out", tmp_path / "base.pt", "--epochs", "1",
             "--crop-size", "48", "--batch-size", "4"]
    code, _, err = run([*flags, "--arch", "tiny", "--encoder", "imagenet"], capsys)
    assert code == 2 and "no installed ImageNet weights" in err and not (tmp_path / "base.pt").exists()
    code, out, _ = run([*flags, "--arch", "tiny", "--encoder", "none"], capsys)
    assert code == 0 and "test mIoU over the 9 classes" in out
    ckpt = load_checkpoint(tmp_path / "base.pt")
    assert ckpt.class_names == ["background", "disc", "square", "triangle", "star", "ring", "cross", "hexagon",
                                "crescent", "arrow"]
    assert ckpt.history[-1]["kind"] == "pretrain" and ckpt.history[-1]["settings"]["encoder"] == "none"
    code, _, err = run(["pretrain", "--data", tmp_path / "nowhere", "--out", tmp_path / "b2.pt"], capsys)
    assert code == 2 and "none of the layouts" in err


def test_usage_errors_end_in_one_error_line(capsys):
    code, _, err = run(["add-class", "--epochs", "zero"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: argument --epochs")
    assert run(["--help"], capsys)[0] == 0


# -------------------------------------------------------------------------------------- pure helpers
def test_cam_overlay_and_colours():
    image = np.zeros((5, 6, 3), dtype=np.uint8)
    cam = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    out = cam_overlay(image, cam)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, 2] > out[0, 0, 0] and out[-1, -1, 0] > out[-1, -1, 2]  # jet: blue for 0, red for 1
    palette = voc_palette(256)
    used = np.stack([palette[0], palette[1], palette[3]])  # a custom colour that is VOC's colour 3
    new = extend_colours(used, [None, (1, 2, 3)])
    assert new[1].tolist() == [1, 2, 3]
    assert new[0].tolist() == distinct_colours(np.vstack([used, [1, 2, 3]]), 1)[0].tolist()


def test_quick_divides_epochs_keeping_a_warmup():
    cfg = quick(UpdateConfig(epochs=40, warmup_epochs=5))
    assert (cfg.epochs, cfg.warmup_epochs) == (4, 1)
    assert quick(UpdateConfig(epochs=12, warmup_epochs=3)).epochs == 2


def test_single_class_without_negatives_uses_automatic_old_tags_and_exports_pseudo_labels(ckpt, tmp_path, capsys):
    out, pseudo = tmp_path / "one.pt", tmp_path / "pseudo"
    code, stdout, err = run(["add-class", "--checkpoint", ckpt, "--images",
                             write_tagged(tmp_path / "images", tags=lambda i: NEW), "--class", NEW, "--out", out,
                             "--export-pseudo", pseudo, *FAST], capsys)
    assert code == 0, err
    assert "note: Every image is tagged 'triangle'" in stdout and "automatic relaxed setting" in stdout
    grown = load_checkpoint(out)
    entry = grown.history[-1]
    assert entry["settings"]["auto_old_tags"] is True and entry["negatives"] == 0
    masks = sorted((pseudo / "SegmentationClass").iterdir())
    assert [m.stem for m in masks] == [f"{i:02d}" for i in range(8)]
    assert (pseudo / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == [m.stem for m in masks]
    labelmap = (pseudo / "labelmap.txt").read_text().splitlines()
    assert labelmap[1:] == [f"{n}:{','.join(map(str, grown.colours[i]))}::"
                            for i, n in enumerate(["background", "disc", "square", NEW])]
    assert grown.colours[:3].tolist() == load_checkpoint(ckpt).colours.tolist()   # the base's colours are kept
    image = Image.open(masks[0])
    assert image.mode == "P" and image.size == (64, 64)
    assert set(np.unique(np.array(image))) <= {0, 1, 2, 3}


def test_pseudo_label_export_refuses_a_non_empty_folder(ckpt, tmp_path, capsys):
    (tmp_path / "pseudo").mkdir()
    (tmp_path / "pseudo" / "mine.png").write_bytes(b"keep")
    code, _, err = run(["add-class", "--checkpoint", ckpt, "--images", write_tagged(tmp_path / "images"),
                        "--class", NEW, "--out", tmp_path / "new.pt", "--export-pseudo", tmp_path / "pseudo", *FAST],
                       capsys)
    assert code == 2 and "--export-pseudo" in err and not (tmp_path / "new.pt").exists()
    assert (tmp_path / "pseudo" / "mine.png").read_bytes() == b"keep"


def test_plain_fp32_path_gives_the_same_update(ckpt, tmp_path, capsys):
    """The optimised path (channels-last on CPU) and --plain-fp32 train the same update, to float tolerance."""
    images = write_tagged(tmp_path / "images")
    losses = []
    for name, extra in (("fast.pt", []), ("plain.pt", ["--plain-fp32"])):
        code, _, err = run(["add-class", "--checkpoint", ckpt, "--images", images, "--class", NEW,
                            "--out", tmp_path / name, *FAST, *extra], capsys)
        assert code == 0, err
        metrics = load_checkpoint(tmp_path / name).history[-1]["metrics"]
        losses.append({k: v for k, v in metrics.items() if k.startswith("final_loss_")})
    assert losses[0].keys() == losses[1].keys() and len(losses[0]) == 4   # cls, loc, fd, seg
    assert all(losses[0][k] == pytest.approx(losses[1][k], rel=1e-3, abs=1e-4) for k in losses[0])
