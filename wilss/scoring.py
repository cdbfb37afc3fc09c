"""Labelled sets (a mask folder, an upload, a generated world) read in a checkpoint's class ids, and their scores:
what ``evaluate`` prints, what ``add-class`` records after training and what the app's Evaluate tab shows (one
``score`` for all of them)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from models.segmenter import Segmenter
from wilss.checkpoint import Checkpoint
from wilss.conventions import BACKGROUND, BACKGROUND_NAME, IGNORE_INDEX, prepare_image
from wilss.data import DataError, check_mask_pairs, read_mask_folder
from wilss.datasets import read_labelled
from wilss.training_data import PixelDataset
from wilss.inference import evaluate
from wilss.metrics import per_class_table, percent, summarize
from wilss.recipes import WORLD_CLASSES
from wilss.tasks import parse_task


# ----------------------------------------------------------------------------------------- labelled sets
@dataclass
class EvalSet:
    """Images with masks, and the lookup that turns mask values into the model's class ids."""

    pairs: list[tuple[Path, Path]]
    label_map: Optional[np.ndarray]      # 256 uint8, or None when the masks already hold model ids
    source: str
    same_size: bool                      # every image has one size: evaluate in batches
    largest_side: int = 0                # of the images (0: small, e.g. a generated world's)
    include_background: bool = True      # background in 'all' (False: a dataset that labels no pixel background)
    new_names: Optional[list[str]] = None   # scored as new (a task's step), else the checkpoint's last added

    def dataset(self, input_side: Optional[int] = None, max_side: Optional[int] = None) -> PixelDataset:
        """Items ``(3xhxw image at the input scale, HxW mask at its own size)`` (``conventions.prepare_image``;
        ``input_side`` None: the image's own size, capped by ``max_side``)."""
        def prepare(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return prepare_image(image, input_side, max_side=max_side), mask
        return PixelDataset(self.pairs, label_map=self.label_map, cache=False, transform=prepare)


def mask_eval_set(images_dir: Path, masks_dir: Path, num_classes: int,
                  label_map: Optional[np.ndarray] = None) -> EvalSet:
    """Pair and check a VOC-style set now, so that scoring after a long training cannot fail on the data:
    every image opens, every mask has its image's size and only ids ``< num_classes`` (or 255, void)."""
    pairs = read_mask_folder(images_dir, masks_dir)
    return checked_eval_set(pairs, num_classes, f"{images_dir} + {masks_dir}", label_map)


def checked_eval_set(pairs: Sequence[tuple[Path, Path]], num_classes: int, source: str,
                     label_map: Optional[np.ndarray] = None) -> EvalSet:
    """``pairs`` checked (``wilss.data.check_mask_pairs``) as an ``EvalSet``."""
    sizes = check_mask_pairs(pairs, num_classes, label_map)
    return EvalSet(list(pairs), label_map, source, len(sizes) == 1, max(max(s) for s in sizes))


def read_world(root: Path) -> dict:
    """``root/world.json`` of a folder written by ``generate --out``, checked."""
    root = Path(root)
    meta_path = root / "world.json"
    if not root.is_dir():
        raise DataError(f"The world folder '{root}' does not exist. Write one with "
                        f"'python -m research generate --out {root}'.")
    if not meta_path.is_file():
        raise DataError(f"'{root}' has no world.json, so it is not a folder written by "
                        f"'python -m research generate --out DIR'.")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"'{meta_path}' is not valid JSON ({err}). Generate the world again.") from None
    if not isinstance(meta, dict) or meta.get("classes") != list(WORLD_CLASSES):
        raise DataError(f"'{meta_path}' does not list this version's world classes {list(WORLD_CLASSES)}. "
                        "Generate the world again.")
    return meta


def world_split(root: Path, meta: dict, split: str) -> tuple[list[Path], list[Path], list[set[int]]]:
    """(image paths, mask paths, world ids present per image) of one split, sorted by file name."""
    splits = meta.get("splits") or {}
    if split not in splits or not splits[split]:
        raise DataError(f"The world '{root}' has no images in a '{split}' split (it has: "
                        f"{', '.join(s for s in splits if splits[s]) or 'none'}).")
    stems = sorted(splits[split])
    images = [Path(root) / split / "images" / f"{s}.png" for s in stems]
    masks = [Path(root) / split / "masks" / f"{s}.png" for s in stems]
    missing = [str(p) for p in images + masks if not p.is_file()]
    if missing:
        raise DataError(f"The world '{root}' lists {len(missing)} file(s) that are missing, e.g. '{missing[0]}'. "
                        "Generate the world again.")
    return images, masks, [set(int(c) for c in splits[split][s]) for s in stems]


