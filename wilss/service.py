"""The product's front door: the few objects a demo, the app and the CLI need (the segment-anything anchor).

    from wilss import service
    base = service.load("models/default_base.pt")                 # or "torchvision:deeplabv3_resnet50"
    request = service.UpdateRequest(base, service.read_tagged_folder("samples/"), [("arrow", "#ff8000")],
                                    cfg=service.DEMO_UPDATE)
    run = service.run_update(request)                             # checks the request first (UpdateRequest.validate)
    for progress in run: print(progress.iteration, progress.total_iterations, progress.losses)
    service.save_checkpoint(run.checkpoint(), "arrow.pt")

``python -m wilss add-class`` (``wilss.cli_update``) and the app's update (``app.update``) translate their inputs into
an ``UpdateRequest`` and iterate ``run_update``; ``score`` serves ``evaluate``, ``add-class --eval-*`` and the app's
Evaluate tab; ``export_onnx`` serves ``python -m wilss export`` and the app's export button. Neither face holds
method logic.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from models import build_segmenter
from models.imagenet import IMAGENET_NETS, load_imagenet_encoder
from wilss.bases import open_model
from wilss.checkpoint import (MAX_INPUT_SIDE, Checkpoint, HistoryEntry, default_colours,  # noqa: F401  (the API)
                              save_checkpoint)
from wilss.config import TagsBaseConfig, UpdateConfig, to_dict
from wilss.conventions import BACKGROUND_NAME, extend_colours, hex_to_rgb
from wilss.data import DataError
from wilss.distributed import current_world
from wilss.engine import Progress, Snapshot, finished_model, seed_everything  # noqa: F401  (part of the API)
from wilss.hrhf import replay_class_ids
from wilss.export import ExportError, export_onnx  # noqa: F401  (part of the API)
from wilss.inference import Prediction, Predictor  # noqa: F401  (part of the API)
from wilss.recipes import DEMO_UPDATE, TAGS_BASE  # noqa: F401  (the CPU-sized settings of the samples)
from wilss.resume import Resumer
from wilss.runtime import RuntimeConfig
from wilss.scoring import EvalSet, Scores, mask_eval_set, score  # noqa: F401  (part of the API)
from wilss.tags import TaggedSet, check_new_classes, read_tagged_folder, settle_negatives  # noqa: F401
from wilss.trainer import WeakUpdate
from wilss.masked_update import MaskedUpdate
from wilss.methods import OFFLINE, WILSON, OfflineStep, check_method, method_name, settle_background
from wilss.tags_base import TagsBaseTraining, check_tags_only
from wilss.training_data import fitted_image, masked_training_set, tagged_training_set

log = logging.getLogger(__name__)

Colour = Union[str, Sequence[int], None]   # '#rrggbb', (r, g, b), or None: a free colour far from those in use

# The UpdateConfig fields both faces offer (CLI flags in wilss.cli_common, the app's advanced panel in app.update);
# tests/test_service.py holds both to this list.
UPDATE_OPTIONS = ("epochs", "warmup_epochs", "batch_size", "crop_size", "lr_backbone", "lr_head", "lr_localizer",
                  "localizer_channels", "localizer_detail", "focal_gamma", "focal_lambda", "alpha",
                  "feature_distillation", "seed", "mib_init", "relaxed", "auto_old_tags", "drop_unlocalized",
                  "pamr_self_training", "pamr_refine_stride", "pamr_refine_iterations", "pamr_refine_fine_iterations",
                  "output_distillation", "freeze_encoder", "unbiased_kd", "new_on_old_background", "no_background",
                  "old_at_head_resolution", "freeze_encoder_bn",
                  "region_prior", "region_segments", "region_scale", "region_weight", "replay_images", "replay_classes",
                  "replay_steps", "replay_weight")


def load(source) -> Checkpoint:
    """A checkpoint file, or a pretrained base 'torchvision:NAME' (``wilss.bases``). Raises ``CheckpointError``."""
    return open_model(source)


# ------------------------------------------------------------------------------------------------ request
@dataclass(frozen=True)
class UpdateRequest:
    """One add-class step as asked for: nothing is checked until ``validate``."""

    base: Checkpoint                         # the model to extend (never changed)
    tagged: TaggedSet                        # images with image-level tags (empty tags: a negative)
    classes: Sequence[tuple[str, Colour]]    # the new classes, in id order, each with its colour
    cfg: UpdateConfig = UpdateConfig()
    auto_negatives: bool = True              # a class without negatives: old classes' tags from the model (note)
    base_name: str = ""                      # how the base is known (a path, a version): recorded in the history
    source: str = ""                         # where the images came from: recorded in the history
    rejected: Optional[tuple[str, ...]] = None   # images left out after review: recorded when given
    tool: Optional[str] = None               # who made it ('app'): recorded when given
    masks: Optional[tuple] = None            # a mask file per image (wilss.step_masks): a MiB step, not WILSON's
    input_side: Optional[int] = None         # the input scale to train at (longer side, px); None: the base's
    method: str = WILSON                     # or 'offline' (wilss.methods); with masks the step is MiB's
    no_background: Optional[bool] = None     # set by the user; None: on for a base without background, else cfg's

    def validate(self) -> UpdatePlan:
        """The checked plan. Raises ``DataError`` for an empty or existing class name, a bad colour, no images,
        unknown tags or a class without positives (``wilss.tags.check_new_classes``). With ``auto_negatives``, a
        class without negatives switches on automatic old-class tags; a network without a detail map switches
        ``localizer_detail`` off; the plan's ``note`` says so."""
        if not self.classes:
            raise DataError("A new class name is empty. Give every new class a name.")
        names, colours = [], []
        for name, colour in self.classes:
            name = (name or "").strip()
            if not name:
                raise DataError("A new class name is empty. Give every new class a name.")
            if isinstance(colour, str):
                try:
                    colour = hex_to_rgb(colour)
                except ValueError as err:
                    raise DataError(f"The colour of '{name}': {err}.") from None
            names.append(name)
            colours.append(None if colour is None else tuple(int(v) for v in colour))
        if self.input_side is not None and not 16 <= self.input_side <= MAX_INPUT_SIDE:
            raise DataError(f"The input scale must be 16-{MAX_INPUT_SIDE} px (the images' longer side), got "
                            f"{self.input_side}.")
        check_new_classes(self.tagged, names, self.base.class_names[1:])
        check_method(self.method, masks=self.masks, cfg=self.cfg)
        if self.cfg.replay_images:   # HRHF: the classes to invert must be the model's, checked before anything runs
            if self.masks is not None:
                raise DataError("HRHF replay (replay_images) is an option of the weak step, not of the step with "
                                "masks.")
            try:
                replay_class_ids(self.cfg.replay_classes, self.base.class_names, len(self.base.class_names))
            except ValueError as err:
                raise DataError(f"{str(err)[0].upper()}{str(err)[1:]}.") from None
        weak = self.masks is None   # l_CLS's negatives and the pseudo-labels' background: not MiB's step on masks
        cfg, note = settle_negatives(self.tagged, names, self.cfg) if weak and self.auto_negatives else (self.cfg, "")
        cfg, note = settle_background(self.base.background, cfg, self.no_background, note=note) if weak else (cfg, note)
        if cfg.localizer_detail and self.base.model.detail_key is None:   # a recipe's default, for another network
            cfg = replace(cfg, localizer_detail=False)
            note = " ".join(filter(None, [note, f"The {self.base.model.config.get('arch')} network has no detail "
                                                "map: the localizer reads its last feature map only."]))
        return UpdatePlan(self, names, extend_colours(self.base.colours, colours), cfg, note)


