"""Self-describing checkpoints: weights plus everything needed to rebuild and use the model.

A checkpoint file is a ``torch.save`` dict of plain types and tensors::

    {"format": "wilss-checkpoint", "version": 1,
     "model": {"arch": ..., "num_classes": ..., ...},   # build_segmenter kwargs
     "state_dict": {...}, "class_names": [...], "colours": [[r, g, b], ...],
     "input_side": 240,                                 # the input scale: images' longer side in px (below)
     "background": True,                                # whether the data has a background class (below)
     "history": [{"step": 0, "kind": "pretrain", "classes": [...], "num_images": ..., "settings": {...},
                  "metrics": {...}, "date": "..."}, ...]}

``input_side`` is the scale the network was trained at: every image it sees (a later step's training images,
prediction, evaluation, export) is resized so its longer side is this (``conventions.prepare_image``). Files
without it (written before it existed) get ``legacy_input_side``: the ``--size`` their pretraining recorded, the
crop size of a base from tags alone, else 128 px, the generated world's size (the shipped base's).

``background`` says whether the data the model learnt from has a background class: False for a base from a dataset
where every pixel is a named class (``pretrain --data`` on CamVid), whose class 0 then stands only for classes not
yet added; an update defaults its ``no_background`` option from it (``wilss.methods.settle_background``) and its
result inherits it. Files without it (written before it existed) have one: True.

Loading uses ``torch.load(weights_only=True)``: a file carrying pickled code is refused, never executed.
Writing goes to a temporary file in the target folder and is renamed into place (atomic).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from models import build_segmenter
from models.segmenter import Segmenter
from wilss.config import UpdateConfig, from_dict
from wilss.conventions import BACKGROUND_NAME, class_palette
from wilss.files import atomic_write

FORMAT, VERSION = "wilss-checkpoint", 1
WORLD_INPUT_SIDE = 128        # px: the generated world's images, what files without ``input_side`` were trained at
MAX_INPUT_SIDE = 4096         # px: a larger recorded scale is a damaged file (``inference.DEFAULT_MAX_SIDE`` caps use)


class CheckpointError(ValueError):
    """A file that is not a loadable wilss checkpoint, or a write that would lose saved work."""


@dataclass
class Checkpoint:
    model: Segmenter
    class_names: list[str]
    colours: np.ndarray                      # K x 3 uint8
    history: list[dict] = field(default_factory=list)
    input_side: int = WORLD_INPUT_SIDE       # the input scale: longer side (px) of the images it trains and predicts at
    background: bool = True                  # False: its data has no background class (every pixel a named class)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def last_added(self) -> list[str]:
        """Classes added by the last add-class step ([] for a base model): the "new" classes of its metrics."""
        steps = [h for h in self.steps if h.kind == "add-class"]
        return list(steps[-1].classes) if steps else []

    @property
    def steps(self) -> list["HistoryEntry"]:
        """The history, typed."""
        return [HistoryEntry.from_dict(h) for h in self.history]


def default_colours(num_classes: int) -> np.ndarray:
    """The display colours of a new model's classes (``conventions.class_palette``: well apart, background black)."""
    return class_palette(num_classes)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class HistoryEntry:
    """One step of a checkpoint's history: which classes it added, from how many images, with which settings.

    Stored in the file as a plain dict (``to_dict``: the keys below, optional ones only when set, then ``extra``).
    ``settings`` of an update step is ``config.to_dict(UpdateConfig)``, possibly with keys of the protocol that
    made it (``method``, ``task``), so ``update_config()`` rebuilds the exact configuration to repeat the step.
    """

    kind: str                                # 'pretrain', 'pretext' or 'add-class'
    classes: list[str]                       # the classes this step introduced
    num_images: int
    settings: dict
    metrics: dict = field(default_factory=dict)
    step: int = 0
    date: str = field(default_factory=_now)
    # optional: set by the steps that have them
    source: str | None = None                # where the images came from (a folder, a world, weights' name)
    base_checkpoint: str | None = None       # what an add-class step started from (a path or a version)
    negatives: int | None = None             # images tagged with none of the new classes
    tag_counts: dict | None = None           # tag -> images carrying it
    rejected: list[str] | None = None        # training images left out after review (the app)
    tool: str | None = None                  # 'app' when the page made it (the CLI leaves it out)
    seconds: float | None = None             # wall time of a benchmark step
    processes: int | None = None             # torchrun processes, when more than one
    resumed_from_iteration: list[int] | None = None
    input_side: int | None = None            # the input scale this step trained at (px, longer side)
    extra: dict = field(default_factory=dict)   # keys of older or newer files, kept as they are

    REQUIRED = ("step", "kind", "classes", "num_images", "settings", "metrics", "date")

    def to_dict(self) -> dict:
        out = {"step": self.step, "kind": self.kind, "classes": list(self.classes), "num_images": int(self.num_images),
               "settings": self.settings, "metrics": self.metrics or {}, "date": self.date}
        out.update({name: value for name, value in _optional_items(self) if value is not None})
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "HistoryEntry":
        """Any stored step (old files lack some keys: they get empty values; unknown keys go to ``extra``)."""
        known = set(cls.REQUIRED) | {name for name, _ in _optional_items(cls)}
        entry = cls(kind=values.get("kind", ""), classes=list(values.get("classes", [])),
                    num_images=int(values.get("num_images", 0) or 0), settings=dict(values.get("settings") or {}),
                    metrics=dict(values.get("metrics") or {}), step=values.get("step", 0),
                    date=values.get("date", ""), extra={k: v for k, v in values.items() if k not in known})
        for name, _ in _optional_items(cls):
            setattr(entry, name, values.get(name))
        return entry

    def update_config(self) -> UpdateConfig:
        """The ``UpdateConfig`` this add-class step trained with (``config.from_dict``: unknown keys are ignored)."""
        return from_dict(UpdateConfig, self.settings)


