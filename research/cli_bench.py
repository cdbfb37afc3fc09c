"""``generate``, ``pretrain`` and ``benchmark``: the world data, the shipped base model, and the protocol tables."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from models.imagenet import IMAGENET_NETS
from research import demo, recipes
from research.cli_tags import tags_base, tags_summary
from research.experiment_setup import (DEFAULT_CAMVID, ENCODER_DEFAULT, add_encoder_flag,  # noqa: F401 (quick)
                                       benchmark_setup, camvid_goal_checks, check_step_images, encoder_network,
                                       encoder_path, goal_checks, quick, share_arg, shortened_schedules,
                                       step_images, step_images_title, world_encoder)
from research.experiments import METHODS, Benchmark, format_per_class, format_table
from research.world import write_voc_tree, write_world
from wilss.checkpoint import history_entry, new_checkpoint, save_checkpoint
from wilss.cli_bases import add_network_flags, pretrain_data, pretrain_tags, size_arg
from wilss.cli_common import (CliError, ProgressBar, add_common_flags, add_device_flag, add_update_flags,
                              check_new_file, check_new_folder, non_negative_int, open_checkpoint, percent,
                              positive_int, update_config, write_report)
from wilss.config import to_dict
from wilss.scoring import read_world

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
        folder = demo.write_samples(args.samples, **seed)
        print(f"wrote {len(list(folder.glob('*.jpg')))} demo images and {folder / 'tags.csv'}")
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
def cmd_pretrain(args: argparse.Namespace) -> int:
    out = check_new_file(args.out, overwrite=args.overwrite)
    start = time.perf_counter()
    if args.tags is not None:
        return pretrain_tags(args, out, start)
    if args.pretext:
        return _pretrain_pretext(args, out, start)
    if args.data is not None:
        return pretrain_data(args, out, start)
    if args.arch is not None or args.size is not None or args.layout is not None:
        raise CliError("--arch, --size and --layout are for a base from your own data (--data)")
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
    if args.encoder is not ENCODER_DEFAULT or args.data is not None:
        raise CliError("--encoder and --data are for a base model; the pretext network starts from scratch")
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
def camvid_size_arg(text: str) -> tuple[int, int] | str:
    """``--size``: H,W (``wilss.cli_bases.size_arg``) or 'native' (the images as they are)."""
    return "native" if text.strip() == "native" else size_arg(text)


def methods_arg(text: str) -> tuple[str, ...]:
    """``--methods``: a comma-separated subset of ``experiments.METHODS``, run in the order given; 'none': the
    base(s) alone."""
    methods = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    if methods == ("none",):
        return ()
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods or len(set(methods)) != len(methods):
        raise argparse.ArgumentTypeError(f"--methods takes a comma-separated subset of {','.join(METHODS)}, each "
                                         f"once, or none; got {text!r}")
    return methods


def save_base(bench: Benchmark, model, path: Path, args: argparse.Namespace, title: str) -> None:
    """The benchmark's trained base as a checkpoint (for ``--base`` in a later run, ``add-class`` or the app)."""
    names = bench.protocol.model_class_names(0)
    ckpt = new_checkpoint(model, names)
    row = next(r for r in bench.rows if r.method == "base")
    ckpt.history.append(history_entry(
        "pretrain", names[1:], num_images=len(bench.base_indices()), step=0,
        settings={"recipe": title, "encoder": str(encoder_path(args) or "none"), **to_dict(bench.pretrain_cfg)},
        metrics={"test_mIoU_base_classes": round(row.old, 2)}))   # scored as step 1's old classes
    print(f"wrote the base to {save_checkpoint(ckpt, path, overwrite=args.overwrite)}")


