"""Protocol runs on labelled data: base (step 0), WILSS, FT, the other incremental methods (ILT, the offline
pseudo-label pipeline, MiB with masks) and the joint upper bound, as one table.

A ``Benchmark`` takes a labelled train/test pair, a ``Task`` (class order per step) and a setting, trains the
base model with pixel labels, runs the weak steps from tags derived from the masks, and evaluates every model on
the test split with the paper's old / new / all mIoU. ``run`` does step 1 only; ``run_sequence`` (in
``research.sequence``) runs every step of the task in turn and records each in a checkpoint history.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from models import build_segmenter
from models.segmenter import Segmenter
from research.protocol import Task, eval_label_map, label_map, present_classes, select_images, tags_from_mask
from wilss.config import (HRHF_REPLAY_IMAGES, ILT_OUTPUT_DISTILLATION, OptimConfig, PretrainConfig, TagsBaseConfig,
                          UpdateConfig)
from wilss.data import load_image, load_mask, read_camvid
from wilss.engine import Progress, seed_everything
from wilss.inference import evaluate
from wilss.masked_update import MaskedUpdate
from wilss.metrics import summarize
from wilss.offline import OfflinePipeline
from wilss.tags_base import train_tags_base
from wilss.trainer import WeakUpdate, pretrain
from wilss.training_data import PixelDataset, TagDataset
from wilss.transforms import Compose, Resize, train_transform

METHODS = ("wilss", "ft", "ilt", "offline", "mib", "joint", "hrhf")   # the rows ``Benchmark.run`` can add to the base
MAX_NEGATIVES = 4   # ``Benchmark``'s negatives: at most 4 for each of a step's images

log = logging.getLogger(__name__)


@dataclass
class LabelledSplit:
    """Images with masks in dataset ids, and the set of ids present in each mask."""

    images: list          # HxWx3 uint8 arrays or paths
    masks: list           # HxW uint8 arrays or paths
    present: list[set[int]]

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple], ignore_ids: Sequence[int] = (255,)) -> "LabelledSplit":
        """Reads every mask once for its classes; masks given as paths stay paths (VOC's 10582 would fill
        gigabytes), decoded again when a dataset loads them."""
        def present(mask) -> set[int]:
            return present_classes(mask if isinstance(mask, np.ndarray) else load_mask(mask), ignore_ids)

        with ThreadPoolExecutor(max_workers=8) as pool:  # PNG decoding releases the GIL
            found = list(pool.map(present, [m for _, m in pairs]))
        return cls([i for i, _ in pairs], [m for _, m in pairs], found)

    def subset(self, indices: Sequence[int]) -> "LabelledSplit":
        return LabelledSplit([self.images[i] for i in indices], [self.masks[i] for i in indices],
                             [self.present[i] for i in indices])

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class Protocol:
    """A dataset's class names by dataset id, the task, the setting and how images are sized for the net."""

    name: str
    dataset_classes: tuple[str, ...]
    task: Task
    setting: str = "disjoint"
    ignore_ids: tuple[int, ...] = (255,)
    resize: tuple[int, int] | None = None        # (h, w) every image is resized to, or None
    background_in_all: bool = True               # False where the dataset has no background pixels (CamVid)
    eval_batch_size: int = 8                     # 1 where test images differ in size (VOC)

    def model_class_names(self, step: int) -> list[str]:
        return ["background"] + [self.dataset_classes[c] for c in self.task.seen_classes(step)]


@dataclass
class Row:
    method: str
    old: float
    new: float
    all: float
    seconds: float
    per_class: list[float] = field(default_factory=list)


