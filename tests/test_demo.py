"""The demo's held-out set and ``benchmark demo``: the images with masks do not disturb the tagged folder, and the
benchmark runs the app's update and scores it (a smoke run on a tiny untrained base)."""
import numpy as np

from research.app_testing import tiny_checkpoint
from research.cli import main
from research.demo import HELDOUT_FILE, demo_class_names, read_heldout, write_heldout
from research.demo import write_samples
from wilss.tags import read_tagged_folder


def test_heldout_zip_beside_the_tags_leaves_the_tagged_folder_as_it_was(tmp_path, caplog):
    folder = write_samples(tmp_path / "s", n_positive=4, n_negative=2, heldout=False)
    alone = read_tagged_folder(folder)
    write_heldout(folder / HELDOUT_FILE, n=4)
    with caplog.at_level("WARNING"):
        assert read_tagged_folder(folder) == alone       # same images and tags, no warning about extra files
    assert not caplog.records
    names, pairs = read_heldout(folder / HELDOUT_FILE)
    assert names == demo_class_names() and names[-1] == "arrow" and len(names) == 9
    assert len(pairs) == 4 and pairs[0][0].shape == (128, 128, 3) and pairs[0][1].shape == (128, 128)
    assert (pairs[0][1] == 8).any() and max(int(m.max()) for _, m in pairs) <= 8   # scene 0 shows an arrow (id 8)


def test_benchmark_demo_smoke(tmp_path, capsys):
    samples = write_samples(tmp_path / "s", n_positive=4, n_negative=2, heldout=False)
    write_heldout(samples / HELDOUT_FILE, n=4)
    base = tiny_checkpoint(tmp_path / "base.pt")
    out = tmp_path / "demo.md"
    assert main(["benchmark", "demo", "--quick", "--base", str(base), "--samples", str(samples), "--device", "cpu",
                 "--out", str(out), "--curve", "1", "-q"]) == 0
    text = capsys.readouterr().out
    assert "arrow IoU" in text and "wall time" in text and f"samples/{HELDOUT_FILE} (4 images" in text
    rows = [line for line in text.splitlines() if line.startswith("| IoU arrow |")]
    assert len(rows) == 2 and all(r.split("|")[2].strip() == "0.0" for r in rows)   # the base has no arrow
    after = [float(r.split("|")[3]) for r in rows]
    assert all(np.isfinite(after)) and all(0.0 <= v <= 100.0 for v in after)
    assert all(r in out.read_text() for r in rows)
    curve = text.split("### Learning curve")[1].split("###")[0]
    points = [line.split("|")[1:5] for line in curve.splitlines() if line[2:3].isdigit()]
    assert [int(p[0]) for p in points] == [1, 2]                  # scored after iteration 1, and the result
    assert float(points[0][1]) <= float(points[1][1])             # training seconds grow
    assert all(0.0 <= float(p[2]) <= 100.0 for p in points)
