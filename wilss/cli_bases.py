"""``pretrain --data`` and ``pretrain --tags``: a new base from the user's own pixel labels (``wilss.pixel_base``) or
from image tags alone (``wilss.service.run_tags_base``). Not a command: the part that ``python -m wilss pretrain``
and ``python -m research pretrain`` share, with the ``--encoder`` flag and the network's defaults.

    python -m wilss pretrain --data VOCdevkit/VOC2012 --out base.pt    # VOC layout, images + masks, or CamVid
    python -m wilss pretrain --tags photos/ --out base.pt              # images + tags.csv, no masks
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from models.imagenet import IMAGENET_NETS, load_imagenet_encoder
from wilss import recipes, service
from wilss.checkpoint import save_checkpoint
from wilss.cli_common import CliError, ProgressBar, open_checkpoint, percent, positive_int
from wilss.data import DataError
from wilss.datasets import LAYOUTS, read_labelled
from wilss.pixel_base import class_names, encoder_init, train_pixel_base
from wilss.tags import read_tagged_folder

ENCODER_DEFAULT = object()  # --encoder not given: ImageNet for the networks that have its weights, else none
IMAGENET = "imagenet"       # --encoder imagenet: the ImageNet weights installed with the requirements (models.imagenet)
NETWORKS = tuple(sorted(("tiny", *IMAGENET_NETS)))


# ------------------------------------------------------------------------------------------------- flags
def encoder_arg(text: str) -> Path | str | None:
    """``--encoder``: a pretext checkpoint, 'imagenet' (the installed ImageNet weights), or 'none' (from scratch)."""
    word = text.strip().lower()
    return None if word == "none" else IMAGENET if word == IMAGENET else Path(text)


def size_arg(text: str) -> tuple[int, int]:
    """``--size H,W``: the side lengths every image is resized to."""
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes H,W in pixels (e.g. 180,240), got {text!r}") from None
    if min(h, w) < 32:
        raise argparse.ArgumentTypeError(f"--size {text}: each side must be at least 32 px")
    return h, w


def add_network_flags(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--layout``, ``--arch``, ``--size``, ``--batch-size``, ``--crop-size``: the network and data of a new base."""
    own = parser.add_argument_group("the network and the data (docs/bases.md)")
    own.add_argument("--layout", choices=LAYOUTS, help="the dataset's layout (default: detected)")
    own.add_argument("--arch", choices=NETWORKS,
                     help=f"network (default: {recipes.PIXEL_BASE_ARCH}, its encoder from ImageNet)")
    own.add_argument("--size", type=size_arg, metavar="H,W", help="resize every image to H,W (default: as they are)")
    own.add_argument("--batch-size", type=positive_int, metavar="N",
                     help=f"images per batch (default: {recipes.PIXEL_BASE.batch_size})")
    own.add_argument("--crop-size", type=positive_int, metavar="PX",
                     help=f"training crop side (default: {recipes.PIXEL_BASE.crop_size})")
    return own


# ----------------------------------------------------------------------------------------------- encoder
def base_network(args: argparse.Namespace) -> str:
    """The network a new base trains (``--arch``, default ``recipes.PIXEL_BASE_ARCH``), with ``--encoder``'s default
    settled (ImageNet for the networks that have installed weights, else none). Raises ``CliError`` for ImageNet
    weights asked of a network without them."""
    arch = args.arch or recipes.PIXEL_BASE_ARCH
    if args.encoder is ENCODER_DEFAULT:
        args.encoder = IMAGENET if arch in IMAGENET_NETS else None
    if args.encoder == IMAGENET and arch not in IMAGENET_NETS:
        raise CliError(f"--encoder imagenet: the {arch} network has no installed ImageNet weights; use one of "
                       f"{', '.join(IMAGENET_NETS)} (or --encoder none)")
    return arch


def imagenet_init(model) -> None:
    """Start ``model``'s encoder from the installed ImageNet weights."""
    try:
        load_imagenet_encoder(model)
    except ValueError as err:   # MissingWeights among them
        raise CliError(f"--encoder imagenet: {err}") from None


