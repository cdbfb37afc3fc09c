"""The app's pure rendering helpers: heat maps, palette colouring, overlays, legends, progress, loss rows."""
import numpy as np
import pytest
from PIL import Image

from app import render


def test_heatmap_ends_of_the_jet_scale():
    cam = np.array([[0.0, 1.0], [np.nan, 7.0]], dtype=np.float32)   # NaN -> 0, above 1 -> 1
    rgb = render.heatmap(cam)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    # OpenCV's JET: 0 -> dark blue, 255 -> dark red (as RGB, after the BGR swap)
    assert tuple(rgb[0, 0]) == (0, 0, 128)
    assert tuple(rgb[0, 1]) == (128, 0, 0)
    assert tuple(rgb[1, 0]) == (0, 0, 128) and tuple(rgb[1, 1]) == (128, 0, 0)


def test_heatmap_rejects_non_2d():
    with pytest.raises(ValueError):
        render.heatmap(np.zeros((1, 2, 2)))


def test_blend_is_the_weighted_mean():
    image = np.full((2, 3, 3), 100, np.uint8)
    layer = np.full((2, 3, 3), 201, np.uint8)
    assert (render.blend(image, layer, 0.5) == 151).all()       # 150.5 rounds up
    assert (render.blend(image, layer, 0.0) == 100).all()
    assert (render.blend(image, layer, 1.0) == 201).all()
    with pytest.raises(ValueError):
        render.blend(image, layer[:1])
    with pytest.raises(ValueError):
        render.blend(image, layer, 1.5)


def test_cam_overlay_resizes_the_cam_and_colours_hot_regions_red():
    image = np.full((8, 8, 3), 60, np.uint8)
    cam = np.zeros((4, 4), np.float32)
    cam[:2, :2] = 1.0
    out = render.cam_overlay(image, cam)
    assert out.shape == image.shape
    hot, cold = out[0, 0].astype(int), out[7, 7].astype(int)
    assert hot[0] > hot[2]            # red over the activation
    assert cold[2] > cold[0]          # blue elsewhere
    assert tuple(cold) == (30, 30, 94)  # (60 + (0, 0, 128)) / 2 rounded


def test_colour_mask_uses_the_palette_and_white_for_unknown_ids():
    colours = np.array([[0, 0, 0], [255, 128, 0]], np.uint8)
    mask = np.array([[0, 1], [255, 7]], np.uint8)
    rgb = render.colour_mask(mask, colours)
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[0, 1]) == (255, 128, 0)
    assert tuple(rgb[1, 0]) == (255, 255, 255) and tuple(rgb[1, 1]) == (255, 255, 255)


def test_mask_overlay_keeps_background_pixels():
    image = np.full((2, 2, 3), 100, np.uint8)
    colours = np.array([[0, 0, 0], [200, 0, 0]], np.uint8)
    mask = np.array([[0, 1], [1, 0]], np.uint8)
    out = render.mask_overlay(image, mask, colours, 0.5)
    assert tuple(out[0, 0]) == (100, 100, 100)
    assert tuple(out[0, 1]) == (150, 50, 50)
    blended_bg = render.mask_overlay(image, mask, colours, 0.5, background_clear=False)
    assert tuple(blended_bg[0, 0]) == (50, 50, 50)
    with pytest.raises(ValueError):
        render.mask_overlay(image, mask[:1], colours)


def test_upscale_by_an_integer_factor_with_nearest_pixels():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = render.upscale(image, min_side=5)
    assert big.shape == (6, 9, 3)
    assert (big[0:3, 0:3] == image[0, 0]).all() and (big[3:, 6:] == image[1, 2]).all()
    large = np.zeros((300, 400, 3), np.uint8)
    assert render.upscale(large, 256) is large


def test_snapshot_tiles_one_cam_per_new_class():
    image = np.zeros((16, 16, 3), np.uint8)
    cams = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    mask = np.zeros((16, 16), np.uint8)
    colours = np.zeros((5, 3), np.uint8)
    tiles = render.snapshot_tiles(image, cams, mask, mask, colours, ["arrow", "moon"], title="a.png")
    captions = [c for _, c in tiles]
    assert captions == ["a.png", "CAM arrow", "CAM moon", "pseudo-label", "mask"]
    assert all(t.shape == (256, 256, 3) for t, _ in tiles)
    with pytest.raises(ValueError):
        render.snapshot_tiles(image, cams[:1], mask, mask, colours, ["arrow", "moon"])


