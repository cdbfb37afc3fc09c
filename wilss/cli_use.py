"""``evaluate`` and ``predict``: using a checkpoint; plus reading labelled sets (a mask folder or a generated
world) in the checkpoint's class ids, which ``add-class`` also uses to score its result."""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from models import DEFAULT_CHECKPOINT
from models.segmenter import Segmenter
from wilss.cli_common import (CliError, add_common_flags, add_device_flag, add_max_side_flag, check_writable_folder,
                              open_checkpoint, percent)
from wilss.conventions import BACKGROUND, IGNORE_INDEX, rgb_to_hex
from wilss.data import DataError, check_mask_pairs, list_images, load_image, read_mask_folder, validate_images
from wilss.training_data import PixelDataset
from wilss.inference import Predictor, evaluate
from wilss.render import mask_overlay
from wilss.metrics import per_class_table, summarize
from wilss.world import WORLD_CLASSES


# ----------------------------------------------------------------------------------------- labelled sets
@dataclass
class EvalSet:
    """Images with masks, and the lookup that turns mask values into the model's class ids."""

    pairs: list[tuple[Path, Path]]
    label_map: Optional[np.ndarray]      # 256 uint8, or None when the masks already hold model ids
    source: str
    same_size: bool                      # every image has one size: evaluate in batches
    largest_side: int = 0                # of the images (0: small, e.g. a generated world's)

    def dataset(self) -> PixelDataset:
        return PixelDataset(self.pairs, label_map=self.label_map, cache=False)


def mask_eval_set(images_dir: Path, masks_dir: Path, num_classes: int,
                  label_map: Optional[np.ndarray] = None) -> EvalSet:
    """Pair and check a VOC-style set now, so that scoring after a long training cannot fail on the data:
    every image opens, every mask has its image's size and only ids ``< num_classes`` (or 255, void)."""
    pairs = read_mask_folder(images_dir, masks_dir)
    sizes = check_mask_pairs(pairs, num_classes, label_map)
    return EvalSet(pairs, label_map, f"{images_dir} + {masks_dir}", len(sizes) == 1, max(max(s) for s in sizes))


def read_world(root: Path) -> dict:
    """``root/world.json`` of a folder written by ``generate --out``, checked."""
    root = Path(root)
    meta_path = root / "world.json"
    if not root.is_dir():
        raise DataError(f"The world folder '{root}' does not exist. Write one with "
                        f"'python -m wilss generate --out {root}'.")
    if not meta_path.is_file():
        raise DataError(f"'{root}' has no world.json, so it is not a folder written by "
                        f"'python -m wilss generate --out DIR'.")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"'{meta_path}' is not valid JSON ({err}). Generate the world again.") from None
    if not isinstance(meta, dict) or meta.get("classes") != list(WORLD_CLASSES):
        raise DataError(f"'{meta_path}' does not list this version's world classes {list(WORLD_CLASSES)}. "
                        "Generate the world again.")
    return meta


def world_split(root: Path, meta: dict, split: str) -> tuple[list[Path], list[Path], list[set[int]]]:
    """(image paths, mask paths, world ids present per image) of one split, sorted by file name."""
    splits = meta.get("splits") or {}
    if split not in splits or not splits[split]:
        raise DataError(f"The world '{root}' has no images in a '{split}' split (it has: "
                        f"{', '.join(s for s in splits if splits[s]) or 'none'}).")
    stems = sorted(splits[split])
    images = [Path(root) / split / "images" / f"{s}.png" for s in stems]
    masks = [Path(root) / split / "masks" / f"{s}.png" for s in stems]
    missing = [str(p) for p in images + masks if not p.is_file()]
    if missing:
        raise DataError(f"The world '{root}' lists {len(missing)} file(s) that are missing, e.g. '{missing[0]}'. "
                        "Generate the world again.")
    return images, masks, [set(int(c) for c in splits[split][s]) for s in stems]


