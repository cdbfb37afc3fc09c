"""The app's logic without a server: uploads and tags, update requests, versions, the device queue, views."""
import threading
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from app import intake, views
from app.session import AppConfig, DeviceQueue, Session
from app.update import loss_names, make_config, plan_update, watch_indices
from research.app_testing import WORLD_BASE, tiny_checkpoint
from wilss.checkpoint import CheckpointError, load_checkpoint
from wilss.data import DataError
from wilss.recipes import DEMO_UPDATE
from wilss.tags import TaggedSet


def png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------------ intake
def test_images_and_a_tags_file(tmp_path):
    up = tmp_path / "up"
    files = [png(up / "a.png"), png(up / "b.png"), png(up / "c.png")]
    tags = up / "my.csv"
    tags.write_text("filename,tags\na.png,arrow\nb.png,arrow;disc\nc.png,\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    tagged, root = intake.bring_tagged(files, tags, dest, max_bytes=2**20)
    assert root == dest and len(tagged) == 3
    assert tagged.counts() == {"arrow": 2, "disc": 1} and tagged.num_negatives == 1
    assert intake.table_rows(tagged, root) == [["a.png", "arrow"], ["b.png", "arrow;disc"], ["c.png", ""]]


def test_a_zip_with_one_folder_per_tag_inside_a_wrapper_folder(tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("set/arrow/1.png", "set/arrow/2.png", "set/none/3.png", "set/__MACOSX/x.png"):
            zf.write(png(tmp_path / "src" / name), name)
        zf.writestr("set/readme.txt", "ignored")
    dest = tmp_path / "dest"
    dest.mkdir()
    tagged, root = intake.bring_tagged([archive], None, dest, max_bytes=2**20)
    assert root == dest / "set"
    assert tagged.counts() == {"arrow": 2} and tagged.num_negatives == 1


@pytest.mark.parametrize("member", ["../evil.png", "/abs.png"])
def test_zip_members_outside_the_folder_are_refused(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(member, b"x")
    with pytest.raises(DataError, match="outside"):
        intake.safe_extract(archive, tmp_path / "dest", max_bytes=2**20)
    assert not (tmp_path / "evil.png").exists()


def test_zip_bombs_and_non_images_are_refused(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", b"\0" * 4096)
    with pytest.raises(DataError, match="unpacks to"):
        intake.safe_extract(archive, tmp_path / "d", max_bytes=1000)
    note = tmp_path / "notes.txt"
    note.write_text("x")
    with pytest.raises(DataError, match="neither images"):
        intake.gather_uploads([note], tmp_path, max_bytes=2**20)


def test_table_edits_and_files_that_were_not_uploaded(tmp_path):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    tagged = intake.apply_table([["a.png", "arrow"], ["b.png", None], ["", ""]], tmp_path)
    assert tagged.counts() == {"arrow": 1} and tagged.num_negatives == 1
    with pytest.raises(DataError, match="ghost.png"):
        intake.apply_table([["a.png", "arrow"], ["ghost.png", "arrow"]], tmp_path)
    with pytest.raises(DataError, match="no file name"):
        intake.apply_table([["", "arrow"]], tmp_path)


def test_tag_summary_warns_when_a_new_class_has_no_negatives(tmp_path):
    tagged = TaggedSet((tmp_path / "a.png", tmp_path / "b.png"), ({"arrow"}, {"arrow", "disc"}))
    rows, warnings = intake.tag_summary(tagged, ["disc"])
    assert rows[0] == ["arrow", 2, "new class"] and rows[1] == ["disc", 1, "known class (hint)"]
    assert rows[-1][1] == 0 and any("no negatives" in w and "'arrow'" in w for w in warnings)


# ------------------------------------------------------------------------------------------------ update
def test_make_config_casts_page_values_and_explains_bad_ones():
    cfg = make_config({"epochs": 2.0, "warmup_epochs": 1, "batch_size": "8", "relaxed": 1, "lr_head": 0.05,
                       "seed": None})
    assert (cfg.epochs, cfg.batch_size, cfg.relaxed, cfg.lr_head) == (2, 8, True, 0.05)
    assert cfg.crop_size == DEMO_UPDATE.crop_size
    with pytest.raises(DataError, match="warmup_epochs"):
        make_config({"epochs": 2, "warmup_epochs": 2})
    with pytest.raises(DataError, match="at least 1"):
        make_config({"batch_size": 0})
    with pytest.raises(DataError, match="whole number"):
        make_config({"epochs": 2.5})
    refined = make_config({"pamr_refine_stride": 2, "pamr_refine_iterations": "30",
                           "pamr_refine_fine_iterations": 10})
    assert (refined.pamr_refine_stride, refined.pamr_refine_iterations,
            refined.pamr_refine_fine_iterations) == (2, 30, 10)
    with pytest.raises(DataError, match="pamr_refine_iterations must be at least 1"):
        make_config({"pamr_refine_iterations": 0})
    assert loss_names(cfg) == ["cls", "loc", "fd", "seg", "total"]          # the demo recipe distils features
    plain = make_config({"feature_distillation": 0})
    assert loss_names(plain, aux=True) == ["cls", "loc", "seg", "aux", "total"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return load_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "base.pt"))


def test_plan_update_refuses_bad_requests(base, tmp_path):
    tagged = TaggedSet((tmp_path / "a.png", tmp_path / "b.png"), ({"arrow"}, set()))
    plan = plan_update("v000", base, tagged, [("arrow", "#ff8000")], DEMO_UPDATE, source="test")
    assert plan.class_names == WORLD_BASE + ["arrow"] and plan.columns[-1] == "arrow"
    assert tuple(plan.colours[-1]) == (255, 128, 0)
    for specs, words in (([("  ", "#ff8000")], "empty"), ([("disc", "#ff8000")], "already exists"),
                         ([("arrow", "orange")], "#RRGGBB"), ([("moon", "#ff8000")], "Unknown tag 'arrow'")):
        with pytest.raises(DataError, match=words):
            plan_update("v000", base, tagged, specs, DEMO_UPDATE, source="test")
    with pytest.raises(DataError, match="no images"):
        plan_update("v000", base, None, [("arrow", "#ff8000")], DEMO_UPDATE, source="test")
    only_positive = TaggedSet((tmp_path / "a.png",), ({"arrow"},))
    plan = plan_update("v000", base, only_positive, [("arrow", "#ff8000")], DEMO_UPDATE, source="test")
    assert plan.cfg.auto_old_tags and "no negatives" in plan.note and not DEMO_UPDATE.auto_old_tags


def test_watch_indices_pick_positives_of_each_class_then_a_negative(tmp_path):
    tags = [{"a"}, {"a"}, set(), {"b"}, {"a", "b"}, set()]
    tagged = TaggedSet(tuple(tmp_path / f"{i}.png" for i in range(6)), tuple(tags))
    assert watch_indices(tagged, ["a", "b"], 4) == [0, 3, 1, 2]
    assert watch_indices(tagged, ["a"], 2) == [0, 2]


# ---------------------------------------------------------------------------------------------- session
def test_versions_are_kept_and_foreign_files_refused(base, tmp_path):
    source = tiny_checkpoint(tmp_path / "base.pt")
    s = Session(AppConfig(workdir=tmp_path, checkpoint=source), tmp_path / "s")
    v0 = s.add_file(source, "loaded")
    evil = tmp_path / "evil.pt"
    torch.save({"format": "wilss-checkpoint", "hook": print}, evil)
    with pytest.raises(CheckpointError, match="pickled"):
        s.add_file(evil, "evil")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch archive"):
        s.add_file(text, "text")
    assert [v.name for v in s.versions] == ["v000"] and not (tmp_path / "s" / "v001.pt").exists()
    v1 = s.add_checkpoint(s.ckpt, "again", parent=v0.name)
    assert s.current is v1 and s.parent_of(v1) is v0 and v1.path.name == "v001.pt"
    s.rollback("v000")
    assert s.current is v0 and len(s.versions) == 2 and v1.path.exists()
    with pytest.raises(KeyError):
        s.rollback("v009")


def test_device_queue_is_first_come_first_served():
    q = DeviceQueue()
    a, b, other = q.join("cpu"), q.join("cpu"), q.join("cuda:0")
    assert (q.position(a), q.position(b), q.position(other)) == (0, 1, 0)
    assert q.wait(b, timeout=0.01) == 1
    released = threading.Timer(0.05, q.leave, args=(a,))
    released.start()
    assert q.wait(b, timeout=5) == 0
    q.leave(b)
    assert q.busy("cpu") == 0 and q.position(b) == -1


# ------------------------------------------------------------------------------------------------ views
def test_history_views():
    history = [{"step": 0, "kind": "pretrain", "classes": ["disc"], "num_images": 10, "metrics": {"x": 1.5}},
               {"step": 1, "kind": "add-class", "classes": ["arrow"], "num_images": 64, "negatives": 24}]
    rows = views.history_rows(history)
    assert rows[0][:4] == [0, "pretrain", "disc", 10] and rows[0][-1] == "x=1.5" and rows[1][4] == 24
    assert views.added_in(history) == {"disc": "step 0: pretrain (10 images)",
                                       "arrow": "step 1: add-class (64 images)"}


def test_before_after_rows():
    after = {"summary": {"old": 50.0, "new": 20.0, "all": float("nan")}, "iou": {"background": 90.0, "arrow": 20.0}}
    before = {"summary": {"old": 55.0, "new": 0.0, "all": 60.0}, "iou": {"background": 91.0}}
    rows = views.before_after_rows(["background", "arrow"], ["arrow"], before, after)
    assert rows[0] == ["mIoU old", "55.0", "50.0"] and rows[2] == ["mIoU all", "60.0", "n/a"]
    assert rows[4] == ["IoU arrow (new)", "n/a", "20.0"]


def test_data_summary_and_thumbnails(tmp_path):
    tagged = TaggedSet((tmp_path / "a.png", tmp_path / "b.png"), (frozenset({"arrow"}), frozenset()))
    assert views.data_summary(tagged, "samples") == ("2 images from samples: 1 tagged 'arrow', 1 negatives (tagged "
                                                     "with none of the classes).")
    untagged = TaggedSet((tmp_path / "a.png",) * 12, (frozenset(),) * 12)
    text = views.data_summary(untagged, "your upload (12 file(s))")
    assert ": ," not in text and text.startswith("12 images from your upload (12 file(s)): none tagged yet, 12 neg")
    assert views.thumbnails(tagged, ["a.png", "b.png"]) == [(str(tmp_path / "a.png"), "arrow: a.png"),
                                                           (str(tmp_path / "b.png"), "negative: b.png")]


# ------------------------------------------------------------------------------------ start from tags alone
def tagged_upload(folder, tags):
    """Generated 32 px scenes as uploaded files, with a tags CSV (``tags[i]`` for image i, ';'-separated)."""
    from research.world import generate

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (image, _) in enumerate(generate(len(tags), seed=0, size=32)):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
        files.append(str(folder / f"{i:02d}.png"))
    (folder / "my_tags.csv").write_text("filename,tags\n" + "".join(f"{i:02d}.png,{t}\n" for i, t in enumerate(tags)))
    return files, str(folder / "my_tags.csv")


@pytest.fixture
def page(tmp_path, monkeypatch):
    from app.handlers import Handlers
    from app.update_handlers import UpdateHandlers

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "cache"))   # the live gallery's frames
    handlers = Handlers(AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"),
                                  live_every_s=0.0))
    return handlers, UpdateHandlers(handlers)


