"""``pretrain``: a new base model from the user's own pixel labels (``--data``) or from image tags alone (``--tags``),
written as a normal checkpoint that ``add-class``, ``evaluate``, ``predict`` and the app take (docs/bases.md)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from wilss import recipes
from wilss.cli_bases import ENCODER_DEFAULT, add_network_flags, encoder_arg, pretrain_data, pretrain_tags
from wilss.cli_common import add_common_flags, add_device_flag, check_new_file, positive_int


def cmd_pretrain(args: argparse.Namespace) -> int:
    out = check_new_file(args.out, overwrite=args.overwrite)
    start = time.perf_counter()
    if args.tags is not None:
        return pretrain_tags(args, out, start)
    return pretrain_data(args, out, start)


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "pretrain", help="train a new base model from your own pixel labels (--data) or from image tags alone (--tags)",
        description="Train a base model (step 0) for your own photos and save it as a checkpoint that add-class, "
                    "evaluate, predict and the app take. With --data, from your pixel labels (a VOC-layout, "
                    "images + masks or CamVid folder; every class of it), scored on its test split with per-class "
                    "IoU. With --tags, from image tags alone, no masks (single-stage WSSS). Either starts from the "
                    "installed ImageNet weights by default (docs/bases.md).")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, metavar="PATH",
                        help="a labelled dataset: every class of it, scored on its test split (layouts: "
                             "docs/datasets.md)")
    source.add_argument("--tags", type=Path, metavar="FOLDER",
                        help="a folder of images with tags.csv, its classes the tags (single-stage WSSS, "
                             "docs/bases.md); uses --arch, --encoder, --epochs, --batch-size, --crop-size")
    p.add_argument("--out", required=True, type=Path, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--epochs", type=positive_int, metavar="N",
                   help=f"training epochs (default: {recipes.PIXEL_BASE.epochs} with --data, "
                        f"{recipes.PIXEL_BASE_TINY.epochs} for --arch tiny; {recipes.TAGS_BASE.epochs} with --tags)")
    p.add_argument("--encoder", type=encoder_arg, default=ENCODER_DEFAULT, metavar="CKPT|imagenet|none",
                   help="start the encoder from the installed ImageNet weights ('imagenet', the default for the "
                        "networks that have them), from scratch ('none', the default for tiny), or from the "
                        "encoder of this pretext checkpoint")
    add_network_flags(p)
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_pretrain)
