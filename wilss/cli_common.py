"""What every ``python -m wilss`` command shares: argument types, output-path checks, the progress bar, the
mapping of flags onto ``UpdateConfig``, checkpoint loading and ``--class`` specs.

Nothing here trains or writes; commands call these to validate *all* their input before any work starts.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from wilss import recipes
from wilss.bases import open_model as open_checkpoint  # noqa: F401  (the commands' --checkpoint)
from wilss.config import REGION_PRIORS, UPDATE_LIMITS, UpdateConfig
from wilss.conventions import hex_to_rgb
from wilss.data import MAX_PIXELS
from wilss.engine import Progress
from wilss.inference import DEFAULT_MAX_SIDE
from wilss.service import with_settings
from wilss.metrics import percent  # noqa: F401  (the commands' table figures)

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RGB = tuple[int, int, int]


class CliError(ValueError):
    """Bad command-line input that no library module checks (flag combinations, output paths)."""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own; lines that start with a space (examples) stay."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(line if line.startswith(" ") else
                         textwrap.fill(line, width, initial_indent=indent, subsequent_indent=indent)
                         for line in text.splitlines())


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors end, like every other bad input, in one ``error: ...`` line (exit 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


# ------------------------------------------------------------------------------------------ argument types
def _number(cast, low: float, strict: bool, what: str):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


positive_int = _number(int, 0, True, "a whole number >= 1")
non_negative_int = _number(int, 0, False, "a whole number >= 0")
positive_float = _number(float, 0.0, True, "a number > 0")
non_negative_float = _number(float, 0.0, False, "a number >= 0")


def unit_float(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]")
    return value


def region_prior_arg(text: str) -> str:
    """``--region-prior``: one of ``REGION_PRIORS``."""
    word = text.strip().lower()
    if word not in REGION_PRIORS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a region prior; use {', '.join(REGION_PRIORS)}")
    return word


def device_arg(text: str) -> str:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', checked against this machine."""
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: Apple MPS is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda, cuda:N or mps")
    return text


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """--verbose / --quiet, on every sub-command (after the command name, where users type them)."""
    group = parser.add_argument_group("messages")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="log what happens (-vv: debug details, and tracebacks of errors)")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_max_side_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-side", type=positive_int, default=DEFAULT_MAX_SIDE, metavar="PX",
                        help="segment images whose longer side is larger at this size; masks and scores still come "
                             f"at the image's own size (default: {DEFAULT_MAX_SIDE}; images over "
                             f"{MAX_PIXELS // 10**6} MP are refused)")


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=device_arg, default="auto",
                        help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps (default: auto)")