def test_start_from_tags_alone_streams_and_makes_a_version(page, tmp_path, one_thread):
    handlers, u = page
    files, tags = tagged_upload(tmp_path / "up", ["disc", "square", "disc;square", ""] * 2)
    assert handlers.bring_data(None, files, tags)[0].startswith("**Done:**")
    outs = list(u.start_from_tags(None, "tiny", 2, 4, 32))
    assert "follow it in 'Add classes'" in outs[0][-1]
    galleries = [o[4] for o in outs if getattr(o[4], "value", None)]
    assert galleries, "the live gallery never showed the images"
    captions = {item["caption"] if isinstance(item, dict) else item[1] for item in galleries[-1].value}
    assert {"CAM disc", "CAM square", "pseudo-label", "mask"} <= captions
    phases = {o[1].split('data-phase="')[1].split('"')[0] for o in outs
              if isinstance(o[1], str) and "data-phase" in o[1]}
    assert phases == {"warmup", "joint"}
    status = outs[-1][-1]
    assert status.startswith("**Done:**") and "v001" in status, status
    s = handlers.session(None)
    assert s.current.name == "v001" and s.current.parent is None and "tags alone" in s.current.note
    assert s.ckpt.class_names == ["background", "disc", "square"] and s.ckpt.model.activation == "softmax"
    step = s.ckpt.history[-1]
    assert len(s.ckpt.history) == 1 and step["kind"] == "pretrain" and step["settings"]["supervision"] == "tags"
    assert step["settings"]["arch"] == "tiny" and step["tool"] == "app" and step["negatives"] == 2
    assert step["num_images"] == 8 and step["settings"]["epochs"] == 2
    assert load_checkpoint(s.current.path).class_names == s.ckpt.class_names      # saved like an update's result
    assert handlers.rollback(None, "v000").startswith("**Done:**") and s.current.name == "v000"
    assert s.job.update is None and not s.job.running                             # the training is freed


