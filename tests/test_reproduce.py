"""``python -m research reproduce voc`` end to end on a generated VOC-layout tree (tiny network, 48 px, 1-2 epochs): the
paper-layout table, the wall time per step, a checkpoint per step whose history holds every step; and bad input."""
import pytest

from research.cli import main
from wilss.checkpoint import load_checkpoint

TINY = ["--arch", "tiny", "--epochs-base", "1", "--epochs-step", "2", "--crop-size", "48", "--batch-size", "8",
        "--device", "cpu", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce") / "voc"
    assert main(["generate", "--voc-layout", str(root), "--n-train", "24", "--n-val", "6", "--size", "48"]) == 0
    return root


def test_reproduce_voc_prints_the_table_and_saves_every_step(tree, tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = run(["reproduce", "voc", "--data", tree, "--task", "5-2", "--setting", "disjoint",
                           "--images-per-step", "8", "--out", out, *TINY], capsys)
    assert code == 0, err
    assert "| method | disjoint 1-5 | disjoint 6-9 | disjoint All |" in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"Joint (pixel labels)", "FT", "WILSS", "Step 0 (base)"} <= set(lines)
    assert lines["Step 0 (base)"].split("|")[3].strip() == "0.0"          # the base knows no new class
    assert "| wilss | 2 | crescent, arrow |" in text and "| ft | 1 | cross, hexagon |" in text
    assert sorted(p.name for p in (out / "disjoint").iterdir()) == [
        "ft_step1.pt", "ft_step2.pt", "joint.pt", "step0_base.pt", "wilss_step1.pt", "wilss_step2.pt"]
    ckpt = load_checkpoint(out / "disjoint" / "wilss_step2.pt")
    assert [h["step"] for h in ckpt.history] == [0, 1, 2] and ckpt.num_classes == 10
    assert ckpt.history[1]["classes"] == ["cross", "hexagon"] and ckpt.history[2]["num_images"] <= 8
    assert ckpt.history[2]["settings"]["task_steps"][0] == ["disc", "square", "triangle", "star", "ring"]
    assert (out / "table.md").read_text().startswith("### VOC 5-2")
    # Never overwrites: the same --out is refused before any work.
    code, _, err = run(["reproduce", "voc", "--data", tree, "--task", "5-2", "--out", out, *TINY], capsys)
    assert code == 2 and "is not empty" in err


def test_reproduce_reuses_a_base(tree, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["reproduce", "voc", "--data", tree, "--task", "5-4", "--methods", "wilss", "--out", out,
                *TINY], capsys)[0] == 0
    code, text, err = run(["reproduce", "voc", "--data", tree, "--task", "5-4", "--methods", "ft",
                           "--base", out / "disjoint" / "step0_base.pt", *TINY], capsys)
    assert code == 0, err
    assert "| base | 0 |" not in text and "| ft | 1 | cross, hexagon, crescent, arrow |" in text


@pytest.mark.parametrize("extra, message", [
    (["--task", "15-5"], "does not fit 9 named classes"),
    (["--task", "5-2", "--methods", "wilss,mib"], "--methods 'wilss,mib'"),
    (["--task", "5-2", "--setting", "both", "--base", "x.pt"], "belongs to one setting"),
    (["--task", "5-2", "--train-split", "train_aug"], "no list for the split 'train_aug'"),
    (["--task", "5-2", "--epochs-step", "2", "--warmup-epochs", "2"], "warmup_epochs"),
    (["--task", "5-2", "--backbone-weights", "w.pth"], "tiny architecture has no ImageNet backbone"),
])
def test_reproduce_bad_input(tree, capsys, extra, message):
    code, out, err = run(["reproduce", "voc", "--data", tree, *TINY, *extra], capsys)
    assert code == 2 and message in err and out == ""


def test_reproduce_wrong_layout(tmp_path, capsys):
    (tmp_path / "JPEGImages").mkdir()
    code, _, err = run(["reproduce", "voc", "--data", tmp_path, "--task", "5-2", *TINY], capsys)
    assert code == 2 and "neither SegmentationClass/ nor SegmentationClassAug/" in err


def test_generate_voc_layout_refuses_test_split_and_used_folder(tree, capsys):
    code, _, err = run(["generate", "--voc-layout", tree.parent / "other", "--n-test", "3"], capsys)
    assert code == 2 and "train and val lists only" in err
    code, _, err = run(["generate", "--voc-layout", tree], capsys)
    assert code == 2 and "is not empty" in err
    assert len((tree / "ImageSets" / "Segmentation" / "train.txt").read_text().split()) == 24   # untouched


def test_reproduce_takes_the_encoder_and_learning_rates_and_prints_per_class_iou(tree, tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = run(["reproduce", "voc", "--data", tree, "--task", "5-4", "--methods", "wilss", "--out", out,
                           "--encoder", "none", "--lr", "0.02", "--encoder-lr", "0.005", "--lr-backbone", "0.002",
                           "--lr-head", "0.03", "--lr-localizer", "0.04", *TINY], capsys)
    assert code == 0, err
    assert "(tiny, encoder: none;" in text and "count as background (MiB's convention)" in text
    assert "Per-class IoU % after the last step (disjoint;" in text
    assert "| method | background | disc | square | triangle | star | ring | cross | hexagon | crescent | arrow |" \
        in text
    per_class = [line for line in text.splitlines() if line.startswith(("| base |", "| wilss |")) and
                 line.count("|") == 12]   # a row of 10 IoU figures
    assert len(per_class) == 2
    base = load_checkpoint(out / "disjoint" / "step0_base.pt").history[0]["settings"]
    assert (base["lr"], base["encoder_lr"]) == (0.02, 0.005)
    step = load_checkpoint(out / "disjoint" / "wilss_step1.pt").history[1]["settings"]
    assert (step["lr_backbone"], step["lr_head"], step["lr_localizer"]) == (0.002, 0.03, 0.04)


@pytest.mark.parametrize("extra, message", [
    (["--arch", "tiny", "--encoder", "imagenet"], "no installed ImageNet weights"),
    (["--arch", "efficientnet_lite0", "--no-imagenet", "--encoder", "imagenet"], "give one of the two"),
    (["--arch", "tiny", "--encoder", "nowhere.pt"], "--encoder nowhere.pt does not exist"),
])
def test_reproduce_bad_encoder(tree, capsys, extra, message):
    code, out, err = run(["reproduce", "voc", "--data", tree, "--task", "5-2", *TINY, *extra], capsys)
    assert code == 2 and message in err and out == ""