def world_label_map(class_names: Sequence[str]) -> np.ndarray:
    """World ids -> the checkpoint's ids, by class name; world classes the model does not know -> 0
    (background, the MiB convention: predicting nothing there is right)."""
    lut = np.zeros(256, dtype=np.uint8)
    for world_id, name in enumerate(WORLD_CLASSES):
        lut[world_id] = class_names.index(name) if name in class_names else BACKGROUND
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def world_eval_set(root: Path, split: str, class_names: Sequence[str]) -> EvalSet:
    images, masks, _ = world_split(root, read_world(root), split)
    return EvalSet(list(zip(images, masks)), world_label_map(class_names), f"{root} ({split} split)", True)


def dataset_label_map(dataset_classes: Sequence[str], class_names: Sequence[str], *, background_ids: Sequence[int],
                      ignore_ids: Sequence[int]) -> np.ndarray:
    """Dataset ids -> the checkpoint's ids by class name (as ``world_label_map``): classes the model does not know
    and the background ids -> 0, the void ids -> 255."""
    lut = np.zeros(256, dtype=np.uint8)
    for dataset_id, name in enumerate(dataset_classes):
        if dataset_id not in background_ids and name in class_names[1:]:
            lut[dataset_id] = class_names.index(name)
    lut[list(ignore_ids)] = IGNORE_INDEX
    return lut


