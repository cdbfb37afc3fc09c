"""Reading tagged folders, masks and CamVid; every DataError case; the torch datasets."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wilss.config import UpdateConfig
from wilss.conventions import IGNORE_INDEX, voc_palette
from wilss.data import DataError, load_image, load_mask, read_camvid, read_mask_folder, validate_images
from wilss.tags import TaggedSet, check_new_classes, read_tagged_folder, settle_negatives
from wilss.training_data import PixelDataset, TagDataset
from wilss.transforms import RandomCrop

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"


def write_image(path: Path, size=(6, 4), mode="RGB", value=100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 50, 200)).save(path)
    return path


def tags_by_name(tagged: TaggedSet) -> dict:
    return {p.name: set(t) for p, t in zip(tagged.paths, tagged.tags)}


EXPECTED = {"a.png": {"cow"}, "b.jpg": {"cow", "sheep"}, "c.png": set()}


def make_flat(folder: Path) -> None:
    for name in EXPECTED:
        write_image(folder / name)


# ----------------------------------------------------------------------------------------- layouts
def test_csv_layout(tmp_path):
    make_flat(tmp_path)
    (tmp_path / "tags.csv").write_text("filename,tags\na.png,cow\nb.jpg, cow ; sheep;\nc.png,\n")
    tagged = read_tagged_folder(tmp_path)
    assert tags_by_name(tagged) == EXPECTED
    assert len(tagged) == 3 and tagged.num_negatives == 1
    assert tagged.class_names == ("cow", "sheep")
    assert tagged.counts() == {"cow": 2, "sheep": 1}
    np.testing.assert_array_equal(tagged.multi_hot(["sheep", "cow"]), [[0, 1], [1, 1], [0, 0]])


@pytest.mark.parametrize("content", [
    {"a.png": ["cow"], "b.jpg": ["cow", " sheep", ""], "c.png": []},
    [{"filename": "a.png", "tags": ["cow"]}, {"filename": "b.jpg", "tags": ["cow", "sheep"]},
     {"filename": "c.png", "tags": []}],
])
def test_json_layouts(tmp_path, content):
    make_flat(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps(content))
    tagged = read_tagged_folder(tmp_path, tmp_path / "labels.json")
    assert tags_by_name(tagged) == EXPECTED


def test_subfolder_layout_unions_tags_and_finds_negatives(tmp_path):
    write_image(tmp_path / "cow" / "a.png")
    write_image(tmp_path / "cow" / "b.jpg")
    write_image(tmp_path / "sheep" / "b.jpg")
    write_image(tmp_path / "none" / "c.png")
    write_image(tmp_path / "Negatives" / "d.png")
    write_image(tmp_path / "e.PNG")
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    tagged = read_tagged_folder(tmp_path)
    assert tags_by_name(tagged) == {**EXPECTED, "d.png": set(), "e.PNG": set()}
    assert tagged.num_negatives == 3 and tagged.counts() == {"cow": 2, "sheep": 1}


def test_unlisted_images_are_ignored_with_a_warning(tmp_path, caplog):
    make_flat(tmp_path)
    (tmp_path / "tags.csv").write_text("filename,tags\na.png,cow\nc.png,\n")
    tagged = read_tagged_folder(tmp_path)
    assert len(tagged) == 2
    assert "b.jpg" in caplog.text


# ------------------------------------------------------------------------------------ reading errors
def test_missing_folder_and_zero_images(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_tagged_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="No images"):
        read_tagged_folder(tmp_path)
    (tmp_path / "tags.csv").write_text("filename,tags\n")
    with pytest.raises(DataError, match="No images"):
        read_tagged_folder(tmp_path)


def test_tags_file_naming_missing_files_lists_them(tmp_path):
    make_flat(tmp_path)
    lines = "".join(f"gone{i}.png,cow\n" for i in range(7))
    (tmp_path / "tags.csv").write_text("filename,tags\na.png,cow\n" + lines)
    with pytest.raises(DataError, match=r"7 file\(s\).*gone0.png.*gone4.png and 2 more"):
        read_tagged_folder(tmp_path)


@pytest.mark.parametrize("text,match", [
    ("name,labels\na.png,cow\n", "header 'filename,tags'"),
    ("filename,tags\na.png,cow,sheep\n", "separate several tags with ';'"),
])
def test_bad_csv(tmp_path, text, match):
    make_flat(tmp_path)
    (tmp_path / "tags.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        read_tagged_folder(tmp_path)


@pytest.mark.parametrize("text", ['{"a.png": ["cow"],', '{"a.png": 3}', '[["a.png", "cow"]]', '"a.png"'])
def test_bad_json_says_what_is_expected(tmp_path, text):
    make_flat(tmp_path)
    (tmp_path / "tags.json").write_text(text)
    with pytest.raises(DataError, match="Expected either"):
        read_tagged_folder(tmp_path)


def test_corrupt_images_are_named(tmp_path):
    write_image(tmp_path / "cow" / "good.png")
    (tmp_path / "cow" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.jpg").write_text("this is a text file renamed to .jpg")
    with pytest.raises(DataError, match="2 image file.*garbage.png.*notes.jpg"):
        read_tagged_folder(tmp_path)


def test_load_image_errors_and_conversions(tmp_path):
    good = write_image(tmp_path / "g.png", size=(40, 30))
    data = good.read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.png"):
        load_image(tmp_path / "trunc.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="trunc.jpg"):
        load_image(tmp_path / "trunc.jpg")
    with pytest.raises(DataError, match="trunc.jpg"):
        validate_images([tmp_path / "trunc.jpg"], full=True)
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    for mode in ("L", "RGBA", "P"):
        path = tmp_path / f"{mode}.png"
        Image.new(mode, (5, 3)).save(path)
        image = load_image(path)
        assert image.shape == (3, 5, 3) and image.dtype == np.uint8
    validate_images([good])


# ----------------------------------------------------------------------------------- class checks
def tagged_set(*tag_lists):
    return TaggedSet(tuple(Path(f"{i}.png") for i in range(len(tag_lists))),
                     tuple(frozenset(t) for t in tag_lists))


def test_check_new_classes_accepts_valid_and_relaxed_tags():
    check_new_classes(tagged_set(["cow"], ["cow", "person"], []), ["cow"], ["person", "car"])


@pytest.mark.parametrize("new,tags,match", [
    (["Person"], [["Person"], []], "already exists"),
    (["background"], [["background"], []], "already exists"),
    ([" "], [["cow"], []], "empty"),
    (["cow", "Cow"], [["cow"], []], "twice"),
    (["cow"], [["cow"], ["horse"], []], "Unknown tag 'horse'"),
    (["cow"], [["Cow"], []], "Did you mean 'cow'"),
    (["cow", "sheep"], [["cow"], []], "'sheep' has no images"),
    (["cow"], [], "no images"),
])
def test_check_new_classes_errors(new, tags, match):
    with pytest.raises(DataError, match=match):
        check_new_classes(tagged_set(*tags), new, ["person", "car"])


def test_no_negatives_switch_on_automatic_old_tags_and_explain_how_to_add_them():
    tagged = tagged_set(["cow"], ["cow", "sheep"])
    check_new_classes(tagged, ["cow", "sheep"], ["person"])  # allowed: no negatives is not an error any more
    cfg, note = settle_negatives(tagged, ["cow", "sheep"], UpdateConfig())
    assert cfg.auto_old_tags and not UpdateConfig().auto_old_tags
    assert "'cow'" in note and "'sheep'" not in note and "negatives" in note and "contrasting" in note
    assert "'none'" in note and "tags.csv" in note and "tags.json" in note
    assert settle_negatives(tagged, ["cow", "sheep"], UpdateConfig(relaxed=True)) == (UpdateConfig(relaxed=True), "")
    with_negative = tagged_set(["cow"], [])
    assert settle_negatives(with_negative, ["cow"], UpdateConfig()) == (UpdateConfig(), "")


# -------------------------------------------------------------------------------------------- masks
def test_load_mask_palette_uses_indices_and_rejects_colour(tmp_path):
    ids = np.array([[0, 1, 15], [255, 2, 0]], dtype=np.uint8)
    mask = Image.fromarray(ids, mode="P")
    mask.putpalette(voc_palette().ravel().tolist())
    mask.save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), ids)
    Image.fromarray(ids, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "l.png"), ids)
    Image.fromarray(voc_palette()[ids]).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="colour.*class id"):
        load_mask(tmp_path / "colour.png")


def test_read_mask_folder(tmp_path):
    for stem in ("x", "y"):
        write_image(tmp_path / "img" / f"{stem}.jpg")
        write_image(tmp_path / "ann" / f"{stem}.png", mode="L", value=1)
    pairs = read_mask_folder(tmp_path / "img", tmp_path / "ann")
    assert [(i.name, m.name) for i, m in pairs] == [("x.jpg", "x.png"), ("y.jpg", "y.png")]
    write_image(tmp_path / "img" / "z.jpg")
    with pytest.raises(DataError, match="no mask.*z.jpg"):
        read_mask_folder(tmp_path / "img", tmp_path / "ann")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images"):
        read_mask_folder(tmp_path / "empty", tmp_path / "ann")


def test_read_camvid_missing_list(tmp_path):
    with pytest.raises(DataError, match="train.txt"):
        read_camvid(tmp_path, "train")


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID} (shared dataset, not in repo)")
def test_read_camvid_train():
    pairs = read_camvid(CAMVID, "train")
    assert len(pairs) == 367
    image, mask = load_image(pairs[0][0]), load_mask(pairs[0][1])
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480) and mask.max() <= 11


# ------------------------------------------------------------------------------------------ datasets
def test_pixel_dataset_label_map_and_transform(tmp_path):
    image = np.full((4, 5, 3), 128, np.uint8)
    mask = np.array([[0, 1, 2, 3, 255]] * 4, dtype=np.uint8)
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    label_map = np.arange(256, dtype=np.uint8)
    label_map[3] = 0              # a future class becomes background
    label_map[2] = IGNORE_INDEX   # a class to ignore
    ds = PixelDataset([(image, tmp_path / "m.png")], label_map=label_map)
    x, y = ds[0]
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y[0].tolist() == [0, 1, 255, 0, 255]
    ds = PixelDataset([(image, mask)], label_map=label_map, transform=RandomCrop(8))
    x, y = ds[0]
    assert x.shape == (3, 8, 8) and (y[4:] == IGNORE_INDEX).all()
    assert ds[0][1][:4, :5].tolist() == [[0, 1, 255, 0, 255]] * 4  # the cached copy was not modified


def test_pixel_dataset_size_mismatch(tmp_path):
    ds = PixelDataset([(np.zeros((4, 5, 3), np.uint8), np.zeros((4, 6), np.uint8))])
    with pytest.raises(DataError, match="size"):
        ds[0]


def test_tag_dataset_shapes(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", size=(7, 5)) for i in range(3)]
    tagged = TaggedSet(tuple(paths), (frozenset({"cow"}), frozenset(), frozenset({"cow", "sheep"})))
    ds = TagDataset.from_tagged(tagged, ["cow", "sheep"], transform=RandomCrop(4))
    x, t, i = ds[2]
    assert x.shape == (3, 4, 4) and t.dtype == torch.float32 and t.tolist() == [1.0, 1.0] and i == 2
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[0].shape == (3, 3, 4, 4) and batch[1].shape == (3, 2) and batch[2].tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        TagDataset(paths, np.zeros((2, 2), np.float32))