@pytest.mark.parametrize("tags,words", [
    (["", "", "", ""], "None of the 4 images is tagged"),
    (["disc", "disc", "disc", "disc"], "the only class, 'disc', tags every image"),
    (["disc;square", "disc;square", "disc;square", "disc;square"], "every class tags every image"),
    (["background", "disc", "", ""], "No tag may be 'background'"),
])
def test_start_from_tags_alone_refuses_tags_that_cannot_make_a_model(page, tmp_path, tags, words):
    handlers, u = page
    files, tags_file = tagged_upload(tmp_path / "up", tags)
    assert handlers.bring_data(None, files, tags_file)[0].startswith("**Done:**")
    outs = list(u.start_from_tags(None, "tiny", 2, 4, 32))
    assert len(outs) == 1 and outs[0][-1].startswith("**Error:**") and words in outs[0][-1], outs[0][-1]
    assert "unchanged" in outs[0][-1] and [v.name for v in handlers.session(None).versions] == ["v000"]


def test_start_from_tags_alone_refuses_bad_settings_and_no_data(page, tmp_path):
    handlers, u = page
    s = handlers.session(None)
    s.tagged = None
    assert "Bring tagged images" in list(u.start_from_tags(None, "tiny", 2, 4, 32))[0][-1]
    files, tags_file = tagged_upload(tmp_path / "up", ["disc", ""])
    handlers.bring_data(None, files, tags_file)
    for args, words in ((("tiny", 2.5, 4, 32), "whole number"), (("tiny", 201, 4, 32), "at most 200"),
                        (("resnet", 2, 4, 32), "Unknown network")):
        assert words in list(u.start_from_tags(None, *args))[0][-1]
    assert [v.name for v in s.versions] == ["v000"]
