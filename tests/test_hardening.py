"""Hostile and unlucky inputs (issue 20): each ends in one clear message, in the engine, the CLI and the app, and
nothing outside the user's folder is read or named."""
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from app import intake
from research.app_testing import tiny_checkpoint
from wilss.cli import main
from wilss.data import DataError
from wilss.tags import read_tagged_folder


def png(path, size=(8, 8), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    """A folder with two tagged images, and an image outside it that no tag may reach."""
    folder = tmp_path / "images"
    png(folder / "a.png")
    png(folder / "b.png")
    png(tmp_path / "secret" / "outside.png")
    return folder


# ------------------------------------------------------------------------------- 1. tags stay inside the folder
OUTSIDE_NAMES = [
    ("{secret}", "absolute path"),                 # an existing file, by its absolute path
    ("/no/such/dir/x.png", "absolute path"),       # a missing one: the same message, so nothing is learnt
    ("../secret/outside.png", "goes up a folder"),
    ("sub/../../secret/outside.png", "goes up a folder"),
    ("..\\secret\\outside.png", "goes up a folder"),
    ("C:\\images\\a.png", "absolute path"),
    ("a\x00.png", "control character"),             # a NUL byte: os calls would raise ValueError
]


@pytest.mark.parametrize("name,words", OUTSIDE_NAMES)
def test_csv_rows_naming_files_outside_the_folder_are_refused_by_line(images, name, words):
    name = name.format(secret=images.parent / "secret" / "outside.png")
    with open(images / "tags.csv", "w", newline="") as f:
        f.write("filename,tags\na.png,cow\n")
        f.write(f'"{name}",cow\n')
    with pytest.raises(DataError, match=f"Line 3 of .*{words}") as err:
        read_tagged_folder(images)
    assert str(images.parent / "secret") not in str(err.value).replace(name, "")


@pytest.mark.parametrize("name,words", OUTSIDE_NAMES)
def test_json_entries_naming_files_outside_the_folder_are_refused_by_entry(images, name, words):
    name = name.format(secret=images.parent / "secret" / "outside.png")
    (images / "tags.json").write_text(json.dumps({"a.png": ["cow"], name: ["cow"]}))
    with pytest.raises(DataError, match=f"Entry 2 of .*{words}"):
        read_tagged_folder(images)


def test_a_nul_byte_in_a_tag_is_refused(images):
    (images / "tags.json").write_text(json.dumps({"a.png": ["co\x00w"], "b.png": []}))
    with pytest.raises(DataError, match="Entry 1 of .*the tag 'co\\\\x00w' contains a control character"):
        read_tagged_folder(images)


def test_links_out_of_the_folder_are_refused_in_every_layout(images):
    os.symlink(images.parent / "secret" / "outside.png", images / "link.png")
    (images / "tags.csv").write_text("filename,tags\na.png,cow\nlink.png,cow\n")
    with pytest.raises(DataError, match="Line 3 of .*'link.png' is a link to a file outside the images folder"):
        read_tagged_folder(images)
    (images / "tags.csv").unlink()
    with pytest.raises(DataError, match="'link.png' is a link to a file outside"):   # one folder per tag
        read_tagged_folder(images)
    (images / "link.png").unlink()
    (images / "cow").mkdir()
    os.symlink(images.parent / "secret", images / "cow" / "more")   # a linked folder inside a tag folder: not
    tagged = read_tagged_folder(images)                              # walked into (Python < 3.13 rglob)
    assert all(p.resolve().is_relative_to(images) for p in tagged.paths) and len(tagged) == 2
    (images / "cow" / "more").unlink()
    os.symlink(images / "a.png", images / "cow" / "same.png")     # a link that stays inside is fine
    assert len(read_tagged_folder(images)) == 3


def test_the_cli_refuses_tag_rows_outside_images_with_one_error_line(images, tmp_path, capsys):
    (images / "tags.csv").write_text(f"filename,tags\na.png,cow\n{images.parent / 'secret' / 'outside.png'},\n")
    ckpt = tiny_checkpoint(tmp_path / "base.pt")
    code = main(["add-class", "--checkpoint", str(ckpt), "--images", str(images), "--class", "cow",
                 "--out", str(tmp_path / "out.pt"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: Line 3 of") and "absolute path" in err and "Traceback" not in err
    assert not (tmp_path / "out.pt").exists()


def test_the_page_table_refuses_outside_names_by_row_without_server_paths(images, tmp_path):
    with pytest.raises(DataError, match="Row 2 of the tags table: the file name '/etc/passwd' is an absolute") as e:
        intake.apply_table([["a.png", "cow"], ["/etc/passwd", "cow"]], images)
    assert str(tmp_path) not in str(e.value)
    with pytest.raises(DataError, match="Row 1 of the tags table: .*goes up a folder"):
        intake.apply_table([["../secret/outside.png", "cow"]], images)
    with pytest.raises(DataError) as e:   # a typo: the message names the table and the file, not the folder
        intake.apply_table([["a.png", "cow"], ["gone.png", ""]], images)
    assert "gone.png" in str(e.value) and "the tags table" in str(e.value) and str(tmp_path) not in str(e.value)
    assert len(intake.apply_table([["a.png", "cow"], ["b.png", ""]], images)) == 2   # a good table still works


# ---------------------------------------------------------------------------------- 6. broken uploads
def test_json_nested_100000_deep_is_a_clear_error(images):
    (images / "tags.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        read_tagged_folder(images)


def test_a_csv_field_over_the_size_limit_is_a_clear_error(images):
    (images / "tags.csv").write_text("filename,tags\n\"" + "a" * 200_000 + "\",cow\n")
    with pytest.raises(DataError, match="Line .* cannot be read as CSV"):
        read_tagged_folder(images)


def understated_zip(path):
    """A zip whose headers say its member holds 10 bytes when it holds 4000 (unpacking fails its CRC check)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", os.urandom(4000))
    data = bytearray(path.read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 22:local + 26] = (10).to_bytes(4, "little")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def test_a_zip_with_understated_sizes_is_refused_and_leaves_no_staging_folder(tmp_path):
    from app.handlers import Handlers
    from app.session import AppConfig

    archive = understated_zip(tmp_path / "bomb.zip")
    with pytest.raises(DataError, match="'bomb.zip' is damaged or unsupported: its file 'a.png'.*CRC"):
        intake.safe_extract(archive, tmp_path / "dest", max_bytes=2**20)
    config = AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"))
    handlers = Handlers(config)
    session = handlers.session(None)
    before = sorted(p.name for p in session.folder.iterdir())
    status = handlers.bring_data(None, [str(archive)], None)[0]
    assert status.startswith("**Error:** 'bomb.zip' is damaged") and "unchanged" in status
    assert str(tmp_path) not in status
    assert sorted(p.name for p in session.folder.iterdir()) == before   # no data-NNN folder left behind


def test_the_page_scores_a_broken_zip_with_a_message_and_leaves_no_staging_folder(tmp_path):
    from app.handlers import Handlers
    from app.session import AppConfig

    handlers = Handlers(AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt")))
    session = handlers.session(None)
    before = sorted(p.name for p in session.folder.iterdir())
    status = handlers.evaluate(None, [str(understated_zip(tmp_path / "eval.zip"))], [], None, None)[1]
    assert status.startswith("**Error:** 'eval.zip' is damaged") and str(tmp_path) not in status
    assert sorted(p.name for p in session.folder.iterdir()) == before


def test_an_unforeseen_upload_error_is_a_message_not_a_traceback(tmp_path, monkeypatch, caplog):
    from app import handlers as page
    from app.session import AppConfig

    def broken(files, tags, dest, **_):
        (dest / "half.png").write_bytes(b"x")
        raise RuntimeError("boom at /srv/secret/path")

    monkeypatch.setattr(page, "bring_tagged", broken)
    handlers = page.Handlers(AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt")))
    before = sorted(p.name for p in handlers.session(None).folder.iterdir())
    status = handlers.bring_data(None, [str(png(tmp_path / "a.png"))], None)[0]
    assert status.startswith("**Error:** The upload could not be read") and "/srv/secret" not in status
    assert "boom at /srv/secret/path" in caplog.text                     # the details go to the server's log
    assert sorted(p.name for p in handlers.session(None).folder.iterdir()) == before


def test_the_page_upload_names_the_tag_row_and_no_server_path(images, tmp_path):
    from app.handlers import Handlers
    from app.session import AppConfig

    config = AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"))
    handlers = Handlers(config)
    tags = tmp_path / "my.csv"
    for name in ("/no/such/file.png", str(images / "a.png"), "a\x00.png"):
        with open(tags, "w", newline="") as f:
            f.write(f'filename,tags\na.png,cow\n"{name}",\n')
        status = handlers.bring_data(None, [str(images / "a.png"), str(images / "b.png")], str(tags))[0]
        assert status.startswith("**Error:** Line 3 of 'my.csv': the file name"), status
        assert str(tmp_path / "work") not in status and "unchanged" in status


# ------------------------------------------------------------------------------ 4. malformed checkpoints
def damaged(tmp_path, change, name="bad.pt"):
    """A valid tiny checkpoint's payload after ``change(payload)``, saved as ``name``."""
    import torch

    payload = torch.load(tiny_checkpoint(tmp_path / "good.pt"), weights_only=True)
    change(payload)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


def _set(key, value):
    return lambda p: p.__setitem__(key, value)


MALFORMED = [
    (lambda p: p.pop("state_dict"), "its 'state_dict' is missing"),
    (_set("state_dict", [1, 2]), "its 'state_dict' is a list, not a dict"),
    (lambda p: p["class_names"].append("extra") or p["colours"].append([1, 2, 3]), "head has 8 outputs but it names 9"),
    (lambda p: p["colours"].pop(), "7 colours for 8 class names"),
    (lambda p: p["colours"].__setitem__(2, [300, 0, 0]), r"three whole numbers in 0-255, found \[300, 0, 0\]"),
    (lambda p: p["colours"].__setitem__(2, [-1, 0, 0.5]), "three whole numbers in 0-255"),
    (lambda p: p["class_names"].__setitem__(1, 7), "each a name"),
    (lambda p: p["state_dict"].pop(next(iter(p["state_dict"]))), "do not fit its architecture .*: 1 missing"),
    (lambda p: p["state_dict"].__setitem__("extra.weight", __import__("torch").zeros(2)), "1 unexpected, e.g. extra"),
    (lambda p: p["model"].__setitem__("width", 10**7), "of another shape"),    # would allocate ~TBs if built
    (lambda p: p["model"].__setitem__("arch", "resnet9000"), "config does not describe a network"),
    (_set("history", "yesterday"), "'history' is not a list"),
]


@pytest.mark.parametrize("change,words", MALFORMED)
def test_malformed_checkpoints_are_one_clear_error(tmp_path, change, words):
    from wilss.checkpoint import CheckpointError, load_checkpoint

    path = damaged(tmp_path, change)
    with pytest.raises(CheckpointError, match=f"bad.pt is a damaged wilss checkpoint: .*{words}"):
        load_checkpoint(path)


def test_the_cli_gives_exit_2_and_no_traceback_for_a_malformed_checkpoint(tmp_path, capsys):
    path = damaged(tmp_path, lambda p: p["colours"].pop())
    code = main(["predict", "--checkpoint", str(path), "--input", str(png(tmp_path / "x.png")),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "7 colours for 8" in err
    assert not (tmp_path / "out").exists()


def test_the_page_keeps_its_model_when_a_malformed_checkpoint_is_loaded(tmp_path):
    from app.handlers import Handlers
    from app.session import AppConfig

    handlers = Handlers(AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt")))
    session = handlers.session(None)
    before = (session.current, [v.name for v in session.versions], sorted(session.folder.iterdir()))
    status = handlers.load_checkpoint(None, str(damaged(tmp_path, lambda p: p["state_dict"].popitem())))
    assert status.startswith("**Error:** 'bad.pt' is a damaged wilss checkpoint") and "unchanged" in status
    assert str(tmp_path) not in status
    assert (session.current, [v.name for v in session.versions], sorted(session.folder.iterdir())) == before


def test_a_checkpoint_asking_for_pretrained_backbone_weights_loads_offline(tmp_path, monkeypatch):
    import torch
    import torchvision.models._api as weights_api

    from models import build_segmenter
    from wilss.checkpoint import load_checkpoint, new_checkpoint, save_checkpoint

    def no_download(*args, **kwargs):
        raise AssertionError("a checkpoint field started a download")

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = build_segmenter(arch="lraspp_mobilenet_v3_large", num_classes=2)
    path = save_checkpoint(new_checkpoint(model, ["background", "kite"]), tmp_path / "tv.pt")
    payload = torch.load(path, weights_only=True)
    payload["model"]["pretrained_backbone"] = True
    torch.save(payload, path)
    loaded = load_checkpoint(path)
    first = next(iter(model.state_dict()))
    assert torch.equal(loaded.model.state_dict()[first], model.state_dict()[first])


# ---------------------------------------------------------------------------------- 7. EXIF orientation
def rotated_jpeg(path):
    """A JPEG stored 8 wide x 4 high, red on its left half, tagged 'rotate 90 degrees clockwise to show'
    (EXIF orientation 6, as phones write portrait photos): shown, it is 4 wide x 8 high and red on top."""
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=100, exif=exif)
    return path


def test_exif_orientation_is_honoured_by_every_reader(tmp_path):
    from wilss.data import check_mask_pairs, image_size, load_image
    from wilss.training_data import PixelDataset

    photo = rotated_jpeg(tmp_path / "photo.jpg")
    image = load_image(photo)
    assert image.shape == (8, 4, 3) and image_size(photo) == (4, 8)
    assert image[:3, :, 0].min() > 200 and image[5:, :, 0].max() < 60     # red on top, as shown
    mask = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 4), np.uint8)).save(mask)    # drawn on the photo as shown: 4 wide, 8 high
    assert check_mask_pairs([(photo, mask)], 2) == {(8, 4)}
    x, y = PixelDataset([(photo, mask)])[0]                   # evaluation and step 0 read through it
    assert tuple(x.shape) == (3, 8, 4) and tuple(y.shape) == (8, 4)


# ---------------------------------------------------------------------------------- 8. concurrent predicts
def test_concurrent_identical_predicts_write_separate_complete_files(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from app.handlers import Handlers
    from app.session import AppConfig

    handlers = Handlers(AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"),
                                  device="cpu"))
    image = str(png(tmp_path / "same.png", size=(16, 12), value=90))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: handlers.predict(None, image, 0.5), range(6)))
    assert all(r[3].startswith("same.png:") for r in results)               # every predict answered
    overlays = [r[0] for r in results]
    maps = [path for r in results for path, _ in r[2]]
    assert len(set(overlays)) == 6 and len(set(maps)) == len(maps) == 6 * 8   # no two outputs share a file
    first = np.asarray(Image.open(overlays[0]))
    assert all(np.array_equal(np.asarray(Image.open(p)), first) for p in overlays)   # complete, identical


# ------------------------------------------------------------------------------------------ 3. big inputs
def png_header_only(path, width, height):
    """A PNG that declares ``width x height`` pixels but holds none: opening it reads the size, decoding fails."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_images_beyond_the_pixel_limit_are_refused_before_decoding(tmp_path):
    from wilss.data import MAX_PIXELS, load_image, validate_images

    huge = png_header_only(tmp_path / "huge.png", 9000, 8000)
    assert 9000 * 8000 > MAX_PIXELS
    with pytest.raises(DataError, match=r"'huge.png' is 9000x8000 pixels \(72 MP\), more than the 64 MP accepted"):
        load_image(huge)
    with pytest.raises(DataError, match="72 MP"):
        validate_images([png(tmp_path / "ok.png"), huge])


def test_large_images_are_segmented_at_max_side_with_masks_at_their_own_size(tmp_path):
    import torch
    import torch.nn.functional as F

    from models import build_segmenter
    from wilss.conventions import resize_mask
    from wilss.inference import Predictor, segment

    torch.manual_seed(0)
    model = build_segmenter(arch="tiny", num_classes=3, width=8).eval()
    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    small = Predictor(model, max_side=64).predict(image)
    assert small.mask.shape == (200, 300) and small.scores.shape == (3, 43, 64)
    full = Predictor(model).predict(image)
    assert np.array_equal(Predictor(model, max_side=300).predict(image).mask, full.mask)   # fits: unchanged
    x = torch.randn(1, 3, 200, 300)
    small_x = F.interpolate(x, size=(43, 64), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(segment(model, x, 64), resize_mask(model(small_x).argmax(1), (200, 300)))   # labels nearest
    assert torch.equal(segment(model, x, 512), model(x).argmax(1))


def test_the_cli_predicts_large_images_at_max_side_and_writes_masks_at_their_size(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "base.pt")
    image = png(tmp_path / "wide.png", size=(300, 200), value=120)
    code = main(["predict", "--checkpoint", str(ckpt), "--input", str(image), "--out", str(tmp_path / "out"),
                 "--max-side", "64", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "out" / "wide_mask.png").size == (300, 200)


def test_training_keeps_images_fitted_to_the_crop_not_whole(tmp_path):
    from wilss.config import UpdateConfig
    from wilss.tags import TaggedSet
    from wilss.training_data import fitted_image, tagged_training_set

    path = png(tmp_path / "big.png", size=(300, 200), value=70)
    cfg = UpdateConfig(epochs=2, warmup_epochs=1, crop_size=64, scale_range=(1.0, 1.0), hflip=False)
    dataset = tagged_training_set(TaggedSet((path,), (frozenset({"cow"}),)), ["cow"], cfg)
    assert dataset.load(0).shape == (43, 64, 3)                 # what the cache keeps
    assert np.array_equal(dataset.load(0), fitted_image(path, 64))
    assert tuple(dataset[0][0].shape) == (3, 64, 64)


@pytest.mark.parametrize("name,value", [("epochs", 201), ("batch_size", 129), ("crop_size", 1025)])
def test_update_settings_have_upper_bounds_in_the_cli_and_the_page(tmp_path, capsys, name, value):
    from app.update import make_config
    from wilss.config import UpdateConfig

    with pytest.raises(ValueError, match=f"{name} must be at most {value - 1}"):
        UpdateConfig(**{name: value})
    with pytest.raises(DataError, match=f"{name} must be at most {value - 1}"):
        make_config({name: value})
    flag = "--" + name.replace("_", "-")
    code = main(["add-class", "--images", str(tmp_path), "--class", "cow", "--out", str(tmp_path / "o.pt"),
                 "--checkpoint", str(tiny_checkpoint(tmp_path / "base.pt")), flag, str(value)])
    assert code == 2 and f"error: {flag} {value} is above the limit of {value - 1}" in capsys.readouterr().err


# ------------------------------------------------------------------- 5. versions survive restarts; 2. sessions
def made_version(session, seed=1):
    """A version made in ``session`` as an update would (another model), saved the way the page saves it."""
    from wilss.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint(session.folder.parent / f"made{seed}.pt", seed=seed))
    return session.add_checkpoint(ckpt, "added arrow from 5 images", parent=session.current.name)


def test_versions_survive_a_restart_and_can_be_rolled_back_to(tmp_path):
    from app.handlers import Handlers
    from app.session import AppConfig

    config = AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"))
    before = Handlers(config).session(None)
    made_version(before)
    labels = [v.label for v in before.versions]
    after = Handlers(config)                      # a new process on the same work folder
    s = after.session(None)
    assert [v.label for v in s.versions] == labels and s.current.name == "v001" and s.folder == before.folder
    assert s.versions[1].parent == "v000" and "v001" in after.model_views(None)[0]
    assert after.rollback(None, "v000").startswith("**Done:** v000 is the current model again")
    assert Handlers(config).session(None).current.name == "v000"   # the choice of current survives too


def test_an_update_cut_by_a_restart_leaves_no_partial_version_and_says_so(tmp_path):
    from types import SimpleNamespace

    from app.handlers import Handlers
    from app.session import AppConfig

    config = AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"))
    s = Handlers(config).session(None)
    s.job = SimpleNamespace(running=True, plan=SimpleNamespace(new_names=["arrow"]))
    (s.folder / ".new-version.x1.pt").write_bytes(b"half a checkpoint")   # killed while writing the result
    after = Handlers(config)
    header = after.model_views(None)[0]
    assert header.startswith("**Note:** the server restarted while an update was running here (adding arrow)")
    assert [v.name for v in after.session(None).versions] == ["v000"]
    assert not [p.name for p in s.folder.iterdir() if p.name.startswith(".")]
    made_version(after.session(None))            # the next version clears the note
    assert not after.model_views(None)[0].startswith("**Note:**")


def test_a_version_written_just_before_a_crash_is_listed_after_the_restart(tmp_path):
    import shutil

    from app.handlers import Handlers
    from app.session import AppConfig

    config = AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"))
    s = Handlers(config).session(None)
    shutil.copyfile(tiny_checkpoint(tmp_path / "other.pt", seed=3), s.folder / "v001.pt")   # not yet listed
    (s.folder / "v002.pt").write_bytes(b"not a checkpoint")                                 # never listed
    restored = Handlers(config).session(None)
    assert [(v.name, v.note) for v in restored.versions] == [("v000", "loaded base.pt"),
                                                             ("v001", "found after a restart")]
    assert (s.folder / "v002.pt").read_bytes() == b"not a checkpoint"                        # left as it was


def test_sessions_never_share_a_folder_and_versions_are_never_written_over(tmp_path):
    from app.session import AppConfig, SessionStore

    base = tiny_checkpoint(tmp_path / "base.pt")
    store = SessionStore(AppConfig(workdir=tmp_path / "work", checkpoint=base))
    a, b = store.get("abcdefgh1"), store.get("abcdefgh2")   # same prefix, same second: they used to collide
    assert a.folder != b.folder and "abcdefgh" not in a.folder.name and len(a.folder.name) == 34
    a.add_file(tiny_checkpoint(tmp_path / "a.pt", seed=1), "loaded a.pt")
    b.add_file(tiny_checkpoint(tmp_path / "b.pt", seed=2), "loaded b.pt")
    assert (a.folder / "v000.pt").read_bytes() == (tmp_path / "a.pt").read_bytes()
    assert (b.folder / "v000.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    (a.folder / "v001.pt").write_bytes(b"someone else's file")   # a name taken behind the session's back
    assert made_version(a).name == "v002" and (a.folder / "v001.pt").read_bytes() == b"someone else's file"


def test_folders_of_untouched_sessions_are_capped_and_cleaned_but_made_versions_stay(tmp_path):
    from app.session import AppConfig, SessionStore

    base = tiny_checkpoint(tmp_path / "base.pt")
    config = AppConfig(workdir=tmp_path / "work", checkpoint=base)
    setup = lambda s: s.add_file(base, "loaded base.pt", setup=True) if not s.versions else None  # noqa: E731
    store = SessionStore(config, setup=setup, capacity=2)
    a, b = store.get("a"), store.get("b")
    made_version(a)
    c = store.get("c")                       # makes room: 'a' goes from memory, its folder (a made version) stays
    d = store.get("d")                       # makes room: 'b' held nothing made by its user: its folder goes
    assert a.folder.is_dir() and not b.folder.exists()
    store.drop("c")                          # the page was closed
    assert not c.folder.exists() and d.folder.is_dir()
    restarted = SessionStore(config, setup=setup, capacity=2)   # at start: leftovers of untouched sessions go
    assert not d.folder.exists() and a.folder.is_dir()
    assert [v.name for v in restarted.get("a").versions] == ["v000", "v001"]


def test_a_reloaded_page_finds_its_session_by_its_stored_token_and_no_one_else_can(tmp_path):
    from types import SimpleNamespace as Page

    from app.handlers import Handlers
    from app.session import AppConfig
    from app.session_files import folder_name, new_token

    config = AppConfig(workdir=tmp_path / "work", checkpoint=tiny_checkpoint(tmp_path / "base.pt"))
    handlers = Handlers(config)
    first = Page(session_hash="page-1")
    token = handlers.attach(first, None)                       # a new browser: the page stores this token
    assert len(token) == 65 and token != handlers.attach(Page(session_hash="page-0"), None)
    made_version(handlers.session(first))
    reloaded = Page(session_hash="page-2")                     # a reload: a new session hash, the same token
    assert handlers.attach(reloaded, token) == token
    assert [v.name for v in handlers.session(reloaded).versions] == ["v000", "v001"]
    handlers.close_session(first)                              # the old page's close, arriving late, drops nothing
    assert handlers.session(reloaded) is handlers.session(Page(session_hash="page-2"))
    assert handlers.session(reloaded).current.name == "v001"
    mine = handlers.session(reloaded).folder
    # forged or altered tokens, another server's, a session id: a fresh session of their own, never this one
    forged = [token[:-1] + ("0" if token[-1] != "0" else "1"), token[:32] + "." + "0" * 32, "page-2", "../" * 5,
              new_token(tmp_path / "elsewhere"), 12345, {"token": token}]
    for n, value in enumerate(forged):
        page = Page(session_hash=f"intruder-{n}")
        assert handlers.attach(page, value) != token
        assert handlers.session(page).folder != mine and [v.name for v in handlers.session(page).versions] == ["v000"]
    assert folder_name(config.workdir, token) != mine.name and token[33:] not in mine.name   # no folder in a token
    restarted = Handlers(config)                               # after a restart, the stored token still works
    back = Page(session_hash="page-3")
    restarted.attach(back, token)
    assert restarted.session(back).folder == mine and restarted.session(back).current.name == "v001"
    restarted.close_session(back)                              # closed: out of memory, its versions stay on disk
    assert (mine / "v001.pt").is_file()


def test_the_served_app_hides_the_session_key_and_answers_parallel_identical_predicts(tmp_path):
    """Through HTTP, as a client sees it: the key naming session folders is not served, and 8 identical predicts at
    once all arrive whole (they used to share one cache file, written while it was served)."""
    import urllib.error
    import urllib.request

    pytest.importorskip("gradio_client")
    from gradio_client import Client, handle_file

    from research.app_testing import launched
    from research.demo import write_samples

    samples = write_samples(tmp_path / "samples", n_positive=40, n_negative=24)
    work = tmp_path / "work"
    with launched(tiny_checkpoint(tmp_path / "base.pt"), samples, work, log_path=tmp_path / "server.log") as url:
        c = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        jobs = [c.submit(handle_file(str(samples / "000.jpg")), 0.5, api_name="/predict") for _ in range(8)]
        results = [job.result() for job in jobs]
        assert all(text.startswith("000.jpg:") for *_, text in results)
        overlays = [np.asarray(Image.open(overlay)) for overlay, *_ in results]
        assert all(np.array_equal(o, overlays[0]) for o in overlays)
        sessions = [p.name for p in work.iterdir() if p.name.startswith("s-")]
        assert sessions and all(len(name) == 34 for name in sessions)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}gradio_api/file={work / '.session-key'}", timeout=5)
        assert err.value.code == 403
