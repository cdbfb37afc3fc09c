"""``generate``, ``pretrain`` and ``benchmark``: the world data, the shipped base model, and the protocol tables."""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from models import DEFAULT_ENCODER
from wilss import recipes
from wilss.checkpoint import save_checkpoint
from wilss.cli_common import (REPO_ROOT, CliError, ProgressBar, add_common_flags, add_device_flag, check_new_file,
                              check_new_folder, non_negative_int, open_checkpoint, percent, positive_int,
                              write_report)
from wilss.cli_use import read_world
from wilss.config import OptimConfig
from wilss.data import DataError
from wilss.experiments import Benchmark, Protocol, Row, camvid_splits, format_per_class, format_table
from wilss.datasets import write_voc_tree
from wilss.protocol import parse_task
from wilss.world import write_world

ENCODER_DEFAULT = object()  # --encoder not given: see encoder_path
DEFAULT_CAMVID = REPO_ROOT.parent / "shared" / "datasets" / "camvid"
# From the dataset's README (ids 0-10; 11 = unlabelled), used when camvid_meta.json is absent.
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
WORLD_DEFAULTS = {"seed": 0, "size": recipes.WORLD_SIZE, "n_train": 600, "n_val": 100, "n_test": 200}
VOC_TREE_DEFAULTS = {"seed": 0, "size": recipes.WORLD_SIZE, "n_train": 200, "n_val": 50}


# ---------------------------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    world_flags = [f"--{k.replace('_', '-')}" for k in WORLD_DEFAULTS if k != "seed" and getattr(args, k) is not None]
    if args.samples is not None:
        if world_flags:
            raise CliError(f"{', '.join(world_flags)}: only for a world (--out), not for --samples")
        check_new_folder(args.samples, flag="--samples")
        seed = {} if args.seed is None else {"seed": args.seed}
        folder = recipes.write_samples(args.samples, **seed)
        print(f"wrote {len(list(folder.glob('*.png')))} demo images and {folder / 'tags.csv'}")
        return 0
    if args.voc_layout is not None:
        return _generate_voc_tree(args)
    settings = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in WORLD_DEFAULTS.items()}
    if settings["size"] < 32:
        raise CliError(f"--size {settings['size']} is too small for the world's shapes; use 32 or more")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder")
    for split in ("train", "val", "test"):
        if (out / split).exists() and any((out / split).iterdir()):
            raise CliError(f"--out {out} already holds a '{split}' split; give a new or empty folder")
    start = time.perf_counter()
    write_world(out, **settings)
    splits = read_world(out).get("splits", {})
    counts = ", ".join(f"{len(splits.get(s, {}))} {s}" for s in ("train", "val", "test"))
    print(f"wrote a world of {settings['size']} px scenes (seed {settings['seed']}): {counts} images "
          f"in {time.perf_counter() - start:.1f} s")
    print(f"wrote {out} (layout: world.json, <split>/images, <split>/masks)")
    return 0


def _generate_voc_tree(args: argparse.Namespace) -> int:
    if args.n_test is not None:
        raise CliError("--n-test: a VOC-layout tree has train and val lists only")
    check_new_folder(args.voc_layout, flag="--voc-layout")
    settings = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in VOC_TREE_DEFAULTS.items()}
    if settings["size"] < 32:
        raise CliError(f"--size {settings['size']} is too small for the world's shapes; use 32 or more")
    start = time.perf_counter()
    write_voc_tree(args.voc_layout, **settings)
    print(f"wrote a VOC-layout tree of {settings['size']} px world scenes (seed {settings['seed']}): "
          f"{settings['n_train']} train, {settings['n_val']} val images in {time.perf_counter() - start:.1f} s")
    print(f"wrote {args.voc_layout} (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/, classes.txt: "
          "9 named classes, so use a task such as --task 5-2)")
    return 0


# ---------------------------------------------------------------------------------------------- pretrain
def encoder_arg(text: str) -> Path | None:
    """``--encoder``: a pretext checkpoint, or 'none' for networks from scratch."""
    return None if text.strip().lower() == "none" else Path(text)