def encoder_start(args: argparse.Namespace) -> Optional[Callable]:
    """``init(model)`` of the settled ``--encoder`` (``base_network`` first), a pretext file read up front."""
    if args.encoder == IMAGENET:
        return imagenet_init
    if args.encoder is None:
        return None
    if not Path(args.encoder).is_file():
        raise CliError(f"--encoder {args.encoder} does not exist; create it with `python -m research pretrain "
                       f"--pretext --out {args.encoder}`, or give --encoder none to train from scratch")
    return encoder_init(open_checkpoint(args.encoder).model, origin=str(args.encoder))


# ---------------------------------------------------------------------------------------------- the bases
def pretrain_data(args: argparse.Namespace, out: Path, start: float) -> int:
    """``pretrain --data``: a base from the user's own pixel labels (VOC layout, images + masks or CamVid; every
    class of the dataset), its encoder from ImageNet by default; scored on the dataset's test split."""
    source = read_labelled(args.data, args.layout)
    arch = base_network(args)
    init = encoder_start(args)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "crop_size") if getattr(args, k) is not None}
    cfg = replace(recipes.PIXEL_BASE if arch != "tiny" else recipes.PIXEL_BASE_TINY, **overrides)
    names = class_names(source)
    print(f"data: {source.description}; {len(names) - 1} classes; {arch}, encoder: {args.encoder or 'none'}")
    if not source.background_ids:
        print("no background class in this data (every pixel is a named class): the checkpoint records it, and "
              "add-class on it defaults to --no-background")
    with ProgressBar(quiet=args.quiet) as bar:
        base = train_pixel_base(source, cfg, arch=arch, encoder=str(args.encoder or "none"), init=init,
                                size=args.size, device=args.device, on_progress=lambda p: bar.update(p, "base"))
    print(f"test mIoU over the {len(names) - 1} classes: {percent(base.miou)}")
    print("per class IoU %: " + ", ".join(f"{n} {percent(v)}" for n, v in zip(names, base.per_class)))
    path = save_checkpoint(base.checkpoint, out, overwrite=args.overwrite)
    print(f"wall time {time.perf_counter() - start:.1f} s")
    print(f"wrote {path}")
    return 0


def pretrain_tags(args: argparse.Namespace, out: Path, start: float) -> int:
    """``pretrain --tags FOLDER``: a base whose classes are the folder's tags, learnt from the tags alone."""
    if args.data is not None or getattr(args, "pretext", False) or args.size is not None or args.layout is not None:
        raise CliError("--tags trains from tagged images alone: leave out --data, --pretext, --size and --layout")
    tagged = read_tagged_folder(args.tags)
    arch = base_network(args)
    init = encoder_start(args)
    overrides = {k: getattr(args, k) for k in ("epochs", "batch_size", "crop_size") if getattr(args, k) is not None}
    if "epochs" in overrides:   # the warm-up keeps its share of the recipe's epochs
        share = recipes.TAGS_BASE.warmup_epochs / recipes.TAGS_BASE.epochs
        overrides["warmup_epochs"] = min(max(1, round(share * args.epochs)), args.epochs - 1)
    try:
        cfg = replace(recipes.TAGS_BASE, **overrides)
        request = service.TagsBaseRequest(tagged, cfg, arch=arch, encoder=str(args.encoder or "none"),
                                          init=init, source=str(args.tags))
        plan = request.validate()
    except (ValueError, DataError) as err:
        raise CliError(f"--tags {args.tags}: {err}" if isinstance(err, DataError) else str(err)) from None
    print(f"tags: {len(tagged)} images ({tagged.num_negatives} untagged), classes "
          + ", ".join(f"{c} ({n})" for c, n in tagged.counts().items()) + f"; {arch}, encoder: {args.encoder}")
    if plan.note:
        print(f"note: {plan.note}")
    run = service.run_tags_base(plan, device=args.device)
    with ProgressBar(quiet=args.quiet) as bar:
        for progress in run:
            bar.update(progress, "tags base")
    path = save_checkpoint(run.checkpoint(), out, overwrite=args.overwrite)
    print(f"wall time {time.perf_counter() - start:.1f} s")
    print(f"wrote {path} (grow it with add-class; check it with evaluate or predict)")
    return 0
