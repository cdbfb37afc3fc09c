"""What ``add-class`` needs for long runs: resumable snapshots (``--resume``, ``--save-every``) and torchrun.

The snapshot of the update writing ``--out model.pt`` is ``model.resume.pt`` next to it (``wilss.resume``). It is
written every ``--save-every`` minutes and at each epoch's end, and removed once ``model.pt`` is saved. A run
without ``--resume`` never replaces an existing snapshot; a restart by torchrun (``--max-restarts``) resumes
on its own. Under torchrun only rank 0 prints, draws the progress bar, evaluates and writes files.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

from wilss.cli_common import CliError, non_negative_float
from wilss.config import to_dict
from wilss.distributed import World
from wilss.methods import OFFLINE
from wilss.resume import Resumer, file_digest, read_snapshot, resume_path

log = logging.getLogger(__name__)

SAVE_EVERY_MIN = 5.0


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("long runs (see docs/distributed.md)")
    group.add_argument("--resume", action="store_true",
                       help="continue the interrupted update that writes --out from its snapshot, if there is "
                            "one (next to it: --out model.pt saves model.resume.pt); give the same command as "
                            "before, plus --resume")
    group.add_argument("--save-every", type=non_negative_float, default=SAVE_EVERY_MIN, metavar="MIN",
                       help="minutes between resumable snapshots, besides one at each epoch's end (at most "
                            "one per 30 s) "
                            f"(default: {SAVE_EVERY_MIN:g}; 0: after every iteration)")
    group.add_argument("--sync-bn", action="store_true",
                       help="under torchrun with GPUs: batch-norm statistics over the global batch (SyncBatchNorm)")
    group.add_argument("--plain-fp32", action="store_true",
                       help="train on the plain fp32 eager path (no mixed precision, no channels-last): slower, for "
                            "comparison or debugging (docs/performance.md)")


def restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def resuming(args: argparse.Namespace) -> bool:
    """Whether this run will continue a snapshot (checked before any other output path)."""
    return (args.resume or restarted_by_torchrun()) and resume_path(args.out).exists()


def fingerprint(plan, world: World, sync_bn: bool) -> dict:
    """What a snapshot must have been made by to be resumed: same input checkpoint (bytes), classes, settings,
    tagged images (paths, tags, sizes), masks (a MiB step) and number of processes. ``plan``:
    ``wilss.cli_update.AddClass``."""
    images = [(str(p.resolve()), sorted(t), p.stat().st_size) for p, t in zip(plan.tagged.paths, plan.tagged.tags)]
    found = {"checkpoint": file_digest(plan.checkpoint_path), "classes": list(plan.class_names),
             "settings": to_dict(plan.cfg), "images": hashlib.sha256(json.dumps(images).encode()).hexdigest(),
             "processes": world.world_size, "sync_bn": sync_bn}
    if getattr(plan, "input_side", None) is not None:   # a scale other than the checkpoint's (--input-side)
        found["input_side"] = plan.input_side
    if getattr(plan, "masks", None) is not None:   # a MiB step (--masks): its masks too
        found["masks"] = hashlib.sha256(b"".join(file_digest(m).encode() for m in plan.masks)).hexdigest()
    if getattr(plan, "method", None) == OFFLINE:   # it saves no snapshot: a WILSON run's (same --out) is not its own
        found["method"] = OFFLINE
    return found


def make_resumer(plan, args: argparse.Namespace, world: World) -> Resumer:
    """The snapshot saver of this update, holding the snapshot to continue from when resuming (checked)."""
    path = resume_path(plan.out)
    current = fingerprint(plan, world, args.sync_bn)
    snapshot = None
    if path.exists():
        if not (args.resume or restarted_by_torchrun()):
            raise CliError(f"{path} holds an interrupted run of this update: add --resume to continue it, or "
                           "delete it to start over")
        snapshot = read_snapshot(path, current)
        print(f"resuming from {path} at iteration {snapshot['iteration']}")
    elif args.resume:
        print(f"no snapshot {path}: starting from the beginning")
    return Resumer(path, fingerprint=current, every_s=args.save_every * 60, snapshot=snapshot)


@contextlib.contextmanager
def main_process_output(world: World, args: argparse.Namespace) -> Iterator[None]:
    """Ranks other than 0 stay silent (no prints, no progress bar, errors only in the log)."""
    if world.is_main:
        yield
        return
    args.quiet = True
    logger = logging.getLogger("wilss")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        logger.setLevel(level)


def snapshot_dir_reusable(args: argparse.Namespace) -> bool:
    """A resumed run adds its pictures (later iterations, new names) to the folder of the interrupted one."""
    return resuming(args) and Path(args.snapshot_dir).is_dir()
