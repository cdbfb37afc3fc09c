"""``add-class``: teach a checkpoint new classes from image-level tags (one WILSON step).

Two sources of tagged images: a user folder (tags.csv / tags.json / one sub-folder per tag), or the train split of
a generated world, whose tags come from world.json under the benchmark's protocol. Everything is checked first
(``plan_*``), then the update runs and the new checkpoint is written (``run_plan``).
"""
from __future__ import annotations

import argparse
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from models import DEFAULT_CHECKPOINT
from wilss import recipes
from wilss.checkpoint import Checkpoint, history_entry, save_checkpoint
from wilss.cli_common import (CliError, ProgressBar, add_common_flags, add_max_side_flag, add_update_flags,
                              check_new_file, check_new_folder, extend_colours, open_checkpoint, parse_class_spec,
                              positive_int, unit_float, update_config)
from wilss.scoring import (EvalSet, format_scores, mask_eval_set, nan_to_none, read_world, score, world_eval_set,
                           world_split)
from wilss.cli_resume import (add_run_flags, history_extras, main_process_output, make_resumer,
                               snapshot_dir_reusable)
from wilss.config import UpdateConfig, to_dict
from wilss.conventions import colorize, voc_palette
from wilss.data import validate_images
from wilss.tags import TaggedSet, check_new_classes, read_tagged_folder, settle_negatives
from wilss.training_data import fitted_image, masked_training_set, tagged_training_set
from wilss.distributed import World, cleanup, setup_from_env
from wilss.engine import Snapshot, batches_per_epoch
from wilss.protocol import select_images
from wilss.pseudo_labels import export_pseudo_labels
from wilss.masked_update import MaskedUpdate
from wilss.step_masks import read_step_masks
from wilss.trainer import WeakUpdate
from wilss.render import cam_overlay
from wilss.runtime import PLAIN
from wilss.world import WORLD_CLASSES

log = logging.getLogger(__name__)

SNAPSHOT_IMAGES = 4


@dataclass
class UpdatePlan:
    """Everything an update needs, validated: nothing has been written when one exists."""

    checkpoint_path: Path
    ckpt: Checkpoint
    out: Path
    cfg: UpdateConfig
    tagged: TaggedSet
    new_names: list[str]
    new_colours: np.ndarray              # N x 3 uint8
    source: str
    eval_set: Optional[EvalSet] = None
    snapshot_dir: Optional[Path] = None
    snapshot_every: int = 0
    note: str = ""                       # what the plan decided for the user (e.g. automatic old-class tags)
    masks: Optional[list[Path]] = None   # the images' masks (--masks): a MiB step instead of WILSON's

    @property
    def columns(self) -> list[str]:
        """Target columns: the old non-background classes, then the new ones (WeakUpdate's order)."""
        return self.ckpt.class_names[1:] + self.new_names

    @property
    def class_names(self) -> list[str]:
        return self.ckpt.class_names + self.new_names

    @property
    def colours(self) -> np.ndarray:
        return np.vstack([self.ckpt.colours, self.new_colours]).astype(np.uint8)


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
    if args.masks is not None and (args.export_pseudo is not None or args.snapshot_dir is not None):
        raise CliError("--export-pseudo and --snapshot-dir show pseudo-labels and CAMs: a step with --masks has none")
    if (args.eval_images is None) != (args.eval_masks is None):
        raise CliError("give --eval-images DIR and --eval-masks DIR together")
    return out, cfg


def _finish_plan(plan: UpdatePlan, args: argparse.Namespace) -> UpdatePlan:
    check_new_classes(plan.tagged, plan.new_names, plan.ckpt.class_names[1:])
    if plan.masks is None:   # l_CLS's negatives: WILSON's step only
        plan.cfg, plan.note = settle_negatives(plan.tagged, plan.new_names, plan.cfg)
    if args.eval_images is not None:
        plan.eval_set = mask_eval_set(args.eval_images, args.eval_masks, len(plan.class_names))
    if args.snapshot_dir is not None:
        plan.snapshot_dir = Path(args.snapshot_dir)
        plan.snapshot_every = args.snapshot_every or batches_per_epoch(len(plan.tagged), plan.cfg.batch_size)
    return plan


def plan_from_folder(args: argparse.Namespace) -> UpdatePlan:
    if args.world is not None:
        raise CliError("give either --images (your tagged images) or --world (a generated world), not both")
    if not args.classes:
        raise CliError("name the new class(es) with --class NAME (or NAME=#RRGGBB), once per class")
    out, cfg = _common_checks(args, recipes.DEMO_UPDATE)
    specs = [parse_class_spec(text) for text in args.classes]
    ckpt = open_checkpoint(args.checkpoint)
    tagged = read_tagged_folder(args.images, args.tags)
    names = [name for name, _ in specs]
    masks = None
    if args.masks is not None:   # the images' tags are read from their masks
        tagged, masks = read_step_masks(tagged, args.images, args.masks, class_names=ckpt.class_names + names,
                                        num_old=len(ckpt.class_names))
    plan = UpdatePlan(Path(args.checkpoint), ckpt, out, cfg, tagged, names,
                      extend_colours(ckpt.colours, [colour for _, colour in specs]), str(args.images), masks=masks)
    return _finish_plan(plan, args)