@dataclass(frozen=True)
class UpdatePlan:
    """A checked ``UpdateRequest``: its class names and colours resolved, the configuration to train with."""

    request: UpdateRequest
    new_names: list[str]
    new_colours: np.ndarray                  # N x 3 uint8
    cfg: UpdateConfig                        # the request's, with automatic old-class tags when the note says so
    note: str = ""                           # what the check decided for the user

    @property
    def base(self) -> Checkpoint:
        return self.request.base

    @property
    def tagged(self) -> TaggedSet:
        return self.request.tagged

    @property
    def method(self) -> str:
        """'wilson', 'offline' or 'mib' (a step with masks): what the history records."""
        return method_name(self.request.method, self.request.masks)

    @property
    def input_side(self) -> int:
        """The input scale of the step and of its result: the request's, else the base's recorded one."""
        return self.request.input_side or self.base.input_side

    @property
    def columns(self) -> list[str]:
        """Target columns: the old non-background classes, then the new ones (``WeakUpdate``'s order)."""
        return list(self.base.class_names[1:]) + list(self.new_names)

    @property
    def class_names(self) -> list[str]:
        return list(self.base.class_names) + list(self.new_names)

    @property
    def colours(self) -> np.ndarray:
        return np.vstack([self.base.colours, self.new_colours]).astype(np.uint8)

    def describe(self) -> str:
        """One line: what is added to what, from how many images."""
        counts, tagged = self.tagged.counts(), self.tagged
        without_new = sum(not (tags & set(self.new_names)) for tags in tagged.tags)
        return (f"adding {', '.join(f'{n} ({counts[n]} images)' for n in self.new_names)} to "
                f"{self.request.base_name} ({len(self.base.class_names) - 1} classes) from {len(tagged)} images, "
                f"{without_new} showing none of the new classes; {self.cfg.epochs} epochs " +
                {WILSON: f"({self.cfg.warmup_epochs} warm-up)", "mib": "of MiB on their masks",
                 OFFLINE: "of the localizer from the tags, then as many of MiB on its frozen pseudo-labels (offline "
                          "pipeline)"}[self.method] +
                f"; images at {self.input_side} px (longer side), crops {self.cfg.crop_size}")