def encoder_path(args: argparse.Namespace) -> Path | None:
    """The pretext checkpoint ``--encoder`` names: by default the shipped one on the world, none on CamVid (real
    photographs: its recipe trains from scratch unless an encoder is given)."""
    if args.encoder is not ENCODER_DEFAULT:
        return args.encoder
    return DEFAULT_ENCODER if getattr(args, "dataset", "world") == "world" else None


def encoder_network(args: argparse.Namespace):
    """The pretext network ``--encoder`` names, loaded once (a clear error for a missing or unreadable file), and
    its path; (None, None) for networks from scratch."""
    path = encoder_path(args)
    if path is None:
        return None, None
    if not path.is_file():
        raise CliError(f"--encoder {path} does not exist; create it with `python -m wilss pretrain --pretext --out "
                       f"{path}`, or give --encoder none to train from scratch")
    return open_checkpoint(path).model, path


def world_encoder(args: argparse.Namespace):
    """``Benchmark.init_model`` from ``--encoder`` (None: from scratch), the file read up front."""
    source, path = encoder_network(args)
    return recipes.encoder_init(source, origin=str(path))


def add_encoder_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--encoder", type=encoder_arg, default=ENCODER_DEFAULT, metavar="CKPT|none",
                        help=f"start {what} from the encoder of this pretext checkpoint ('none': from scratch; "
                             f"default: the shipped models/{DEFAULT_ENCODER.name} for the world)")


def cmd_pretrain(args: argparse.Namespace) -> int:
    out = check_new_file(args.out, overwrite=args.overwrite)
    start = time.perf_counter()
    if args.pretext:
        return _pretrain_pretext(args, out, start)
    encoder, path = encoder_network(args)  # read before training
    with ProgressBar(quiet=args.quiet) as bar:
        ckpt, row = recipes.train_default_base(epochs=args.epochs, device=args.device, encoder=encoder,
                                               encoder_name=None if path is None else path.name,
                                               on_progress=lambda n, p: bar.update(p, n))
    # From the per-class IoU: at step 0 the task calls the base classes "new", so row.old is NaN.
    base_miou = float(np.nanmean(row.per_class[1:])) if not np.all(np.isnan(row.per_class[1:])) else math.nan
    print(f"base model: {', '.join(ckpt.class_names[1:])}")
    print(f"test mIoU: base classes {percent(base_miou)} | all (with background) {percent(row.all)}")
    print("per class IoU %: " + ", ".join(f"{n} {percent(v)}" for n, v in zip(ckpt.class_names, row.per_class)))
    path = save_checkpoint(ckpt, out, overwrite=args.overwrite)
    print(f"wall time {time.perf_counter() - start:.1f} s")
    print(f"wrote {path}")
    return 0


def _pretrain_pretext(args: argparse.Namespace, out: Path, start: float) -> int:
    if args.encoder is not ENCODER_DEFAULT:
        raise CliError("--encoder is for the base model; the pretext network starts from scratch")
    with ProgressBar(quiet=args.quiet) as bar:
        ckpt, miou = recipes.train_pretext_encoder(epochs=args.epochs, device=args.device,
                                                   on_progress=lambda n, p: bar.update(p, n))
    print(f"pretext network: {len(ckpt.class_names) - 1} texture families; test mIoU (with background) "
          f"{percent(miou)}")
    path = save_checkpoint(ckpt, out, overwrite=args.overwrite)
    print(f"wall time {time.perf_counter() - start:.1f} s")
    print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------- benchmark
