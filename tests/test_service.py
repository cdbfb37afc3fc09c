"""The service layer both faces call (``wilss.service``): a request's checks, one update from request to checkpoint,
a history that says how to repeat its step, the same settings from the CLI and the app, scoring and ONNX export."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from app.update import ADVANCED, make_config
from models import build_segmenter
from research import world
from wilss import service
from wilss.checkpoint import HistoryEntry, load_checkpoint, new_checkpoint, save_checkpoint
from wilss.cli import build_parser, main
from wilss.cli_common import UPDATE_SWITCHES, UPDATE_VALUE_FLAGS, update_config
from wilss.config import UpdateConfig, to_dict
from wilss.conventions import distinct_colours
from wilss.data import DataError
from wilss.recipes import DEMO_UPDATE
from wilss.scoring import checked_eval_set
from wilss.tags import TaggedSet

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NAMES = ["background", "disc", "square"]
TINY = UpdateConfig(epochs=2, warmup_epochs=1, batch_size=4, crop_size=64, localizer_channels=16)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return new_checkpoint(build_segmenter(arch="tiny", num_classes=3, width=8), NAMES, input_side=64)   # its images


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """8 generated 64 px scenes: the first 4 tagged 'triangle' (image 0 also 'disc'), the rest negatives."""
    folder = tmp_path_factory.mktemp("tagged")
    paths, tags = [], []
    for i, (image, _) in enumerate(world.generate(8, seed=0, size=64)):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
        paths.append(folder / f"{i:02d}.png")
        tags.append(({"triangle"} if i < 4 else set()) | ({"disc"} if i == 0 else set()))
    return TaggedSet(tuple(paths), tuple(tags))


# ----------------------------------------------------------------------------------------------- validate
@pytest.mark.parametrize("classes, words", [
    ([], "empty"), ([("  ", None)], "empty"), ([("disc", None)], "already exists"),
    ([("triangle", "orange")], "#RRGGBB"), ([("moon", None)], "Unknown tag 'triangle'"),
    ([("triangle", None), ("triangle", None)], "given twice")])
def test_validate_refuses_bad_requests_with_the_faces_messages(base, tagged, classes, words):
    with pytest.raises(DataError, match=words):
        service.UpdateRequest(base, tagged, classes, TINY).validate()


def test_validate_refuses_no_images_and_classes_without_positives(base, tagged):
    with pytest.raises(DataError, match="no images"):
        service.UpdateRequest(base, TaggedSet((), ()), [("triangle", None)], TINY).validate()
    with pytest.raises(DataError, match="'star' has no images tagged"):
        service.UpdateRequest(base, tagged, [("triangle", None), ("star", None)], TINY).validate()


def test_validate_resolves_colours_and_settles_negatives(base, tagged):
    plan = service.UpdateRequest(base, tagged, [("triangle", None)], TINY).validate()
    assert plan.class_names == NAMES + ["triangle"] and plan.columns == ["disc", "square", "triangle"]
    assert plan.new_colours.tolist() == distinct_colours(base.colours, 1).tolist() and plan.note == ""
    assert tuple(plan.colours[-1]) == tuple(plan.new_colours[0]) and plan.cfg == TINY
    plan = service.UpdateRequest(base, tagged, [("triangle", "#FF8000")], TINY).validate()
    assert plan.new_colours.tolist() == [[255, 128, 0]]
    positives = TaggedSet(tagged.paths[:4], ({"triangle"},) * 4)
    plan = service.UpdateRequest(base, positives, [("triangle", (1, 2, 3))], TINY).validate()
    assert plan.cfg.auto_old_tags and "no negatives" in plan.note and not TINY.auto_old_tags
    plan = service.UpdateRequest(base, positives, [("triangle", None)], TINY, auto_negatives=False).validate()
    assert plan.cfg == TINY and plan.note == ""


def test_validate_switches_the_detail_localizer_off_for_a_network_without_a_detail_map(base, tagged):
    from dataclasses import replace

    with_detail = replace(TINY, localizer_detail=True)
    assert service.UpdateRequest(base, tagged, [("triangle", None)], with_detail).validate().cfg == with_detail
    model = build_segmenter(arch="tiny", num_classes=3, width=8)
    model.detail_key = None        # as torchvision's networks, which name no detail map
    other = new_checkpoint(model, NAMES)
    plan = service.UpdateRequest(other, tagged, [("triangle", None)], with_detail).validate()
    assert plan.cfg == TINY and "no detail map" in plan.note


# ---------------------------------------------------------------------------------------------- run_update
def test_run_update_yields_progress_and_a_checkpoint_that_says_how_to_repeat_it(base, tagged, tmp_path):
    request = service.UpdateRequest(base, tagged, [("triangle", "#ff8000")], TINY, base_name="base.pt",
                                    source="test images")
    run = service.run_update(request, device="cpu", snapshot_indices=[0], snapshot_every=2)
    with pytest.raises(RuntimeError, match="not finished"):
        run.checkpoint()
    progress = list(run)
    assert [p.iteration for p in progress] == list(range(1, progress[-1].total_iterations + 1))
    assert progress[-1].total_iterations == 4 and any(p.snapshots for p in progress)
    assert all(np.isfinite(v) for v in progress[-1].losses.values())
    ckpt = run.checkpoint({"eval_images": 0})
    assert ckpt.class_names == NAMES + ["triangle"] and ckpt.colours[-1].tolist() == [255, 128, 0]
    assert ckpt.model.num_classes == 4 and base.model.num_classes == 3   # the base is untouched
    # on the CPU the result is the run's own network (no second copy in memory), in eval mode, and stays so when
    # the Review tab reads the run's CAMs after it finished
    assert ckpt.model is run.update.model and not ckpt.model.training
    before = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    run.update.snapshots()
    assert not ckpt.model.training and all(torch.equal(before[k], v) for k, v in ckpt.model.state_dict().items())
    path = save_checkpoint(ckpt, tmp_path / "grown.pt")
    entry = load_checkpoint(path).steps[-1]
    assert (entry.kind, entry.classes, entry.num_images, entry.negatives) == ("add-class", ["triangle"], 8, 4)
    assert (entry.step, entry.source, entry.base_checkpoint) == (0, "test images", "base.pt")
    assert entry.tag_counts == {"disc": 1, "triangle": 4} and entry.tool is None and entry.rejected is None
    assert entry.metrics["eval_images"] == 0 and "final_loss_cls" in entry.metrics
    assert entry.update_config() == TINY     # the checkpoint says exactly how to repeat its step
    assert load_checkpoint(path).last_added == ["triangle"]


def test_stopping_a_run_early_leaves_no_result(base, tagged):
    run = service.run_update(service.UpdateRequest(base, tagged, [("triangle", None)], TINY), device="cpu")
    for _ in run:
        break
    assert not run.finished
    with pytest.raises(RuntimeError):
        run.checkpoint()


# ------------------------------------------------------------------------------------------------- history
def test_history_entries_of_older_files_still_load_and_keep_their_keys(base, tmp_path):
    old = [{"step": 0, "kind": "pretrain", "classes": ["disc", "square"], "num_images": 10,
            "settings": {"epochs": 1}, "metrics": {"test_mIoU": 50.0}, "date": "2024-05-01T10:00:00+00:00"},
           {"step": 1, "kind": "add-class", "classes": ["x"], "num_images": 3, "settings": {"method": "wilss"},
            "seconds": 1.5, "a_key_of_the_future": [1, 2]},
           {"kind": "pretrain"}]   # the bare minimum: missing keys get empty values
    ckpt = new_checkpoint(base.model, NAMES)
    ckpt.history = [dict(h) for h in old]
    loaded = load_checkpoint(save_checkpoint(ckpt, tmp_path / "old.pt"))
    assert loaded.history == old
    steps = loaded.steps
    assert steps[0].to_dict() == old[0] and steps[1].seconds == 1.5
    assert steps[1].extra == {"a_key_of_the_future": [1, 2]} and steps[1].to_dict()["a_key_of_the_future"] == [1, 2]
    assert steps[1].update_config() == UpdateConfig()   # unknown setting keys are ignored
    assert (steps[2].classes, steps[2].num_images, steps[2].settings) == ([], 0, {})
    assert loaded.last_added == ["x"]


def test_history_entry_serialises_only_what_is_set():
    entry = HistoryEntry("add-class", ["x"], 4, to_dict(TINY), {"m": 1.0}, step=2, tool="app", rejected=[])
    stored = json.loads(json.dumps(entry.to_dict()))
    assert list(stored)[:7] == list(HistoryEntry.REQUIRED)
    assert stored["tool"] == "app" and stored["rejected"] == [] and "negatives" not in stored
    assert HistoryEntry.from_dict(stored) == entry


# ------------------------------------------------------------------------------------------ the two faces
def test_both_faces_offer_the_same_update_settings():
    cli = {field for _, field, *_ in UPDATE_VALUE_FLAGS} | {field for _, field, *_ in UPDATE_SWITCHES}
    assert cli == set(service.UPDATE_OPTIONS) == {name for name, *_ in ADVANCED}


WANTED = dict(epochs=6, warmup_epochs=2, batch_size=4, crop_size=96, lr_backbone=0.002, lr_head=0.02,
              lr_localizer=0.03, localizer_channels=32, localizer_detail=True, focal_gamma=2.0, focal_lambda=0.05,
              alpha=0.25, feature_distillation=0.5, seed=3, mib_init=False, relaxed=True, auto_old_tags=True,
              drop_unlocalized=True, pamr_self_training=True, pamr_refine_stride=4, pamr_refine_iterations=12,
              pamr_refine_fine_iterations=2, output_distillation=100.0, freeze_encoder=True, unbiased_kd=5.0,
              new_on_old_background=True, no_background=True, freeze_encoder_bn=False,
              old_at_head_resolution=False,
              region_prior="slic", region_segments=300, region_scale=20.0, region_weight=0.5, replay_images=8,
              replay_classes="disc,square", replay_steps=50, replay_weight=2.0)


def test_the_cli_and_the_app_make_the_same_config_from_the_same_settings():
    assert set(WANTED) == set(service.UPDATE_OPTIONS)
    argv = ["add-class", "--images", "x", "--class", "a", "--out", "o.pt"]
    argv += [a for flag, field, *_ in UPDATE_VALUE_FLAGS for a in (flag, str(WANTED[field]))]
    argv += [flag for flag, field, value, _ in UPDATE_SWITCHES if WANTED[field] == value]
    from_cli = update_config(build_parser().parse_args(argv), DEMO_UPDATE)
    from_app = make_config({k: str(v) if isinstance(v, float) else v for k, v in WANTED.items()})  # page values
    assert from_cli == from_app == service.with_settings(DEMO_UPDATE, WANTED)
    assert all(getattr(from_cli, k) == v for k, v in WANTED.items())


# ----------------------------------------------------------------------------------------- score, export
def test_score_of_a_checkpoint_and_of_an_earlier_version(base, tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    for i, (image, mask) in enumerate(world.generate(2, seed=5, size=64)):
        Image.fromarray(image).save(tmp_path / "i" / f"e{i}.png")
        Image.fromarray(np.where(mask <= 2, mask, 0).astype(np.uint8)).save(tmp_path / "m" / f"e{i}.png")
    eval_set = service.mask_eval_set(tmp_path / "i", tmp_path / "m", 3)
    scores = service.score(base, eval_set, device="cpu")
    assert scores.class_names == NAMES and scores.new_names == [] and len(scores.iou) == 3
    assert "mIoU old" in scores.table() and set(scores.as_dict()["iou"]) == set(NAMES)
    grown_names = NAMES + ["triangle"]
    earlier = service.score(base, checked_eval_set(eval_set.pairs, 4, "x"), grown_names, ["triangle"], device="cpu")
    assert np.isnan(earlier.summary["new"]) or earlier.summary["new"] == 0.0   # never predicted
    with pytest.raises(DataError, match="not the first classes"):
        service.score(base, eval_set, ["background", "square", "disc"], [], device="cpu")


def test_export_onnx_from_the_library_and_the_command(base, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    path = service.export_onnx(base, tmp_path / "lib.onnx", size=64)
    proto = onnx.load(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == NAMES and [o.name for o in proto.graph.output] == ["logits"]
    ckpt_path = save_checkpoint(base, tmp_path / "base.pt")
    out = tmp_path / "cli.onnx"
    assert main(["export", "--checkpoint", str(ckpt_path), "--onnx", str(out), "--size", "64"]) == 0
    assert out.stat().st_size > 0 and "wrote" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(ckpt_path), "--onnx", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
