"""Which method an add-class step trains with, chosen by the user (``add-class --method``, the app's advanced panel):
WILSON's weak step (the default), or the offline pseudo-label pipeline (``wilss.offline``) on the same tagged
images. A step with pixel masks trains MiB on them (``wilss.masked_update``) whatever is chosen: offline with masks
is refused. ``wilss.service.UpdateRun`` builds the step here; its history entry names the method (``method_name``).
"""
from __future__ import annotations

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

WILSON, OFFLINE = "wilson", "offline"
METHODS = (WILSON, OFFLINE)   # the choices; with masks the method is MiB ('mib' in the history)


def method_name(method: str, masks) -> str:
    """What the history records: 'mib' for a step with masks, else the method chosen."""
    return "mib" if masks is not None else method


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
