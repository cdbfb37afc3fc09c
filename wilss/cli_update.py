"""``add-class``: teach a checkpoint new classes from image-level tags (one WILSON step).

Two sources of tagged images: a user folder (tags.csv / tags.json / one sub-folder per tag), or the train split of
a generated world, whose tags come from world.json under the benchmark's protocol. The flags become a
``wilss.service.UpdateRequest``, checked with every output path first (``plan_*``); then ``run_update`` trains and
the new checkpoint is written (``run_plan``).
"""
from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from models import DEFAULT_CHECKPOINT
from wilss import recipes
from wilss.checkpoint import save_checkpoint
from wilss.cli_common import (CliError, ProgressBar, add_common_flags, add_max_side_flag, add_update_flags,
                              check_new_file, check_new_folder, open_checkpoint, parse_class_spec, positive_int,
                              unit_float, update_config)
from wilss.cli_resume import add_run_flags, main_process_output, make_resumer, snapshot_dir_reusable
from wilss.config import UpdateConfig
from wilss.conventions import colorize, voc_palette
from wilss.data import validate_images
from wilss.distributed import World, cleanup, setup_from_env
from wilss.engine import Snapshot, batches_per_epoch
from wilss.methods import METHODS, OFFLINE, WILSON
from wilss.tasks import select_images
from wilss.pseudo_labels import export_pseudo_labels
from wilss.render import cam_overlay
from wilss.runtime import PLAIN
from wilss.scoring import EvalSet, mask_eval_set, read_world, score, world_eval_set, world_split
from wilss.service import UpdatePlan, UpdateRequest, run_update
from wilss.step_masks import read_step_masks
from wilss.tags import TaggedSet, read_tagged_folder
from wilss.recipes import WORLD_CLASSES

log = logging.getLogger(__name__)

SNAPSHOT_IMAGES = 4


@dataclass
class AddClass:
    """A checked update (``wilss.service.UpdatePlan``) and what the command does around it: nothing has been
    written when one exists."""

    plan: UpdatePlan
    checkpoint_path: Path
    out: Path
    eval_set: Optional[EvalSet] = None
    snapshot_dir: Optional[Path] = None
    snapshot_every: int = 0

    # what the resumable snapshots' fingerprint reads (wilss.cli_resume)
    @property
    def class_names(self) -> list[str]:
        return self.plan.class_names

    @property
    def cfg(self) -> UpdateConfig:
        return self.plan.cfg

    @property
    def tagged(self) -> TaggedSet:
        return self.plan.tagged

    @property
    def masks(self):
        return self.plan.request.masks

    @property
    def method(self) -> str:
        return self.plan.method

    @property
    def input_side(self) -> Optional[int]:
        """The scale asked for with --input-side (None: the checkpoint's, which its bytes already fingerprint)."""
        return self.plan.request.input_side


# ------------------------------------------------------------------------------------------------ planning
def _common_checks(args: argparse.Namespace, base_cfg: UpdateConfig) -> tuple[Path, UpdateConfig]:
    out = check_new_file(args.out, overwrite=args.overwrite, protect=(args.checkpoint,))
    cfg = update_config(args, base_cfg)
    if args.snapshot_every is not None and args.snapshot_dir is None:
        raise CliError("--snapshot-every needs --snapshot-dir DIR (where to write the pictures)")
    if args.snapshot_dir is not None and not snapshot_dir_reusable(args):
        check_new_folder(args.snapshot_dir, flag="--snapshot-dir")
    if args.export_pseudo is not None:
        check_new_folder(args.export_pseudo, flag="--export-pseudo")
    if args.method == OFFLINE and args.masks is not None:
        raise CliError("--method offline learns from the tags (a localizer's frozen pseudo-labels); with --masks the "
                       "step trains MiB on your masks: leave out one of them")
    if (args.masks is not None or args.method == OFFLINE) and (args.export_pseudo or args.snapshot_dir):
        raise CliError("--export-pseudo and --snapshot-dir show WILSON's pseudo-labels and CAMs: a step with --masks "
                       "has none (nor one with --method offline)")
    if (args.eval_images is None) != (args.eval_masks is None):
        raise CliError("give --eval-images DIR and --eval-masks DIR together")
    return out, cfg


