"""The MiB/WILSON data protocols: the label maps of training and test masks at each step, and tags from masks,
as pure functions over class-id sets. The task splits, the image selection and the label maps live in ``wilss.tasks``
(add-class ``--world`` and evaluate ``--task`` need them); they are re-exported here.

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

from wilss.tasks import (SETTINGS, Step, Task, eval_label_map, label_map, parse_task, present_classes,
                         select_images)

__all__ = ["SETTINGS", "Step", "Task", "parse_task", "present_classes", "select_images", "label_map",
           "eval_label_map", "tags_from_mask"]


def tags_from_mask(present: set[int], classes: Sequence[int]) -> np.ndarray:
    """Multi-hot float32 ``len(classes)``: 1 where ``classes[k]`` is present in the image."""
    return np.array([1.0 if c in present else 0.0 for c in classes], dtype=np.float32)
