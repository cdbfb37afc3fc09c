"""Pure rendering helpers of the app: numpy arrays in, numpy arrays (or HTML text) out. No gradio, no torch.

Images are ``HxWx3`` uint8 RGB; masks ``HxW`` integer class ids; CAMs and score maps ``HxW`` floats in [0, 1];
colours ``K x 3`` uint8 (a checkpoint's ``colours``).
"""
from __future__ import annotations

import html
import math
from typing import Mapping, Optional, Sequence

import cv2
import numpy as np

from wilss.conventions import rgb_to_hex
# The image helpers live in the engine so the CLI draws the same pictures; re-exported for the app.
from wilss.render import _rgb, blend, cam_overlay, colour_mask, heatmap, mask_overlay, upscale  # noqa: F401

PHASE_TEXT = {"warmup": "localizer warm-up", "joint": "joint training", "pretrain": "training",
              "replay": "HRHF: synthesising replay images"}


# ------------------------------------------------------------------------------------------ snapshot tiles
def snapshot_tiles(image: np.ndarray, cams: np.ndarray, pseudo_label: np.ndarray, prediction: np.ndarray,
                   colours: np.ndarray, new_names: Sequence[str], *, title: str = "",
                   with_prediction: bool = True) -> list[tuple[np.ndarray, str]]:
    """Gallery tiles of one training image: the image (captioned ``title``), one CAM overlay per new class
    (``cams``: ``NxHxW``), the pseudo-label and (optionally) the current model's mask. Returns (tile, caption)
    pairs, tiles upscaled for display."""
    if len(cams) != len(new_names):
        raise ValueError(f"{len(cams)} CAMs for {len(new_names)} new classes")
    tiles = [(upscale(image), title or "image")]   # the other captions stay short: galleries truncate them
    tiles += [(upscale(cam_overlay(image, cam)), f"CAM {name}") for cam, name in zip(cams, new_names)]
    tiles.append((upscale(colour_mask(pseudo_label, colours)), "pseudo-label"))
    if with_prediction:
        tiles.append((upscale(colour_mask(prediction, colours)), "mask"))
    return tiles


# ------------------------------------------------------------------------------------------------ legend
def legend_html(names: Sequence[str], colours: np.ndarray, *, shares: Optional[Sequence[float]] = None,
                new: Sequence[str] = (), title: str = "", hide_absent: bool = False) -> str:
    """An HTML legend: one swatch and name per class, marked '(new)' for ``new`` classes. ``shares``: pixel fraction
    of each class, shown in % (with ``hide_absent``, classes at 0 are left out). Names are escaped."""
    if len(names) != len(colours):
        raise ValueError(f"{len(names)} names for {len(colours)} colours")
    if shares is not None and len(shares) != len(names):
        raise ValueError(f"{len(shares)} shares for {len(names)} classes")
    items = []
    for k, (name, colour) in enumerate(zip(names, colours)):
        if shares is not None and hide_absent and shares[k] <= 0:
            continue
        hexa = rgb_to_hex(colour)
        extra = f" <small>{100.0 * shares[k]:.1f}%</small>" if shares is not None else ""
        mark = " <small>(new)</small>" if name in new else ""
        items.append(f'<span class="wilss-legend-item" data-class="{html.escape(name)}">'
                     f'<span class="wilss-swatch" style="background:{hexa}" title="{hexa}"></span>'
                     f'{html.escape(name)}{mark}{extra}</span>')
    head = f"<div class='wilss-legend-title'>{html.escape(title)}</div>" if title else ""
    return f'<div class="wilss-legend">{head}{"".join(items)}</div>'


