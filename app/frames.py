"""Pictures the page renders during an update (live gallery, review pages), written as PNG files into the page's
cache folder so that gradio serves them without copying, and deleted when they are no longer on screen: a
``FrameStore`` keeps the last few frames and removes older ones, so the work folder does not grow with every
refresh (a three-minute update refreshes its gallery about 90 times). No gradio here."""
from __future__ import annotations

import itertools
import shutil
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


class FrameStore:
    """Frames (lists of ``HxWx3`` uint8 pictures with captions) under ``root/<n>/``; only the last ``keep`` frames
    stay on disk (the browser has fetched the earlier ones long before)."""

    def __init__(self, root: Path, *, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.root, self.keep = Path(root), keep
        self._frames: list[Path] = []
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def write(self, tiles: Sequence[tuple[np.ndarray, str]]) -> list[tuple[str, str]]:
        """Save one frame; returns gallery items (file path, caption). Frames beyond the last ``keep`` are deleted."""
        with self._lock:
            folder = self.root / f"{next(self._counter):06d}"
            folder.mkdir(parents=True, exist_ok=True)
            self._frames.append(folder)
            stale, self._frames = self._frames[:-self.keep], self._frames[-self.keep:]
        items = []
        for k, (tile, caption) in enumerate(tiles):
            path = folder / f"{k:03d}.png"
            Image.fromarray(np.asarray(tile, dtype=np.uint8)).save(path, compress_level=1)
            items.append((str(path), caption))
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return items

    def clear(self) -> None:
        with self._lock:
            frames, self._frames = self._frames, []
        for old in frames:
            shutil.rmtree(old, ignore_errors=True)
