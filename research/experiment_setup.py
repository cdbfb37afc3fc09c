"""What the ``benchmark`` and ``study`` commands (and ``pretrain``'s ``--encoder``) share: the encoder flag, and each
dataset's protocol, splits and recipes. Here so that no command module imports another."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from models import DEFAULT_ENCODER
from models.imagenet import IMAGENET_NETS
from research import recipes
from research.experiments import MAX_NEGATIVES, Benchmark, Protocol, Row, camvid_splits
from research.protocol import parse_task
from wilss.cli_bases import ENCODER_DEFAULT, IMAGENET, encoder_arg, imagenet_init
from wilss.cli_common import REPO_ROOT, CliError, open_checkpoint
from wilss.config import OptimConfig
from wilss.data import DataError
from wilss.datasets import camvid_classes
from wilss.metrics import percent

DEFAULT_CAMVID = REPO_ROOT.parent / "shared" / "datasets" / "camvid"


def encoder_path(args: argparse.Namespace) -> Path | str | None:
    """What ``--encoder`` names: by default the shipped pretext network on the world, the recipe's (ImageNet) on
    CamVid."""
    if args.encoder is not ENCODER_DEFAULT:
        return args.encoder
    if getattr(args, "dataset", "world") == "world":
        return DEFAULT_ENCODER
    encoder = recipes.camvid_recipe(getattr(args, "arch", None)).encoder
    return None if encoder == "none" else encoder


def encoder_network(args: argparse.Namespace):
    """The pretext network ``--encoder`` names, loaded once (a clear error for a missing or unreadable file), and
    its path; (None, None) for networks from scratch or from ImageNet."""
    path = encoder_path(args)
    if path is None or path == IMAGENET:
        return None, None
    if not path.is_file():
        raise CliError(f"--encoder {path} does not exist; create it with `python -m research pretrain --pretext --out "
                       f"{path}`, or give --encoder none to train from scratch")
    return open_checkpoint(path).model, path


def world_encoder(args: argparse.Namespace):
    """``Benchmark.init_model`` from ``--encoder`` (None: from scratch), the file read up front."""
    if encoder_path(args) == IMAGENET:
        return imagenet_init
    source, path = encoder_network(args)
    return recipes.encoder_init(source, origin=str(path))


def add_encoder_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--encoder", type=encoder_arg, default=ENCODER_DEFAULT, metavar="CKPT|imagenet|none",
                        help=f"start {what} from the encoder of this pretext checkpoint, from the installed "
                             f"ImageNet weights ('imagenet', for the {', '.join(IMAGENET_NETS)} networks), or from "
                             f"scratch ('none'); default: the shipped models/{DEFAULT_ENCODER.name} for the world, "
                             "the recipe's ('imagenet') for CamVid")


def benchmark_setup(args: argparse.Namespace):
    """(protocol, splits loader, step-0 recipe, weak-step recipe, title) of ``args.dataset`` (world | camvid)."""
    if args.dataset == "world":
        return (recipes.world_protocol(), recipes.world_splits, recipes.WORLD_PRETRAIN, recipes.WORLD_UPDATE,
                f"world {recipes.WORLD_TASK_SPEC} {recipes.WORLD_SETTING}")
    root = Path(args.data)
    if not (root / "train.txt").is_file():
        raise DataError(f"CamVid was not found in '{root}' (no train.txt). Give its folder with --data PATH.")
    cam = recipes.camvid_recipe(getattr(args, "arch", None))
    if getattr(args, "task", None):
        cam = replace(cam, task_spec=args.task)
    if getattr(args, "size", None) is not None:   # 'native': CamVid's own 360x480
        cam = replace(cam, resize=None if args.size == "native" else args.size)
    try:
        task = parse_task(cam.task_spec, 11, background_ids=())
    except ValueError as err:
        raise CliError(f"--task: {err}") from None
    protocol = Protocol(name="camvid", dataset_classes=camvid_classes(root), task=task, setting=cam.setting,
                        ignore_ids=(11,), resize=cam.resize, background_in_all=False)
    return (protocol, lambda: camvid_splits(root), cam.pretrain, cam.update,
            f"camvid {cam.task_spec} {cam.setting} ({cam.arch}, encoder: {encoder_path(args) or 'none'}, images "
            f"{'x'.join(map(str, cam.resize)) if cam.resize else 'native'})")


def quick(cfg: OptimConfig) -> OptimConfig:
    """A smoke-run variant: epochs / 10 (at least 2), warm-up / 10 (at least 1, less than the epochs)."""
    epochs = max(2, cfg.epochs // 10)
    changes = {"epochs": epochs}
    if hasattr(cfg, "warmup_epochs"):
        changes["warmup_epochs"] = min(max(1, cfg.warmup_epochs // 10), epochs - 1)
    return replace(cfg, **changes)


def with_epochs(cfg: OptimConfig, epochs: int) -> OptimConfig:
    """``cfg`` with ``epochs`` epochs, its warm-up (if it has one) scaled in proportion: at least 1 where it had one,
    fewer than the epochs (``benchmark --epochs-step / --epochs-base``)."""
    changes = {"epochs": epochs}
    if getattr(cfg, "warmup_epochs", 0):
        changes["warmup_epochs"] = min(max(1, round(cfg.warmup_epochs * epochs / cfg.epochs)), epochs - 1)
    return replace(cfg, **changes)


def shortened_schedules(args: argparse.Namespace, pretrain_cfg, update_cfg, title: str):
    """(step-0 recipe, weak-step recipe, title) after ``--quick`` or ``--epochs-step`` / ``--epochs-base``."""
    step, base = getattr(args, "epochs_step", None), getattr(args, "epochs_base", None)
    if args.quick and (step is not None or base is not None):
        raise CliError("--quick sets every epoch count; leave out --epochs-step and --epochs-base")
    if args.quick:
        return quick(pretrain_cfg), quick(update_cfg), title + " (quick smoke run)"
    changed = [f"{what} {n} epochs" for what, n in (("steps", step), ("base and joint", base)) if n is not None]
    update_cfg = update_cfg if step is None else with_epochs(update_cfg, step)
    pretrain_cfg = pretrain_cfg if base is None else with_epochs(pretrain_cfg, base)
    return pretrain_cfg, update_cfg, title + (f" (schedule: {', '.join(changed)})" if changed else "")


def _weak_step_checks(by: dict, new_share: float, old_share: float) -> list[tuple[str, bool]]:
    """The checks both protocols make, for the rows that ran: WILSS new >= ``new_share`` of joint new, old >=
    ``old_share`` of base old, all > FT all."""
    w, j, b, f = (by.get(m) for m in ("wilss", "joint", "base", "ft"))
    checks = []
    if w and j:
        checks.append((f"WILSS new {percent(w.new)} >= {new_share:.0%} of joint new ({percent(new_share * j.new)})",
                       w.new >= new_share * j.new))
    if w and b:
        checks.append((f"WILSS old {percent(w.old)} >= {old_share:.0%} of base old ({percent(old_share * b.old)})",
                       w.old >= old_share * b.old))
    if w and f:
        checks.append((f"WILSS all {percent(w.all)} > FT all ({percent(f.all)})", w.all > f.all))
    return checks


def goal_checks(rows: Sequence[Row]) -> list[tuple[str, bool]]:
    """The world's goals: WILSS new >= 80% of joint new, old >= 97% of base old, all > FT all."""
    return _weak_step_checks({r.method: r for r in rows}, 0.8, 0.97)


