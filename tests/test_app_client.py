"""End to end through gradio_client against the launched app (``python launch.py`` in a subprocess): bring the
samples with their tags, run a short add-class while reading the streamed updates, download the checkpoint,
reload it and predict with it; bad input leaves everything unchanged; updates queue per device and cancel."""
import io
import json
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio_client", reason="the app tests need gradio_client (pip install gradio_client)")
pytest.importorskip("gradio", reason="the app tests need gradio (pip install gradio)")

from gradio_client import Client, handle_file  # noqa: E402

from app.update import ADVANCED  # noqa: E402
from research.app_testing import launched, tiny_checkpoint  # noqa: E402
from research.demo import write_samples
from wilss.checkpoint import load_checkpoint  # noqa: E402
from wilss.data import load_image  # noqa: E402
from wilss.inference import Predictor  # noqa: E402
from wilss.recipes import DEMO_UPDATE  # noqa: E402

SHORT = dict(epochs=2, warmup_epochs=1, batch_size=8, localizer_channels=16)


def advanced(**overrides):
    values = {**SHORT, **overrides}
    return [values.get(name, getattr(DEMO_UPDATE, name)) for name, *_ in ADVANCED]


def add_args(name="arrow", colour="#ff8000", **overrides):
    return (name, "", "", colour, "#400000", "#c00000", [], *advanced(**overrides))


def labelled_set(images_dir, masks_dir, n=6):
    """World scenes of the base classes and arrows, masks remapped to the updated model's ids (arrow = 8)."""
    from PIL import Image

    from research.world import WORLD_CLASSES, generate

    images_dir.mkdir()
    masks_dir.mkdir()
    arrow = WORLD_CLASSES.index("arrow")
    lut = np.arange(256, dtype=np.uint8)
    lut[WORLD_CLASSES.index("crescent")], lut[arrow] = 0, 8
    files = ([], [])
    for i, (image, mask) in enumerate(generate(n, seed=5, allowed=list(range(1, 8)) + [arrow])):
        Image.fromarray(image).save(images_dir / f"e{i}.png")
        Image.fromarray(lut[mask]).save(masks_dir / f"e{i}.png")
        files[0].append(handle_file(str(images_dir / f"e{i}.png")))
        files[1].append(handle_file(str(masks_dir / f"e{i}.png")))
    return files


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_client")
    samples = write_samples(root / "samples", n_positive=40, n_negative=24)
    ckpt = tiny_checkpoint(root / "base.pt")
    with launched(ckpt, samples, root / "work", log_path=root / "server.log") as url:
        yield url, samples, root


def client(url, root):
    folder = root / f"downloads-{time.monotonic_ns()}"
    folder.mkdir()
    return Client(url, verbose=False, download_files=str(folder))