_OPTIONAL = ("source", "base_checkpoint", "negatives", "tag_counts", "rejected", "tool", "seconds", "processes",
             "resumed_from_iteration", "input_side")


def _optional_items(entry) -> list[tuple[str, object]]:
    return [(name, getattr(entry, name, None)) for name in _OPTIONAL]


def history_entry(kind: str, classes: list[str], *, num_images: int, settings: dict, metrics: dict | None = None,
                  step: int = 0, **optional) -> dict:
    """``HistoryEntry(...).to_dict()``: the stored form. ``optional``: fields of ``HistoryEntry`` only."""
    return HistoryEntry(kind, list(classes), num_images, settings, metrics or {}, step, **optional).to_dict()


def save_checkpoint(ckpt: Checkpoint, path: str | Path, *, protect: tuple[str | Path, ...] = (),
                    overwrite: bool = False) -> Path:
    """Write atomically. Refuses to write onto any path in ``protect`` (e.g. the input checkpoint), and onto an
    existing file unless ``overwrite``."""
    path = Path(path)
    if len(ckpt.class_names) != ckpt.model.num_classes or len(ckpt.colours) != ckpt.model.num_classes:
        raise CheckpointError(f"{len(ckpt.class_names)} class names / {len(ckpt.colours)} colours for a model "
                              f"with {ckpt.model.num_classes} outputs")
    for other in protect:
        if Path(other).resolve() == path.resolve():
            raise CheckpointError(f"refusing to overwrite the input checkpoint {path}; choose another output path")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; choose another output path (nothing was written)")
    payload = {"format": FORMAT, "version": VERSION, "model": dict(ckpt.model.config),
               "state_dict": {k: v.detach().cpu() for k, v in ckpt.model.state_dict().items()},
               "class_names": list(ckpt.class_names), "colours": np.asarray(ckpt.colours).tolist(),
               "history": list(ckpt.history), "input_side": int(ckpt.input_side), "background": bool(ckpt.background)}
    return atomic_torch_save(payload, path)