def quick(cfg: OptimConfig) -> OptimConfig:
    """A smoke-run variant: epochs / 10 (at least 2), warm-up / 10 (at least 1, less than the epochs)."""
    epochs = max(2, cfg.epochs // 10)
    changes = {"epochs": epochs}
    if hasattr(cfg, "warmup_epochs"):
        changes["warmup_epochs"] = min(max(1, cfg.warmup_epochs // 10), epochs - 1)
    return replace(cfg, **changes)


def camvid_classes(root: Path) -> tuple[str, ...]:
    meta = root / "camvid_meta.json"
    if meta.is_file():
        try:
            classes = tuple(json.loads(meta.read_text())["classes"])
            if len(classes) == len(CAMVID_CLASSES):
                return classes
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    return CAMVID_CLASSES


def goal_checks(rows: Sequence[Row]) -> list[tuple[str, bool]]:
    """The world's goals: WILSS new >= 80% of joint new, old >= 97% of base old, all > FT all."""
    by = {r.method: r for r in rows}
    w, j, b, f = by["wilss"], by["joint"], by["base"], by["ft"]
    return [(f"WILSS new {percent(w.new)} >= 80% of joint new ({percent(0.8 * j.new)})", w.new >= 0.8 * j.new),
            (f"WILSS old {percent(w.old)} >= 97% of base old ({percent(0.97 * b.old)})", w.old >= 0.97 * b.old),
            (f"WILSS all {percent(w.all)} > FT all ({percent(f.all)})", w.all > f.all)]


def benchmark_setup(args: argparse.Namespace):
    """(protocol, splits loader, step-0 recipe, weak-step recipe, title) of ``args.dataset`` (world | camvid)."""
    if args.dataset == "world":
        return (recipes.world_protocol(), recipes.world_splits, recipes.WORLD_PRETRAIN, recipes.WORLD_UPDATE,
                f"world {recipes.WORLD_TASK_SPEC} {recipes.WORLD_SETTING}")
    root = Path(args.data)
    if not (root / "train.txt").is_file():
        raise DataError(f"CamVid was not found in '{root}' (no train.txt). Give its folder with --data PATH.")
    cam = recipes.CAMVID
    protocol = Protocol(name="camvid", dataset_classes=camvid_classes(root),
                        task=parse_task(cam.task_spec, 11, background_ids=()), setting=cam.setting,
                        ignore_ids=(11,), resize=cam.resize, background_in_all=False)
    return protocol, lambda: camvid_splits(root), cam.pretrain, cam.update, f"camvid {cam.task_spec} {cam.setting}"


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.dataset == "demo":
        from wilss.cli_demo import cmd_benchmark_demo

        return cmd_benchmark_demo(args)
    if args.samples is not None:
        raise CliError("--samples is for the demo benchmark only")
    if args.base is not None and args.dataset == "camvid":
        raise CliError("--base is for the world benchmark only, and the demo's (the CamVid base is trained by the run)")
    protocol, splits, pretrain_cfg, update_cfg, title = benchmark_setup(args)
    init = world_encoder(args)  # the base (when trained) and joint start from it
    if args.out is not None:
        check_new_file(args.out, overwrite=args.overwrite)
    base = None
    if args.base is not None:
        ckpt = open_checkpoint(args.base)
        if ckpt.class_names != protocol.model_class_names(0):
            raise CliError(f"--base {args.base} has classes {ckpt.class_names}, not the benchmark's base classes "
                           f"{protocol.model_class_names(0)}")
        base = ckpt.model
    if args.quick:
        pretrain_cfg, update_cfg, title = quick(pretrain_cfg), quick(update_cfg), title + " (quick smoke run)"
    train, test = splits()
    start = time.perf_counter()
    with ProgressBar(quiet=args.quiet) as bar:
        bench = Benchmark(protocol, train, test, pretrain_cfg=pretrain_cfg, update_cfg=update_cfg,
                          device=args.device, on_progress=lambda name, p: bar.update(p, name), init_model=init)
        rows = bench.run(base=base)
    report = [format_table(rows, title), "", format_per_class(rows, protocol.model_class_names(1))]
    failed = False
    if args.dataset == "world":
        checks = goal_checks(rows)
        failed = not all(ok for _, ok in checks)
        report += ["", "Goals:" + (" (not expected to hold in a quick run)" if args.quick else "")]
        report += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
    text = "\n".join(report)
    print(text)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    write_report(args.out, text, overwrite=args.overwrite)
    return 1 if failed and not args.quick else 0


# ------------------------------------------------------------------------------------------------ parsers
def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "generate", help="write the procedural world (train/val/test with masks) or the demo's tagged samples",
        description="--out DIR: the procedural world of textured shapes with exact masks (world.json, "
                    "<split>/images, <split>/masks). --samples DIR: the demo's tagged images (positives and "
                    "negatives for 'arrow', with tags.csv). --voc-layout DIR: world scenes of 1-3 objects in the "
                    "PASCAL VOC layout (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/, classes.txt). "
                    "Never writes into a non-empty split or folder.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, metavar="DIR", help="write a world here")
    target.add_argument("--samples", type=Path, metavar="DIR", help="write the demo samples here")
    target.add_argument("--voc-layout", type=Path, metavar="DIR",
                        help="write world scenes in the PASCAL VOC layout here (for 'reproduce voc'; "
                             f"default {VOC_TREE_DEFAULTS['n_train']} train, {VOC_TREE_DEFAULTS['n_val']} val)")
    p.add_argument("--seed", type=int, help="random seed (default: 0 for a world, the recipe's for samples)")
    p.add_argument("--size", type=positive_int, metavar="PX", help=f"image side (default: {WORLD_DEFAULTS['size']})")
    for split in ("train", "val", "test"):
        p.add_argument(f"--n-{split}", dest=f"n_{split}", type=non_negative_int, metavar="N",
                       help=f"{split} images (default: {WORLD_DEFAULTS['n_' + split]}; "
                            f"{VOC_TREE_DEFAULTS.get('n_' + split, 'none')} with --voc-layout)")
    add_common_flags(p)
    p.set_defaults(run=cmd_generate)

    p = commands.add_parser(
        "pretrain", help="train the shipped default base model by the world recipe (step 0, pixel labels), or "
                         "the pretext network its encoder starts from",
        description="Train the base model of the world recipe (classes disc..hexagon, pixel labels) on the "
                    "recipe's in-memory world, its encoder started from the pretext network (--encoder), print its "
                    "test figures and save it. 'pretrain --out models/default_base.pt' reproduces the shipped "
                    "default. With --pretext, train that pretext network instead (per-pixel texture families of "
                    "generic shapes, our stand-in for ImageNet pretraining).")
    p.add_argument("--out", required=True, type=Path, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--epochs", type=positive_int, metavar="N",
                   help=f"training epochs (default: the recipe's {recipes.WORLD_PRETRAIN.epochs}; "
                        f"{recipes.WORLD_PRETEXT.epochs} with --pretext)")
    p.add_argument("--pretext", action="store_true",
                   help="train the pretext network instead (texture families of generic shapes, our stand-in for "
                        "ImageNet: docs/method.md); 'pretrain --pretext --out models/pretext_tiny.pt' reproduces "
                        "the shipped encoder")
    add_encoder_flag(p, "the base model")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_pretrain)

    p = commands.add_parser(
        "benchmark", help="base, WILSS, fine-tuning and joint training on a protocol, as mIoU tables",
        description="Train the base model with pixel labels, add the step-1 classes from tags with WILSS and with "
                    "plain fine-tuning (FT), train the joint pixel-supervised upper bound, and print mIoU old / "
                    "new / all of each on the test split. For the world, also checks the goals (exit status 1 "
                    "when one fails, except with --quick).")
    p.add_argument("dataset", choices=("world", "camvid", "demo"),
                   help="world: generated in memory; camvid: from --data; demo: the app's one-click update from "
                        "samples/, timed, scored on the world's test split and samples/heldout.zip")
    p.add_argument("--quick", action="store_true", help="smoke run: every epoch count / 10 (min 2, warm-up min 1)")
    p.add_argument("--data", type=Path, default=DEFAULT_CAMVID, metavar="PATH",
                   help="CamVid folder (default: ../shared/datasets/camvid next to the repository)")
    p.add_argument("--base", type=Path, metavar="CKPT", help="world: reuse this base instead of training one; "
                                                             "demo: the base to add to (default: the shipped one)")
    p.add_argument("--samples", type=Path, metavar="DIR", help="demo only: the tagged images (default: samples/)")
    add_encoder_flag(p, "the base (when trained) and the joint model")
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the tables as markdown")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_benchmark)