def world_label_map(class_names: Sequence[str]) -> np.ndarray:
    """World ids -> the checkpoint's ids, by class name; world classes the model does not know -> 0
    (background, the MiB convention: predicting nothing there is right)."""
    lut = np.zeros(256, dtype=np.uint8)
    for world_id, name in enumerate(WORLD_CLASSES):
        lut[world_id] = class_names.index(name) if name in class_names else BACKGROUND
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def world_eval_set(root: Path, split: str, class_names: Sequence[str]) -> EvalSet:
    images, masks, _ = world_split(root, read_world(root), split)
    return EvalSet(list(zip(images, masks)), world_label_map(class_names), f"{root} ({split} split)", True)


# ---------------------------------------------------------------------------------------------- scoring
def old_new_ids(class_names: Sequence[str], new_names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Model ids of the ``new_names`` and of the other non-background classes."""
    new = [class_names.index(n) for n in new_names if n in class_names]
    return [i for i in range(1, len(class_names)) if i not in new], new


def score(model: Segmenter, eval_set: EvalSet, class_names: Sequence[str], new_names: Sequence[str], *,
          device: Optional[str] = None, max_side: Optional[int] = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-class IoU (``K``, in [0, 1], NaN for absent classes) and mIoU old / new / all in percent. Images larger
    than ``max_side`` are segmented at that size (one at a time), and scored at their masks' size."""
    batched = eval_set.same_size and (max_side is None or eval_set.largest_side <= max_side)
    matrix = evaluate(model, eval_set.dataset(), num_classes=len(class_names), batch_size=8 if batched else 1,
                      device=device, max_side=max_side)
    iou = matrix.iou()
    old, new = old_new_ids(class_names, new_names)
    return iou, summarize(iou, old, new)


def nan_to_none(value: float) -> Optional[float]:
    """Round a figure for a checkpoint's history; NaN (no class in the group) becomes None."""
    return None if math.isnan(value) else round(float(value), 2)


def format_scores(iou: torch.Tensor, figures: dict[str, float], class_names: Sequence[str],
                  new_names: Sequence[str]) -> str:
    width = max(len(n) for n in class_names) + 2
    lines = [f"{'class':<{width}}IoU %"]
    for name, value in per_class_table(iou, class_names):
        mark = "  (new)" if name in new_names else ""
        lines.append(f"{name:<{width}}{percent(value):>5}{mark}")
    lines.append(f"mIoU old {percent(figures['old'])} | new {percent(figures['new'])} | "
                 f"all {percent(figures['all'])}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    ckpt = open_checkpoint(args.checkpoint)
    if args.world is not None:
        if args.images or args.masks:
            raise CliError("give either --world or --images with --masks, not both")
        eval_set = world_eval_set(args.world, args.split, ckpt.class_names)
    else:
        if not (args.images and args.masks):
            raise CliError("give --images DIR and --masks DIR together (or --world DIR)")
        eval_set = mask_eval_set(args.images, args.masks, ckpt.num_classes)
    new_names = ckpt.last_added
    iou, figures = score(ckpt.model, eval_set, ckpt.class_names, new_names, device=args.device,
                         max_side=args.max_side)
    print(f"checkpoint {args.checkpoint}: {ckpt.num_classes} classes; "
          f"last added: {', '.join(new_names) if new_names else 'none (a base model)'}")
    print(f"evaluated on {len(eval_set.pairs)} images from {eval_set.source}\n")
    print(format_scores(iou, figures, ckpt.class_names, new_names))
    return 0


# ---------------------------------------------------------------------------------------------- predict
def palette_png(mask: np.ndarray, colours: np.ndarray) -> Image.Image:
    """``HxW`` class ids -> a mode 'P' PNG image whose palette holds the class colours (ids stay readable)."""
    palette = np.full((256, 3), 255, dtype=np.uint8)
    palette[: len(colours)] = colours
    png = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L")
    png.putpalette(palette.flatten().tolist())
    return png


def _predict_inputs(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"The input '{source}' does not exist. Give an image file or a folder of images.")
    paths = list_images(source, recursive=False)
    if not paths:
        raise DataError(f"No images found in '{source}'.")
    stems = [p.stem for p in paths]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise DataError(f"Several images in '{source}' share a name ({', '.join(twins[:5])}, e.g. a .png and a "
                        ".jpg), so their outputs would collide. Rename them.")
    return paths


def cmd_predict(args: argparse.Namespace) -> int:
    ckpt = open_checkpoint(args.checkpoint)
    inputs = _predict_inputs(Path(args.input))
    validate_images(inputs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder")
    check_writable_folder(out, flag="--out")
    kinds = ("mask", "overlay") if args.overlay else ("mask",)
    targets = {p: {k: out / f"{p.stem}_{k}.png" for k in kinds} for p in inputs}
    clash = [str(t) for files in targets.values() for t in files.values() if t.exists()]
    if clash:
        raise CliError(f"{len(clash)} output file(s) already exist, e.g. '{clash[0]}'; nothing was written. "
                       "Choose another --out folder or remove them.")
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(ckpt.model, device=args.device, max_side=args.max_side)
    counts = np.zeros(ckpt.num_classes, dtype=np.int64)
    for path in inputs:
        image = load_image(path)
        mask = predictor.predict(image).mask
        counts += np.bincount(mask.ravel(), minlength=ckpt.num_classes)[: ckpt.num_classes]
        palette_png(mask, ckpt.colours).save(targets[path]["mask"])
        if args.overlay:
            Image.fromarray(mask_overlay(image, mask, ckpt.colours)).save(targets[path]["overlay"])
        shares = np.bincount(mask.ravel(), minlength=ckpt.num_classes) / mask.size
        found = ", ".join(f"{ckpt.class_names[i]} {100 * s:.1f}%" for i, s in enumerate(shares) if s > 0)
        print(f"{path.name} -> {targets[path]['mask'].name}: {found}")
    width = max(len(n) for n in ckpt.class_names) + 2
    print("\nlegend (class: colour):")
    for name, colour in zip(ckpt.class_names, ckpt.colours):
        print(f"  {name + ':':<{width}}{rgb_to_hex(colour)}")
    print(f"\npixel share of each predicted class over {len(inputs)} image(s):")
    for name, count in zip(ckpt.class_names, counts):
        if count:
            print(f"  {name + ':':<{width}}{100 * count / counts.sum():5.1f}%")
    print(f"\nwrote {len(inputs) * len(kinds)} file(s) to {out}")
    return 0


# ------------------------------------------------------------------------------------------------ parsers
def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate", help="per-class IoU and mIoU old / new / all of a checkpoint on labelled images",
        description="Score a checkpoint on labelled images: IoU per class, and mIoU over the old classes, the "
                    "new ones (added by its last add-class step) and all. Masks of --images/--masks hold the "
                    "checkpoint's class ids (0 background, 1.. in the checkpoint's order, 255 void), as "
                    "single-channel or palette PNGs named like their images; world masks are mapped by class "
                    "name (world classes the checkpoint does not know count as background).")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="CKPT",
                   help="the checkpoint to score, or torchvision:NAME for a pretrained VOC base (see "
                        "docs/bases.md) (default: the shipped base, models/default_base.pt)")
    p.add_argument("--images", type=Path, metavar="DIR", help="folder of images")
    p.add_argument("--masks", type=Path, metavar="DIR", help="folder of masks NAME.png, one per image NAME.*")
    p.add_argument("--world", type=Path, metavar="DIR", help="a folder written by 'generate --out'")
    p.add_argument("--split", default="test", help="split of --world (default: test)")
    add_max_side_flag(p)
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser(
        "predict", help="segment images: palette mask PNGs (and overlays) with the checkpoint's colours",
        description="Segment one image or every image of a folder. Writes OUT/<name>_mask.png (a palette PNG: "
                    "pixel value = class id, shown in the class colours) and, with --overlay, "
                    "OUT/<name>_overlay.png. Never overwrites a file.")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="CKPT",
                   help="a checkpoint file, or torchvision:NAME for a pretrained VOC base (see docs/bases.md) "
                        "(default: the shipped base, models/default_base.pt)")
    p.add_argument("--input", required=True, type=Path, metavar="FILE_OR_DIR", help="an image or a folder")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (made if absent)")
    p.add_argument("--overlay", action="store_true", help="also write the image blended 50%% with the colours")
    add_max_side_flag(p)
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_predict)
