"""Pseudo-labels out: palette PNGs in the VOC convention and the label map a labelling tool reads."""
import json

import numpy as np
from PIL import Image

from wilss.conventions import VOID_COLOUR, palette_png
from wilss.pseudo_labels import write_label_map


def test_palette_png_keeps_ids_and_marks_void(tmp_path):
    labels = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    colours = np.array([[0, 0, 0], [255, 128, 0], [1, 2, 3]], dtype=np.uint8)
    palette_png(labels, colours).save(tmp_path / "m.png")
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P" and np.array_equal(np.array(image), labels)
    palette = np.array(image.getpalette()).reshape(-1, 3)
    assert palette[1].tolist() == [255, 128, 0] and palette[255].tolist() == list(VOID_COLOUR)
    assert np.array_equal(np.array(image.convert("RGB"))[0, 1], [255, 128, 0])


def test_label_map_for_cvat_and_scripts(tmp_path):
    write_label_map(tmp_path, ["background", "cow"], np.array([[0, 0, 0], [64, 128, 0]]))
    assert (tmp_path / "labelmap.txt").read_text().splitlines() == [
        "# label:color_rgb:parts:actions", "background:0,0,0::", "cow:64,128,0::"]
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["void"] == 255 and labels["classes"][1] == {"id": 1, "name": "cow", "colour": [64, 128, 0]}
