"""Which method an add-class step trains with, chosen by the user (``add-class --method``, the app's advanced panel):
WILSON's weak step (the default), or the offline pseudo-label pipeline (``wilss.offline``) on the same tagged
images. A step with pixel masks trains MiB on them (``wilss.masked_update``) whatever is chosen: offline with masks
is refused. ``wilss.service.UpdateRun`` builds the step here; its history entry names the method (``method_name``).
``settle_background`` picks the weak step's ``no_background`` option from what the base's checkpoint records.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Iterator, Optional

from models.segmenter import Segmenter
from wilss.config import UpdateConfig
from wilss.data import DataError
from wilss.distributed import current_world
from wilss.engine import Progress, batches_per_epoch
from wilss.offline import OfflinePipeline
from wilss.resume import Resumer
from wilss.runtime import RuntimeConfig
from wilss.training_data import TagDataset
from wilss.transforms import train_transform

log = logging.getLogger(__name__)

WILSON, OFFLINE = "wilson", "offline"
METHODS = (WILSON, OFFLINE)   # the choices; with masks the method is MiB ('mib' in the history)


def method_name(method: str, masks) -> str:
    """What the history records: 'mib' for a step with masks, else the method chosen."""
    return "mib" if masks is not None else method


def settle_background(base_background: bool, cfg: UpdateConfig, chosen: Optional[bool], *,
                      note: str = "") -> tuple[UpdateConfig, str]:
    """The weak step's ``no_background`` option (docs/method.md, "Data without a background class"), and ``note``
    with a sentence saying which and why: ``chosen`` (True / False) when the user set it, else on for a base whose
    checkpoint records data without a background class (``Checkpoint.background`` False: ``pretrain --data`` on
    CamVid), else ``cfg``'s. Nothing is added to the note for a base with a background class and the option off."""
    if chosen is not None:
        on, why = bool(chosen), "as set"
    elif not base_background:
        on, why = True, "the base's default"
    else:
        on, why = bool(cfg.no_background), "the settings'"
    if base_background:
        said = ("The no-background option is on, though the base's checkpoint records data with a background "
                "class." if on else "")
    elif on:
        said = ("The base's checkpoint records data without a background class (every pixel a named class), so the "
                "no-background option is on: the base's class 0, made of classes not yet added, goes to the images' "
                "tagged new classes" + (" (switch the option off to treat it as a real background)." if chosen is None
                                        else ", as set."))
    else:
        said = ("The base's checkpoint records data without a background class, but the no-background option is off, "
                "as set: its class 0 is treated as a real background.")
    log.info("no_background %s (%s; the base's data %s a background class)", "on" if on else "off", why,
             "has" if base_background else "has no")
    return replace(cfg, no_background=on), " ".join(filter(None, [note, said]))


def check_method(method: str, *, masks, cfg: UpdateConfig) -> None:
    """Raises ``DataError`` for an unknown method, the offline pipeline with masks, or HRHF replay with it."""
    if method not in METHODS:
        raise DataError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == OFFLINE and masks is not None:
        raise DataError("The offline pipeline learns from the tags (its pseudo-labels come from a localizer); with "
                        "pixel masks the step trains MiB on them. Leave out the masks, or keep the method 'wilson'.")
    if method == OFFLINE and cfg.replay_images:
        raise DataError("HRHF replay (replay_images) is an option of WILSON's weak step, not of the offline "
                        "pipeline.")


class OfflineStep:
    """``OfflinePipeline`` with the interface ``UpdateRun`` drives: ``run(resumer)`` yields the localizer's progress
    (phase 'warmup') and then the MiB step's ('mib'), numbered as one run of ``total_iterations``; ``model`` is the
    result once it ends. ``cfg.epochs`` each: the localizer learns through WILSON's whole step, MiB through its own.
    Not resumable (the resumer is not read) and one process only, as MiB."""

    def __init__(self, old_model: Segmenter, dataset: TagDataset, *, num_new: int, cfg: UpdateConfig,
                 device=None, runtime: Optional[RuntimeConfig] = None) -> None:
        if current_world().distributed:   # refused before the localizer trains, not after it (MiB's step would)
            raise ValueError("the offline pipeline ends in a MiB step, which runs in one process: start it without "
                             "torchrun")
        # the images are at the input scale already (``dataset.load``): the MiB step augments them as the weak step
        augment = train_transform(cfg.crop_size, cfg.scale_range, cfg.hflip)
        self.pipeline = OfflinePipeline(old_model, dataset, num_new=num_new, cfg=cfg, device=device,
                                        runtime=runtime, pixel_transform=augment)
        self.per_phase = cfg.epochs * batches_per_epoch(len(dataset), cfg.batch_size)

    @property
    def model(self) -> Optional[Segmenter]:
        return self.pipeline.model

    def run(self, resumer: Optional[Resumer] = None) -> Iterator[Progress]:
        offset, total = 0, 2 * self.per_phase
        for progress in self.pipeline.run():
            if progress.phase != "warmup" and not offset:   # the MiB step starts: continue the count
                offset = self.per_phase
            progress.iteration += offset
            progress.first_iteration += offset
            progress.total_iterations = total
            yield progress
