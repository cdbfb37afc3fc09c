"""A generic pretext world for the encoder: our stand-in for ImageNet pretraining, generated, no downloads.

WILSON learns a new class by finding, in the encoder's features, what tagged images share and untagged ones lack.
With an ImageNet backbone those features already tell objects, textures and parts apart; a network trained from
scratch on the base classes alone does not: its features are trained to call everything else "background", and a
linear probe on them predicts the new classes' tags at chance (docs/method.md, "Encoder pretraining").

This module draws *generic* scenes for a dense pretext task: random shapes (irregular polygons, ellipses, stars,
blobs, bars, some with holes) painted with textures from parametric families, over the world's cluttered
backgrounds. The label of a pixel is its texture family (0 = background). Nothing here uses the world's categories,
their shape-and-texture pairings or their masks; like ImageNet, whose 1000 classes include VOC's animals, the
texture bank is broad and holds families close to those of any world category (fine random cells, fills
with an outline), so the encoder learns features that can tell such things apart before any class is named.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from research import world

Polys = world.Polys


# ---- generic shapes: rng -> unit polygons --------------------------------------------------------------
def _polygon(rng) -> Polys:
    n = int(rng.integers(3, 10))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.55, 1.0, n)
    return [(np.stack([rad * np.cos(t), rad * np.sin(t)], 1), 1)]


def _ellipse(rng) -> Polys:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    return [(np.stack([np.cos(t), rng.uniform(0.35, 1.0) * np.sin(t)], 1), 1)]


def _spiky(rng) -> Polys:
    n = int(rng.integers(4, 10))
    t = np.arange(2 * n) * np.pi / n
    rad = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.3, 0.75))
    return [(np.stack([rad * np.cos(t), rad * np.sin(t)], 1), 1)]


def _blob(rng) -> Polys:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    rad = 0.75 + sum(rng.uniform(0, 0.15) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in range(2, 5))
    return [(np.stack([rad * np.cos(t), rad * np.sin(t)], 1), 1)]


def _bar(rng) -> Polys:
    w = rng.uniform(0.2, 0.5)
    return [(np.array([(-1, -w), (1, -w), (1, w), (-1, w)], dtype=np.float64), 1)]


SHAPES: tuple[Callable[..., Polys], ...] = (_polygon, _ellipse, _spiky, _blob, _bar)
HOLE_PROBABILITY = 0.25


def _shape(rng) -> Polys:
    polys = SHAPES[int(rng.integers(len(SHAPES)))](rng)
    if rng.random() < HOLE_PROBABILITY:  # cut a smaller copy of a random shape, somewhere inside
        hole = SHAPES[int(rng.integers(len(SHAPES) - 1))](rng)[0][0]
        polys.append((hole * rng.uniform(0.3, 0.6) + rng.uniform(-0.35, 0.35, 2), 0))
    return polys


# ---- texture families: (u, v, edge, r, rng) -> values in [0, 1] per object pixel -------------------------
def _rotated(u, v, rng):
    a = rng.uniform(0, np.pi)
    return np.cos(a) * u + np.sin(a) * v, -np.sin(a) * u + np.cos(a) * v


def _period(rng, lo: float = 4.0, hi: float = 12.0) -> float:
    return rng.uniform(lo, hi)


def _gradient(u, v, edge, r, rng):
    s, _ = _rotated(u, v, rng)
    return np.clip(0.5 + s / (2 * max(r, 1.0)), 0, 1)


def _grating(u, v, edge, r, rng):
    s, _ = _rotated(u, v, rng)
    return np.floor(s / _period(rng) + rng.random()) % 2


def _checks(u, v, edge, r, rng):
    s, t = _rotated(u, v, rng)
    p = _period(rng)
    return (np.floor(s / p) + np.floor(t / p)) % 2


def _lattice(u, v, edge, r, rng):
    s, t = _rotated(u, v, rng)
    p = _period(rng, 5.0, 12.0)
    rd = p * rng.uniform(0.2, 0.35)
    return ((s % p - p / 2) ** 2 + (t % p - p / 2) ** 2 < rd * rd).astype(np.float64)


def _rings(u, v, edge, r, rng):
    c = rng.uniform(-0.3, 0.3, 2) * r
    return np.floor(np.hypot(u - c[0], v - c[1]) / _period(rng, 3.0, 9.0)) % 2


def _rays(u, v, edge, r, rng):
    n = 2 * int(rng.integers(3, 9))
    return np.floor((np.arctan2(v, u) + np.pi) * n / (2 * np.pi)) % 2


def _mesh(u, v, edge, r, rng):
    s, t = _rotated(u, v, rng)
    p, w = _period(rng, 5.0, 12.0), rng.uniform(1.2, 2.5)
    return ((s % p < w) | (t % p < w)).astype(np.float64)


def _wavy(u, v, edge, r, rng):
    s, t = _rotated(u, v, rng)
    p = _period(rng)
    return (np.sin(2 * np.pi * (t + p * rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * s / rng.uniform(10, 30))) / p)
            > 0).astype(np.float64)


def _cells(u, v, edge, r, rng):
    cell = rng.uniform(1.5, 4.0)
    iu, iv = ((u - u.min()) / cell).astype(int), ((v - v.min()) / cell).astype(int)
    return (rng.random((iu.max() + 1, iv.max() + 1)) < rng.uniform(0.3, 0.7))[iu, iv].astype(np.float64)


def _outline(u, v, edge, r, rng):
    return (edge < rng.uniform(1.5, max(2.0, 0.25 * r))).astype(np.float64)


def _zigzag(u, v, edge, r, rng):
    s, t = _rotated(u, v, rng)
    p = _period(rng)
    return (np.floor((t + np.abs((s % p) - p / 2)) / (p / 2)) % 2).astype(np.float64)


TEXTURES: dict[str, Callable] = {
    "gradient": _gradient, "grating": _grating, "checks": _checks, "lattice": _lattice,
    "rings": _rings, "rays": _rays, "mesh": _mesh, "wavy": _wavy, "cells": _cells, "outline": _outline,
    "zigzag": _zigzag,
}
PRETEXT_CLASSES: tuple[str, ...] = ("background", *TEXTURES)


def sample_scene(rng: np.random.Generator, *, size: int = 128, min_objects: int = 2,
                 max_objects: int = 6) -> world.Scene:
    """One pretext scene: ``(image HxWx3 uint8, labels HxW uint8)``, labels = texture family ids (0 = none)."""
    image = world.cluttered_background(rng, size)
    labels = np.zeros((size, size), np.uint8)
    inst = np.full((size, size), -1, np.int64)
    areas: list[int] = []
    families = list(TEXTURES.values())
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        family = int(rng.integers(len(families)))
        placed = world.place_shape(rng, _shape, size, inst, areas)
        if placed is None:
            continue
        shape, frame = placed
        ys, xs = np.nonzero(shape)
        image[ys, xs] = world.paint_texture(rng, families[family], shape, ys, xs, frame)
        labels[ys, xs], inst[ys, xs] = family + 1, len(areas)  # instance ids count placed shapes
        areas.append(len(ys))
    return world.camera(rng, image), labels


def generate(n: int, *, seed: int, size: int = 128) -> list[world.Scene]:
    """``n`` pretext scenes; the same seed gives identical arrays."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, size=size) for _ in range(n)]
