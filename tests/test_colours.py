"""A new class's default colour: distinct from the palette in use and from black, in CIELAB (one function for the
app and the CLI)."""
import numpy as np

from app.views import spare_colours
from wilss.conventions import distinct_colours, extend_colours, hex_to_rgb, rgb_to_lab, voc_palette


def delta_e(a, b) -> np.ndarray:
    """CIE76 distance between every colour of ``a`` and every colour of ``b``."""
    return np.linalg.norm(rgb_to_lab(np.asarray(a))[:, None] - rgb_to_lab(np.asarray(b))[None], axis=-1)


def test_lab_of_reference_colours():
    lab = rgb_to_lab(np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0]]))
    assert np.allclose(lab[0], 0, atol=1e-6) and np.allclose(lab[1], [100, 0, 0], atol=0.05)
    assert np.allclose(lab[2], [53.24, 80.09, 67.20], atol=0.1)   # sRGB red, D65 (published value)


def test_new_colours_are_far_from_the_palette_black_and_each_other():
    base = voc_palette(8)                  # the shipped base's colours: background + 7 dark VOC colours
    old_choice = voc_palette(9)[8]         # what the VOC palette offered next: (64, 0, 0), near black
    assert delta_e([old_choice], [[0, 0, 0]]).min() < 36
    new = distinct_colours(base, 3)
    assert delta_e(new, np.vstack([base, [[255, 255, 255]]])).min() > 50
    pairwise = delta_e(new, new)[~np.eye(3, dtype=bool)]
    assert pairwise.min() > 50
    # the app and the CLI offer the same colours
    assert [hex_to_rgb(c) for c in spare_colours(base, 3)] == [tuple(c) for c in new.tolist()]
    assert extend_colours(base, [None, None, None]).tolist() == new.tolist()


def test_a_new_models_class_colours_are_far_apart_and_from_black_while_files_keep_the_voc_palette():
    from wilss.checkpoint import default_colours
    from wilss.conventions import class_palette

    palette = class_palette(21)                        # VOC's 21 classes
    assert palette[0].tolist() == [0, 0, 0] and np.array_equal(default_colours(21), palette)
    pairwise = delta_e(palette, palette)[~np.eye(21, dtype=bool)]
    assert pairwise.min() >= 40                        # VOC's palette: 8.8 (ids 6 and 14: #008080 and #408080)
    assert delta_e(voc_palette(21), voc_palette(21))[~np.eye(21, dtype=bool)].min() < 10
    assert delta_e(palette[1:], [[255, 255, 255]]).min() >= 40   # void is white in the pictures
    assert np.array_equal(class_palette(8), palette[:8])          # a prefix: a grown model keeps its colours
    assert voc_palette(3).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]   # files' pixel values, unchanged