def _finish_plan(request: UpdateRequest, out: Path, args: argparse.Namespace) -> AddClass:
    job = AddClass(request.validate(), Path(args.checkpoint), out)
    if args.eval_images is not None:
        job.eval_set = mask_eval_set(args.eval_images, args.eval_masks, len(job.class_names))
    if args.snapshot_dir is not None:
        job.snapshot_dir = Path(args.snapshot_dir)
        job.snapshot_every = args.snapshot_every or batches_per_epoch(len(job.tagged), job.cfg.batch_size)
    return job


def plan_from_folder(args: argparse.Namespace) -> AddClass:
    if args.world is not None:
        raise CliError("give either --images (your tagged images) or --world (a generated world), not both")
    if not args.classes:
        raise CliError("name the new class(es) with --class NAME (or NAME=#RRGGBB), once per class")
    out, cfg = _common_checks(args, recipes.DEMO_UPDATE)
    specs = [parse_class_spec(text) for text in args.classes]
    ckpt = open_checkpoint(args.checkpoint)
    tagged = read_tagged_folder(args.images, args.tags)
    masks = None
    if args.masks is not None:   # a MiB step; the images' tags are read from their masks
        tagged, masks = read_step_masks(tagged, args.images, args.masks, num_old=len(ckpt.class_names),
                                        class_names=list(ckpt.class_names) + [name for name, _ in specs])
    request = UpdateRequest(ckpt, tagged, specs, cfg, base_name=str(args.checkpoint), source=str(args.images),
                            masks=None if masks is None else tuple(masks), input_side=args.input_side,
                            method=args.method, no_background=args.no_background)
    return _finish_plan(request, out, args)


def plan_from_world(args: argparse.Namespace) -> AddClass:
    if args.images is not None or args.tags is not None or args.classes or args.masks is not None:
        raise CliError("--world brings its own images, tags and classes: leave out --images, --tags, --class and "
                       "--masks")
    out, cfg = _common_checks(args, recipes.WORLD_UPDATE)
    ckpt = open_checkpoint(args.checkpoint)
    strangers = [n for n in ckpt.class_names[1:] if n not in WORLD_CLASSES]
    if strangers:
        raise CliError(f"the checkpoint knows classes that are not in the world ({', '.join(strangers)}); "
                       "--world needs a base trained on it ('python -m research pretrain')")
    task = recipes.world_task()
    meta = read_world(args.world)
    images, _, present = world_split(args.world, meta, "train")
    chosen = select_images(present, task, 1, recipes.WORLD_SETTING)
    names = [WORLD_CLASSES[c] for c in task.step(1).new_classes]
    known = set(ckpt.class_names[1:]) | set(names)
    tags = [{WORLD_CLASSES[c] for c in present[i]} & known for i in chosen]
    tagged = TaggedSet(tuple(images[i] for i in chosen), tuple(tags))
    validate_images(tagged.paths)
    colours = voc_palette(256)[[WORLD_CLASSES.index(n) for n in names]]
    request = UpdateRequest(ckpt, tagged, list(zip(names, colours.tolist())), cfg, base_name=str(args.checkpoint),
                            source=str(args.world), input_side=args.input_side, method=args.method,
                            no_background=args.no_background)
    job = _finish_plan(request, out, args)
    if job.eval_set is None and (meta.get("splits") or {}).get("test"):
        job.eval_set = world_eval_set(args.world, "test", job.class_names)
    return job


