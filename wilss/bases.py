"""Real pretrained bases: torchvision's segmentation networks with their COCO-with-VOC-labels weights (background
+ the 20 PASCAL VOC classes) as step-0 checkpoints, named ``torchvision:NAME`` wherever a checkpoint is accepted.

Where the machine has internet torchvision downloads the weights once (into ``$TORCH_HOME/hub/checkpoints``);
afterwards they load from there.
"""
from __future__ import annotations

from pathlib import Path

from models import DEFAULT_CHECKPOINT, TORCHVISION_NETS, pretrained_torchvision
from wilss.checkpoint import Checkpoint, CheckpointError, history_entry, load_checkpoint, new_checkpoint
from wilss.conventions import BACKGROUND_NAME

SPEC_PREFIX = "torchvision:"
BASE_SPECS = tuple(SPEC_PREFIX + name for name in TORCHVISION_NETS)


def is_base_spec(source: str | Path) -> bool:
    """Whether ``source`` names a pretrained base ('torchvision:NAME') rather than a checkpoint file."""
    return str(source).startswith(SPEC_PREFIX)


# px: torchvision's segmentation weights are evaluated with the shorter side resized to 520; as a longer side it keeps
# VOC's images (at most 500 px), what these bases are scored on, near their own size.
TORCHVISION_INPUT_SIDE = 520


def pretrained_base(spec: str) -> Checkpoint:
    """The checkpoint of a pretrained base ``torchvision:NAME``: its 21 class names (from the weights' metadata,
    '__background__' as 'background'), VOC palette colours, and a step-0 history entry naming the weights.

    Raises ``CheckpointError`` for an unknown NAME, or weights that cannot be downloaded or read.
    """
    name = str(spec)[len(SPEC_PREFIX):]
    if not is_base_spec(spec) or name not in TORCHVISION_NETS:
        raise CheckpointError(f"unknown pretrained base {str(spec)!r}; choose one of {', '.join(BASE_SPECS)}")
    try:
        model, weights = pretrained_torchvision(name)
    except RuntimeError as err:
        raise CheckpointError(str(err)) from None
    names = [BACKGROUND_NAME] + list(weights.meta["categories"][1:])
    ckpt = new_checkpoint(model, names, input_side=TORCHVISION_INPUT_SIDE)
    metrics = {f"{data}_{key}": value for data, figures in weights.meta.get("_metrics", {}).items()
               for key, value in figures.items()}
    ckpt.history.append(history_entry(
        "pretrain", names[1:], num_images=0, step=0, metrics=metrics, source=SPEC_PREFIX + name,
        settings={"weights": str(weights), "url": weights.url, "loss": "ce",
                  "data": "COCO train2017 images of the 20 VOC classes",
                  "recipe": weights.meta.get("recipe", "")}))
    return ckpt


def open_model(source: str | Path) -> Checkpoint:
    """A checkpoint file, or a pretrained base spec ``torchvision:NAME``, with a hint when the shipped default base
    has not been made yet."""
    if is_base_spec(source):
        return pretrained_base(str(source))
    path = Path(source)
    if not path.exists() and path.resolve() == DEFAULT_CHECKPOINT.resolve():
        raise CheckpointError(f"the default base checkpoint {path} does not exist yet: create it with "
                              f"'python -m research pretrain --out {path}', or pass --checkpoint")
    return load_checkpoint(path)