class Benchmark:
    """Runs base, WILSS, FT and joint for step 1 of ``protocol`` and collects their rows.

    ``arch_options``: extra ``build_segmenter`` keywords (e.g. ``width`` of 'tiny'); ``init_model``: called on
    every freshly built step-0 / joint network (e.g. to load ImageNet backbone weights). ``images_per_step``:
    at most this many tagged images per weak step, a seeded choice (``selection_seed``) among the protocol's.
    ``negatives``: each weak step also gets this share (of its images) of negatives, images of old classes only
    (none of this step's or a later one's), tagged as without the new classes, as a user adds them (the demo's
    samples: 24 for 40); 0, the protocol's own images alone.
    """

    def __init__(self, protocol: Protocol, train: LabelledSplit, test: LabelledSplit, *,
                 pretrain_cfg: PretrainConfig, update_cfg: UpdateConfig, arch: str = "tiny",
                 device: str | None = None, on_progress: Callable[[str, Progress], None] | None = None,
                 arch_options: dict | None = None, init_model: Callable[[Segmenter], None] | None = None,
                 images_per_step: int | None = None, selection_seed: int = 0, negatives: float = 0.0) -> None:
        self.protocol, self.train, self.test = protocol, train, test
        self.pretrain_cfg, self.update_cfg, self.arch, self.device = pretrain_cfg, update_cfg, arch, device
        self.on_progress = on_progress or (lambda name, p: None)
        self.arch_options, self.init_model = dict(arch_options or {}), init_model
        if images_per_step is not None and images_per_step < 1:
            raise ValueError(f"images_per_step must be >= 1, got {images_per_step}")
        if not 0 <= negatives <= MAX_NEGATIVES:
            raise ValueError(f"negatives must be a share between 0 and {MAX_NEGATIVES} of a step's images, got "
                             f"{negatives}")
        self.images_per_step, self.selection_seed, self.negatives = images_per_step, selection_seed, negatives
        self.rows: list[Row] = []

    # -- datasets --------------------------------------------------------------------------------------
    def _transform(self, cfg: OptimConfig):
        aug = train_transform(cfg.crop_size, cfg.scale_range, cfg.hflip)
        return Compose([Resize(self.protocol.resize), *aug.transforms]) if self.protocol.resize else aug

    def pixel_dataset(self, indices: Sequence[int], step: int) -> PixelDataset:
        p = self.protocol
        items = [(self.train.images[i], self.train.masks[i]) for i in indices]
        return PixelDataset(items, label_map=label_map(p.task, step, setting=p.setting, ignore_ids=p.ignore_ids),
                            transform=self._transform(self.pretrain_cfg))

    def tag_dataset(self, indices: Sequence[int], step: int) -> TagDataset:
        """Targets over the seen non-background classes of ``step`` (old columns used only when relaxed)."""
        seen = self.protocol.task.seen_classes(step)
        targets = np.stack([tags_from_mask(self.train.present[i], seen) for i in indices])
        images = [self.train.images[i] for i in indices]
        return TagDataset(images, targets, transform=self._transform(self.update_cfg))

    def test_dataset(self, step: int) -> PixelDataset:
        p = self.protocol
        transform = Resize(p.resize) if p.resize else None
        return PixelDataset(list(zip(self.test.images, self.test.masks)),
                            label_map=eval_label_map(p.task, step, ignore_ids=p.ignore_ids), transform=transform)

    # -- runs ------------------------------------------------------------------------------------------
    def base_indices(self) -> list[int]:
        return select_images(self.train.present, self.protocol.task, 0, self.protocol.setting)

    def step_indices(self, step: int = 1) -> list[int]:
        """The tagged images of weak step ``step``: the protocol's choice, then at most ``images_per_step`` of
        them drawn without replacement by a generator seeded with (``selection_seed``, ``step``), then
        ``negatives`` of them as many old-only images more, drawn by one seeded with (``selection_seed``, ``step``,
        1)."""
        indices = select_images(self.train.present, self.protocol.task, step, self.protocol.setting)
        if self.images_per_step is not None and len(indices) > self.images_per_step:
            rng = np.random.default_rng([self.selection_seed, step])
            indices = sorted(int(i) for i in rng.choice(indices, self.images_per_step, replace=False))
        wanted = round(self.negatives * len(indices)) if step > 0 else 0
        if not wanted:
            return indices
        task = self.protocol.task
        later = set().union(*(task.step(t).new_classes for t in range(step, task.num_steps)))
        pool = [i for i, ids in enumerate(self.train.present) if ids and not ids & later]
        if len(pool) < wanted:
            raise ValueError(f"step {step}: {wanted} negatives asked for, only {len(pool)} old-only images")
        rng = np.random.default_rng([self.selection_seed, step, 1])
        return sorted(indices + [int(i) for i in rng.choice(pool, wanted, replace=False)])

    def joint_indices(self, last_step: int) -> list[int]:
        """Every image of steps 0..``last_step`` (all of them, whatever ``images_per_step``)."""
        p = self.protocol
        return sorted(set().union(*(select_images(self.train.present, p.task, t, p.setting)
                                    for t in range(last_step + 1))))

    def train_base(self) -> Segmenter:
        return self.pixel_model("base", self.base_indices(), step=0)

    def pixel_model(self, name: str, indices: Sequence[int], step: int) -> Segmenter:
        seed_everything(self.pretrain_cfg.seed)  # the initial weights too, so a run repeats exactly
        model = build_segmenter(arch=self.arch, num_classes=self.protocol.task.num_model_classes(step),
                                **self.arch_options)
        if self.init_model is not None:
            self.init_model(model)
        for progress in pretrain(model, self.pixel_dataset(indices, step), self.pretrain_cfg, device=self.device):
            self.on_progress(name, progress)
        return model.eval()

    def tags_model(self, name: str, cfg: TagsBaseConfig) -> Segmenter:
        """Step 0 from image tags alone (``wilss.tags_base``) on the base images, with tags read from their masks:
        the same network, initialisation and classes as ``train_base``'s."""
        seed_everything(cfg.seed)
        model = build_segmenter(arch=self.arch, num_classes=self.protocol.task.num_model_classes(0),
                                **self.arch_options)
        if self.init_model is not None:
            self.init_model(model)
        indices = self.base_indices()
        seen = self.protocol.task.seen_classes(0)
        targets = np.stack([tags_from_mask(self.train.present[i], seen) for i in indices])
        dataset = TagDataset([self.train.images[i] for i in indices], targets, transform=self._transform(cfg))
        for progress in train_tags_base(model, dataset, cfg, device=self.device):
            self.on_progress(name, progress)
        return model.eval()

    def weak_step(self, name: str, base: Segmenter, cfg: UpdateConfig, step: int = 1) -> Segmenter:
        update = WeakUpdate(base, self.tag_dataset(self.step_indices(step), step),
                            num_new=len(self.protocol.task.step(step).new_classes), cfg=cfg, device=self.device,
                            class_names=self.protocol.model_class_names(step - 1))
        for progress in update.run():
            self.on_progress(name, progress)
        return update.model

    def masked_step(self, name: str, base: Segmenter, cfg: UpdateConfig, step: int = 1) -> Segmenter:
        """MiB with masks: the step's images with pixel labels of the step's classes only (old classes background,
        MiB's protocol), ``cfg``'s schedule and augmentation."""
        p = self.protocol
        lut = label_map(p.task, step, setting=p.setting, ignore_ids=p.ignore_ids, keep_old=False)
        items = [(self.train.images[i], self.train.masks[i]) for i in self.step_indices(step)]
        update = MaskedUpdate(base, PixelDataset(items, label_map=lut, transform=self._transform(cfg)),
                              num_new=len(p.task.step(step).new_classes), cfg=cfg, device=self.device)
        for progress in update.run():
            self.on_progress(name, progress)
        return update.model

    def offline_step(self, name: str, base: Segmenter, cfg: UpdateConfig, step: int = 1) -> Segmenter:
        """The offline pipeline (``wilss.offline``) on the step's tagged images; pseudo-labels at the size the network
        trains at (the protocol's ``resize``, if any)."""
        tagged = self.tag_dataset(self.step_indices(step), step)
        if self.protocol.resize:
            size = self.protocol.resize
            tagged = TagDataset([Resize(size)(load_image(i) if not isinstance(i, np.ndarray) else i)[0]
                                 for i in tagged.images], tagged.targets,
                                transform=train_transform(cfg.crop_size, cfg.scale_range, cfg.hflip))
        pipeline = OfflinePipeline(base, tagged, num_new=len(self.protocol.task.step(step).new_classes), cfg=cfg,
                                   device=self.device, pixel_transform=train_transform(cfg.crop_size, cfg.scale_range,
                                                                                       cfg.hflip))
        for progress in pipeline.run():
            self.on_progress(name, progress)
        return pipeline.model

    def method_config(self, method: str, step: int = 1) -> UpdateConfig:
        """The weak step's settings of ``method``: 'wilss' as configured, with automatic old-class tags where a
        class of ``step`` is in every one of its images (single-class steps: no negatives, see
        ``wilss.tags.settle_negatives``); 'ft' (fine-tuning on the localizer's pseudo-labels) without the old
        model's prior (l_LOC) and targets (Eq. 7), and so without old-class tags from it."""
        if method == "ft":
            return replace(self.update_cfg, old_model_prior=False, old_model_targets=False, **NO_REPLAY)
        if method == "ilt":   # WILSS + ILT's output distillation, at the weight of MiB's ILT runs
            return replace(self.method_config("wilss", step), output_distillation=ILT_OUTPUT_DISTILLATION)
        if method == "hrhf":   # the --replay-* settings (or HRHF_REPLAY_IMAGES) on the wilss row's
            return hrhf_config(self.update_cfg, self.method_config("wilss", step))
        if method != "wilss":
            raise ValueError(f"no weak-step settings for method {method!r}; use 'wilss', 'ft', 'ilt' or 'hrhf'")
        new = self.protocol.task.step(step).new_classes
        tags = np.array([[c in self.train.present[i] for c in new] for i in self.step_indices(step)], dtype=bool)
        if len(tags) and tags.all(axis=0).any() and not (self.update_cfg.relaxed or self.update_cfg.auto_old_tags):
            log.info("step %d: a new class is in every step image (no negatives): automatic old-class tags", step)
            return replace(self.update_cfg, auto_old_tags=True, **NO_REPLAY)
        return replace(self.update_cfg, **NO_REPLAY)

    def score(self, name: str, model: Segmenter, seconds: float, step: int = 1, *, keep: bool = True) -> Row:
        """The test figures after ``step`` in the paper's columns (``Task.paper_columns``); ``keep``: add the row
        to ``self.rows``."""
        p = self.protocol
        matrix = evaluate(model, self.test_dataset(step), num_classes=p.task.num_model_classes(step),
                          batch_size=p.eval_batch_size, device=self.device)
        iou = matrix.iou()
        figures = summarize(iou, *p.task.paper_columns(step), include_background=p.background_in_all)
        row = Row(name, figures["old"], figures["new"], figures["all"], seconds,
                  [float(v) * 100 for v in iou.tolist()])
        if keep:
            self.rows.append(row)
        return row

    def run(self, *, base: Segmenter | None = None, methods: Sequence[str] = ("wilss", "ft", "joint")) -> list[Row]:
        start = time.perf_counter()
        base = base if base is not None else self.train_base()
        if not any(r.method == "base" for r in self.rows):   # a caller may have scored (and saved) it already
            self.score("base", base, time.perf_counter() - start)
        runs = {
            "wilss": lambda: self.weak_step("wilss", base, self.method_config("wilss", 1)),
            "ft": lambda: self.weak_step("ft", base, self.method_config("ft")),
            "ilt": lambda: self.weak_step("ilt", base, self.method_config("ilt", 1)),
            "offline": lambda: self.offline_step("offline", base, self.method_config("wilss", 1)),
            "mib": lambda: self.masked_step("mib", base, self.update_cfg),
            "joint": lambda: self.pixel_model("joint", self.joint_indices(1), step=1),
            "hrhf": lambda: self.weak_step("hrhf", base, self.method_config("hrhf", 1)),
        }
        for name in methods:
            start = time.perf_counter()
            model = runs[name]()
            self.score(name, model, time.perf_counter() - start)
        return self.rows