def camvid_goal_checks(rows: Sequence[Row]) -> list[tuple[str, bool]]:
    """Issue 22's CamVid goals: joint all >= 55; WILSS new >= 60% of joint new (the paper's VOC ratio); WILSS old
    >= 95% of base old; WILSS all > FT all."""
    by = {r.method: r for r in rows}
    joint = [(f"joint all {percent(by['joint'].all)} >= 55", by["joint"].all >= 55)] if "joint" in by else []
    return joint + _weak_step_checks(by, 0.6, 0.95)


def share_arg(text: str) -> float:
    value = float(text)
    if not 0 <= value <= MAX_NEGATIVES:
        raise argparse.ArgumentTypeError(f"give a share between 0 and {MAX_NEGATIVES}, not {text}")
    return value


def step_images(args: argparse.Namespace) -> dict:
    """``Benchmark`` keywords for the weak steps' images (``--images-per-step``, ``--negatives``)."""
    return {"images_per_step": args.images_per_step, "negatives": args.negatives}


def step_images_title(args: argparse.Namespace) -> str:
    """What a table's title says of ``--images-per-step`` and ``--negatives`` ('' at their defaults)."""
    parts = [f"at most {args.images_per_step} images a step"] if args.images_per_step else []
    parts += [f"negatives {args.negatives:g} of a step's images"] if args.negatives else []
    return "".join(f", {p}" for p in parts)


def check_step_images(bench: Benchmark) -> None:
    """Every weak step's images can be drawn (enough old-only images for ``--negatives``), before any training."""
    for step in range(1, bench.protocol.task.num_steps):
        try:
            bench.step_indices(step)
        except ValueError as err:
            raise CliError(f"--negatives: {err}") from None
