"""The MiB/WILSON data protocols: the label maps of training and test masks at each step, and tags from masks,
as pure functions over class-id sets. The task splits and the image selection live in ``wilss.tasks`` (add-class
``--world`` needs them); they are re-exported here.

Two id spaces appear here:
- *dataset ids*: the values in the dataset's mask files (VOC: 0 background, 1..20 classes, 255 void);
- *model ids*: output channels of the model after step ``t``: 0 background, then the seen classes in task
  order (step 0's classes first, then step 1's, ...) as 1, 2, ...

A ``Task`` is the class order. Its ``background_ids`` are the dataset ids that mean background (model id 0):
``(0,)`` for VOC/COCO-style data, ``()`` for a dataset where every pixel is a named class (e.g. CamVid);
then no pixel is labelled background and all named classes are shifted by one in model ids.
Dataset ids that belong to no step and are not background are treated like future classes (background).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from wilss.conventions import IGNORE_INDEX
from wilss.tasks import (SETTINGS, Step, Task, _check_setting, parse_task, present_classes,
                         select_images)

__all__ = ["SETTINGS", "Step", "Task", "parse_task", "present_classes", "select_images", "label_map",
           "eval_label_map", "tags_from_mask"]


def label_map(task: Task, step: int, *, setting: str, ignore_ids: Sequence[int] = (IGNORE_INDEX,),
              keep_old: bool = True) -> np.ndarray:
    """``256`` uint8 lookup table, dataset id -> model id, for training masks at ``step``.

    Background ids -> 0; seen classes -> 1.. in task order; future (and unlisted) classes -> 0, the
    "background shift" of the incremental setting; ``ignore_ids`` -> 255. Both settings map the same way:
    under ``disjoint`` future classes simply never occur in the selected images. ``keep_old=False`` gives
    MiB's pixel-incremental training labels, where only the classes of ``step`` are labelled and old ones
    become background. Use as ``lut[mask]``.
    """
    _check_setting(setting)
    lut = np.zeros(256, dtype=np.uint8)
    seen = task.seen_classes(step)
    first = 0 if keep_old else len(task.old_classes(step))
    for model_id, c in enumerate(seen, start=1):
        if model_id > first:
            lut[c] = model_id
    lut[list(ignore_ids)] = IGNORE_INDEX
    return lut


def eval_label_map(task: Task, step: int, ignore_ids: Sequence[int] = (IGNORE_INDEX,)) -> np.ndarray:
    """Lookup table for test masks after ``step`` (MiB convention): all test images are used, seen classes
    -> model ids, future classes -> 0 (background, so predicting nothing there is correct), void -> 255."""
    return label_map(task, step, setting="overlap", ignore_ids=ignore_ids)


def tags_from_mask(present: set[int], classes: Sequence[int]) -> np.ndarray:
    """Multi-hot float32 ``len(classes)``: 1 where ``classes[k]`` is present in the image."""
    return np.array([1.0 if c in present else 0.0 for c in classes], dtype=np.float32)
