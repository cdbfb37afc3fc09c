"""Step 0 from image tags alone (``wilss.tags_base``), as ``benchmark --tags-base`` runs it. Not a command: the part
of that command that trains a base from tags (``pretrain --tags`` is the product's ``wilss.cli_bases.pretrain_tags``).

    python -m research benchmark camvid --tags-base               # the tags-only base against the pixel base
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

from models.segmenter import Segmenter
from research import recipes
from research.experiment_setup import quick
from research.experiments import Benchmark, Row
from wilss.cli_common import percent


def tags_base(bench: Benchmark, pixel_base: Segmenter, args: argparse.Namespace) -> Segmenter:
    """``benchmark --tags-base``: the pixel base's row renamed 'pixel base' (scored now if it was loaded), then the
    base from tags alone on the same images, network and classes, scored as 'base'; returns that base, which the
    weak steps then grow."""
    for row in bench.rows:
        if row.method == "base":
            row.method = "pixel base"
    if not any(row.method == "pixel base" for row in bench.rows):
        bench.score("pixel base", pixel_base, 0.0)
    cfg = recipes.tags_base_config(bench.pretrain_cfg)
    cfg = quick(cfg) if args.quick else cfg
    start = time.perf_counter()
    model = bench.tags_model("tags base", cfg)
    bench.score("base", model, time.perf_counter() - start)
    return model


def tags_summary(rows: Sequence[Row]) -> list[str]:
    """The tags-only base's old-class mIoU as a share of the pixel base's (the paper: about 85 % on VOC)."""
    by = {r.method: r for r in rows}
    pixel, tags = by.get("pixel base"), by.get("base")
    if pixel is None or tags is None or not pixel.old > 0:
        return []
    return ["", f"Tags-only base: base-class mIoU {percent(tags.old)} = {100 * tags.old / pixel.old:.0f} % of the "
                f"pixel base's {percent(pixel.old)} (single-stage WSSS, CVPR 2020: about 85 % on VOC)"]