def plan_from_world(args: argparse.Namespace) -> UpdatePlan:
    if args.images is not None or args.tags is not None or args.classes or args.masks is not None:
        raise CliError("--world brings its own images, tags and classes: leave out --images, --tags, --class and "
                       "--masks")
    out, cfg = _common_checks(args, recipes.WORLD_UPDATE)
    ckpt = open_checkpoint(args.checkpoint)
    strangers = [n for n in ckpt.class_names[1:] if n not in WORLD_CLASSES]
    if strangers:
        raise CliError(f"the checkpoint knows classes that are not in the world ({', '.join(strangers)}); "
                       "--world needs a base trained on it ('python -m wilss pretrain')")
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
    plan = UpdatePlan(Path(args.checkpoint), ckpt, out, cfg, tagged, names, colours, str(args.world))
    plan = _finish_plan(plan, args)
    if plan.eval_set is None and (meta.get("splits") or {}).get("test"):
        plan.eval_set = world_eval_set(args.world, "test", plan.class_names)
    return plan


# ---------------------------------------------------------------------------------------------- rendering
def write_snapshots(folder: Path, iteration: int, snapshots: Sequence[Snapshot], colours: np.ndarray,
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
def masked_update(plan: UpdatePlan, device: str, runtime) -> MaskedUpdate:
    """The MiB step of a plan with masks (``--masks``): its images and masks, fitted and augmented as in training."""
    dataset = masked_training_set(list(zip(plan.tagged.paths, plan.masks)), plan.cfg)
    return MaskedUpdate(plan.ckpt.model, dataset, num_new=len(plan.new_names), cfg=plan.cfg, device=device,
                        runtime=runtime)


def run_plan(plan: UpdatePlan, args: argparse.Namespace, world: World = World(), device: str = "auto") -> int:
    """Train and write the checkpoint. Under torchrun every process trains, rank 0 alone reports and writes."""
    cfg, tagged = plan.cfg, plan.tagged
    resumer = make_resumer(plan, args, world)
    dataset = tagged_training_set(tagged, plan.columns, cfg)
    snapshot_items = []
    if plan.snapshot_dir is not None and world.is_main:
        snapshot_items = [(fitted_image(tagged.paths[i], cfg.crop_size), dataset.targets[i])
                          for i in range(min(SNAPSHOT_IMAGES, len(tagged)))]
    if plan.note:
        print(f"note: {plan.note}")
    counts = tagged.counts()
    without_new = sum(not (tags & set(plan.new_names)) for tags in tagged.tags)
    print(f"adding {', '.join(f'{n} ({counts[n]} images)' for n in plan.new_names)} to {plan.checkpoint_path} "
          f"({len(plan.ckpt.class_names) - 1} classes) from {len(tagged)} images, {without_new} showing none of "
          f"the new classes; {cfg.epochs} epochs " +
          (f"({cfg.warmup_epochs} warm-up)" if plan.masks is None else "of MiB on their masks"))
    start = time.perf_counter()
    if plan.masks is not None:   # MiB on the user's masks
        update = masked_update(plan, device, PLAIN if args.plain_fp32 else None)
    else:
        update = WeakUpdate(plan.ckpt.model, dataset, num_new=len(plan.new_names), cfg=cfg, device=device,
                            snapshot_items=snapshot_items, snapshot_every=plan.snapshot_every, sync_bn=args.sync_bn,
                            runtime=PLAIN if args.plain_fp32 else None)
    final = None
    with ProgressBar(quiet=args.quiet) as bar:
        for final in update.run(resumer):
            bar.update(final)
            if final.snapshots:
                write_snapshots(plan.snapshot_dir, final.iteration, final.snapshots, plan.colours, plan.new_names)
    if not world.is_main:
        return 0
    train_seconds = time.perf_counter() - start
    metrics = {"train_seconds": round(resumer.elapsed_s, 1)}
    metrics.update({f"final_loss_{k}": round(v, 4) for k, v in (final.losses if final else {}).items()})
    if plan.eval_set is not None:
        iou, figures = score(update.model, plan.eval_set, plan.class_names, plan.new_names, device=device,
                             max_side=args.max_side)
        print(f"\nevaluated on {len(plan.eval_set.pairs)} images from {plan.eval_set.source}")
        print(format_scores(iou, figures, plan.class_names, plan.new_names))
        metrics.update({f"eval_mIoU_{k}": nan_to_none(v) for k, v in figures.items()})
        metrics.update(eval_images=len(plan.eval_set.pairs), eval_source=plan.eval_set.source)
    ckpt = Checkpoint(model=update.model.cpu().eval(), class_names=plan.class_names, colours=plan.colours,
                      history=list(plan.ckpt.history))
    ckpt.history.append(history_entry(
        "add-class", plan.new_names, num_images=len(tagged), step=len(plan.ckpt.history), settings=to_dict(cfg),
        metrics=metrics, negatives=tagged.num_negatives, source=plan.source, tag_counts=counts,
        base_checkpoint=str(plan.checkpoint_path), method="wilss" if plan.masks is None else "mib",
        **history_extras(world, resumer)))
    path = save_checkpoint(ckpt, plan.out, protect=(plan.checkpoint_path,), overwrite=args.overwrite)
    resumer.remove()
    if args.export_pseudo is not None:
        update.model.to(update.device)   # saving moved it to the CPU
        count = export_pseudo_labels(update, tagged.paths, dataset.targets, args.export_pseudo,
                                     class_names=plan.class_names, colours=plan.colours, side=cfg.crop_size,
                                     min_confidence=args.pseudo_min_confidence)
        print(f"wrote {count} pseudo-label masks (VOC palette PNGs, labelmap.txt) to {args.export_pseudo}")
    print(f"\nwall time {time.perf_counter() - start:.1f} s (training {train_seconds:.1f} s)")
    if plan.snapshot_dir is not None:
        print(f"snapshots in {plan.snapshot_dir}")
    print(f"wrote {path} ({len(ckpt.class_names)} classes: {', '.join(ckpt.class_names[1:])})")
    return 0


def cmd_add_class(args: argparse.Namespace) -> int:
    if args.world is None and args.images is None:
        raise CliError("give the tagged images with --images DIR (or a generated world with --world DIR)")
    world, device = setup_from_env(args.device)  # joins torchrun's process group, if launched by it
    try:
        with main_process_output(world, args):
            plan = plan_from_world(args) if args.world is not None else plan_from_folder(args)
            return run_plan(plan, args, world, str(device))
    finally:
        cleanup()


def register(commands: argparse._SubParsersAction) -> None:
    world_cfg = recipes.WORLD_UPDATE
    p = commands.add_parser(
        "add-class", help="add new classes to a checkpoint from image-level tags (WILSON)",
        description="Teach a segmentation checkpoint new classes from images that are only tagged (no masks), "
                    "keeping what it knows. The result is a new checkpoint; the input is never changed. The "
                    "method contrasts images with and without each new class, so give negatives too: images "
                    "showing none of the new classes. Without negatives (e.g. one class at a time from images "
                    "that all show it), the old classes' tags are read from the model's confident predictions "
                    "(automatic relaxed setting, beyond the paper). With pixel masks of the new classes (--masks), "
                    "the step trains MiB on them instead.",
        epilog="examples:\n"
               "  python -m wilss add-class --images samples/ --class arrow=#ff8000 --out arrow.pt\n"
               "  python -m wilss add-class --world world/ --out world_step1.pt\n"
               "  python -m wilss add-class --checkpoint torchvision:lraspp_mobilenet_v3_large \\\n"
               "      --images kites/ --class kite --out voc_kite.pt\n"
               "  torchrun --nproc-per-node 4 -m wilss add-class --world world/ --out world_step1.pt --resume\n"
               "tags: DIR/tags.csv ('filename,tags', tags separated by ';', empty = negative), DIR/tags.json, "
               "or one sub-folder per tag (negatives in 'none/' or at the top).")
    src = p.add_argument_group("what to learn from")
    src.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, metavar="IN",
                     help="the model to extend: a checkpoint file, or torchvision:NAME for a pretrained VOC base "
                          "(e.g. torchvision:deeplabv3_resnet50; see docs/bases.md) (default: the shipped base, "
                          "models/default_base.pt)")
    src.add_argument("--images", type=Path, metavar="DIR", help="folder of tagged images")
    src.add_argument("--tags", type=Path, metavar="FILE",
                     help="tags file, .csv or .json (default: DIR/tags.csv or DIR/tags.json, else sub-folders)")
    src.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME[=#RRGGBB]",
                     help="a new class and, optionally, its colour (default: the next free VOC palette colour); "
                          "repeat for several classes")
    src.add_argument("--masks", type=Path, metavar="DIR",
                     help="pixel masks of the images, DIR/NAME.png for IMAGES/NAME.* (same sub-folders), in the NEW "
                          "model's ids (0 background, the old ids, then the new classes in --class order; 255 void): "
                          "the step then trains MiB (unbiased cross-entropy and distillation) instead of WILSON, and "
                          "the tags come from the masks (docs/methods.md)")
    src.add_argument("--world", type=Path, metavar="DIR",
                     help="instead: step 1 of the world benchmark (adds crescent and arrow) on a folder written "
                          "by 'generate --out'; scored on its test split")
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
    add_update_flags(p, (("", recipes.DEMO_UPDATE), ("with --world", world_cfg)))
    add_run_flags(p)
    add_common_flags(p)
    p.set_defaults(run=cmd_add_class)