@pytest.mark.slow
def test_add_class_end_to_end(app_url):
    url, samples, root = app_url
    c = client(url, root)
    header = c.predict(api_name="/model_info")[0]
    assert "v000" in header and "hexagon" in header and "arrow" not in header

    images = sorted(samples.glob("*.jpg"))
    out = c.predict([handle_file(str(p)) for p in images], handle_file(str(samples / "tags.csv")),
                    api_name="/bring_data")
    status, counts = out[0], out[1]
    assert "64 images" in status and "40 tagged 'arrow'" in status and "24 negatives" in status
    assert {row[0]: row[1] for row in counts["data"]}["arrow"] == 40
    assert out[5] == "arrow" and out[8] == "#ff8000"      # class row 1 filled from the new tag

    job = c.submit(*add_args(), api_name="/add_classes")
    phases, captions, plots = set(), set(), 0
    for progress, _status, plot, gallery in job:
        if progress and "data-phase" in progress:
            phases.add(progress.split('data-phase="')[1].split('"')[0])
        if isinstance(plot, dict) and plot.get("data"):
            plots += 1
        if isinstance(gallery, dict) and gallery.get("value"):
            for tile in gallery["value"]:
                assert Path(tile["image"]).is_file()
                captions.add(tile["caption"])
    final = job.outputs()[-1]
    assert job.status().code.name == "FINISHED"
    assert phases == {"warmup", "joint"}
    assert {"000.jpg", "CAM arrow", "pseudo-label", "mask"} <= captions
    assert plots >= 1 and "v001" in final[1], final

    # the samples ship held-out images with masks: the page scores the update on them (before and after)
    info, table = c.predict(api_name="/heldout_scores")
    assert "60 held-out images" in info and "arrow IoU" in info
    rows = {row[0]: row[1:] for row in table["value"]["data"]} if "value" in table else \
        {row[0]: row[1:] for row in table["data"]}
    assert {"mIoU old", "mIoU new", "mIoU all", "IoU arrow (new)"} <= set(rows)
    assert float(rows["IoU arrow (new)"][0]) == 0.0 and 0.0 <= float(rows["IoU arrow (new)"][1]) <= 100.0

    path = c.predict(api_name="/checkpoint_file")
    ckpt = load_checkpoint(path)
    assert ckpt.class_names[-1] == "arrow" and ckpt.num_classes == 9
    assert tuple(ckpt.colours[-1]) == (255, 128, 0)
    step = ckpt.history[-1]
    assert step["kind"] == "add-class" and step["classes"] == ["arrow"] and step["num_images"] == 64
    assert step["settings"]["epochs"] == 2 and step["settings"]["localizer_channels"] == 16
    image = load_image(images[0])
    prediction = Predictor(ckpt.model, device="cpu").predict(image)
    assert prediction.mask.shape == image.shape[:2] and prediction.scores.shape == (9, 128, 128)
    assert np.allclose(prediction.scores.sum(0), 1.0, atol=1e-4)

    overlay, legend, maps, text = c.predict(handle_file(str(images[0])), 0.5, api_name="/predict")
    assert Path(overlay).is_file() and 'data-class="arrow"' in legend and len(maps) == 9
    assert "v001" in text

    # evaluate before (v000) and after (v001) on images with masks in v001's ids
    images_dir, masks_dir = root / "eval_images", root / "eval_masks"
    eval_images, eval_masks = labelled_set(images_dir, masks_dir)
    table, text = c.predict(eval_images, eval_masks, "v000", "v001", api_name="/evaluate")
    assert text.startswith("**Done:**") and "6 images" in text, text
    rows = {row[0]: row[1:] for row in table["data"]}
    assert table["headers"] == ["metric (%)", "v000", "v001"]
    assert {"mIoU old", "mIoU new", "mIoU all", "IoU arrow (new)", "IoU disc"} <= set(rows)
    assert rows["mIoU new"][0] == "0.0"                  # v000 cannot predict arrows
    assert all(0.0 <= float(v) <= 100.0 for v in rows["mIoU all"])

    # review: page through the training images' CAMs and pseudo-labels, reject one, re-run from the others
    gallery, info, page, rejected = c.predict(2, [], api_name="/review_page")
    assert page == 2 and "Page 2/11" in info and len(gallery["value"]) == 6 * 4
    assert gallery["value"][0]["caption"].startswith("006.jpg [arrow]")
    assert "000.jpg" in rejected["choices"][0]
    archive, text = c.predict(api_name="/export_pseudo_labels")
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
        assert "labelmap.txt" in names and "arrow:255,128,0::" in z.read("labelmap.txt").decode()
        masks = [n for n in names if n.startswith("SegmentationClass/") and n.endswith(".png")]
        assert len(masks) == 64 and "exported 64 pseudo-labels" in text
        mask = Image.open(io.BytesIO(z.read("SegmentationClass/000.png")))
        assert mask.mode == "P" and mask.size == Image.open(samples / "000.jpg").size
    rerun = c.submit(["000.jpg"], api_name="/rerun")
    outputs = list(rerun)     # (progress, status, plot, gallery, review status): the tab switch is not in the API
    assert "63 accepted images (1 rejected)" in outputs[0][-1]
    assert "v002" in outputs[-1][1], outputs[-1]
    step = load_checkpoint(c.predict(api_name="/checkpoint_file")).history[-1]
    assert step["rejected"] == ["000.jpg"] and step["num_images"] == 63 and step["base_checkpoint"] == "v000"

    # every version is kept; rolling back makes v000 current again
    c.predict("v000", api_name="/rollback")
    assert "v000" in c.predict(api_name="/model_info")[0]
    assert Path(c.predict(api_name="/checkpoint_file")).name == "v000.pt"


