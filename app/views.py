"""What the page shows about a checkpoint: plain values (markdown text, table rows) computed from ``Checkpoint``s
and their history. No gradio here, so these are testable like the rendering helpers."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from wilss.checkpoint import Checkpoint
from wilss.conventions import extend_colours, rgb_to_hex
from wilss.tags import TaggedSet

HISTORY_HEADERS = ["step", "kind", "classes", "images", "negatives", "date", "metrics"]


def added_in(history: Sequence[dict]) -> dict[str, str]:
    """Class name -> 'step N: kind (M images)' for every class a history step introduced."""
    out: dict[str, str] = {}
    for entry in history:
        text = f"step {entry.get('step', '?')}: {entry.get('kind', '?')}"
        if entry.get("num_images"):
            text += f" ({entry['num_images']} images)"
        for name in entry.get("classes", []):
            out.setdefault(name, text)
    return out


def spare_colours(used: np.ndarray, count: int) -> list[str]:
    """'#rrggbb' colours for the page's new-class rows, far from those in use: ``wilss.conventions.extend_colours``,
    the CLI's choice for a ``--class`` without a colour."""
    return [rgb_to_hex(c) for c in extend_colours(used, [None] * count)]


def _metric_text(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            value = "n/a" if math.isnan(value) else f"{value:g}"
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def history_rows(history: Sequence[dict]) -> list[list[object]]:
    """One row per step, columns ``HISTORY_HEADERS``."""
    return [[h.get("step", ""), h.get("kind", ""), ", ".join(h.get("classes", [])), h.get("num_images", ""),
             h.get("negatives", ""), h.get("date", ""), _metric_text(h.get("metrics") or {})] for h in history]


def parameter_count(ckpt: Checkpoint) -> int:
    return sum(p.numel() for p in ckpt.model.parameters())


def architecture_markdown(ckpt: Checkpoint, *, version: str = "", file_name: str = "") -> str:
    """Architecture and size of the model: the builder config stored in the checkpoint, parameter count,
    feature channels seen by the localizer, and whether its data has a background class."""
    cfg = dict(ckpt.model.config)
    arch = cfg.pop("arch", "?")
    lines = [f"**Architecture:** `{arch}` · {parameter_count(ckpt) / 1e6:.2f} M parameters · "
             f"{ckpt.num_classes} outputs (background + {ckpt.num_classes - 1} classes) · "
             f"encoder features: {ckpt.model.feature_channels} channels",
             f"**Builder config:** `{json.dumps(cfg, sort_keys=True)}`",
             "**Background class in its data:** " + ("yes" if ckpt.background else "no (every pixel a named class: "
                                                     "class 0 stands for classes not yet added; updates default to "
                                                     "'no background class in the data')")]
    if version:
        lines.insert(0, f"**Version:** {version}" + (f" (`{file_name}`)" if file_name else ""))
    return "  \n".join(lines)


def before_after_rows(class_names: Sequence[str], new_names: Sequence[str], before: Optional[dict],
                      after: dict) -> list[list[object]]:
    """The evaluation table: mIoU old / new / all, then per-class IoU, before and after (figures in %).

    ``before``/``after``: {'summary': {'old','new','all'}, 'iou': {name: value in %}} (``before`` may be None)."""
    def fmt(value) -> str:
        return "n/a" if value is None or value != value else f"{value:.1f}"

    rows: list[list[object]] = []
    for key, label in (("old", "mIoU old"), ("new", "mIoU new"), ("all", "mIoU all")):
        rows.append([label, fmt(before["summary"][key]) if before else "", fmt(after["summary"][key])])
    for name in class_names:
        label = f"IoU {name}" + (" (new)" if name in new_names else "")
        b = before["iou"].get(name) if before else None
        rows.append([label, fmt(b) if before else "", fmt(after["iou"].get(name))])
    return rows


def data_summary(tagged: TaggedSet, source: str) -> str:
    """One line on the image set: how many, from where, how many carry each tag, how many are negatives."""
    parts = [f"{n} tagged '{t}'" for t, n in tagged.counts().items()]
    if not parts:
        parts = ["none tagged yet"]
    parts.append(f"{tagged.num_negatives} negatives (tagged with none of the classes)")
    return f"{len(tagged)} images from {source}: " + ", ".join(parts) + "."


def thumbnails(tagged: TaggedSet, names: Sequence[str], *, limit: int = 120) -> list[tuple[str, str]]:
    """Gallery items (image path, 'tags: name') for the first ``limit`` images; ``names`` as the page names them.
    The tags come first: captions are cut to the thumbnail's width."""
    return [(str(Path(path)), f"{', '.join(sorted(tags)) or 'negative'}: {name}")
            for path, tags, name in list(zip(tagged.paths, tagged.tags, names))[:limit]]
