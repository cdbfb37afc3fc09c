"""The demo as the app runs it, and how good its result is (the held-out set's reader and the choice of the live
images are the product's, ``wilss.demo``; re-exported here).

The app's one-click demo adds ``arrow`` to the shipped base from the tagged images of ``samples/`` with
``recipes.DEMO_UPDATE``. ``run_demo`` makes the same calls as the app's update (``wilss.service``: an ``UpdateRequest``
validated, ``run_update`` with live snapshots of the watched images every two seconds), so
``python -m research benchmark demo`` times and scores what a user gets.

Quality is measured on images the update never saw, with masks:
- ``samples/heldout.zip`` (``images/NNN.png``, ``masks/NNN.png`` in the updated model's ids, ``classes.txt``), generated
  by the world generator from its own seed; the app scores the demo's result on it, and the Evaluate tab takes the
  zip as it is;
- the generated world's test split (``recipes.WORLD_SEEDS['test']``), the benchmark's figure.
"""
from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

from research import recipes, world
from research.protocol import eval_label_map, parse_task
from wilss.checkpoint import Checkpoint
from wilss.config import UpdateConfig
from wilss.demo import HELDOUT_FILE, read_heldout, watch_indices
from wilss.engine import Progress
from wilss.inference import evaluate
from wilss.metrics import summarize
from wilss.service import UpdateRequest, run_update
from wilss.tags import read_tagged_folder
from wilss.training_data import PixelDataset

__all__ = ["HELDOUT_FILE", "HELDOUT_SEED", "HELDOUT_IMAGES", "LIVE_IMAGES", "LIVE_EVERY_S", "SAMPLE_POSITIVES",
           "SAMPLE_NEGATIVES", "SAMPLE_JPEG_QUALITY", "demo_class_names", "write_heldout", "read_heldout", "scores",
           "world_test_scores", "watch_indices", "DemoRun", "run_demo", "write_samples"]

HELDOUT_SEED = 4                  # the world's seeds: train 1, test 2, samples 3 (recipes.WORLD_SEEDS)
HELDOUT_IMAGES = 60
LIVE_IMAGES, LIVE_EVERY_S = 4, 2.0   # the app's live gallery (app.session.AppConfig)
# The demo's tagged images (samples/): many, since images are what teaches a class from tags. With 64 the localizer
# separated arrow images from the others within a few epochs without finding the arrow (its pseudo-labels covered
# 9 % of the arrows' pixels, the class reached 3 IoU); with 720 it must find the arrow itself (docs/results.md).
SAMPLE_POSITIVES, SAMPLE_NEGATIVES, SAMPLE_JPEG_QUALITY = 480, 240, 90


# ------------------------------------------------------------------------------------------------ held out
def demo_class_names() -> list[str]:
    """The demo's updated model's classes, in id order: background, the base's seven, then the demo class."""
    base = [world.WORLD_CLASSES[c] for c in recipes.world_task().seen_classes(0)]
    return ["background", *base, recipes.DEMO_CLASS]