def cmd_benchmark(args: argparse.Namespace) -> int:
    if args.sequence is not None:   # a long sequence of weak steps: forgetting per step (research.cli_sequence)
        from research.cli_sequence import cmd_sequence

        return cmd_sequence(args)
    if args.dataset == "demo":
        if args.tags_base:
            raise CliError("--tags-base is for world and camvid")
        from research.cli_demo import cmd_benchmark_demo

        return cmd_benchmark_demo(args)
    if args.samples is not None:
        raise CliError("--samples is for the demo benchmark only")
    if (args.arch is not None or args.task is not None or args.size is not None) and args.dataset != "camvid":
        raise CliError("--arch, --task and --size are for the CamVid benchmark (the world's are its recipe's)")
    if args.base is not None and args.save_base is not None:
        raise CliError("--save-base writes the base this run trains; with --base none is trained")
    short = args.quick or args.epochs_step is not None or args.epochs_base is not None
    protocol, splits, pretrain_cfg, update_cfg, title = benchmark_setup(args)
    update_cfg = update_config(args, update_cfg)   # the recipe, with the weak-step flags given
    title += f", PAMR stride {update_cfg.pamr_refine_stride}" if update_cfg.pamr_refine_stride else ""
    title += f", region prior {update_cfg.region_prior}" if update_cfg.region_prior != "none" else ""
    title += step_images_title(args)
    init = world_encoder(args)  # the base (when trained) and joint start from it
    for path in (args.out, args.save_base):
        if path is not None:
            check_new_file(path, overwrite=args.overwrite)
    base = None
    if args.base is not None:
        ckpt = open_checkpoint(args.base)
        if ckpt.class_names != protocol.model_class_names(0):
            raise CliError(f"--base {args.base} has classes {ckpt.class_names}, not the benchmark's base classes "
                           f"{protocol.model_class_names(0)}")
        base = ckpt.model
    pretrain_cfg, update_cfg, title = shortened_schedules(args, pretrain_cfg, update_cfg, title)
    arch = "tiny" if args.dataset == "world" else recipes.camvid_recipe(args.arch).arch
    train, test = splits()
    start = time.perf_counter()
    with ProgressBar(quiet=args.quiet) as bar:
        bench = Benchmark(protocol, train, test, pretrain_cfg=pretrain_cfg, update_cfg=update_cfg, arch=arch,
                          device=args.device, on_progress=lambda name, p: bar.update(p, name), init_model=init,
                          **step_images(args))
        check_step_images(bench)
        if base is None:
            base = bench.train_base()
            bench.score("base", base, time.perf_counter() - start)
        if args.save_base is not None:   # before the weak steps: a long run's base survives their failure
            save_base(bench, base, args.save_base, args, title)
        if args.tags_base:   # the weak steps then grow the base from tags
            base = tags_base(bench, base, args)
        rows = bench.run(base=base, methods=args.methods)
    report = [format_table(rows, title), "", format_per_class(rows, protocol.model_class_names(1)), *tags_summary(rows)]
    failed = False
    if args.dataset == "world":
        checks = goal_checks(rows)
        failed = not all(ok for _, ok in checks)
        report += ["", "Goals:" + (" (not expected to hold in a shortened run)" if short else "")]
        report += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in checks]
    elif camvid_goal_checks(rows):   # none for the bases alone (--methods none)
        report += ["", "Goals (issue 22; reported, not an exit status):"]
        report += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in camvid_goal_checks(rows)]
    text = "\n".join(report)
    print(text)
    print(f"\nwall time {time.perf_counter() - start:.0f} s")
    write_report(args.out, text, overwrite=args.overwrite)
    return 1 if failed and not short else 0


# ------------------------------------------------------------------------------------------------ parsers
def register(commands: argparse._SubParsersAction) -> None:
    register_generate(commands)
    register_pretrain(commands)
    register_benchmark(commands)


def register_generate(commands: argparse._SubParsersAction) -> None:
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


def register_pretrain(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "pretrain", help="train a base model (step 0, pixel labels): the shipped default by the world recipe, "
                         "the pretext network its encoder starts from, or one on your own data (--data)",
        description="Train the base model of the world recipe (classes disc..hexagon, pixel labels) on the "
                    "recipe's in-memory world, its encoder started from the pretext network (--encoder), print its "
                    "test figures and save it. 'pretrain --out models/default_base.pt' reproduces the shipped "
                    "default. With --pretext, train that pretext network instead (per-pixel texture families of "
                    "generic shapes, our stand-in for ImageNet pretraining). With --data, train a base for real "
                    "photos on your own pixel labels, from ImageNet (docs/bases.md). With --tags, "
                    "train one from image tags alone, no masks (single-stage WSSS; docs/bases.md). --data and --tags "
                    "run the product's 'python -m wilss pretrain'.")
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
    p.add_argument("--tags", type=Path, metavar="FOLDER",
                   help="train a base from image tags alone (single-stage WSSS, docs/bases.md): a folder of images "
                        "with tags.csv, its classes the tags; uses --arch, --encoder, --epochs, --batch-size, "
                        "--crop-size")
    p.add_argument("--data", type=Path, metavar="PATH",
                   help="train on this labelled dataset instead of the world: every class of it, scored on its "
                        "test split (layouts: docs/datasets.md)")
    add_network_flags(p)
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_pretrain)


