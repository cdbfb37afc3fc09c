"""``evaluate``, ``predict`` and ``export``: using a checkpoint (through ``wilss.service``: ``score``, ``Predictor``,
``export_onnx``)."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from models import DEFAULT_CHECKPOINT
from wilss.cli_common import (CliError, add_common_flags, add_device_flag, add_max_side_flag, check_new_file,
                              check_writable_folder, open_checkpoint, positive_int)
from wilss.conventions import palette_png, rgb_to_hex
from wilss.data import DataError, list_images, load_image, validate_images
from wilss.render import mask_overlay
from wilss.datasets import LAYOUTS
from wilss.scoring import dataset_eval_set, mask_eval_set, world_eval_set
from wilss.service import ExportError, Predictor, export_onnx, score

# --------------------------------------------------------------------------------------------- evaluate
def _eval_set(args: argparse.Namespace, ckpt):
    """The labelled set of ``evaluate``: a world split, a dataset on disk (optionally through a task), or a pair of
    images/masks folders in the checkpoint's ids."""
    given = [flag for flag, value in (("--world", args.world), ("--data", args.data),
                                      ("--images/--masks", args.images or args.masks)) if value]
    if len(given) > 1:
        raise CliError(f"give one labelled set: {' or '.join(given)}, not several")
    if (args.task is not None or args.step is not None or args.layout is not None) and args.data is None:
        raise CliError("--task, --step and --layout read a dataset's own ids: give it with --data DIR")
    if args.step is not None and args.task is None:
        raise CliError("--step needs --task (the step of that task whose classes the checkpoint has)")
    if args.world is not None:
        return world_eval_set(args.world, args.split or "test", ckpt.class_names)
    if args.data is not None:
        return dataset_eval_set(args.data, ckpt.class_names, layout=args.layout, split=args.split, task=args.task,
                                step=args.step)
    if not (args.images and args.masks):
        raise CliError("give --images DIR and --masks DIR together (or --world DIR, or --data DIR)")
    return mask_eval_set(args.images, args.masks, ckpt.num_classes)


def cmd_evaluate(args: argparse.Namespace) -> int:
    ckpt = open_checkpoint(args.checkpoint)
    eval_set = _eval_set(args, ckpt)
    scores = score(ckpt, eval_set, new_names=eval_set.new_names, device=args.device, max_side=args.max_side)
    print(f"checkpoint {args.checkpoint}: {ckpt.num_classes} classes; "
          f"last added: {', '.join(ckpt.last_added) if ckpt.last_added else 'none (a base model)'}"
          + ("" if eval_set.new_names is None else f"; scored as new (the task's step): {', '.join(scores.new_names)}"))
    print(f"evaluated on {len(eval_set.pairs)} images from {eval_set.source}, resized to the checkpoint's input "
          f"scale ({ckpt.input_side} px, longer side); scored at the masks' size\n")
    print(scores.table())
    return 0


# ---------------------------------------------------------------------------------------------- predict
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
    predictor = Predictor(ckpt, device=args.device, max_side=args.max_side)   # at its input scale
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


# ----------------------------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    out = check_new_file(args.onnx, flag="--onnx", overwrite=args.overwrite)
    ckpt = open_checkpoint(args.checkpoint)
    try:
        path = export_onnx(ckpt, out, size=args.size)
    except ExportError as err:
        raise CliError(str(err)) from None
    print(f"wrote {path} ({ckpt.num_classes} classes: {', '.join(ckpt.class_names[1:])}; input 'image' 1x3xHxW "
          f"float32 normalised, longer side {ckpt.input_side} px (its input scale); output 'logits' 1xKxHxW; class "
          "names, colours, normalisation and input scale in its metadata)")
    return 0


# ------------------------------------------------------------------------------------------------ parsers
def register(commands: argparse._SubParsersAction) -> None:
    register_evaluate(commands)
    register_predict(commands)
    register_export(commands)


