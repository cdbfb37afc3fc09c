"""One add-class update as the app runs it: the page's inputs become a ``wilss.service.UpdateRequest`` (the one
``python -m wilss add-class`` builds from its flags) and ``run_update`` trains it, plus what a page needs: cancel
between iterations, time-throttled live snapshots of a few images, and rendering any training image's CAM and
pseudo-label on demand for the Review tab (also while the update runs).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

from app.serving import compute
from app.session_files import shared_versions
from wilss.checkpoint import Checkpoint
from wilss.config import UPDATE_LIMITS, UpdateConfig
from wilss.data import DataError
from wilss.demo import watch_indices  # noqa: F401  (the app's and the demo benchmark's choice)
from wilss.engine import Progress, Snapshot, resolve_device
from wilss.methods import OFFLINE, WILSON
from models.imagenet import IMAGENET_NETS
from wilss.recipes import DEMO_UPDATE, TAGS_BASE
from wilss.service import (TagsBasePlan, TagsBaseRequest, UpdatePlan, UpdateRequest, UpdateRun, run_tags_base,
                           run_update, with_settings)
from wilss.tags import TaggedSet
from wilss.trainer import WeakUpdate

log = logging.getLogger(__name__)

# The settings offered under "advanced": (UpdateConfig field, label, help). Types come from the dataclass.
ADVANCED = (
    ("epochs", "epochs", "training epochs over the tagged images"),
    ("warmup_epochs", "warm-up epochs", "first epochs train only the localizer (l_CLS + l_LOC), then l_SEG joins"),
    ("batch_size", "batch size", "images per iteration"),
    ("crop_size", "crop size (px)", "random crops of the images, resized first to the base's input scale"),
    ("lr_backbone", "learning rate, backbone", "paper: 1e-3"),
    ("lr_head", "learning rate, head and classifier", "paper: 1e-2"),
    ("lr_localizer", "learning rate, localizer", "paper: 1e-2"),
    ("localizer_channels", "localizer channels", "hidden channels of the localizer (paper: 256)"),
    ("focal_gamma", "gamma (Eq. 2)", "focal penalty exponent of the aggregation"),
    ("focal_lambda", "lambda (Eq. 2)", "focal penalty offset of the aggregation"),
    ("alpha", "alpha (Eq. 6)", "weight of the hard (one-hot) pseudo-label against the soft one"),
    ("feature_distillation", "feature distillation weight", "MSE between old and new encoder features; 0 = off"),
    ("seed", "seed", "random seed of initialisation, shuffling and augmentation"),
    ("mib_init", "MiB initialisation", "new classifier rows start from the background row"),
    ("relaxed", "relaxed setting", "l_CLS over all classes, reading tags of classes the model knows"),
    ("drop_unlocalized", "drop unlocalized images", "weight 0 in l_SEG for images whose pseudo-label misses a tag"),
    ("pamr_self_training", "PAMR self-training", "reference-code extra: self-train the localizer on PAMR masks"),
    ("pamr_refine_stride", "PAMR-refined pseudo-labels: stride",
     "beyond the paper: refine the pseudo-labels along the image's edges at 1/S of its size; 0 = off"),
    ("pamr_refine_iterations", "PAMR-refined pseudo-labels: iterations", "PAMR iterations of that refinement"),
    ("pamr_refine_fine_iterations", "PAMR-refined pseudo-labels: full-resolution iterations",
     "coarse to fine: then this many iterations at the image's full size, and l_SEG there; 0 = off"),
    ("auto_old_tags", "automatic old-class tags",
     "beyond the paper: relaxed l_CLS with the old classes' tags read from the model's confident predictions "
     "(switched on by itself when a new class has no negatives)"),
    ("localizer_detail", "localizer reads the detail map",
     "beyond the paper: the localizer also reads the encoder's stride-4 map (tiny network): sharper CAMs"),
    ("new_on_old_background", "new classes on old background only",
     "beyond the paper: a new class's pseudo-label is capped by the old model's background probability"),
    ("no_background", "no background class in the data",
     "beyond the paper: every pixel is a named class, so the old background goes to the image's tagged new classes"),
    ("old_at_head_resolution", "old model's targets at its head's resolution",
     "beyond the paper: the old targets are not pooled to the encoder's last map, so thin old classes stay"),
    ("freeze_encoder_bn", "frozen encoder batch-norm statistics",
     "beyond the paper: the encoder's batch-norm layers keep the base model's statistics while its weights train"),
    ("region_prior", "region prior (superpixels)",
     "beyond the paper: average the pseudo-labels over each superpixel of the image; none = off"),
    ("region_segments", "region prior: SLIC regions", "about this many superpixels per image"),
    ("region_scale", "region prior: Felzenszwalb scale", "the larger, the fewer and bigger regions"),
    ("region_weight", "region prior: weight", "W x the region means + (1 - W) x the pseudo-label"),
    ("output_distillation", "ILT output distillation weight",
     "ILT: distillation of the old classes' logits (MiB's ILT runs: 100); 0 = off"),
    ("freeze_encoder", "frozen encoder (ILT)", "ILT: only the heads, classifier and localizer learn"),
    ("unbiased_kd", "MiB unbiased distillation weight", "the MiB step with masks only (MiB: 10)"),
    ("replay_images", "HRHF replay: images",
     "synthesise this many images of the old classes by inverting the model, replayed during the update; 0 = off"),
    ("replay_classes", "HRHF replay: classes", "comma-separated old classes to synthesise; empty = all"),
    ("replay_steps", "HRHF replay: inversion steps", "optimisation steps per batch of synthesised images"),
    ("replay_weight", "HRHF replay: weight", "weight of the distillation on the synthesised images"),
)   # new entries go at the end: API clients pass these values in this order (docs/app.md)
# The method of the update (after the advanced values; wilss.methods): (label, value). Masks make it MiB.
METHOD_CHOICES = (("WILSON (the paper's weak step)", WILSON),
                  ("offline pipeline: localizer from the tags, its pseudo-labels frozen, then MiB on them", OFFLINE))
_FIELD_TYPES = {f.name: type(getattr(DEMO_UPDATE, f.name)) for f in fields(UpdateConfig)}


def field_type(name: str) -> type:
    return _FIELD_TYPES[name]


def make_config(values: Mapping[str, object], base: UpdateConfig = DEMO_UPDATE) -> UpdateConfig:
    """``base`` with the page's advanced values (cast to the field types). Raises ``DataError`` with the reason."""
    overrides = {}
    for name, value in values.items():
        kind = _FIELD_TYPES[name]
        if value is None or value == "":
            continue
        if kind is str:            # a choice (the region prior): the config names what it takes
            overrides[name] = str(value)
            continue
        try:
            number = value if kind is bool else float(value)
            if kind is int and number != int(number):
                raise ValueError
            overrides[name] = bool(value) if kind is bool else kind(number)
        except (TypeError, ValueError, OverflowError):
            what = "whole number" if kind is int else "number" if kind is float else kind.__name__
            raise DataError(f"The setting '{name}' must be a {what}, got {value!r}.") from None
        if kind in (int, float) and name != "seed" and overrides[name] < 0:
            raise DataError(f"The setting '{name}' cannot be negative (got {value}).")
    for name in ("epochs", "batch_size", "crop_size", "localizer_channels"):
        if name in overrides and overrides[name] < 1:
            raise DataError(f"The setting '{name}' must be at least 1 (got {overrides[name]}).")
    try:
        return with_settings(base, overrides)
    except ValueError as err:
        raise DataError(f"Invalid settings: {err}.") from None