def atomic_torch_save(payload: dict, path: str | Path) -> Path:
    """``torch.save`` through ``wilss.files.atomic_write``: a reader (or a crash) sees the old file or the new one."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from the file alone. Raises ``CheckpointError`` for anything that is not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} carries pickled objects other than weights; refusing to load it "
                              f"(only wilss checkpoints are accepted): {str(err).splitlines()[0]}") from None
    except Exception as err:  # torch raises assorted errors for files that are not torch archives
        raise CheckpointError(f"{path} is not a wilss checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'unreadable'})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a wilss checkpoint (no '{FORMAT}' header)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} was written by a newer version (format {version!r} > {VERSION})")
    damaged = f"{path} is a damaged wilss checkpoint"
    names, colours, history = _described_classes(payload, damaged)
    model = _rebuilt_model(payload, len(names), damaged)
    model.eval()
    return Checkpoint(model=model, class_names=names, colours=colours, history=history,
                      input_side=_input_side(payload, history, damaged), background=_background(payload, damaged))


def legacy_input_side(history: list[dict]) -> int:
    """The input scale of a file written before checkpoints recorded it, read from its first step: ``pretrain
    --data --size H,W`` resized to H,W (so max(H, W)); a base from tags alone fitted its images to its crop size;
    anything else is the generated world's 128 px (the shipped base, the benchmarks' world bases)."""
    settings = (history[0].get("settings") or {}) if history else {}
    size = settings.get("size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return max(size)
    if settings.get("supervision") == "tags" and isinstance(settings.get("crop_size"), int):
        return settings["crop_size"]
    return WORLD_INPUT_SIDE


def _input_side(payload: dict, history: list[dict], damaged: str) -> int:
    side = payload.get("input_side")
    if side is None:
        return legacy_input_side(history)
    if not isinstance(side, int) or isinstance(side, bool) or not 1 <= side <= MAX_INPUT_SIDE:
        raise CheckpointError(f"{damaged}: its 'input_side' must be a whole number of pixels in 1-{MAX_INPUT_SIDE}, "
                              f"found {str(side)[:40]}")
    return side


def _background(payload: dict, damaged: str) -> bool:
    value = payload.get("background", True)   # absent: a file from before the field, all of which had one
    if not isinstance(value, bool):
        raise CheckpointError(f"{damaged}: its 'background' must be true or false, found {str(value)[:40]}")
    return value


def _described_classes(payload: dict, damaged: str) -> tuple[list[str], np.ndarray, list[dict]]:
    """The class names (non-empty strings), ``K x 3`` uint8 colours in 0-255, one per name, and the history."""
    for key, kind in (("model", dict), ("state_dict", dict), ("class_names", list), ("colours", list)):
        if not isinstance(payload.get(key), kind):
            what = "is missing" if key not in payload else f"is a {type(payload[key]).__name__}, not a {kind.__name__}"
            raise CheckpointError(f"{damaged}: its '{key}' {what}")
    names = payload["class_names"]
    if len(names) < 2 or not all(isinstance(n, str) and n.strip() for n in names):
        raise CheckpointError(f"{damaged}: 'class_names' must be the background and at least one class, each a name")
    rows = payload["colours"]
    if len(rows) != len(names):
        raise CheckpointError(f"{damaged}: {len(rows)} colours for {len(names)} class names")
    bad = [row for row in rows if not _is_colour(row)]
    if bad:
        raise CheckpointError(f"{damaged}: every colour must be three whole numbers in 0-255, found {str(bad[0])[:40]}")
    history = payload.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CheckpointError(f"{damaged}: its 'history' is not a list of steps")
    return list(names), np.asarray(rows, dtype=np.uint8).reshape(len(rows), 3), list(history)


def _is_colour(row: object) -> bool:
    return (isinstance(row, (list, tuple)) and len(row) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in row))


def _rebuilt_model(payload: dict, num_names: int, damaged: str) -> Segmenter:
    """The network its config describes, with its weights. Offline always: options that would download weights
    (``pretrained_backbone``) are switched off, since the weights come from the file. The network is first built
    on the 'meta' device (no memory), so a config whose tensors do not match the file's is refused before a huge
    one is allocated."""
    config = {**payload["model"], "pretrained_backbone": False}
    if config.get("num_classes") != num_names:
        raise CheckpointError(f"{damaged}: its head has {config.get('num_classes')!r} outputs but it names "
                              f"{num_names} classes")
    state = payload["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{damaged}: its 'state_dict' holds entries that are not named tensors")
    try:
        with torch.device("meta"):
            expected = build_segmenter(**config).state_dict()
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as err:
        raise CheckpointError(f"{damaged}: its 'model' config does not describe a network ({err})") from None
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(keys)} {what}, e.g. {', '.join(keys[:2])}" for keys, what in
                 ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if keys]
        raise CheckpointError(f"{damaged}: its weights do not fit its architecture "
                              f"({config.get('arch', 'tiny')}): {'; '.join(parts)}")
    model = build_segmenter(**config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:   # e.g. a dtype that cannot be copied
        raise CheckpointError(f"{damaged}: {str(err).splitlines()[0]}") from None
    return model


def new_checkpoint(model: Segmenter, class_names: list[str], colours: np.ndarray | None = None, *,
                   input_side: int = WORLD_INPUT_SIDE, background: bool = True) -> Checkpoint:
    """A checkpoint for a freshly built model; class 0 must be the background. ``input_side``: the longer side (px)
    its training images had (the scale every later use resizes images to); ``background``: False when its data has
    no background class (every pixel a named class: class 0 then stands for classes not yet added)."""
    if class_names[0] != BACKGROUND_NAME:
        raise CheckpointError(f"class 0 must be '{BACKGROUND_NAME}', got {class_names[0]!r}")
    colours = default_colours(len(class_names)) if colours is None else np.asarray(colours, dtype=np.uint8)
    return Checkpoint(model=model, class_names=list(class_names), colours=colours, input_side=int(input_side),
                      background=bool(background))