def legend_image(names: Sequence[str], colours: np.ndarray, *, row_height: int = 22, width: int = 220) -> np.ndarray:
    """The legend as a picture (``len(names) * row_height x width x 3`` uint8): swatch then name, white ground."""
    if len(names) != len(colours):
        raise ValueError(f"{len(names)} names for {len(colours)} colours")
    out = np.full((max(1, len(names)) * row_height, width, 3), 255, dtype=np.uint8)
    pad = max(2, row_height // 6)
    for k, (name, colour) in enumerate(zip(names, colours)):
        top = k * row_height
        out[top + pad: top + row_height - pad, pad: pad + row_height] = np.asarray(colour, dtype=np.uint8)
        cv2.rectangle(out, (pad, top + pad), (pad + row_height - 1, top + row_height - pad - 1), (0, 0, 0), 1)
        cv2.putText(out, str(name), (2 * pad + row_height + 4, top + row_height - 2 * pad - 1),
                    cv2.FONT_HERSHEY_SIMPLEX, row_height / 40.0, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def classes_html(names: Sequence[str], colours: np.ndarray, added_in: Mapping[str, str] | None = None) -> str:
    """The model's classes as an HTML table: id, colour swatch with its hex code, name, and the step that
    added it (``added_in``: name -> text)."""
    if len(names) != len(colours):
        raise ValueError(f"{len(names)} names for {len(colours)} colours")
    added_in = added_in or {}
    rows = "".join(
        f'<tr data-class="{html.escape(n)}"><td>{k}</td>'
        f'<td><span class="wilss-swatch" style="background:{rgb_to_hex(c)}"></span> <code>{rgb_to_hex(c)}</code></td>'
        f'<td>{html.escape(n)}</td><td>{html.escape(added_in.get(n, ""))}</td></tr>'
        for k, (n, c) in enumerate(zip(names, colours)))
    return ('<table class="wilss-classes"><thead><tr><th>id</th><th>colour</th><th>class</th><th>added by</th>'
            f'</tr></thead><tbody>{rows}</tbody></table>')


# --------------------------------------------------------------------------------------------- progress
def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'; '?' for NaN or negative."""
    if not seconds == seconds or seconds < 0 or math.isinf(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def progress_html(iteration: int, total: int, *, phase: str, epoch: int, epochs: int, eta_s: float,
                  losses: Mapping[str, float] | None = None, note: str = "") -> str:
    """A progress bar with the phase, epoch, iterations and the time left (``epoch`` 0-based)."""
    fraction = 0.0 if total <= 0 else min(max(iteration / total, 0.0), 1.0)
    phase_text = PHASE_TEXT.get(phase, phase)
    loss_text = " · ".join(f"{html.escape(k)} {v:.3f}" for k, v in (losses or {}).items())
    detail = (f"<b>{html.escape(phase_text)}</b> · epoch {epoch + 1}/{epochs} · iteration {iteration}/{total} · "
              f"{format_duration(eta_s)} left")
    return (f'<div class="wilss-progress" data-phase="{html.escape(phase)}" data-fraction="{fraction:.4f}">'
            f'<div class="wilss-bar"><div class="wilss-fill wilss-{html.escape(phase)}" '
            f'style="width:{100 * fraction:.1f}%"></div></div>'
            f'<div class="wilss-progress-text">{detail}</div>'
            + (f'<div class="wilss-progress-losses">{loss_text}</div>' if loss_text else "")
            + (f'<div class="wilss-progress-note">{html.escape(note)}</div>' if note else "")
            + "</div>")


def message_html(text: str, kind: str = "info") -> str:
    """A one-line banner (kind: 'info', 'wait', 'done', 'error', 'cancelled') in the progress area."""
    return f'<div class="wilss-progress wilss-msg-{html.escape(kind)}">{html.escape(text)}</div>'


# ------------------------------------------------------------------------------------------- loss curves
def loss_rows(history: Sequence[tuple[int, Mapping[str, float]]], *, max_points: int = 400,
              series: Sequence[str] = ()) -> dict[str, list]:
    """Long-form rows for a line plot from (iteration, {loss name: value}) pairs, the total included:
    ``{"iteration": [...], "loss": [...], "value": [...]}``. Long runs are thinned to ``max_points`` iterations
    (evenly, the last one kept). Each name in ``series`` that has no value yet gets one NaN row at the first
    iteration, so a plot's colour legend lists every loss from the start (l_SEG only joins after the warm-up)."""
    if len(history) > max_points:
        keep = np.unique(np.linspace(0, len(history) - 1, max_points).round().astype(int))
        history = [history[i] for i in keep]
    rows: dict[str, list] = {"iteration": [], "loss": [], "value": []}
    seen = {name for _, losses in history for name in losses} | ({"total"} if history else set())
    for name in series:
        if history and name not in seen:
            rows["iteration"].append(int(history[0][0]))
            rows["loss"].append(name)
            rows["value"].append(math.nan)
    for iteration, losses in history:
        finite = {k: float(v) for k, v in losses.items() if math.isfinite(float(v))}
        for name, value in list(finite.items()) + ([("total", sum(finite.values()))] if finite else []):
            rows["iteration"].append(int(iteration))
            rows["loss"].append(name)
            rows["value"].append(value)
    return rows