def loss_names(cfg: UpdateConfig, *, aux: bool = False) -> list[str]:
    """The losses ``WeakUpdate.losses`` reports under ``cfg`` (the plot's series), and their sum; ``aux``: the model
    has an auxiliary head (torchvision's FCN / DeepLabV3), trained with its own l_SEG."""
    names = ["cls"] + (["loc"] if cfg.old_model_prior else []) + (["fd"] if cfg.feature_distillation > 0 else [])
    names += ["seg"] + (["od"] if cfg.output_distillation > 0 else []) + (["aux"] if aux else [])
    names += ["self"] if cfg.pamr_self_training else []
    return names + (["replay"] if cfg.replay_images > 0 else []) + ["total"]


# ------------------------------------------------------------------------------------------------- plan
def plan_update(base_name: str, base: Checkpoint, tagged: Optional[TaggedSet], specs: Sequence[tuple[str, str]],
                cfg: UpdateConfig, *, source: str, rejected: Sequence[str] = (), method: str = WILSON,
                masks: Optional[tuple] = None, no_background: Optional[bool] = None) -> UpdatePlan:
    """The page's request, checked (``UpdateRequest.validate``): (name, '#rrggbb') per new class; ``method``
    (``wilss.methods``), ``masks``: a mask file per image (``app.intake.bring_step_masks``: a MiB step);
    ``no_background``: the page's choice (None: on for a base recorded without background). Raises ``DataError``;
    without negatives the plan uses automatic old-class tags and says so in ``note`` (the background choice too)."""
    if tagged is None or len(tagged) == 0:
        raise DataError("There are no images. Bring tagged images in the 'Data' tab first.")
    return UpdateRequest(base, tagged, list(specs), cfg, base_name=base_name, source=source,
                         rejected=tuple(rejected), tool="app", method=method, masks=masks,
                         no_background=no_background).validate()


