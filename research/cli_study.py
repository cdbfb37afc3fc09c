"""``study``: beyond the paper, measured — single-class sequences against the multi-class step, and the few-image
curve (new-class IoU against the number of tagged images), on the world or CamVid (``research.studies``)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from research import recipes
from research.experiment_setup import DEFAULT_CAMVID, add_encoder_flag, benchmark_setup, world_encoder
from research.experiments import Benchmark
from research.studies import few_image_curve, format_study, joint_row, multi_vs_single
from wilss.checkpoint import Checkpoint, new_checkpoint, save_checkpoint
from wilss.cli_common import (CliError, ProgressBar, add_common_flags, add_device_flag, check_new_file,
                              open_checkpoint, positive_int, write_report)


def image_counts(text: str) -> list[int | None]:
    """'10,20,50,all' -> [10, 20, 50, None]."""
    counts = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            counts.append(None)
        elif part.isdigit() and int(part) > 0:
            counts.append(int(part))
        else:
            raise argparse.ArgumentTypeError(f"expected positive image counts or 'all' separated by commas, got "
                                             f"{text!r}")
    return counts


def _base(args: argparse.Namespace, bench: Benchmark) -> Checkpoint:
    names = bench.protocol.model_class_names(0)
    if args.base is not None:
        ckpt = open_checkpoint(args.base)
        if ckpt.class_names != names:
            raise CliError(f"--base {args.base} has classes {ckpt.class_names}, not the protocol's base classes "
                           f"{names}")
        return ckpt
    ckpt = new_checkpoint(bench.train_base(), names)
    if args.save_base is not None:
        print(f"wrote the base to {save_checkpoint(ckpt, args.save_base)}")
    return ckpt


def cmd_study(args: argparse.Namespace) -> int:
    for path in (args.out, args.save_base):
        if path is not None:
            check_new_file(path, overwrite=args.overwrite)
    protocol, splits, pretrain_cfg, update_cfg, title = benchmark_setup(args)
    init = world_encoder(args)  # the base (when trained) and joint start from it
    train, test = splits()
    start = time.perf_counter()
    report = []
    with ProgressBar(quiet=args.quiet) as bar:
        arch = "tiny" if args.dataset == "world" else recipes.camvid_recipe(None).arch
        bench = Benchmark(protocol, train, test, pretrain_cfg=pretrain_cfg, update_cfg=update_cfg, arch=arch,
                          device=args.device, on_progress=lambda name, p: bar.update(p, name), init_model=init)
        base = _base(args, bench)
        joint = [joint_row(bench)] if args.joint else []
        if not args.no_sequence:
            rows = multi_vs_single(bench, base, iterations=args.iterations)
            report += [format_study(rows + joint, f"{title}: one multi-class step vs single-class steps "
                                                  f"({args.iterations} iterations in all)"), ""]
        if args.images:
            rows = few_image_curve(bench, base, counts=args.images, iterations=args.iterations)
            report += [format_study(rows + joint, f"{title}: new classes from few tagged images "
                                                  f"({args.iterations} iterations each)"), ""]
    text = "\n".join(report)
    print(text)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    write_report(args.out, text, overwrite=args.overwrite)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "study", help="single-class steps vs the multi-class step, and IoU vs the number of tagged images",
        description="Beyond the paper, measured on a protocol's test split (mIoU old / new / all): (1) the "
                    "protocol's multi-class weak step against the same classes learnt one per step (single-class "
                    "steps have no negatives: WILSS reads old-class tags from the old model), with the same total "
                    "number of iterations; (2) the weak step from only N tagged images (seeded choice), each "
                    "point with the same number of iterations. --joint adds the pixel-supervised upper bound.")
    p.add_argument("dataset", choices=("world", "camvid"), help="world: generated in memory; camvid: from --data")
    p.add_argument("--data", type=Path, default=DEFAULT_CAMVID, metavar="PATH",
                   help="CamVid folder (default: ../shared/datasets/camvid next to the repository)")
    p.add_argument("--base", type=Path, metavar="CKPT",
                   help="the step-0 model (default: trained by the run; the world's shipped base is "
                        "models/default_base.pt)")
    add_encoder_flag(p, "the base (when trained) and the joint model")
    p.add_argument("--save-base", type=Path, metavar="CKPT", help="save the base the run trains, to reuse it")
    p.add_argument("--iterations", type=positive_int, default=300, metavar="N",
                   help="training iterations of each weak-step run (default: 300)")
    p.add_argument("--images", type=image_counts, default=None, metavar="N,N,...",
                   help="few-image curve: tagged image counts per run, 'all' for every image (e.g. 10,20,50,all)")
    p.add_argument("--no-sequence", action="store_true", help="skip the single-class vs multi-class comparison")
    p.add_argument("--joint", action="store_true", help="also train the joint upper bound (pixel labels)")
    p.add_argument("--out", type=Path, metavar="FILE", help="also write the tables as markdown")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out / --save-base")
    add_device_flag(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_study)
