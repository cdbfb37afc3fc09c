"""Incremental tasks: which classes each step adds, and which images a step uses (the MiB/WILSON settings),
as pure functions over class-id sets.

Two id spaces appear here:
- *dataset ids*: the values in the dataset's mask files (VOC: 0 background, 1..20 classes, 255 void);
- *model ids*: output channels of the model after step ``t``: 0 background, then the seen classes in task
  order (step 0's classes first, then step 1's, ...) as 1, 2, ...

A ``Task`` is the class order. Its ``background_ids`` are the dataset ids that mean background (model id 0):
``(0,)`` for VOC/COCO-style data, ``()`` for a dataset where every pixel is a named class (e.g. CamVid);
then no pixel is labelled background and all named classes are shifted by one in model ids.
Dataset ids that belong to no step and are not background are treated like future classes (background).
The label maps of training and test masks at each step are here too (``label_map``, ``eval_label_map``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from wilss.conventions import BACKGROUND, IGNORE_INDEX

SETTINGS = ("disjoint", "overlap")


@dataclass(frozen=True)
class Step:
    index: int
    new_classes: tuple[int, ...]


@dataclass(frozen=True)
class Task:
    """``steps``: dataset class ids per step, step 0 = base classes (pixel-labelled)."""

    steps: tuple[tuple[int, ...], ...]
    background_ids: tuple[int, ...] = (BACKGROUND,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(tuple(int(c) for c in s) for s in self.steps))
        object.__setattr__(self, "background_ids", tuple(int(c) for c in self.background_ids))
        if not self.steps or any(len(s) == 0 for s in self.steps):
            raise ValueError(f"a task needs at least one step and no empty step, got {self.steps}")
        flat = [c for s in self.steps for c in s]
        if len(set(flat)) != len(flat):
            raise ValueError(f"a class appears in more than one step (or twice): {self.steps}")
        bad = [c for c in flat if not 0 <= c < IGNORE_INDEX or c in self.background_ids]
        if bad:
            raise ValueError(f"class ids {bad} are background, void or outside 0..254")

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def step(self, t: int) -> Step:
        return Step(index=t, new_classes=self.steps[self._check(t)])

    def old_classes(self, t: int) -> tuple[int, ...]:
        """Dataset ids of all steps before ``t``."""
        return tuple(c for s in self.steps[: self._check(t)] for c in s)

    def seen_classes(self, t: int) -> tuple[int, ...]:
        """Dataset ids of steps ``0..t``, in model-id order (model id = position + 1)."""
        return tuple(c for s in self.steps[: self._check(t) + 1] for c in s)

    def future_classes(self, t: int) -> tuple[int, ...]:
        """Dataset ids of the steps after ``t``."""
        return tuple(c for s in self.steps[self._check(t) + 1:] for c in s)

    def num_model_classes(self, t: int) -> int:
        """Output channels after step ``t``: background + seen classes."""
        return 1 + len(self.seen_classes(t))

    def old_model_ids(self, t: int) -> tuple[int, ...]:
        """Model ids of the old classes at step ``t`` (background excluded), for ``metrics.summarize``."""
        return tuple(range(1, 1 + len(self.old_classes(t))))

    def new_model_ids(self, t: int) -> tuple[int, ...]:
        """Model ids of the classes added at step ``t``."""
        start = 1 + len(self.old_classes(t))
        return tuple(range(start, start + len(self.steps[self._check(t)])))

    def added_model_ids(self, first: int, last: int) -> tuple[int, ...]:
        """Model ids of the classes added in steps ``first..last`` (inclusive)."""
        start = 1 + len(self.old_classes(first))
        return tuple(range(start, 1 + len(self.seen_classes(last))))

    def paper_columns(self, t: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(old, new) model ids of the paper's tables after step ``t`` >= 1: old = step 0's classes, new = every
        class added by steps 1..t (VOC 15-1 after step 5: 1-15 | 16-20). At step 0: ((), step 0's classes)."""
        return (self.old_model_ids(0), self.new_model_ids(0)) if t == 0 else \
            (self.added_model_ids(0, 0), self.added_model_ids(1, t))

    def _check(self, t: int) -> int:
        if not 0 <= t < len(self.steps):
            raise IndexError(f"step {t} outside 0..{len(self.steps) - 1}")
        return t