# --------------------------------------------------------------------------------------------------- run
class _Run:
    """Iterating a run trains it, one ``Progress`` per iteration, and times it: ``last`` is the latest progress,
    ``seconds`` the wall time since the run was made (set when iteration ends)."""

    _start: float
    last: Optional[Progress]
    seconds: float

    def _progress(self) -> Iterator[Progress]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Progress]:
        try:
            for progress in self._progress():
                self.last = progress
                yield progress
        finally:
            self.seconds = time.perf_counter() - self._start

    @property
    def finished(self) -> bool:
        return self.last is not None and self.last.iteration == self.last.total_iterations


class UpdateRun(_Run):
    """An update under way: iterating it trains, one ``Progress`` per iteration (stop iterating to cancel: the base
    is untouched); after the last, ``checkpoint()`` is the result. ``update`` (the ``WeakUpdate``; a ``MaskedUpdate``
    with masks, an ``OfflineStep`` for the offline pipeline) and ``dataset`` stay for pictures and pseudo-label
    exports (WILSON's step), also between iterations."""

    def __init__(self, plan: UpdatePlan, *, device=None, runtime: Optional[RuntimeConfig] = None,
                 resumer: Optional[Resumer] = None, snapshot_indices: Sequence[int] = (), snapshot_every: int = 0,
                 sync_bn: bool = False) -> None:
        self.plan, self.resumer = plan, resumer
        self._start = time.perf_counter()
        if plan.request.masks is not None:   # MiB on the user's masks: no CAMs, no pseudo-labels
            self.dataset = masked_training_set(list(zip(plan.tagged.paths, plan.request.masks)), plan.cfg,
                                               side=plan.input_side)
            self.update = MaskedUpdate(plan.base.model, self.dataset, num_new=len(plan.new_names), cfg=plan.cfg,
                                       device=device, runtime=runtime)
        else:
            self.dataset = tagged_training_set(plan.tagged, plan.columns, plan.cfg, side=plan.input_side)
        if plan.method == OFFLINE:   # the localizer's pseudo-labels, frozen, then MiB on them (no CAMs shown)
            self.update = OfflineStep(plan.base.model, self.dataset, num_new=len(plan.new_names), cfg=plan.cfg,
                                      device=device, runtime=runtime)
        elif plan.method == WILSON:
            self.update = WeakUpdate(plan.base.model, self.dataset, num_new=len(plan.new_names), cfg=plan.cfg,
                                     device=device, snapshot_items=[self.item(i) for i in snapshot_indices],
                                     snapshot_every=snapshot_every, sync_bn=sync_bn, runtime=runtime,
                                     class_names=plan.base.class_names)
        self.last, self.seconds = None, 0.0   # seconds: this process's training wall time (set when iteration ends)

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Training image ``index`` as the update sees it (``HxWx3`` uint8 at the input scale), with its targets
        (``K-1`` multi-hot over ``plan.columns``)."""
        return fitted_image(self.plan.tagged.paths[index], self.plan.input_side), self.dataset.targets[index]

    def _progress(self) -> Iterator[Progress]:
        return self.update.run(self.resumer)

    @property
    def train_seconds(self) -> float:
        """Training time over every run of this update (a resumed one included)."""
        return self.resumer.elapsed_s if self.resumer is not None else self.seconds

    def checkpoint(self, metrics: Optional[dict] = None) -> Checkpoint:
        """The updated checkpoint (its model ``engine.finished_model``: on the CPU the run's own), its history
        extended by this step's ``HistoryEntry``; ``metrics`` (e.g. ``Scores.history_metrics``) join the time and the
        final losses."""
        if not self.finished:
            raise RuntimeError("the update has not finished, there is no result")
        plan, request = self.plan, self.plan.request
        replay = getattr(self.update, "replay_seconds", 0.0)   # HRHF's synthesis, part of train_seconds
        figures = {"train_seconds": round(self.train_seconds, 1), **({"replay_seconds": round(replay, 1)} if replay
                                                                      else {}),
                   **{f"final_loss_{k}": round(v, 4) for k, v in self.last.losses.items()}, **(metrics or {})}
        world = current_world()
        entry = HistoryEntry(
            "add-class", list(plan.new_names), len(plan.tagged), to_dict(plan.cfg), figures,
            step=len(plan.base.history), source=request.source, base_checkpoint=request.base_name,
            negatives=plan.tagged.num_negatives, tag_counts=plan.tagged.counts(),
            rejected=list(request.rejected) if request.rejected is not None else None, tool=request.tool,
            processes=world.world_size if world.world_size > 1 else None,
            resumed_from_iteration=(self.resumer.resumed_from or None) if self.resumer is not None else None,
            input_side=plan.input_side, extra={"method": plan.method} if plan.method != WILSON else {})
        model = finished_model(self.update.model)
        return replace(plan.base, model=model, class_names=plan.class_names, colours=plan.colours,   # its background
                       history=[*plan.base.history, entry.to_dict()], input_side=plan.input_side)


def run_update(request: Union[UpdateRequest, UpdatePlan], *, device=None, runtime: Optional[RuntimeConfig] = None,
               resumer: Optional[Resumer] = None, snapshot_indices: Sequence[int] = (), snapshot_every: int = 0,
               sync_bn: bool = False) -> UpdateRun:
    """Start one step: WILSON's, the offline pipeline or MiB with masks (``wilss.methods``; the request is
    validated first, a plan is taken as it is). ``device``: 'auto' / None
    (CUDA when available), 'cpu', 'cuda:N'...; ``runtime``: how it runs (``wilss.runtime``, default: the optimised
    path for the device); ``resumer``: periodic resumable snapshots (``wilss.resume``); ``snapshot_indices``: training
    images whose CAMs, pseudo-labels and predictions come with the progress every ``snapshot_every`` iterations (and
    ``run.update.snapshots()`` on demand); ``sync_bn``: batch-norm over the global batch under torchrun."""
    plan = request.validate() if isinstance(request, UpdateRequest) else request
    return UpdateRun(plan, device=device, runtime=runtime, resumer=resumer, snapshot_indices=snapshot_indices,
                     snapshot_every=snapshot_every, sync_bn=sync_bn)


# ------------------------------------------------------------------------------------ a base from tags alone
@dataclass(frozen=True)
class TagsBaseRequest:
    """Step 0 from image tags alone (``wilss.tags_base``: a new model, one class per tag, plus background), as
    ``pretrain --tags`` and the app's "start from tags alone" ask for it; nothing is checked until ``validate``."""

    tagged: TaggedSet                        # images with their tags (untagged: negatives)
    cfg: TagsBaseConfig = TAGS_BASE
    arch: str = "efficientnet_lite0"         # a network of ``models`` (``models.build_segmenter``)
    encoder: str = "imagenet"                # 'imagenet' (the installed weights), 'none', or what ``init`` loads
    init: Optional[Callable] = None          # init(model) starts the encoder (e.g. from a pretext network)
    source: str = ""                         # where the images came from: recorded in the history
    tool: Optional[str] = None               # who made it ('app'): recorded when given

    def validate(self) -> TagsBasePlan:
        """The checked plan. Raises ``DataError`` for no tagged image, a 'background' tag, tags on every image
        (``wilss.tags_base.check_tags_only``), ImageNet weights for a network without them or not installed."""
        classes, note = check_tags_only(self.tagged)
        if self.encoder == "imagenet" and self.init is None and self.arch not in IMAGENET_NETS:
            raise DataError(f"The {self.arch} network has no ImageNet weights; use one of {', '.join(IMAGENET_NETS)} "
                            "or start it from scratch.")
        return TagsBasePlan(self, [BACKGROUND_NAME, *classes], default_colours(len(classes) + 1), note)