# ------------------------------------------------------------------------------------------- UpdateConfig
# (flag, UpdateConfig field, type, metavar, help) for every setting a user would tune.
UPDATE_VALUE_FLAGS = (
    ("--epochs", "epochs", positive_int, "N", "training epochs"),
    ("--warmup-epochs", "warmup_epochs", non_negative_int, "N",
     "first epochs that train only the localizer (l_CLS + l_LOC), before l_SEG joins"),
    ("--batch-size", "batch_size", positive_int, "N",
     "images per batch (under torchrun: the global batch, shared out among the processes)"),
    ("--crop-size", "crop_size", positive_int, "PX",
     "training crop side, of images first resized to the input scale (see --input-side)"),
    ("--lr-backbone", "lr_backbone", positive_float, "LR", "learning rate of the encoder"),
    ("--lr-head", "lr_head", positive_float, "LR", "learning rate of the decoder head and classifier"),
    ("--lr-localizer", "lr_localizer", positive_float, "LR", "learning rate of the localizer"),
    ("--focal-gamma", "focal_gamma", non_negative_float, "G", "Eq. 2: exponent of the aggregation's focal penalty"),
    ("--focal-lambda", "focal_lambda", non_negative_float, "L", "Eq. 2: offset of the aggregation's focal penalty"),
    ("--alpha", "alpha", unit_float, "A", "Eq. 6: weight of the hard (one-hot) pseudo-label vs the soft one"),
    ("--localizer-channels", "localizer_channels", positive_int, "C", "hidden channels of the localizer"),
    ("--feature-distillation", "feature_distillation", non_negative_float, "W",
     "weight of the feature distillation loss MSE(e_t(x), e_t-1(x)); the reference code uses 1"),
    ("--pamr-refine-stride", "pamr_refine_stride", non_negative_int, "S",
     "refine the pseudo-labels by PAMR on the image at 1/S of its resolution and train l_SEG there (beyond the "
     "paper; 0: off)"),
    ("--pamr-refine-iterations", "pamr_refine_iterations", positive_int, "N",
     "PAMR iterations of that refinement"),
    ("--pamr-refine-fine-iterations", "pamr_refine_fine_iterations", non_negative_int, "N",
     "then N more PAMR iterations at the image's full resolution, and l_SEG there (coarse to fine; 0: off)"),
    ("--output-distillation", "output_distillation", non_negative_float, "W",
     "ILT: weight of the output-layer distillation L'_D on the old classes' logits (0: off; MiB's ILT runs use 100)"),
    ("--unbiased-kd", "unbiased_kd", non_negative_float, "W",
     "with --masks (MiB): weight of the unbiased knowledge distillation from the old model"),
    ("--seed", "seed", int, "S", "random seed of initialisation, shuffling and augmentation"),
    ("--replay-images", "replay_images", non_negative_int, "N",
     "HRHF replay: synthesise N images of the old classes by inverting the model before the update, and distil the "
     "old model on them during it (0: off)"),
    ("--replay-classes", "replay_classes", str, "LIST",
     "HRHF replay: comma-separated old classes to synthesise (empty: every old class)"),
    ("--replay-steps", "replay_steps", positive_int, "N", "HRHF replay: inversion steps per batch of images"),
    ("--replay-weight", "replay_weight", non_negative_float, "W", "HRHF replay: weight of the distillation on them"),
    ("--region-prior", "region_prior", region_prior_arg, "{" + ",".join(REGION_PRIORS) + "}",
     "average the pseudo-labels over each superpixel of the image (after the PAMR refinement, when on) and train "
     "l_SEG at the image's resolution (beyond the paper; none: off)"),
    ("--region-segments", "region_segments", positive_int, "N", "slic: about N superpixels per image"),
    ("--region-scale", "region_scale", positive_float, "S", "felzenszwalb: the larger, the fewer and bigger regions"),
    ("--region-weight", "region_weight", unit_float, "W",
     "the target becomes W x its region means + (1 - W) x itself (1: the region means alone)"),
)
# (flag, field, value stored): switches that flip a default.
UPDATE_SWITCHES = (
    ("--relaxed", "relaxed", True,
     "relaxed setting: l_CLS over all classes, using tags that name classes the model already knows "
     "(tag every known class an image shows: an untagged one counts as absent)"),
    ("--auto-old-tags", "auto_old_tags", True,
     "relaxed l_CLS with the old classes' tags read from the model's confident predictions (beyond the paper; "
     "switched on by itself when a new class has no negatives)"),
    ("--no-mib-init", "mib_init", False, "initialise the new classifier rows randomly instead of MiB's init"),
    ("--pamr-self-training", "pamr_self_training", True,
     "reference-code extra: self-train the localizer on PAMR-refined masks after the warm-up"),
    ("--localizer-detail", "localizer_detail", True,
     "the localizer also reads the encoder's stride-4 map (tiny network): sharper CAMs, beyond the paper (on in "
     "the world recipe)"),
    ("--no-localizer-detail", "localizer_detail", False,
     "the localizer reads the encoder's last map only, as in the paper"),
    ("--drop-unlocalized", "drop_unlocalized", True,
     "give weight 0 in l_SEG to images whose pseudo-label misses a tagged class"),
    ("--freeze-encoder", "freeze_encoder", True,
     "ILT: freeze the encoder (weights and batch-norm statistics); only the heads, classifier and localizer learn"),
    ("--new-on-old-background", "new_on_old_background", True,
     "cap a new class's pseudo-label by the old model's background probability: new classes take only what the "
     "old model calls background (beyond the paper)"),
    ("--no-background", "no_background", True,
     "the data has no background class (every pixel is a named class): the old model's background goes to an "
     "image's tagged new classes, shared by the localizer (beyond the paper; add-class: on by itself for a base "
     "whose checkpoint records data without one, e.g. from 'pretrain --data' on CamVid)"),
    ("--background", "no_background", False,
     "the data has a background class: the old model's background stays a real background, as in the paper "
     "(add-class: the default, unless the base's checkpoint records data without one)"),
    ("--old-at-head-resolution", "old_at_head_resolution", True,
     "the old model's targets at its head's resolution, not pooled to the encoder's last map: thin old classes stay "
     "(the default; it changes only networks whose head decodes finer than the encoder's last map, e.g. LR-ASPP)"),
    ("--old-at-feature-resolution", "old_at_head_resolution", False,
     "the old model's targets pooled to the encoder's last map, as before: an LR-ASPP base's thin old classes are "
     "lost from them"),
    ("--freeze-encoder-bn", "freeze_encoder_bn", True,
     "the encoder's batch-norm layers keep the old model's statistics while its weights train (beyond the paper; "
     "on in the demo recipe)"),
    ("--no-freeze-encoder-bn", "freeze_encoder_bn", False,
     "the encoder's batch-norm statistics follow the step's images, as in the paper"),
)


def _defaults_text(field: str, labelled: Sequence[tuple[str, UpdateConfig]]) -> str:
    values = [(label, getattr(cfg, field) if getattr(cfg, field) != "" else "empty") for label, cfg in labelled]
    if all(v == values[0][1] for _, v in values):
        return f"default: {values[0][1]}"
    return "default: " + ", or ".join(f"{v} {label}".rstrip() for label, v in values)