def write_heldout(path: Path, *, n: int = HELDOUT_IMAGES, seed: int = HELDOUT_SEED) -> Path:
    """Write ``n`` generated scenes of the base classes and the demo class (in every other one) with their masks as
    a zip: ``images/NNN.png``, ``masks/NNN.png`` (ids of ``demo_class_names()``), ``classes.txt``. Refuses an
    existing file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; the held-out set is only written to a new file")
    names = demo_class_names()
    ids = [world.WORLD_CLASSES.index(n) for n in names[1:]]
    lut = np.zeros(256, dtype=np.uint8)
    lut[ids] = np.arange(1, len(names), dtype=np.uint8)
    lut[255] = 255
    demo_id = world.WORLD_CLASSES.index(recipes.DEMO_CLASS)
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:   # PNGs are compressed already
        zf.writestr("classes.txt", "\n".join(names) + "\n")
        for i in range(n):
            image, mask = world.sample_scene(rng, size=recipes.WORLD_SIZE, allowed=ids,
                                             required=[demo_id] if i % 2 == 0 else [])
            for folder, array in (("images", image), ("masks", lut[mask])):
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                zf.writestr(f"{folder}/{i:03d}.png", buffer.getvalue())
    return path


def scores(model, pairs: Sequence[tuple], class_names: Sequence[str], new_names: Sequence[str], *,
           label_map: Optional[np.ndarray] = None, device=None) -> dict:
    """{'summary': {'old', 'new', 'all'} mIoU in %, 'iou': {name: IoU in %}} of ``model`` over (image, mask) pairs
    whose masks hold the ids of ``class_names`` (after ``label_map``). ``model`` may know only a prefix of
    ``class_names`` (the version before the update): its missing classes count as never predicted."""
    matrix = evaluate(model, PixelDataset(list(pairs), label_map=label_map), num_classes=len(class_names),
                      device=device)
    iou = matrix.iou()
    new_ids = [class_names.index(n) for n in new_names]
    old_ids = [i for i in range(1, len(class_names)) if i not in new_ids]
    return {"summary": summarize(iou, old_ids, new_ids),
            "iou": {name: 100.0 * float(v) for name, v in zip(class_names, iou.tolist())}}


def world_test_scores(model, *, device=None) -> dict:
    """``scores`` on the generated world's test split (200 scenes; crescent, which the demo does not add, counts as
    background: the MiB convention for classes a model has not been taught)."""
    demo_id = world.WORLD_CLASSES.index(recipes.DEMO_CLASS)
    base = recipes.world_task().seen_classes(0)
    task = parse_task(",".join(map(str, base)) + f"|{demo_id}", len(world.WORLD_CLASSES))
    test = world.generate(recipes.WORLD_COUNTS["test"], seed=recipes.WORLD_SEEDS["test"], size=recipes.WORLD_SIZE)
    return scores(model, test, demo_class_names(), [recipes.DEMO_CLASS], label_map=eval_label_map(task, 1),
                  device=device)


# -------------------------------------------------------------------------------------------------- update
@dataclass
class DemoRun:
    model: object                 # the updated Segmenter
    class_names: list[str]
    seconds: float                # wall time of the update, as the app counts it (set-up, training, snapshots)
    iterations: int
    cfg: UpdateConfig


def run_demo(base: Checkpoint, samples: Path, *, cfg: UpdateConfig = recipes.DEMO_UPDATE, device=None,
             on_progress: Optional[Callable[[Progress], None]] = None,
             probe: Optional[Callable[[Progress, object], None]] = None, probe_every: int = 0) -> DemoRun:
    """The app's default update: ``recipes.DEMO_CLASS`` added to ``base`` from the tagged images of ``samples``
    through ``wilss.service`` as the app calls it, with the app's live snapshots (``LIVE_IMAGES`` watched images,
    refreshed every ``LIVE_EVERY_S``). ``probe(progress, model)`` is called with the model in eval mode every
    ``probe_every`` iterations (a learning curve); its time is left out of the run's ``seconds``."""
    start, paused = time.perf_counter(), 0.0
    request = UpdateRequest(base, read_tagged_folder(samples), [(recipes.DEMO_CLASS, recipes.DEMO_COLOUR)], cfg=cfg)
    plan = request.validate()
    run = run_update(plan, device=device, snapshot_indices=watch_indices(plan.tagged, plan.new_names, LIVE_IMAGES))
    run.update.snapshots()
    shown, last = time.monotonic(), None
    for last in run:
        if last.iteration == last.total_iterations or time.monotonic() - shown >= LIVE_EVERY_S:
            run.update.snapshots()
            shown = time.monotonic()
        if on_progress is not None:
            on_progress(last)
        if probe is not None and probe_every and last.iteration % probe_every == 0 \
                and last.iteration < last.total_iterations:
            begun = time.perf_counter()
            with run.update.evaluating():
                probe(last, run.update.model)
            paused += time.perf_counter() - begun
    seconds = time.perf_counter() - start - paused
    return DemoRun(run.update.model.eval(), plan.class_names, seconds, last.iteration if last else 0, plan.cfg)


def write_samples(folder, *, n_positive: int = SAMPLE_POSITIVES, n_negative: int = SAMPLE_NEGATIVES,
                  seed: int = recipes.WORLD_SEEDS["samples"], heldout: bool = True):
    """The demo's tagged images: scenes with the demo class among base classes, then negatives without it.

    Writes ``folder/NNN.jpg`` (JPEG, quality ``SAMPLE_JPEG_QUALITY``, colour at full resolution: a user's photos are
    JPEGs and the shipped set stays a few megabytes; JPEG's default halving of the colour resolution cost the old
    classes 2.5 mIoU points on the world's PNG test split, docs/results.md) and ``folder/tags.csv``
    (``filename,tags``; empty tags = negative), and with ``heldout``
    the held-out images with masks ``folder/heldout.zip`` (``write_heldout``). Refuses a non-empty folder.
    """
    import csv

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; samples are only written into an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = list(recipes.world_task().seen_classes(0))
    demo_id = world.WORLD_CLASSES.index(recipes.DEMO_CLASS)
    total = n_positive + n_negative
    digits = max(3, len(str(total - 1)))
    rows = []
    for i in range(total):
        positive = i < n_positive
        # Object-centric, like a user's photos of the new class: one to three objects per image.
        image, _ = world.sample_scene(rng, size=recipes.WORLD_SIZE, min_objects=1, max_objects=3, allowed=base,
                                      required=[demo_id] if positive else [])
        name = f"{i:0{digits}d}.jpg"
        Image.fromarray(image).save(folder / name, quality=SAMPLE_JPEG_QUALITY, subsampling=0)   # 4:4:4
        rows.append((name, recipes.DEMO_CLASS if positive else ""))
    with open(folder / "tags.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "tags"])
        writer.writerows(rows)
    if heldout:   # images with masks the demo never trains on, to show its quality
        write_heldout(folder / HELDOUT_FILE)
    return folder
