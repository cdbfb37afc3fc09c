"""What the app's one-click demo needs of its data: the held-out set shipped with ``samples/`` and the images it
follows live.

The app's demo adds ``recipes.DEMO_CLASS`` to the shipped base from the tagged images of ``samples/`` with
``recipes.DEMO_UPDATE``. ``samples/heldout.zip`` (``images/NNN.png``, ``masks/NNN.png`` in the updated model's ids,
``classes.txt``) holds images the update never saw, with masks: the app scores the demo's result on it, and the
Evaluate tab takes the zip as it is. ``research.demo`` generates both and times and scores the demo
(``python -m research benchmark demo``).
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from wilss.data import DataError
from wilss.tags import TaggedSet

HELDOUT_FILE = "heldout.zip"


def read_heldout(path: Path) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """(class names in id order, [(``HxWx3`` uint8 image, ``HxW`` uint8 mask)]) of a held-out zip. Raises
    ``DataError`` for a file that is not one."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n.strip() for n in zf.read("classes.txt").decode("utf-8").splitlines() if n.strip()]
            stems = sorted(Path(n).stem for n in zf.namelist() if n.startswith("images/") and n.endswith(".png"))
            pairs = []
            for stem in stems:
                with Image.open(io.BytesIO(zf.read(f"images/{stem}.png"))) as im:
                    image = np.array(im.convert("RGB"))
                with Image.open(io.BytesIO(zf.read(f"masks/{stem}.png"))) as im:
                    mask = np.array(im)
                pairs.append((image, mask))
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        raise DataError(f"'{path}' is not a held-out set (a zip with classes.txt, images/ and masks/): {err}") \
            from None
    if not pairs:
        raise DataError(f"'{path}' holds no images/NNN.png")
    return names, pairs



def watch_indices(tagged: TaggedSet, new_names: Sequence[str], count: int) -> list[int]:
    """A few images to follow live: positives of each new class in turn, then one negative."""
    per_class = [[i for i, t in enumerate(tagged.tags) if name in t] for name in new_names]
    negatives = [i for i, t in enumerate(tagged.tags) if not (t & set(new_names))]
    chosen: list[int] = []
    room = max(count - (1 if negatives else 0), 1)
    for rank in range(len(tagged)):
        for items in per_class:
            if rank < len(items) and items[rank] not in chosen and len(chosen) < room:
                chosen.append(items[rank])
        if len(chosen) >= room or all(rank >= len(items) for items in per_class):
            break
    if negatives and len(chosen) < count:
        chosen.append(negatives[0])
    return chosen[:count]