def add_update_flags(parser: argparse.ArgumentParser,
                     defaults: Sequence[tuple[str, UpdateConfig]] = (("", recipes.DEMO_UPDATE),), *,
                     device: bool = True, title: str = "training settings") -> None:
    """One flag per tunable ``UpdateConfig`` field, all defaulting to None (= keep the recipe's value).

    ``defaults``: (label, config) pairs, only to print the recipe values in the help text; ``device``: the
    ``--device`` flag too.
    """
    group = parser.add_argument_group(f"{title} (WILSON; defaults from wilss.recipes)")
    for flag, field, kind, metavar, text in UPDATE_VALUE_FLAGS:
        most = f"; at most {UPDATE_LIMITS[field]}" if field in UPDATE_LIMITS else ""
        group.add_argument(flag, dest=field, type=kind, metavar=metavar, default=None,
                           help=f"{text} ({_defaults_text(field, defaults)}{most})")
    for flag, field, value, text in UPDATE_SWITCHES:
        group.add_argument(flag, dest=field, action="store_const", const=value, default=None, help=text)
    if device:
        add_device_flag(group)


def update_config(args: argparse.Namespace, base: UpdateConfig) -> UpdateConfig:
    """``base`` with the flags the user gave. Raises ValueError for inconsistent values (warm-up >= epochs)."""
    fields = [f for _, f, *_ in UPDATE_VALUE_FLAGS] + [f for _, f, *_ in UPDATE_SWITCHES]
    overrides = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    for flag, field, *_ in UPDATE_VALUE_FLAGS:
        if field in UPDATE_LIMITS and overrides.get(field, 0) > UPDATE_LIMITS[field]:
            raise CliError(f"{flag} {overrides[field]} is above the limit of {UPDATE_LIMITS[field]}")
    try:
        return with_settings(base, overrides)
    except ValueError as err:
        raise CliError(f"{err} (set with --epochs / --warmup-epochs)" if "warmup" in str(err) else str(err)) from None


# ------------------------------------------------------------------------------------------ paths and files
def check_new_file(path: Path, *, flag: str = "--out", overwrite: bool = False,
                   protect: Sequence[Path] = ()) -> Path:
    """Check that ``path`` can be written as a new file (before any work). Returns it."""
    path = Path(path)
    for other in protect:
        if path.resolve() == Path(other).resolve():
            raise CliError(f"{flag} {path} is the input checkpoint; write the result to another file "
                           "(the input is never overwritten)")
    if path.is_dir():
        raise CliError(f"{flag} {path} is a folder; give a file path, e.g. {path / 'model.pt'}")
    if path.exists() and not overwrite:
        raise CliError(f"{flag} {path} already exists; choose another path (or pass --overwrite to replace it)")
    check_writable_folder(path.parent, flag=flag, target=path)
    return path


def write_report(path: Optional[Path], text: str, *, overwrite: bool = False) -> None:
    """Write a long run's markdown report to ``path`` (checked again: the run took a while), if one was given."""
    if path is None:
        return
    check_new_file(path, overwrite=overwrite)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n")
    print(f"wrote {path}")


def check_new_folder(path: Path, *, flag: str) -> Path:
    """``path`` is absent or an empty folder that can be written into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CliError(f"{flag} {path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise CliError(f"{flag} {path} is not empty; give a new or empty folder (nothing is overwritten)")
    check_writable_folder(path, flag=flag)
    return path


def check_writable_folder(folder: Path, *, flag: str, target: Optional[Path] = None) -> None:
    """``folder`` exists as a writable folder, or can be made (its nearest existing ancestor is one)."""
    target = folder if target is None else target
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"{flag} {target}: '{existing}' is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK):
        raise CliError(f"{flag} {target}: the folder '{existing}' is not writable")


# ---------------------------------------------------------------------------------------------- colours
def parse_class_spec(text: str) -> tuple[str, Optional[RGB]]:
    """'NAME' or 'NAME=#RRGGBB' -> (name, colour or None)."""
    name, sep, colour = text.partition("=")
    name = name.strip()
    if not name:
        raise CliError(f"--class {text!r} has no name; use --class NAME or --class NAME=#RRGGBB")
    if not sep:
        return name, None
    try:
        return name, hex_to_rgb(colour)
    except ValueError as err:
        raise CliError(f"--class {text!r}: {err} (e.g. --class {name}=#ff8000)") from None


# ------------------------------------------------------------------------------------------------ progress
class ProgressBar:
    """A tqdm bar fed with ``Progress``: iteration/total, phase in the description, losses in the postfix.

    ``update(progress, name)`` opens a new bar whenever ``name`` changes or the iteration count restarts,
    so one object can follow the several runs of a benchmark. Disabled (no output at all) with ``quiet``.
    """

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Optional[tqdm] = None
        self.name: Optional[str] = None

    def update(self, progress: Progress, name: str = "") -> None:
        if self.bar is None or name != self.name or progress.iteration <= self.bar.n:
            self.close()
            self.bar = tqdm(total=progress.total_iterations, disable=self.quiet, unit="it", dynamic_ncols=True,
                            file=sys.stderr)
            self.name = name
        self.bar.set_description(f"{name} {progress.phase}".strip() + f" ep {progress.epoch + 1}", refresh=False)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in progress.losses.items()}, refresh=False)
        self.bar.update(progress.iteration - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
