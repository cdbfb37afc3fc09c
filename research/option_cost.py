"""The cost of each method and option of an update, per iteration (issue 21): ``python -m research bench --options``.

Every row is one bench configuration (``research.bench``, by default the demo's ``cpu-default``: the shipped tiny base,
``samples/``' 128 px world images, ``recipes.DEMO_UPDATE``) with one option turned on, or another method's step on
the same images, timed the same way as ``bench``'s paths: the joint phase, median ms per iteration after a warm-up,
peak memory of the row's own process. HRHF's inversion runs once before its first iteration; its seconds are
reported apart (``WeakUpdate.replay_seconds``), at the recipe's settings unless ``replay_steps`` says otherwise.
The offline pipeline trains its localizer for the step's epochs, then a MiB step for as many on frozen pseudo-labels:
its row times the localizer's iterations (``wilss.offline.train_localizer``); the table adds a MiB iteration to them.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Iterator

import numpy as np

from research.bench import BenchSetup, Measurement
from wilss.config import HRHF_REPLAY_IMAGES, ILT_OUTPUT_DISTILLATION, UpdateConfig
from wilss.engine import Progress
from wilss.masked_update import MaskedUpdate
from wilss.offline import train_localizer
from wilss.trainer import WeakUpdate
from wilss.training_data import TagDataset, masked_training_set

# Row name -> what it measures, in the table's order.
ROWS = {"wilss": "WILSS, the configuration's recipe",
        "ilt": f"+ ILT output distillation (weight {ILT_OUTPUT_DISTILLATION:g})",
        "freeze-encoder": "+ frozen encoder (ILT)",
        "hrhf": f"+ HRHF replay ({HRHF_REPLAY_IMAGES} images)",
        "felzenszwalb": "+ region prior, Felzenszwalb",
        "slic": "+ region prior, SLIC",
        "mib": "MiB step with masks (masked_update)",
        "offline": "offline pipeline: its localizer's training"}
OFFLINE_TOTAL = "offline pipeline: localizer + MiB"   # the derived line of the table


class LocalizerStep:
    """The offline pipeline's first stage alone (the localizer learns from the tags, l_CLS + l_LOC), with the
    constructor of ``WeakUpdate``; ``run()`` yields one ``Progress`` per iteration (phase 'warmup')."""

    def __init__(self, old_model, dataset, *, num_new: int, cfg: UpdateConfig, device=None, runtime=None) -> None:
        self.update = WeakUpdate(old_model, dataset, num_new=num_new, cfg=cfg, device=device, runtime=runtime)
        self.cfg, self.precision = cfg, self.update.precision

    def run(self) -> Iterator[Progress]:
        return train_localizer(self.update, self.cfg.epochs)


def with_masks(dataset: TagDataset, num_old: int, num_new: int, cfg: UpdateConfig):
    """``dataset``'s images with a mask each, for MiB's step: the centred half of an image tagged with new classes
    labelled with the first of them (ids ``num_old..``), everything else background. The step's speed does not depend
    on what the masks say, only on their size, which is the image's."""
    pairs = []
    for i in range(len(dataset)):
        image = dataset.load(i)
        mask = np.zeros(image.shape[:2], np.uint8)
        tagged = np.flatnonzero(dataset.targets[i][-num_new:])
        if len(tagged):
            h, w = mask.shape
            mask[h // 4:h - h // 4, w // 4:w - w // 4] = num_old + tagged[0]
        pairs.append((image, mask))
    return masked_training_set(pairs, cfg)


def row_setup(name: str, base: BenchSetup, *, replay_steps: int | None = None) -> BenchSetup:
    """``base`` (a WILSS step) with row ``name``'s option, or ``name``'s method on the same images and settings."""
    cfg = base.cfg
    options = {"wilss": {}, "ilt": dict(output_distillation=ILT_OUTPUT_DISTILLATION),
               "freeze-encoder": dict(freeze_encoder=True),
               "hrhf": dict(replay_images=HRHF_REPLAY_IMAGES, replay_steps=replay_steps or cfg.replay_steps),
               "felzenszwalb": dict(region_prior="felzenszwalb"), "slic": dict(region_prior="slic"),
               "mib": {}, "offline": {}}
    if name not in options:
        raise ValueError(f"unknown row {name!r}; choose among {', '.join(ROWS)}")
    setup = replace(base, name=name, cfg=replace(cfg, **options[name]))
    if name == "mib":
        num_old = base.old_model.num_classes
        return replace(setup, dataset=with_masks(base.dataset, num_old, base.num_new, cfg), step=MaskedUpdate)
    return replace(setup, step=LocalizerStep) if name == "offline" else setup


def inversion_note(cfg: UpdateConfig, replay_steps: int | None) -> str:
    steps = replay_steps or cfg.replay_steps
    return f"HRHF inversion: {HRHF_REPLAY_IMAGES} images x {steps} steps, once, before the first iteration"


def format_table(rows: list[Measurement], *, description: str, iterations: int, warmup: int,
                 inversion: str) -> str:
    """One line per row (``Measurement.path`` names the row): ms per iteration, its ratio to WILSS's, peak memory,
    and HRHF's inversion seconds; then the offline pipeline's total where both of its stages were measured."""
    by_row = {m.path: m for m in rows}
    wilss = by_row.get("wilss")
    lines = [f"bench --options: {description}; device {rows[0].device}",
             f"timing: median of {iterations} iterations after {warmup} warm-up, each row in its own process",
             f"{'row':<15} {'what':<45} {'ms/iter':>9} {'x WILSS':>8} {'peak MiB':>9} {'inversion s':>11}"]

    def line(name: str, what: str, ms: float, peak: float, replay: float) -> str:
        ratio = f"{ms / (1000 * wilss.median_s):8.2f}" if wilss else f"{'n/a':>8}"
        seconds = f"{replay:11.1f}" if replay else f"{'':>11}"
        return f"{name:<15} {what:<45} {ms:9.1f} {ratio} {peak / 2**20:9.0f} {seconds}"

    for m in rows:
        lines.append(line(m.path, ROWS[m.path], 1000 * m.median_s, m.peak_bytes, m.replay_seconds))
    if "offline" in by_row and "mib" in by_row:
        stages = by_row["offline"], by_row["mib"]
        lines.append(line("offline-total", OFFLINE_TOTAL, sum(1000 * m.median_s for m in stages),
                          max(m.peak_bytes for m in stages), 0.0))
        lines.append("offline-total: per iteration of the step's schedule (the localizer's epochs, then as many of "
                     "MiB);\n  its one-off pseudo-label pass is not timed")
    if "hrhf" in by_row:
        lines.append(f"{inversion}; its ms/iter: with the fake images joined to each batch")
    lines.append(f"peak memory: {rows[0].peak_kind}, each row in its own process")
    return "\n".join(lines)



def rows_arg(text: str) -> tuple[str, ...]:
    """``--rows``: a comma-separated subset of ``ROWS``, each once; the table keeps ``ROWS``' order."""
    rows = [r.strip().lower() for r in text.split(",") if r.strip()]
    if not rows or set(rows) - ROWS.keys() or len(set(rows)) != len(rows):
        raise argparse.ArgumentTypeError(f"--rows takes a comma-separated subset of {','.join(ROWS)}, each once; "
                                         f"got {text!r}")
    return tuple(r for r in ROWS if r in rows)