@dataclass(frozen=True)
class TagsBasePlan:
    """A checked ``TagsBaseRequest``: the classes it learns (background first) and their colours."""

    request: TagsBaseRequest
    class_names: list[str]
    colours: np.ndarray                      # K x 3 uint8
    note: str = ""

    tagged = property(lambda self: self.request.tagged)
    cfg = property(lambda self: self.request.cfg)
    new_names = property(lambda self: self.class_names[1:])   # every class is new (the page's CAM columns)

    def describe(self) -> str:
        counts = self.tagged.counts()
        return (f"learning {', '.join(f'{c} ({counts[c]} images)' for c in self.new_names)} from the tags of "
                f"{len(self.tagged)} images ({self.tagged.num_negatives} untagged) on {self.request.arch} "
                f"(encoder: {self.request.encoder}); {self.cfg.epochs} epochs ({self.cfg.warmup_epochs} of l_CLS "
                "alone)")


class TagsBaseRun(_Run):
    """A base from tags under way (``UpdateRun``'s interface): iterating trains, one ``Progress`` per iteration
    (stop iterating to cancel); after the last, ``checkpoint()`` is the new model, its history one 'pretrain' step
    whose settings say ``supervision: tags``."""

    def __init__(self, plan: TagsBasePlan, *, device=None, snapshot_indices: Sequence[int] = ()) -> None:
        request, self.plan = plan.request, plan
        self._start = time.perf_counter()
        seed_everything(plan.cfg.seed)
        model = build_segmenter(arch=request.arch, num_classes=len(plan.class_names))
        try:
            if request.init is not None:
                request.init(model)
            elif request.encoder == "imagenet":
                load_imagenet_encoder(model)
        except ValueError as err:   # missing weights (the message names the package), a mismatched encoder
            raise DataError(str(err)) from None
        self.dataset = tagged_training_set(plan.tagged, plan.new_names, plan.cfg)
        self.update = TagsBaseTraining(model, self.dataset, plan.cfg, device=device,
                                       snapshot_items=[self.item(i) for i in snapshot_indices])
        self.last, self.seconds = None, 0.0

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Training image ``index`` fitted to the crop size (``HxWx3`` uint8), with its ``K-1`` multi-hot tags."""
        return fitted_image(self.plan.tagged.paths[index], self.plan.cfg.crop_size), self.dataset.targets[index]

    def _progress(self) -> Iterator[Progress]:
        return self.update.run()

    def checkpoint(self) -> Checkpoint:
        """The new model (``engine.finished_model``) with its step-0 history entry."""
        if not self.finished:
            raise RuntimeError("the base has not finished training, there is no result")
        plan, request = self.plan, self.plan.request
        settings = {"supervision": "tags", "arch": request.arch, "encoder": request.encoder, **to_dict(plan.cfg)}
        figures = {"train_seconds": round(self.seconds, 1),
                   **{f"final_loss_{k}": round(v, 4) for k, v in self.last.losses.items()}}
        entry = HistoryEntry("pretrain", list(plan.new_names), len(plan.tagged), settings, figures, step=0,
                             source=request.source, negatives=plan.tagged.num_negatives,
                             tag_counts=plan.tagged.counts(), tool=request.tool)
        model = finished_model(self.update.model)
        return Checkpoint(model=model, class_names=list(plan.class_names), colours=plan.colours,
                          history=[entry.to_dict()], input_side=plan.cfg.crop_size)   # its images' scale


def run_tags_base(request: Union[TagsBaseRequest, TagsBasePlan], *, device=None,
                  snapshot_indices: Sequence[int] = ()) -> TagsBaseRun:
    """Start training a base from tags alone (the request is validated first). Raises ``DataError``."""
    plan = request.validate() if isinstance(request, TagsBaseRequest) else request
    return TagsBaseRun(plan, device=device, snapshot_indices=snapshot_indices)


def with_settings(base: UpdateConfig, values: dict) -> UpdateConfig:
    """``base`` with ``values`` (typed already) for some of its fields. Raises ``ValueError`` with the config's own
    reason (a bound of ``UPDATE_LIMITS``, warm-up >= epochs...)."""
    unknown = sorted(set(values) - {f.name for f in fields(UpdateConfig)})
    if unknown:
        raise ValueError(f"unknown update setting(s): {', '.join(unknown)}")
    return replace(base, **values)


__all__ = ["Checkpoint", "DEMO_UPDATE", "EvalSet", "ExportError", "HistoryEntry", "Prediction", "Predictor",
           "Progress", "Scores", "Snapshot", "TAGS_BASE", "TaggedSet", "TagsBaseConfig", "TagsBasePlan",
           "TagsBaseRequest", "TagsBaseRun", "UPDATE_OPTIONS", "UpdateConfig", "UpdatePlan", "UpdateRequest",
           "UpdateRun", "export_onnx", "load", "mask_eval_set", "read_tagged_folder", "run_tags_base", "run_update",
           "save_checkpoint", "score", "with_settings"]