# -------------------------------------------------------------------------------------------------- job
@dataclass
class Tick:
    """One iteration of the update, as the page sees it."""

    progress: Optional[Progress]
    snapshots: list[Snapshot] = field(default_factory=list)   # live images, when refreshed at this tick


class UpdateJob:
    """Runs one ``UpdatePlan`` (``run`` is a generator of ``Tick``); thread-safe ``cancel`` and ``between``."""

    @property
    def reviewable(self) -> bool:
        """Its pseudo-labels can be paged through, exported, and the update re-run (Review tab): WILSON's step only
        (MiB on masks and the offline pipeline show no CAMs while they train)."""
        return self.plan.method == WILSON

    def __init__(self, plan: UpdatePlan, *, device: str | None = None, live: Sequence[int] = (),
                 live_every_s: float = 2.0, names: Sequence[str] = (), base_file: Optional[Path] = None) -> None:
        self._plan, self.live, self.live_every_s = plan, list(live), live_every_s
        # the file the plan's base was read from: an idle session's finished job lets its base go (``release``)
        # and reads it again from there when asked for (a re-run, Review's scores)
        self.base_file = base_file
        base = getattr(plan, "base", None)   # a base from tags alone has none
        self._aux = base is not None and base.model.has_aux
        # how the page names training image i (its path relative to the data folder)
        self.names = list(names) or [p.name for p in plan.tagged.paths]
        self.device = resolve_device(device)
        self.state = "waiting"            # waiting -> running -> done | cancelled | failed
        self.error = ""
        self.losses: list[tuple[int, dict[str, float]]] = []
        self.last: Optional[Progress] = None
        self.last_snapshots: list[Snapshot] = []
        self.update: Optional[WeakUpdate] = None   # the runner's, while it may be shown (None once it stopped)
        self.train_seconds = 0.0
        self.saved_as: Optional[str] = None   # the version its result was saved as
        self.heldout: Optional[tuple] = None  # (info, rows, columns) of its scores on the samples' held-out set
        self._cancel = threading.Event()
        self._calls: "queue.Queue[tuple[Callable, Future]]" = queue.Queue()
        self._lock = threading.Lock()
        self.runner: Optional[UpdateRun] = None

    @property
    def plan(self) -> UpdatePlan:
        """The plan; its base is read again from ``base_file`` if ``release`` let it go."""
        if self.base_file is not None and self._plan.request.base is None:
            base = shared_versions.read(self.base_file, str(self.device))
            self._plan = replace(self._plan, request=replace(self._plan.request, base=base))
        return self._plan

    @property
    def dataset(self):
        """The training set (its ``targets``: ``N x K-1`` multi-hot tags), once the update started."""
        if self.runner is None:
            raise RuntimeError("this update has not started")
        return self.runner.dataset

    @property
    def running(self) -> bool:
        return self.state in ("waiting", "running")

    def cancel(self) -> None:
        """Stop before the next iteration; the model the update started from is untouched."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def abandon(self) -> None:
        """Mark a job that never left the device queue as cancelled."""
        self._cancel.set()
        if self.state == "waiting":
            self.state = "cancelled"

    def run(self) -> Iterator[Tick]:
        """Train; one ``Tick`` per iteration (the first, with no progress, shows the images before training)."""
        self.state = "running"
        start = time.perf_counter()
        gen = None
        try:
            self.runner = self.start()
            self.update = self.runner.update
            self.last_snapshots = self.update.snapshots() if self.live else []
            yield Tick(None, self.last_snapshots)
            gen = iter(self.runner)
            shown = time.monotonic()
            for progress in gen:
                self.last = progress
                if progress.phase != "replay":   # the inversion's steps are not training iterations
                    self.losses.append((progress.iteration, dict(progress.losses)))
                self._serve_calls()
                snaps = []
                final = progress.iteration == progress.total_iterations
                if self.live and (final or time.monotonic() - shown >= self.live_every_s):
                    snaps = self.last_snapshots = self.update.snapshots()
                    shown = time.monotonic()
                yield Tick(progress, snaps)
                if self._cancel.is_set():
                    break
            self.train_seconds = time.perf_counter() - start
            self.state = "cancelled" if self._cancel.is_set() and not self.runner.finished else "done"
        except Exception as err:  # shown in the page; the base model is untouched
            log.exception("update failed")
            self.state, self.error = "failed", f"{type(err).__name__}: {err}"
        finally:
            if gen is not None:
                gen.close()
            if self.state == "running":      # the page went away mid-run
                self.state = "cancelled"
            self._serve_calls()
            if self.state != "done":
                self.update = self.runner = None   # frees the copies; nothing of a stopped update is kept

    def start(self):
        """The run (``UpdateRun``'s interface: ``update``, ``dataset``, ``item``, ``finished``, ``checkpoint``)."""
        return run_update(self.plan, device=self.device, snapshot_indices=self.live)

    def loss_series(self) -> list[str]:
        """The losses the plot shows (``loss_names``; another method's are shown as they come)."""
        if not self.reviewable:
            return ["total"]
        return loss_names(self._plan.cfg, aux=self._aux)

    def _serve_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if self.update is None:
                future.set_exception(RuntimeError("the update stopped before this could be shown"))
                continue
            try:
                future.set_result(fn(self.update))
            except Exception as err:  # handed to the waiting caller
                future.set_exception(err)

    def between(self, fn: Callable[[WeakUpdate], object], timeout: float = 120.0):
        """``fn(update)`` between two iterations while training (so it never races the optimiser), else now."""
        if self.state == "running":
            future: Future = Future()
            self._calls.put((fn, future))
            if self.state == "running":
                return future.result(timeout=timeout)
            self._serve_calls()
            return future.result(timeout=0)
        if self.update is None:
            raise RuntimeError("its training state was let go (to save memory) while this tab was idle; re-run it to "
                               "review its pseudo-labels" if self.state == "done" and self.saved_as else
                               "this update has not started, or was stopped")
        def locked():
            with self._lock:
                return fn(self.update)

        return compute.call(locked)   # heavy work runs on the app's compute thread (app.serving)

    def render(self, indices: Sequence[int]) -> list[Snapshot]:
        """CAMs, pseudo-labels and predictions of the given training images, from the update's current state."""
        def work(update: WeakUpdate) -> list[Snapshot]:
            items = [self.runner.item(i) for i in indices]
            saved = update.snapshot_items
            update.snapshot_items = items
            try:
                return update.snapshots()
            finally:
                update.snapshot_items = saved

        return self.between(work)

    def release(self, *, review: bool = True) -> None:
        """Once its result is saved: keep only what the Review tab reads (the update's model, localizer and old
        model, the training targets; the decoded images are read again from their files), and with ``review``
        False, or an update without Review pages, nothing of the training (the figures stay, and ``plan``: with
        ``review`` False, its base is let go too when it can be read again from ``base_file``)."""
        if self.running:
            return
        if self.update is not None and review and self.reviewable:
            self.runner.dataset.forget()
            self._share_base()
        elif not review or self.update is not None:
            self.update = self.runner = None
        if not review and self.base_file is not None and Path(self.base_file).is_file():
            self._plan = replace(self._plan, request=replace(self._plan.request, base=None))

    def _share_base(self) -> None:
        """Review's frozen old model is a copy of the plan's base, kept for a re-run: on the CPU, with the base in
        eval mode, Review reads the base itself (under ``no_grad``), so a finished update holds one copy, not two."""
        base, frozen = self.plan.base.model, self.update.old_model
        if not base.training and all(p.device.type == "cpu" for p in (*base.parameters(), *frozen.parameters())):
            self.update.old_model = base

    def result(self) -> Checkpoint:
        """The updated checkpoint (``UpdateRun.checkpoint``: the history entry ``add-class`` writes too, by the app);
        the update's own model stays for the Review tab."""
        if self.state != "done" or self.update is None:
            raise RuntimeError(f"the update is {self.state}, there is no result")
        return self.runner.checkpoint()


# ------------------------------------------------------------------------------------ a base from tags alone
TAGS_NETWORKS = (*IMAGENET_NETS, "tiny")   # the page's choices: ImageNet-initialised networks, or the tiny one


def plan_tags_base(tagged: Optional[TaggedSet], *, arch: str, values: Mapping[str, object],
                   source: str) -> TagsBasePlan:
    """The page's "start from tags alone": the Data tab's images and tags, a network (ImageNet-initialised when it
    has installed weights, else from scratch) and the recipe ``TAGS_BASE`` with the page's epochs, batch and crop
    (the warm-up keeps its share). Raises ``DataError`` with the reason."""
    if tagged is None or len(tagged) == 0:
        raise DataError("There are no images. Bring tagged images in the 'Data' tab first.")
    if arch not in TAGS_NETWORKS:
        raise DataError(f"Unknown network {arch!r}; choose one of {', '.join(TAGS_NETWORKS)}.")
    overrides = {}
    for name, value in values.items():
        if value is None or value == "":
            continue
        try:
            number = float(value)
            if number != int(number) or number < 1:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"The setting '{name}' must be a whole number of at least 1, got {value!r}.") from None
        overrides[name] = int(number)
        if overrides[name] > UPDATE_LIMITS[name]:   # the update's upper bounds hold here too
            raise DataError(f"The setting '{name}' must be at most {UPDATE_LIMITS[name]} (got {overrides[name]}).")
    if "epochs" in overrides:
        share = TAGS_BASE.warmup_epochs / TAGS_BASE.epochs
        overrides["warmup_epochs"] = min(max(1, round(share * overrides["epochs"])), overrides["epochs"] - 1)
    try:
        cfg = replace(TAGS_BASE, **overrides)
    except ValueError as err:
        raise DataError(f"Invalid settings: {err}.") from None
    encoder = "imagenet" if arch in IMAGENET_NETS else "none"
    return TagsBaseRequest(tagged, cfg, arch=arch, encoder=encoder, source=source, tool="app").validate()


class TagsBaseJob(UpdateJob):
    """Trains a base from tags alone (``wilss.service.run_tags_base``) as the page runs an update: the same ticks,
    cancel and live snapshots. Its result is a new model, not a grown one; it has no Review pages."""

    reviewable = False

    def start(self):
        return run_tags_base(self.plan, device=self.device, snapshot_indices=self.live)

    def loss_series(self) -> list[str]:
        return ["cls", "seg", "total"]   # l_CLS, then l_SEG after the warm-up (wilss.tags_base)
