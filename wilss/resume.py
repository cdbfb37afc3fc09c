"""Resumable snapshots of a long update, so a crash, a kill or a torchrun restart loses minutes, not hours.

A snapshot is a ``torch.save`` dict of plain types and tensors, written atomically (temporary file + rename)::

    {"format": "wilss-resume", "version": 1, "fingerprint": {...},   # what the run was: refused if it differs
     "iteration": ..., "epoch": ..., "batches_per_epoch": ...,        # where it stopped
     "state": {"model": ..., "localizer": ..., "optimizer": ..., "scheduler": ...},
     "sampler": {...}, "rng": [per process: torch, cuda, numpy, python], "elapsed_s": ..., "resumed_from": [...]}

Saved every ``every_s`` seconds and at the end of every epoch (at most every ``min_gap_s``), by rank 0 only (every process's RNG state is
gathered first). Resuming restores the loader position too: the sampler skips the part-done epoch's batches
without loading them, so with ``num_workers=0`` a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from pathlib import Path
from typing import Optional, Protocol

import numpy as np
import torch

from wilss.checkpoint import atomic_torch_save
from wilss.distributed import all_equal, current_world, gather_objects

log = logging.getLogger(__name__)

FORMAT, VERSION = "wilss-resume", 1


class ResumeError(ValueError):
    """A snapshot that cannot be resumed: unreadable, or made by a different run."""


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> object: ...


def resume_path(out: Path) -> Path:
    """Where the snapshot of the update writing ``out`` lives: next to it, ``OUT_STEM.resume.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume.pt")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ RNG
def rng_state() -> dict:
    """This process's random generators: torch (CPU and CUDA), numpy's global one and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])


# ------------------------------------------------------------------------------------------- reading
def mismatch(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two fingerprints (dicts of named parts; ``settings`` is a dict)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                    if old.get(k) != new.get(k)]
        elif isinstance(old, str) and len(old) == 64:  # a digest: the values say nothing to a reader
            out.append(f"{key}: different contents")
        else:
            out.append(f"{key}: {old!r} then, {new!r} now")
    return out


def read_snapshot(path: Path, fingerprint: dict) -> dict:
    """The snapshot at ``path``, checked against this run's ``fingerprint``. Raises ``ResumeError``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, pickled code...
        raise ResumeError(f"the snapshot {path} cannot be read ({type(err).__name__}); delete it to start over"
                          ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version", 0) > VERSION:
        raise ResumeError(f"{path} is not a wilss resume snapshot this version can read; delete it to start over")
    differences = mismatch(payload["fingerprint"], fingerprint)
    if differences:
        raise ResumeError(f"the snapshot {path} was made by a different update, so it cannot be resumed "
                          f"({'; '.join(differences)}); run the same command as before, or delete the snapshot "
                          "to start over")
    return payload


# ------------------------------------------------------------------------------------------- the saver
class Resumer:
    """Saves an update's state every ``every_s`` seconds (and ``every_iterations``, when > 0) and at each epoch's
    end, and restores it from ``snapshot`` (a ``read_snapshot`` result, or None to start from the beginning).
    An epoch's end is skipped when the last snapshot is less than ``min_gap_s`` old: short epochs of a large
    model would otherwise spend their time writing.

    ``due`` and ``save`` are called between iterations by the training loop; ``save`` is collective under
    several processes (every process calls it when any one found a save due), only rank 0 writes.
    """

    def __init__(self, path: Path, *, fingerprint: dict, every_s: float = 300.0, every_iterations: int = 0,
                 min_gap_s: float = 30.0, snapshot: Optional[dict] = None) -> None:
        self.path, self.fingerprint = Path(path), fingerprint
        self.every_s, self.every_iterations, self.min_gap_s = every_s, every_iterations, min_gap_s
        self.snapshot = snapshot
        self.previous_s = float(snapshot["elapsed_s"]) if snapshot else 0.0
        self.resumed_from = list(snapshot["resumed_from"]) + [snapshot["iteration"]] if snapshot else []
        self._started = self._last_save = time.monotonic()
        self.saves = 0

    def restore(self, state: dict[str, Stateful], sampler) -> int:
        """Load the snapshot into ``state`` and ``sampler``; returns the iterations already done (0 if none)."""
        snap = self.snapshot
        if not all_equal(snap["iteration"] if snap else -1):
            raise ResumeError(f"not every process sees the snapshot {self.path}: put --out on a folder that all "
                              "nodes share")
        if snap is None:
            return 0
        for name, obj in state.items():
            obj.load_state_dict(snap["state"][name])
        per_epoch = snap["batches_per_epoch"]
        done_in_epoch = snap["iteration"] - snap["epoch"] * per_epoch
        sampler.resume_at(snap["epoch"], skip=done_in_epoch * snap["batch_size"],
                          state=snap["sampler"].get("generator"))
        rngs = snap["rng"]
        set_rng_state(rngs[current_world().rank] if len(rngs) > 1 else rngs[0])
        log.info("resuming %s at iteration %d (epoch %d)", self.path, snap["iteration"], snap["epoch"] + 1)
        return int(snap["iteration"])

    def due(self, iteration: int, batches_per_epoch: int) -> bool:
        since = time.monotonic() - self._last_save
        return (since >= self.every_s or (iteration % batches_per_epoch == 0 and since >= self.min_gap_s)
                or (self.every_iterations > 0 and iteration % self.every_iterations == 0))

    def save(self, iteration: int, state: dict[str, Stateful], sampler, *, batches_per_epoch: int,
             batch_size: int) -> None:
        """Write the snapshot after ``iteration`` (collective; rank 0 writes). ``batch_size``: per process."""
        rngs = gather_objects(rng_state())
        self._last_save = time.monotonic()
        if not current_world().is_main:
            return
        payload = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                   "iteration": iteration, "epoch": iteration // batches_per_epoch,  # the epoch to continue
                   "batches_per_epoch": batches_per_epoch, "batch_size": batch_size,
                   "state": {name: obj.state_dict() for name, obj in state.items()},
                   "sampler": sampler.state(epoch_done=iteration % batches_per_epoch == 0),
                   "rng": rngs, "elapsed_s": self.elapsed_s, "resumed_from": self.resumed_from}
        atomic_torch_save(payload, self.path)
        self.saves += 1
        log.debug("snapshot at iteration %d written to %s", iteration, self.path)

    @property
    def elapsed_s(self) -> float:
        """Training seconds over every run of this update, this one included."""
        return self.previous_s + time.monotonic() - self._started

    def remove(self) -> None:
        """The update is saved: its snapshot has served (rank 0 only)."""
        if current_world().is_main:
            self.path.unlink(missing_ok=True)
