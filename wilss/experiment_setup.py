"""What the ``benchmark`` and ``study`` commands (and ``pretrain``'s ``--encoder``) share: the encoder flag, and each
dataset's protocol, splits and recipes. Here so that no command module imports another."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from models import DEFAULT_ENCODER
from wilss import recipes
from wilss.cli_common import REPO_ROOT, CliError, open_checkpoint
from wilss.data import DataError
from wilss.experiments import Protocol, camvid_splits
from wilss.protocol import parse_task

ENCODER_DEFAULT = object()  # --encoder not given: see encoder_path
DEFAULT_CAMVID = REPO_ROOT.parent / "shared" / "datasets" / "camvid"
# From the dataset's README (ids 0-10; 11 = unlabelled), used when camvid_meta.json is absent.
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")


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
