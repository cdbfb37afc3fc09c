"""Data without a background class, recorded in the checkpoint: ``pretrain --data`` on a CamVid-layout tree records
it, old files and the shipped base read as having one, and an update on such a base defaults ``no_background`` to
on (the CLI's ``--background`` / ``--no-background`` and the app's box override it either way)."""
import pytest
import torch

from models import DEFAULT_CHECKPOINT, build_segmenter
from test_evaluate_data import camvid  # noqa: F401  (the CamVid-layout fixture)
from test_pixel_base import SMALL, write_tagged
from wilss.checkpoint import CheckpointError, load_checkpoint, new_checkpoint, save_checkpoint
from wilss.cli import main
from wilss.config import UpdateConfig
from wilss.datasets import CAMVID_CLASSES
from wilss.methods import settle_background

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

GROW = ["--class", "blob", "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "4", "--crop-size", "64",
        "--localizer-channels", "16", "--device", "cpu", "--quiet"]


def tiny(background: bool = True):
    torch.manual_seed(0)
    return new_checkpoint(build_segmenter(arch="tiny", num_classes=3, width=8), ["background", "Sky", "Road"],
                          background=background)


def test_the_field_round_trips_and_old_files_have_a_background(tmp_path):
    assert load_checkpoint(save_checkpoint(tiny(False), tmp_path / "no.pt")).background is False
    assert load_checkpoint(save_checkpoint(tiny(), tmp_path / "yes.pt")).background is True
    payload = torch.load(tmp_path / "no.pt", weights_only=True)
    del payload["background"]                          # a file written before the field
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").background is True
    assert load_checkpoint(DEFAULT_CHECKPOINT).background is True
    torch.save({**payload, "background": "no"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="'background' must be true or false"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("background,cfg_value,chosen,on,said", [
    (False, False, None, True, "so the no-background option is on"),   # the base's default
    (False, False, False, False, "but the no-background option is off"),
    (False, False, True, True, "as set"),
    (True, False, None, False, ""),                                    # the usual case: nothing said
    (True, True, None, True, "though the base's checkpoint records data with a background"),
    (True, False, True, True, "though the base's checkpoint records data with a background"),
])
def test_settle_background(background, cfg_value, chosen, on, said):
    cfg, note = settle_background(background, UpdateConfig(no_background=cfg_value), chosen, note="Before.")
    assert cfg.no_background is on
    assert note.startswith("Before.") and said in note and (said or note == "Before.")


def test_pretrain_on_camvid_records_no_background_and_add_class_defaults_to_it(camvid, tmp_path, capsys):  # noqa: F811
    base = tmp_path / "base.pt"
    assert main(["pretrain", "--data", str(camvid), "--out", str(base), *SMALL]) == 0
    assert "no background class in this data" in capsys.readouterr().out
    ckpt = load_checkpoint(base)
    assert ckpt.class_names == ["background", *CAMVID_CLASSES] and ckpt.background is False
    images = write_tagged(tmp_path / "images")
    grown = tmp_path / "grown.pt"
    assert main(["add-class", "--checkpoint", str(base), "--images", str(images), "--out", str(grown), *GROW]) == 0
    assert "so the no-background option is on" in capsys.readouterr().out
    result = load_checkpoint(grown)
    assert result.background is False                                   # inherited from the base
    assert result.steps[-1].update_config().no_background is True
    kept = tmp_path / "kept.pt"
    assert main(["add-class", "--checkpoint", str(base), "--images", str(images), "--out", str(kept), "--background",
                 *GROW]) == 0
    assert "but the no-background option is off" in capsys.readouterr().out
    assert load_checkpoint(kept).steps[-1].update_config().no_background is False


def test_no_background_flag_keeps_its_meaning_on_a_base_with_background(tmp_path, capsys):
    from wilss.cli import build_parser
    from wilss.cli_update import plan_from_folder

    base = save_checkpoint(tiny(), tmp_path / "base.pt")
    images = write_tagged(tmp_path / "images")
    argv = ["add-class", "--checkpoint", str(base), "--images", str(images), "--out", str(tmp_path / "o.pt"), *GROW]
    assert plan_from_folder(build_parser().parse_args(argv)).cfg.no_background is False
    plan = plan_from_folder(build_parser().parse_args([*argv, "--no-background"])).plan
    assert plan.cfg.no_background is True and "though the base's checkpoint records" in plan.note


def test_app_box_and_plan_follow_the_version(tmp_path):
    from app.update import plan_update
    from app.views import architecture_markdown
    from wilss.tags import read_tagged_folder

    base = tiny(False)
    tagged = read_tagged_folder(write_tagged(tmp_path / "images"))
    specs = [("blob", "#ff8000")]
    assert plan_update("v000", base, tagged, specs, UpdateConfig(), source="x").cfg.no_background is True
    off = plan_update("v000", base, tagged, specs, UpdateConfig(), source="x", no_background=False)
    assert off.cfg.no_background is False and "off, as set" in off.note
    assert "**Background class in its data:** no" in architecture_markdown(base)
    assert "**Background class in its data:** yes" in architecture_markdown(tiny())


def test_app_box_starts_from_the_loaded_version(tmp_path, monkeypatch):
    from app.handlers import Handlers
    from app.session import AppConfig

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))
    for background in (False, True):
        path = save_checkpoint(tiny(background), tmp_path / f"base{background}.pt")
        handlers = Handlers(AppConfig(workdir=tmp_path / f"work{background}", checkpoint=path))
        assert handlers.no_background_box(None).value is (not background)