NO_REPLAY = {"replay_images": 0, "replay_classes": ""}   # only the 'hrhf' row replays


def hrhf_config(recipe: UpdateConfig, wilss: UpdateConfig) -> UpdateConfig:
    """The 'hrhf' row: the ``wilss`` row's settings with the replay settings of ``recipe`` (``--replay-*``), its
    images ``HRHF_REPLAY_IMAGES`` where it has none."""
    return replace(wilss, replay_images=recipe.replay_images or HRHF_REPLAY_IMAGES,
                   replay_classes=recipe.replay_classes, replay_steps=recipe.replay_steps,
                   replay_weight=recipe.replay_weight)


def format_table(rows: Sequence[Row], title: str) -> str:
    """Markdown table: one row per method, old / new / all mIoU (%) and wall time."""
    lines = [f"### {title}", "", "| method | old mIoU | new mIoU | all mIoU | train time (s) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r.method} | {r.old:.1f} | {r.new:.1f} | {r.all:.1f} | {r.seconds:.0f} |" for r in rows]
    return "\n".join(lines)


def format_per_class(rows: Sequence[Row], class_names: Sequence[str]) -> str:
    head = "| method | " + " | ".join(class_names) + " |"
    lines = [head, "| --- |" + " ---: |" * len(class_names)]
    lines += [f"| {r.method} | " + " | ".join("nan" if np.isnan(v) else f"{v:.1f}" for v in r.per_class) + " |"
              for r in rows]
    return "\n".join(lines)


def camvid_splits(root: Path) -> tuple[LabelledSplit, LabelledSplit]:
    """CamVid's train and test splits (masks in CamVid ids, 11 = unlabelled)."""
    return (LabelledSplit.from_pairs(read_camvid(root, "train"), ignore_ids=(11,)),
            LabelledSplit.from_pairs(read_camvid(root, "test"), ignore_ids=(11,)))
