"""Step 0 from image tags alone (``wilss.tags_base``), as ``pretrain --tags`` and ``benchmark --tags-base`` run it.
Not a command: the part of those two commands that trains a base from tags.

    python -m research pretrain --tags FOLDER --out base.pt       # a folder of images + tags.csv, no masks
    python -m research benchmark camvid --tags-base               # the tags-only base against the pixel base
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from models.segmenter import Segmenter
from research import recipes
from research.experiment_setup import base_network, encoder_path, quick, world_encoder
from research.experiments import Benchmark, Row
from wilss import service
from wilss.checkpoint import save_checkpoint
from wilss.cli_common import CliError, ProgressBar, percent
from wilss.data import DataError
from wilss.tags import read_tagged_folder


def pretrain_tags(args: argparse.Namespace, out: Path, start: float) -> int:
    """``pretrain --tags FOLDER``: a base whose classes are the folder's tags, learnt from the tags alone."""
    if args.data is not None or args.pretext or args.size is not None or args.layout is not None:
        raise CliError("--tags trains from tagged images alone: leave out --data, --pretext, --size and --layout")
    tagged = read_tagged_folder(args.tags)
    arch = base_network(args)
    init = world_encoder(args)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "crop_size") if getattr(args, k) is not None}
    if "epochs" in overrides:   # the warm-up keeps its share of the recipe's epochs
        share = recipes.TAGS_BASE.warmup_epochs / recipes.TAGS_BASE.epochs
        overrides["warmup_epochs"] = min(max(1, round(share * args.epochs)), args.epochs - 1)
    try:
        cfg = replace(recipes.TAGS_BASE, **overrides)
        request = service.TagsBaseRequest(tagged, cfg, arch=arch, encoder=str(encoder_path(args) or "none"),
                                          init=init, source=str(args.tags))
        plan = request.validate()
    except (ValueError, DataError) as err:
        raise CliError(f"--tags {args.tags}: {err}" if isinstance(err, DataError) else str(err)) from None
    print(f"tags: {len(tagged)} images ({tagged.num_negatives} untagged), classes "
          + ", ".join(f"{c} ({n})" for c, n in tagged.counts().items()) + f"; {arch}, encoder: {encoder_path(args)}")
    if plan.note:
        print(f"note: {plan.note}")
    run = service.run_tags_base(plan, device=args.device)
    with ProgressBar(quiet=args.quiet) as bar:
        for progress in run:
            bar.update(progress, "tags base")
    ckpt = run.checkpoint()
    path = save_checkpoint(ckpt, out, overwrite=args.overwrite)
    print(f"wall time {time.perf_counter() - start:.1f} s")
    print(f"wrote {path} (grow it with add-class; check it with evaluate or predict)")
    return 0


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