def register_evaluate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate", help="per-class IoU and mIoU old / new / all of a checkpoint on labelled images",
        description="Score a checkpoint on labelled images: IoU per class, and mIoU over the old classes, the "
                    "new ones (added by its last add-class step) and all. Each image is resized to the "
                    "checkpoint's input scale (the longer side it was trained at) and its labels back to its "
                    "mask's size. Masks of --images/--masks hold the checkpoint's class ids (0 background, 1.. in "
                    "the checkpoint's order, 255 void), as single-channel or palette PNGs named like their images. "
                    "A dataset of --data (VOC, images + masks folder or CamVid; docs/datasets.md) and a world are "
                    "read in their own ids and mapped by class name (classes the checkpoint does not know count as "
                    "background), or with --task as the benchmarks map them.",
        epilog="example:\n  python -m wilss evaluate --checkpoint camvid_step1.pt --data CamVid/ "
               "--task '0,1,2,3,4,5,6,8,9|7,10'")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="CKPT",
                   help="the checkpoint to score, or torchvision:NAME for a pretrained VOC base (see "
                        "docs/bases.md) (default: the shipped base, models/default_base.pt)")
    p.add_argument("--images", type=Path, metavar="DIR", help="folder of images")
    p.add_argument("--masks", type=Path, metavar="DIR", help="folder of masks NAME.png, one per image NAME.*")
    p.add_argument("--world", type=Path, metavar="DIR", help="a folder written by 'python -m research generate --out'")
    p.add_argument("--data", type=Path, metavar="DIR", help="a labelled dataset in its own ids (VOC, images + masks "
                                                             "folder or CamVid; scored on its test split)")
    p.add_argument("--layout", choices=LAYOUTS, help="the layout of --data (default: detected)")
    p.add_argument("--task", metavar="SPEC", help="with --data: the task over the dataset's ids the checkpoint was "
                                                   "trained on, e.g. 15-5 or 0,1,2|3,4 (future classes count as "
                                                   "background, the step's classes as new; a checkpoint with the "
                                                   "same classes in another order, e.g. a joint model, is mapped by "
                                                   "name; default: map the classes by name)")
    p.add_argument("--step", type=int, metavar="T", help="with --task: the step the checkpoint ended (default: the "
                                                          "step whose classes it has)")
    p.add_argument("--split", help="split of --world or --data (default: test; VOC: val)")
    add_max_side_flag(p)
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_evaluate)


def register_predict(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "predict", help="segment images: palette mask PNGs (and overlays) with the checkpoint's colours",
        description="Segment one image or every image of a folder at the checkpoint's input scale (each image "
                    "resized so its longer side is the side the checkpoint was trained at). Writes "
                    "OUT/<name>_mask.png at the image's own size (a palette PNG: pixel value = class id, shown in "
                    "the class colours) and, with --overlay, OUT/<name>_overlay.png. Never overwrites a file.")
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


def register_export(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export", help="write a checkpoint's network as ONNX (class names and colours in its metadata)",
        description="Export a checkpoint's segmenter to ONNX, the same file as the app's 'Versions & export' tab: "
                    "input 'image' 1x3xHxW float32 (RGB in [0,1] normalised with the ImageNet mean/std, H and W "
                    "dynamic), output 'logits' 1xKxHxW (argmax over K = class id). The metadata holds the class "
                    "names, colours, normalisation and input_side, the longer side (px) to resize images to "
                    "first (the checkpoint's input scale). Needs the 'onnx' package.",
        epilog="example:\n  python -m wilss export --checkpoint arrow.pt --onnx arrow.onnx")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="CKPT",
                   help="a checkpoint file, or torchvision:NAME for a pretrained VOC base (see docs/bases.md) "
                        "(default: the shipped base, models/default_base.pt)")
    p.add_argument("--onnx", required=True, type=Path, metavar="OUT", help="the ONNX file to write")
    p.add_argument("--size", type=positive_int, metavar="PX",
                   help="side of the square input the network is traced at; H and W stay dynamic (default: the "
                        "checkpoint's input scale)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --onnx file")
    add_common_flags(p)
    p.set_defaults(run=cmd_export)