def register_benchmark(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "benchmark", help="base, WILSS, fine-tuning and joint training on a protocol, as mIoU tables",
        description="Train the base model with pixel labels, add the step-1 classes from tags with WILSS and with "
                    "plain fine-tuning (FT), train the joint pixel-supervised upper bound, and print mIoU old / "
                    "new / all of each on the test split; --methods adds the other incremental methods (ILT, the "
                    "offline pseudo-label pipeline, MiB with masks) on the same data and schedule. For the world, "
                    "also checks the goals (exit status 1 when one fails, except in a shortened run: --quick, "
                    "--epochs-step, --epochs-base).")
    p.add_argument("dataset", choices=("world", "camvid", "demo"),
                   help="world: generated in memory; camvid: from --data; demo: the app's one-click update from "
                        "samples/, timed, scored on the world's test split and samples/heldout.zip")
    p.add_argument("--quick", action="store_true", help="smoke run: every epoch count / 10 (min 2, warm-up min 1)")
    p.add_argument("--data", type=Path, default=DEFAULT_CAMVID, metavar="PATH",
                   help="CamVid folder (default: ../shared/datasets/camvid next to the repository)")
    p.add_argument("--base", type=Path, metavar="CKPT", help="reuse this base instead of training one (demo: the "
                                                             "base to add to; default: the shipped one)")
    p.add_argument("--samples", type=Path, metavar="DIR", help="demo only: the tagged images (default: samples/)")
    p.add_argument("--curve", type=positive_int, metavar="N",
                   help="demo only: also score the world's test split every N iterations (the IoU against "
                        "training time; scoring time left out)")
    p.add_argument("--save-base", type=Path, metavar="CKPT", help="write the base the run trains to this checkpoint")
    p.add_argument("--arch", choices=sorted(("tiny", *IMAGENET_NETS)),
                   help=f"CamVid only: the network (default: {recipes.CAMVID.arch} from ImageNet; tiny: the "
                        "earlier recipe, from scratch)")
    p.add_argument("--task", metavar="SPEC",
                   help=f"CamVid only: base ids | step ids (default: {recipes.CAMVID.task_spec}, Fence and Bicyclist "
                        "from tags; e.g. 0,1,2,3,4,5,6,7,10|8,9 learns Car and Pedestrian from tags)")
    p.add_argument("--size", type=camvid_size_arg, metavar="H,W|native",
                   help="CamVid only: resize every image to H,W (e.g. 180,240, half resolution, the recipe before "
                        "2026-12-02), or 'native' to keep CamVid's 360x480 (the default)")
    p.add_argument("--methods", type=methods_arg, default=("wilss", "ft", "joint"), metavar="LIST",
                   help="which rows to run besides the base, in this order (default: wilss,ft,joint; none: the "
                        "base alone). Also: ilt (WILSS + ILT's output distillation), offline (localizer from the "
                        "tags, pseudo-labels frozen, then a MiB step), mib (MiB with the step's masks), hrhf (WILSS "
                        "+ HRHF replay; --replay-* set it, by default 64 images): "
                        "docs/methods.md")
    p.add_argument("--tags-base", action="store_true",
                   help="also train the base from image tags alone (single-stage WSSS, docs/bases.md) on the same "
                        "images and classes; the table shows both bases, and the weak steps grow the tags-only one")
    p.add_argument("--sequence", metavar="SPEC",
                   help="world only: run every weak step of this task in turn (e.g. 7-1-1 or 5-1-1-1-1, the "
                        "recipe's setting) for --methods among wilss, ft, ilt, hrhf, joint, and print old mIoU after "
                        "each step (forgetting); with --base, a checkpoint of step 0's classes")
    p.add_argument("--images-per-step", type=positive_int, metavar="N",
                   help="at most N of the protocol's tagged images per weak step, a seeded choice (default: all)")
    p.add_argument("--negatives", type=share_arg, default=0.0, metavar="SHARE",
                   help="add to each weak step this share of its images in negatives: images of old classes only, "
                        "tagged as without the step's classes, as a user adds them (e.g. 0.5: half as many; "
                        "default 0: the protocol's images alone, so a one-class step has none)")
    p.add_argument("--epochs-step", type=positive_int, metavar="N",
                   help="epochs of every step-1 run (wilss, ft, ilt, offline, mib), the warm-up scaled in proportion "
                        "(default: the recipe's)")
    p.add_argument("--epochs-base", type=positive_int, metavar="N",
                   help="epochs of the base and joint networks (default: the recipe's)")
    add_encoder_flag(p, "the base (when trained) and the joint model")
    add_update_flags(p, (("(world)", recipes.WORLD_UPDATE), ("(camvid)", recipes.CAMVID.update),
                         ("(demo)", recipes.DEMO_UPDATE)), device=False,
                     title="weak-step settings: the recipe's, changed (WILSS and FT rows, the demo)")
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the tables as markdown")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_benchmark)