def test_bad_input_changes_nothing(app_url, tmp_path):
    url, samples, root = app_url
    c = client(url, root)
    before = c.predict(api_name="/data_info")[0]
    note = tmp_path / "notes.txt"
    note.write_text("not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    tags = tmp_path / "tags.csv"
    tags.write_text("filename,tags\n000.jpg,arrow\nmissing.png,arrow\n")
    sample = handle_file(str(samples / "000.jpg"))
    for files, tags_file, words in (([handle_file(str(note))], None, "neither images"),
                                    ([handle_file(str(broken)), sample], None, "could not be opened"),
                                    ([sample], handle_file(str(tags)), "missing.png")):
        status = c.predict(files, tags_file, api_name="/bring_data")[0]
        assert status.startswith("**Error:**") and words in status and "unchanged" in status, status
        assert str(root) not in status and "/cache/" not in status, status   # no server paths
    assert c.predict(api_name="/data_info")[0] == before

    for args, words in ((add_args(name="  "), "name is empty"), (add_args(name="disc"), "already exists")):
        job = c.submit(*args, api_name="/add_classes")
        assert words in job.result()[1]

    pickled = tmp_path / "evil.pt"
    torch.save({"format": "wilss-checkpoint", "version": 1, "hook": print}, pickled)   # pickled code
    text = c.predict(handle_file(str(pickled)), api_name="/load_checkpoint")
    assert text.startswith("**Error:**") and "pickled" in text and "unchanged" in text, text
    text = c.predict(handle_file(str(note)), api_name="/load_checkpoint")
    assert text.startswith("**Error:**") and "not a wilss checkpoint" in text and str(root) not in text, text
    assert "v000" in c.predict(api_name="/model_info")[0]
    assert "Error" in c.predict(handle_file(str(note)), 0.5, api_name="/predict")[3]

    # only the work folder is served: not the repository, not the system
    for target in ("/etc/passwd", str(Path(__file__).resolve())):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}gradio_api/file={target}", timeout=5)
        assert err.value.code == 403


@pytest.mark.slow
def test_updates_queue_per_device_cancel_and_predict_stays_responsive(app_url):
    url, samples, root = app_url
    first, second = client(url, root), client(url, root)
    long_run = first.submit(*add_args(epochs=200, warmup_epochs=1), api_name="/add_classes")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("data-phase" in (o[0] or "") for o in long_run.outputs()):
        time.sleep(0.2)
    waiting = second.submit(*add_args(), api_name="/add_classes")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any("in line" in (o[0] or "") for o in waiting.outputs()):
        time.sleep(0.2)
    assert any("number 2 in line" in (o[0] or "") for o in waiting.outputs()), waiting.outputs()

    start = time.perf_counter()
    text = second.predict(handle_file(str(samples / "000.jpg")), 0.5, api_name="/predict")[3]
    assert "000.jpg" in text and time.perf_counter() - start < 10

    # the running update's pseudo-labels can be reviewed while it trains (rendered between two iterations)
    gallery, info, _, _ = first.predict(1, [], api_name="/review_page")
    assert "running" in info and len(gallery["value"]) == 6 * 4

    assert "Cancelling" in second.predict(api_name="/cancel")
    assert "Cancelled while waiting" in waiting.result()[0]
    assert "Cancelling" in first.predict(api_name="/cancel")
    final = long_run.result()
    assert "Cancelled after" in final[0] and "as it was" in final[1]
    assert Path(first.predict(api_name="/checkpoint_file")).name == "v000.pt"


def test_onnx_export(app_url):
    url, _, root = app_url
    c = client(url, root)
    path, text = c.predict(api_name="/export_onnx")
    try:
        import onnx
    except ImportError:
        assert path is None and "pip install onnx" in text
        return
    model = onnx.load(path)
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["class_names"])[1] == "disc"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["height", "width"]