def task_label_map(source, task_spec: str, step: Optional[int],
                   class_names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Dataset ids -> model ids after ``step`` of the task ``task_spec`` (``protocol.parse_task`` over the dataset's
    ids; MiB's test convention ``protocol.eval_label_map``: future classes -> 0, void -> 255), and the names of the
    classes that step added (what ``evaluate`` scores as new). ``step`` None: the step whose classes the checkpoint
    has. A checkpoint with those classes in another order (a joint model trained on the dataset's order) is mapped by
    name. Raises ``DataError`` when the task's class names after that step are not the checkpoint's."""
    try:
        task = parse_task(task_spec, len(source.classes), background_ids=source.background_ids)
    except ValueError as err:
        raise DataError(f"The task '{task_spec}' does not fit {len(source.classes)} dataset classes: {err}") from None
    steps = range(task.num_steps) if step is None else [step]
    if step is not None and not 0 <= step < task.num_steps:
        raise DataError(f"The task '{task_spec}' has steps 0-{task.num_steps - 1}, not {step}.")
    named = {t: [BACKGROUND_NAME] + [source.classes[c] for c in task.seen_classes(t)] for t in steps}
    fits = [t for t in steps if named[t][0] == class_names[0] and sorted(named[t]) == sorted(class_names)]
    if not fits:
        expected = named[steps[-1]]
        raise DataError(f"The checkpoint's classes ({', '.join(class_names[1:])}) are not the task's after "
                        f"{'step ' + str(step) if step is not None else 'any step'} (e.g. "
                        f"{', '.join(expected[1:])}). Check --task, --step and the checkpoint.")
    # The checkpoint has exactly the step's seen classes, so mapping by name is MiB's test convention
    # (``tasks.eval_label_map``: future classes -> 0, void -> 255) in the checkpoint's own order.
    lut = dataset_label_map(source.classes, class_names, background_ids=source.background_ids,
                            ignore_ids=source.ignore_ids)
    return lut, [source.classes[c] for c in task.step(fits[0]).new_classes]


def dataset_eval_set(root: Path, class_names: Sequence[str], *, layout: Optional[str] = None,
                     split: Optional[str] = None, task: Optional[str] = None, step: Optional[int] = None) -> EvalSet:
    """A labelled dataset's test split (``datasets.read_labelled``: VOC, images + masks folder or CamVid; ``split``
    overrides its default) in the checkpoint's ids: with ``task`` (a task spec over the dataset's ids, e.g. CamVid's
    '0,1,2,3,4,5,6,8,9|7,10') as the protocols map them (``task_label_map``), else by class name
    (``dataset_label_map``). In a dataset without background (CamVid) the background is left out of 'all'."""
    source = read_labelled(root, layout, test_split=split)
    new_names = None
    if task is not None:
        lut, new_names = task_label_map(source, task, step, class_names)
    else:
        lut = dataset_label_map(source.classes, class_names, background_ids=source.background_ids,
                                ignore_ids=source.ignore_ids)
    found = checked_eval_set(source.test, len(class_names), f"{Path(root).name} ({source.test_split} split)", lut)
    return replace(found, include_background=bool(source.background_ids), new_names=new_names)


# ---------------------------------------------------------------------------------------------- scoring
def old_new_ids(class_names: Sequence[str], new_names: Sequence[str]) -> tuple[list[int], list[int]]:
    """Model ids of the ``new_names`` and of the other non-background classes."""
    new = [class_names.index(n) for n in new_names if n in class_names]
    return [i for i in range(1, len(class_names)) if i not in new], new


@dataclass
class Scores:
    """A model's scores on a labelled set: per-class IoU and the paper's mIoU old / new / all."""

    iou: torch.Tensor                    # K, in [0, 1]; NaN for a class neither in the masks nor predicted
    summary: dict[str, float]            # 'old', 'new', 'all': mIoU in percent (NaN: a group without classes)
    class_names: list[str]
    new_names: list[str]
    background_in_all: bool = True       # False: the set labels no pixel background, 'all' leaves it out

    def by_name(self) -> dict[str, float]:
        """Class name -> IoU in percent (NaN as above)."""
        return {name: 100.0 * float(v) for name, v in zip(self.class_names, self.iou.tolist())}

    def as_dict(self) -> dict:
        """{'summary': {'old', 'new', 'all'}, 'iou': {name: value}}, in percent (the app's tables)."""
        return {"summary": dict(self.summary), "iou": self.by_name()}

    def table(self) -> str:
        """What ``evaluate`` prints: IoU per class (new ones marked), then the mIoU line."""
        table = format_scores(self.iou, self.summary, self.class_names, self.new_names)
        return table if self.background_in_all else table + " (background left out: the masks label none)"

    def history_metrics(self, eval_set: EvalSet) -> dict:
        """The figures an add-class step records in its history."""
        return {**{f"eval_mIoU_{k}": nan_to_none(v) for k, v in self.summary.items()},
                "eval_images": len(eval_set.pairs), "eval_source": eval_set.source}


def score(model: Segmenter | Checkpoint, eval_set: EvalSet, class_names: Optional[Sequence[str]] = None,
          new_names: Optional[Sequence[str]] = None, *, device: Optional[str] = None,
          max_side: Optional[int] = None, input_side: Optional[int] = None) -> Scores:
    """Scores of ``model`` over ``eval_set``, whose masks hold the ids of ``class_names`` (default: the checkpoint's
    own; "new" by default: its last add-class step's). The model must know a prefix of ``class_names`` (an earlier
    version: its missing classes are scored as never predicted). Each image is segmented at the input scale
    ``input_side`` (default: the checkpoint's; a bare network without one: the image's own size), at most
    ``max_side``, and scored at its mask's size (labels resized nearest)."""
    network = model.model if isinstance(model, Checkpoint) else model
    if isinstance(model, Checkpoint):
        class_names = list(model.class_names) if class_names is None else list(class_names)
        new_names = model.last_added if new_names is None else new_names
        input_side = model.input_side if input_side is None else input_side
        if class_names[: model.num_classes] != list(model.class_names):
            raise DataError(f"This version's classes ({', '.join(model.class_names)}) are not the first classes of "
                            f"the version being compared ({', '.join(class_names)}), so their ids differ.")
    if class_names is None or new_names is None:
        raise TypeError("score needs class_names and new_names for a bare network")
    batched = eval_set.same_size and (max_side is None or eval_set.largest_side <= max_side or input_side is not None)
    matrix = evaluate(network, eval_set.dataset(input_side, max_side), num_classes=len(class_names),
                      batch_size=8 if batched else 1, device=device, max_side=max_side)
    iou = matrix.iou()
    old, new = old_new_ids(class_names, new_names)
    summary = summarize(iou, old, new, include_background=eval_set.include_background)
    return Scores(iou, summary, list(class_names), list(new_names), eval_set.include_background)


def nan_to_none(value: float) -> Optional[float]:
    """Round a figure for a checkpoint's history; NaN (no class in the group) becomes None."""
    return None if math.isnan(value) else round(float(value), 2)


def format_scores(iou: torch.Tensor, figures: dict[str, float], class_names: Sequence[str],
                  new_names: Sequence[str]) -> str:
    width = max(len(n) for n in class_names) + 2
    lines = [f"{'class':<{width}}IoU %"]
    for name, value in per_class_table(iou, class_names):
        mark = "  (new)" if name in new_names else ""
        lines.append(f"{name:<{width}}{percent(value):>5}{mark}")
    lines.append(f"mIoU old {percent(figures['old'])} | new {percent(figures['new'])} | "
                 f"all {percent(figures['all'])}")
    return "\n".join(lines)