def parse_task(spec: str, num_classes: int, *, background_ids: Sequence[int] = (BACKGROUND,)) -> Task:
    """Build a ``Task`` from ``"B-S"``, ``"B-S1-S2-..."`` or an explicit ``"1,2,3|4,5"`` list.

    ``num_classes``: number of dataset ids ``0..num_classes-1`` including the background ids (VOC: 21).
    ``"B-S"``: the first B named ids form the base, then steps of S ids until all named ids are used
    (VOC: "15-5" = 1..15 then 16..20; "15-1" = 1..15 then five steps of one; "10-10"; "10-5"; "19-1").
    ``"B-S1-S2-..."``: the base, then one step per size given, which must use exactly the remaining ids
    (VOC: "15-2-2-1" = 1..15, 16-17, 18-19, 20).
    An explicit list may use any subset of the named ids, in any order.
    """
    background_ids = tuple(background_ids)
    named = [c for c in range(num_classes) if c not in background_ids]
    text = spec.replace(" ", "")
    if "|" in text or "," in text:
        try:
            steps = tuple(tuple(int(c) for c in part.split(",")) for part in text.split("|"))
        except ValueError:
            raise ValueError(f"task {spec!r}: expected comma-separated ids in '|'-separated steps") from None
        outside = [c for s in steps for c in s if c not in named]
        if outside:
            raise ValueError(f"task {spec!r}: ids {outside} are not named classes of a {num_classes}-id dataset")
        return Task(steps, background_ids)
    try:
        base, *sizes = (int(v) for v in text.split("-"))
    except ValueError:
        raise ValueError(f"task {spec!r}: expected 'B-S' (e.g. '15-5'), 'B-S1-S2-...' (e.g. '15-2-2-1') "
                         "or '1,2,3|4,5'") from None
    rest = len(named) - base
    if not sizes or base < 1 or min(sizes) < 1:
        raise ValueError(f"task {spec!r}: need a base and step sizes of at least 1, e.g. '15-5'")
    if len(sizes) == 1:
        if rest < sizes[0] or rest % sizes[0]:
            raise ValueError(f"task {spec!r} does not fit {len(named)} named classes: need the remaining "
                             f"{rest} classes in whole steps of {sizes[0]}")
        sizes = [sizes[0]] * (rest // sizes[0])
    elif sum(sizes) != rest:
        raise ValueError(f"task {spec!r} does not fit {len(named)} named classes: its steps add "
                         f"{'+'.join(map(str, sizes))} = {sum(sizes)} classes, but {rest} remain after the base")
    cuts = np.cumsum([0, base, *sizes]).tolist()
    return Task(tuple(tuple(named[a:b]) for a, b in zip(cuts[:-1], cuts[1:])), background_ids)


def present_classes(mask: np.ndarray, ignore_ids: Sequence[int] = (IGNORE_INDEX,)) -> set[int]:
    """Dataset ids present in an integer mask ``HxW``, void ids excluded."""
    return {int(c) for c in np.unique(mask)} - set(ignore_ids)


def select_images(present: Sequence[set[int]], task: Task, step: int, setting: str) -> list[int]:
    """Indices of the images used at ``step`` under the MiB protocols.

    ``present``: per image, the dataset ids in its mask. An image is kept if it contains a class of
    ``step``; under ``disjoint`` it must also contain no class of a later step (``overlap`` keeps those).
    """
    _check_setting(setting)
    new, future = set(task.step(step).new_classes), set(task.future_classes(step))
    return [i for i, ids in enumerate(present)
            if ids & new and (setting == "overlap" or not ids & future)]


def _check_setting(setting: str) -> None:
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")


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
