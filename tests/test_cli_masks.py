"""``add-class --masks``: a MiB step from the user's pixel masks; bad masks end in one error line, nothing written."""
import numpy as np
import pytest
import torch
from PIL import Image

from research import world
from wilss.checkpoint import load_checkpoint
from wilss.cli import build_parser
from wilss.cli_common import update_config
from wilss.config import UpdateConfig
from test_cli import FAST, NEW, make_checkpoint, run, write_tagged

pytestmark = pytest.mark.usefixtures("one_thread")


def write_masks(folder, n=8, *, skip=(), extra_id=None):
    """Masks of ``write_tagged``'s images in the grown model's ids: disc 1, square 2, triangle (new) 3."""
    folder.mkdir(parents=True)
    lut = np.zeros(256, dtype=np.uint8)
    lut[[1, 2, 3, 255]] = [1, 2, 3, 255]
    for i, (_, mask) in enumerate(world.generate(n, seed=0, size=64)):
        if i in skip:
            continue
        ids = lut[mask]
        if extra_id is not None and i == 2:
            ids[0, 0] = extra_id
        Image.fromarray(ids).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "base.pt")


@pytest.mark.parametrize("masks, extra, words", [
    (dict(skip=(3, 5)), [], ["2 of the 8 images have no mask", "03.png", "05.png"]),
    (dict(extra_id=7), [], ["name no class", "'02.png' has [7]", "3 triangle (new)"]),
    (dict(), ["--export-pseudo", "pseudo"], ["a step with --masks has none"]),
])
def test_bad_masks_are_refused_before_anything_is_written(ckpt, tmp_path, capsys, masks, extra, words):
    out = tmp_path / "new.pt"
    argv = ["add-class", "--checkpoint", ckpt, "--images", write_tagged(tmp_path / "images"), "--class", NEW,
            "--masks", write_masks(tmp_path / "masks", **masks), "--out", out, *FAST,
            *[tmp_path / e if e == "pseudo" else e for e in extra]]
    code, _, err = run(argv, capsys)
    assert code == 2 and err.startswith("error:") and all(w in err for w in words), err
    assert not out.exists() and not (tmp_path / "pseudo").exists()


def test_add_class_with_masks_trains_mib_and_records_it(ckpt, tmp_path, capsys):
    out = tmp_path / "new.pt"
    images = write_tagged(tmp_path / "images", tags=lambda i: "")   # tags come from the masks
    code, stdout, err = run(["add-class", "--checkpoint", ckpt, "--images", images, "--class", NEW, "--masks",
                             write_masks(tmp_path / "masks"), "--out", out, *FAST, "--output-distillation", "1"],
                            capsys)
    assert code == 0, err
    assert "of MiB on their masks" in stdout
    result = load_checkpoint(out)
    assert result.class_names == ["background", "disc", "square", NEW] and result.model.activation == "softmax"
    entry = result.history[-1]
    assert entry["method"] == "mib" and entry["settings"]["output_distillation"] == 1.0
    assert set(entry["metrics"]) >= {"final_loss_ce", "final_loss_kd", "final_loss_od"}
    assert torch.isfinite(result.model(torch.zeros(1, 3, 64, 64))).all()


def test_ilt_flags_map_onto_the_update_config(tmp_path):
    args = build_parser().parse_args(["add-class", "--out", str(tmp_path / "o.pt"), "--output-distillation", "100",
                                      "--freeze-encoder", "--unbiased-kd", "5"])
    cfg = update_config(args, UpdateConfig())
    assert (cfg.output_distillation, cfg.freeze_encoder, cfg.unbiased_kd) == (100.0, True, 5.0)
    default = update_config(build_parser().parse_args(["add-class", "--out", str(tmp_path / "o.pt")]), UpdateConfig())
    assert (default.output_distillation, default.freeze_encoder) == (0.0, False)
