"""The MiB/WILSON data protocols of the benchmarks: tags from masks, as pure functions over class-id sets. The task
splits, the image selection and the label maps (dataset ids -> model ids) live in ``wilss.tasks``, where add-class
``--world`` and evaluate ``--task`` need them; they are re-exported here."""
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