def test_legend_html_escapes_names_and_marks_new_classes():
    colours = np.array([[0, 0, 0], [255, 128, 0], [1, 2, 3]], np.uint8)
    html = render.legend_html(["background", "arrow", "<b>x"], colours, new=["arrow"])
    assert "#ff8000" in html and 'data-class="arrow"' in html and "(new)" in html
    assert "<b>x" not in html and "&lt;b&gt;x" in html
    shares = render.legend_html(["background", "arrow", "c"], colours, shares=[0.75, 0.25, 0.0], hide_absent=True)
    assert "75.0%" in shares and "25.0%" in shares and 'data-class="c"' not in shares
    with pytest.raises(ValueError):
        render.legend_html(["a"], colours)


def test_legend_image_draws_each_swatch_in_its_colour():
    colours = np.array([[0, 0, 0], [255, 128, 0]], np.uint8)
    picture = render.legend_image(["background", "arrow"], colours, row_height=20, width=120)
    assert picture.shape == (40, 120, 3)
    assert tuple(picture[30, 10]) == (255, 128, 0)          # inside the second swatch
    assert tuple(picture[10, 10]) == (0, 0, 0)
    assert (picture[:, 60:] < 255).any()                    # some text was drawn


def test_classes_html_has_one_row_per_class():
    html = render.classes_html(["background", "disc"], np.array([[0, 0, 0], [128, 0, 0]], np.uint8),
                               {"disc": "step 0: pretrain"})
    assert html.count("<tr data-class=") == 2 and "#800000" in html and "step 0: pretrain" in html


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (42.4, "42 s"), (185, "3 min 05 s"), (3720, "1 h 02 min"),
                                           (float("nan"), "?"), (-1, "?")])
def test_format_duration(seconds, text):
    assert render.format_duration(seconds) == text


def test_progress_html_shows_phase_fraction_and_time_left():
    html = render.progress_html(5, 20, phase="warmup", epoch=0, epochs=4, eta_s=65, losses={"cls": 0.5})
    assert 'data-fraction="0.2500"' in html and "width:25.0%" in html
    assert "localizer warm-up" in html and "epoch 1/4" in html and "iteration 5/20" in html
    assert "1 min 05 s left" in html and "cls 0.500" in html
    assert "joint training" in render.progress_html(20, 20, phase="joint", epoch=3, epochs=4, eta_s=0)


def test_loss_rows_list_every_series_from_the_start():
    rows = render.loss_rows([(1, {"cls": 1.0})], series=["cls", "seg", "total"])
    assert rows["loss"] == ["seg", "cls", "total"] and rows["iteration"] == [1, 1, 1]
    assert np.isnan(rows["value"][0]) and rows["value"][1:] == [1.0, 1.0]
    assert render.loss_rows([], series=["cls"]) == {"iteration": [], "loss": [], "value": []}


def test_loss_rows_add_the_total_and_thin_long_runs():
    rows = render.loss_rows([(1, {"cls": 1.0, "loc": 0.5}), (2, {"cls": 0.5, "loc": float("nan")})])
    assert rows["iteration"] == [1, 1, 1, 2, 2]
    assert rows["loss"] == ["cls", "loc", "total", "cls", "total"]
    assert rows["value"] == [1.0, 0.5, 1.5, 0.5, 0.5]
    long = render.loss_rows([(i, {"seg": 1.0 / i}) for i in range(1, 1001)], max_points=100)
    iterations = sorted(set(long["iteration"]))
    assert len(iterations) <= 100 and iterations[0] == 1 and iterations[-1] == 1000


def test_frame_store_keeps_only_the_last_frames(tmp_path):
    from app.frames import FrameStore

    store = FrameStore(tmp_path / "live", keep=2)
    tiles = [(np.full((4, 5, 3), 200, dtype=np.uint8), "image"), (np.zeros((4, 5, 3), dtype=np.uint8), "mask")]
    frames = [store.write(tiles) for _ in range(5)]
    assert [caption for _, caption in frames[-1]] == ["image", "mask"]
    assert np.asarray(Image.open(frames[-1][0][0])).tolist() == tiles[0][0].tolist()
    on_disk = sorted(p.parent.name for p in (tmp_path / "live").rglob("*.png"))
    assert on_disk == ["000003", "000003", "000004", "000004"]     # 5 frames written, the last 2 kept
    store.clear()
    assert not list((tmp_path / "live").rglob("*.png"))