# ---------------------------------------------------------------------------------------------- rendering
def write_snapshots(folder: Path, iteration: int, snapshots: Sequence[Snapshot], colours,
                    new_names: Sequence[str]) -> None:
    """Per image: one CAM overlay per new class, the pseudo-label and the prediction, as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    safe = [re.sub(r"[^A-Za-z0-9_-]+", "_", n) for n in new_names]
    for snap in snapshots:
        stem = folder / f"it{iteration:06d}_img{snap.index}"
        for k, name in enumerate(safe):
            Image.fromarray(cam_overlay(snap.image, snap.cams[k])).save(f"{stem}_cam_{name}.png")
        Image.fromarray(colorize(snap.pseudo_label, colours)).save(f"{stem}_pseudo.png")
        Image.fromarray(colorize(snap.prediction, colours)).save(f"{stem}_pred.png")


# ---------------------------------------------------------------------------------------------- training
def run_plan(job: AddClass, args: argparse.Namespace, world: World = World(), device: str = "auto") -> int:
    """Train and write the checkpoint. Under torchrun every process trains, rank 0 alone reports and writes."""
    plan = job.plan
    resumer = make_resumer(job, args, world)
    if plan.note:
        print(f"note: {plan.note}")
    print(plan.describe())
    start = time.perf_counter()
    shown = range(min(SNAPSHOT_IMAGES, len(plan.tagged))) if job.snapshot_dir is not None and world.is_main else ()
    run = run_update(plan, device=device, runtime=PLAIN if args.plain_fp32 else None, resumer=resumer,
                     snapshot_indices=shown, snapshot_every=job.snapshot_every, sync_bn=args.sync_bn)
    with ProgressBar(quiet=args.quiet) as bar:
        for progress in run:
            bar.update(progress)
            if progress.snapshots:
                write_snapshots(job.snapshot_dir, progress.iteration, progress.snapshots, plan.colours,
                                plan.new_names)
    if not world.is_main:
        return 0
    metrics = {}
    if job.eval_set is not None:
        scores = score(run.update.model, job.eval_set, plan.class_names, plan.new_names, device=device,
                       max_side=args.max_side, input_side=plan.input_side)
        print(f"\nevaluated on {len(job.eval_set.pairs)} images from {job.eval_set.source}")
        print(scores.table())
        metrics = scores.history_metrics(job.eval_set)
    ckpt = run.checkpoint(metrics)
    path = save_checkpoint(ckpt, job.out, protect=(job.checkpoint_path,), overwrite=args.overwrite)
    resumer.remove()
    if args.export_pseudo is not None:
        count = export_pseudo_labels(run.update, plan.tagged.paths, run.dataset.targets, args.export_pseudo,
                                     class_names=plan.class_names, colours=plan.colours, side=plan.input_side,
                                     min_confidence=args.pseudo_min_confidence)
        print(f"wrote {count} pseudo-label masks (VOC palette PNGs, labelmap.txt) to {args.export_pseudo}")
    print(f"\nwall time {time.perf_counter() - start:.1f} s (training {run.seconds:.1f} s)")
    if job.snapshot_dir is not None:
        print(f"snapshots in {job.snapshot_dir}")
    print(f"wrote {path} ({len(ckpt.class_names)} classes: {', '.join(ckpt.class_names[1:])})")
    return 0


def cmd_add_class(args: argparse.Namespace) -> int:
    if args.world is None and args.images is None:
        raise CliError("give the tagged images with --images DIR (or a generated world with --world DIR)")
    world, device = setup_from_env(args.device)  # joins torchrun's process group, if launched by it
    try:
        with main_process_output(world, args):
            job = plan_from_world(args) if args.world is not None else plan_from_folder(args)
            return run_plan(job, args, world, str(device))
    finally:
        cleanup()


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "add-class", help="add new classes to a checkpoint from image-level tags (WILSON)",
        description="Teach a segmentation checkpoint new classes from images that are only tagged (no masks), "
                    "keeping what it knows. The result is a new checkpoint; the input is never changed. The "
                    "method contrasts images with and without each new class, so give negatives too: images "
                    "showing none of the new classes. Without negatives (e.g. one class at a time from images "
                    "that all show it), the old classes' tags are read from the model's confident predictions "
                    "(automatic relaxed setting, beyond the paper). With pixel masks of the new classes (--masks), "
                    "the step trains MiB on them instead; --method offline trains the offline pseudo-label pipeline "
                    "on the tags (docs/methods.md).",
        epilog="examples:\n"
               "  python -m wilss add-class --images samples/ --class arrow=#ff8000 --out arrow.pt\n"
               "  python -m wilss add-class --images samples/ --class arrow --method offline --out arrow_offline.pt\n"
               "  python -m wilss add-class --world world/ --out world_step1.pt\n"
               "  python -m wilss add-class --checkpoint torchvision:lraspp_mobilenet_v3_large \\\n"
               "      --images kites/ --class kite --out voc_kite.pt\n"
               "  torchrun --nproc-per-node 4 -m wilss add-class --world world/ --out world_step1.pt --resume\n"
               "tags: DIR/tags.csv ('filename,tags', tags separated by ';', empty = negative), DIR/tags.json, "
               "or one sub-folder per tag (negatives in 'none/' or at the top).")
    add_source_flags(p)
    add_result_flags(p)
    add_update_flags(p, (("", recipes.DEMO_UPDATE), ("with --world", recipes.WORLD_UPDATE)))
    add_run_flags(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_add_class)


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """add-class: the model to extend, the images, their tags or masks, the scale."""
    src = p.add_argument_group("what to learn from")
    src.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="IN",
                     help="the model to extend: a checkpoint file, or torchvision:NAME for a pretrained VOC base "
                          "(e.g. torchvision:deeplabv3_resnet50; see docs/bases.md) (default: the shipped base, "
                          "models/default_base.pt)")
    src.add_argument("--images", type=Path, metavar="DIR", help="folder of tagged images")
    src.add_argument("--tags", type=Path, metavar="FILE",
                     help="tags file, .csv or .json (default: DIR/tags.csv or DIR/tags.json, else sub-folders)")
    src.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME[=#RRGGBB]",
                     help="a new class and, optionally, its colour (default: a colour far, in CIELAB, from those in "
                          "use); repeat for several classes")
    src.add_argument("--masks", type=Path, metavar="DIR",
                     help="pixel masks of the images, DIR/NAME.png for IMAGES/NAME.* (same sub-folders), in the NEW "
                          "model's ids (0 background, the old ids, then the new classes in --class order; 255 void): "
                          "the step then trains MiB (unbiased cross-entropy and distillation) instead of WILSON, and "
                          "the tags come from the masks (docs/methods.md)")
    src.add_argument("--method", choices=METHODS, default=WILSON,
                     help="how the step learns from the tags: wilson (the paper's weak step) or offline (the "
                          "localizer trained from the tags first, its pseudo-labels frozen, then a MiB step on them; "
                          "docs/methods.md); with --masks the step is MiB on the masks (default: wilson)")
    src.add_argument("--input-side", type=positive_int, metavar="PX",
                     help="the input scale to train at: images are resized so their longer side is PX before the "
                          "random crops (default: the scale the checkpoint records, e.g. 128 for the shipped base); "
                          "the result records it, and predict / evaluate resize images to it")
    src.add_argument("--world", type=Path, metavar="DIR",
                     help="instead: step 1 of the world benchmark (adds crescent and arrow) on a folder written "
                          "by 'python -m research generate --out'; scored on its test split")


def add_result_flags(p: argparse.ArgumentParser) -> None:
    """add-class: where the result goes, what it is scored on, what is written beside it."""
    out = p.add_argument_group("result")
    out.add_argument("--out", required=True, type=Path, metavar="OUT", help="the new checkpoint file")
    out.add_argument("--overwrite", action="store_true", help="replace an existing --out (never the input)")
    out.add_argument("--eval-images", type=Path, metavar="DIR", help="labelled images to score the result on")
    out.add_argument("--eval-masks", type=Path, metavar="DIR",
                     help="their masks NAME.png, in the NEW model's ids (old ids, then the new classes in "
                          "--class order); mIoU old / new / all go into the checkpoint's history")
    add_max_side_flag(out)
    out.add_argument("--snapshot-dir", type=Path, metavar="DIR",
                     help=f"write CAMs, pseudo-labels and predictions of the first {SNAPSHOT_IMAGES} images here")
    out.add_argument("--snapshot-every", type=positive_int, metavar="N",
                     help="iterations between snapshots (default: once per epoch)")
    out.add_argument("--export-pseudo", type=Path, metavar="DIR",
                     help="also write the final pseudo-labels of every training image here, as VOC palette PNGs "
                          "with a CVAT labelmap.txt, to correct in CVAT / Label Studio")
    out.add_argument("--pseudo-min-confidence", type=unit_float, default=0.0, metavar="C",
                     help="with --export-pseudo: pixels whose pseudo-label target is below C become void (255), "
                          "marking what to check (default: 0, none)")
