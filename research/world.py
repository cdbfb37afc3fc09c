"""A seeded procedural world: scenes of textured shapes with exact segmentation masks.

Each category is a shape *and* a texture; the two colours of every instance are random, so colour carries
no class information. Backgrounds are smooth random-colour noise plus clutter (thin lines, small blobs,
irregular solid patches) that matches no category. Masks come from the same rasterised polygons as the image
(no antialiasing), so they are exact, occlusion included: a pixel's label is the class of the top-most object.
Needs numpy and OpenCV only. Layout written by :func:`write_split` / :func:`write_world` (VOC-like)::

    root/world.json                  {"classes": [...], "splits": {split: {stem: [object class ids]}}}
    root/<split>/images/00000.png    RGB;  root/<split>/masks/00000.png: mode 'P', VOC palette, class ids
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from wilss.files import atomic_write
from wilss.recipes import WORLD_CLASSES

Scene = tuple[np.ndarray, np.ndarray]  # (image HxWx3 uint8 RGB, mask HxW uint8 class ids)
Polys = list[tuple[np.ndarray, int]]  # (Nx2 polygon in unit-radius coordinates, 1 = fill / 0 = cut a hole)

_SHIFT = 4  # fillPoly sub-pixel bits: vertices land on a 1/16 px grid
MIN_VISIBLE = 0.4  # try to keep >= 40% of every earlier object visible when placing a new one
PLACE_TRIES = 12
SIZE_RANGE = (0.18, 0.45)  # object diameter as a fraction of the image side


# ---- shapes: rng -> polygons around the origin with radius ~1 --------------------------------------------
def _ngon(n: int, radius: float = 1.0, phase: float = 0.0, centre=(0.0, 0.0)) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], 1)


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> Callable[..., Polys]:
    """Shape function of a regular n-gon (n = 48 is a disc)."""
    return lambda rng: [(_ngon(n, radius, phase), 1)]


def _star(rng) -> Polys:
    t = np.arange(10) * np.pi / 5 - np.pi / 2
    rad = np.where(np.arange(10) % 2 == 0, 1.1, rng.uniform(0.4, 0.5))
    return [(np.stack([rad * np.cos(t), rad * np.sin(t)], 1), 1)]


def _ring(rng) -> Polys:
    return [(_ngon(48), 1), (_ngon(48, rng.uniform(0.45, 0.6)), 0)]


def _cross(rng) -> Polys:
    w = rng.uniform(0.27, 0.36)
    q = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    return [(np.array(q, dtype=np.float64), 1)]


def _crescent(rng) -> Polys:
    return [(_ngon(48), 1), (_ngon(48, rng.uniform(0.75, 0.85), 0.0, (rng.uniform(0.4, 0.55), 0.0)), 0)]


def _arrow(rng) -> Polys:
    h, s = rng.uniform(0.6, 0.75), rng.uniform(0.22, 0.3)
    q = [(-1, -s), (0.1, -s), (0.1, -h), (1, 0), (0.1, h), (0.1, s), (-1, s)]
    return [(np.array(q, dtype=np.float64), 1)]


# ---- textures: (u, v, edge, r, rng) -> 0/1 per object pixel ----------------------------------------------
# u, v: the pixel's coordinates in the object's rotated frame (px); edge: distance to the object's boundary
# (px); r: object radius (px). Periods scale with r but never drop below what survives the camera blur.
def _period(r: float, rng, lo: float = 0.28, hi: float = 0.38, floor: float = 5.0) -> float:
    return max(floor, r * rng.uniform(lo, hi))


def _stripes(u, v, edge, r, rng):
    p = _period(r, rng)
    return np.floor(u / p + rng.random()) % 2


def _checker(u, v, edge, r, rng):
    p = _period(r, rng, 0.3, 0.4)
    return (np.floor(u / p) + np.floor(v / p)) % 2


def _dots(u, v, edge, r, rng):
    p = _period(r, rng, 0.3, 0.4, 6.0)
    rd = p * rng.uniform(0.25, 0.33)
    return ((u % p - p / 2) ** 2 + (v % p - p / 2) ** 2 < rd * rd).astype(np.float64)


def _concentric(u, v, edge, r, rng):
    return np.floor(np.hypot(u, v) / _period(r, rng, 0.2, 0.28, 4.0)) % 2


def _sectors(u, v, edge, r, rng):
    n = 2 * int(rng.integers(4, 8))
    return np.floor((np.arctan2(v, u) + np.pi) * n / (2 * np.pi)) % 2


def _grid(u, v, edge, r, rng):
    p, w = _period(r, rng, 0.3, 0.4, 6.0), rng.uniform(1.3, 2.0)
    return ((u % p < w) | (v % p < w)).astype(np.float64)


def _waves(u, v, edge, r, rng):
    p = _period(r, rng)
    bend = p * rng.uniform(0.4, 0.7) * np.sin(2 * np.pi * u / (r * rng.uniform(0.6, 0.9)))
    return (np.sin(2 * np.pi * (v + bend) / p) > 0).astype(np.float64)


def _speckle(u, v, edge, r, rng):
    cell = rng.uniform(1.5, 2.5)
    iu, iv = ((u - u.min()) / cell).astype(int), ((v - v.min()) / cell).astype(int)
    return (rng.random((iu.max() + 1, iv.max() + 1)) < 0.5)[iu, iv].astype(np.float64)


def _border(u, v, edge, r, rng):
    return (edge < max(2.0, r * rng.uniform(0.12, 0.18))).astype(np.float64)


# class name -> (shape, texture); the order fixes the class ids (1..K-1)
CATEGORIES: dict[str, tuple[Callable, Callable]] = {
    "disc": (_regular(48), _stripes),
    "square": (_regular(4, 1.0, np.pi / 4), _checker),
    "triangle": (_regular(3, 1.1, -np.pi / 2), _dots),
    "star": (_star, _concentric),
    "ring": (_ring, _sectors),
    "cross": (_cross, _grid),
    "hexagon": (_regular(6), _waves),
    "crescent": (_crescent, _speckle),
    "arrow": (_arrow, _border),
}
# The product knows the classes by name (``wilss.recipes.WORLD_CLASSES``, what reads a world folder); the order here
# must match it.
assert WORLD_CLASSES == ("background", *CATEGORIES), "wilss.recipes.WORLD_CLASSES and CATEGORIES disagree"


# ---- drawing -------------------------------------------------------------------------------------------
def _colour(rng) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def _two_colours(rng) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours far enough apart (L1 >= 200) for the texture to show."""
    cand = rng.integers(0, 256, (16, 3)).astype(np.float64)
    dist = np.abs(cand[1:] - cand[0]).sum(1)
    far = np.nonzero(dist >= 200)[0]
    return cand[0], cand[1 + (far[0] if len(far) else int(dist.argmax()))]


def cluttered_background(rng, size: int) -> np.ndarray:
    """``size x size x 3`` uint8: smooth random-colour noise, finer noise, then clutter."""
    k, fine_k = int(rng.integers(3, 8)), int(rng.integers(12, 32))
    base = cv2.resize(rng.uniform(0, 255, (k, k, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    base += cv2.resize(20 * rng.standard_normal((fine_k, fine_k, 3), dtype=np.float32), (size, size))
    image = np.clip(base, 0, 255, out=base).astype(np.uint8)
    _clutter(rng, image)
    return image


def _clutter(rng, image: np.ndarray) -> None:
    """Thin lines, small blobs and irregular solid patches: none is a category's shape + texture."""
    s = image.shape[0]
    aa = dict(lineType=cv2.LINE_AA, shift=_SHIFT)
    for _ in range(int(rng.integers(2, 7))):
        pts = rng.uniform(0, s, (int(rng.integers(2, 4)), 2)) * (1 << _SHIFT)
        cv2.polylines(image, [pts.astype(np.int32)], False, _colour(rng), int(rng.integers(1, 3)), **aa)
    for _ in range(int(rng.integers(2, 8))):
        c, ax = rng.uniform(0, s, 2) * (1 << _SHIFT), rng.uniform(1, 0.04 * s, 2) * (1 << _SHIFT)
        cv2.ellipse(image, tuple(int(x) for x in c), tuple(int(x) for x in ax), float(rng.uniform(0, 180)),
                    0, 360, _colour(rng), -1, **aa)
    for _ in range(int(rng.integers(0, 3))):
        n = int(rng.integers(5, 9))
        t, rad = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(0.4, 1.0, n) * s * rng.uniform(0.05, 0.12)
        pts = rng.uniform(0, s, 2) + np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
        cv2.fillPoly(image, [(pts * (1 << _SHIFT)).astype(np.int32)], _colour(rng), **aa)


def _random_frame(rng, size: int) -> tuple[float, float, float, float, float, float]:
    """(cx, cy, radius, angle, sx, sy): where an object goes, how big, rotated and slightly stretched."""
    r = size * rng.uniform(*SIZE_RANGE) / 2
    cx, cy = rng.uniform(0.6 * r, size - 0.6 * r, 2)
    return cx, cy, r, rng.uniform(0, 2 * np.pi), rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)


def _rasterise(polys: Polys, frame, size: int) -> np.ndarray:
    """Unit polygons placed by ``frame`` -> ``size x size`` bool mask (hard edges, holes cut)."""
    cx, cy, r, a, sx, sy = frame
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * r
    out = np.zeros((size, size), np.uint8)
    for pts, value in polys:
        xy = (pts * (sx, sy)) @ rot.T + (cx, cy)
        cv2.fillPoly(out, [np.round(xy * (1 << _SHIFT)).astype(np.int32)], value, cv2.LINE_8, _SHIFT)
    return out.astype(bool)


def place_shape(rng, shape_fn: Callable, size: int, inst: np.ndarray, areas: list[int]):
    """Sample a frame whose shape leaves every earlier object >= MIN_VISIBLE visible (else the best try)."""
    visible = np.bincount(inst[inst >= 0], minlength=len(areas))
    best, best_score = None, -np.inf
    for _ in range(PLACE_TRIES):
        frame = _random_frame(rng, size)
        shape = _rasterise(shape_fn(rng), frame, size)
        lost = np.bincount(inst[shape & (inst >= 0)], minlength=len(areas))
        score = np.min((visible - lost) / np.maximum(areas, 1)) if areas else 1.0
        if score >= MIN_VISIBLE and shape.any():
            return shape, frame
        if score > best_score and shape.any():
            best, best_score = (shape, frame), score
    return best


def paint_texture(rng, texture_fn: Callable, shape: np.ndarray, ys: np.ndarray, xs: np.ndarray, frame) -> np.ndarray:
    """RGB colours (``N x 3`` uint8) for the object's pixels ``(ys, xs)``: its texture in two random colours."""
    cx, cy, r, a = frame[:4]
    dx, dy = xs - cx, ys - cy
    u, v = np.cos(a) * dx + np.sin(a) * dy, -np.sin(a) * dx + np.cos(a) * dy
    edge = cv2.distanceTransform(shape.astype(np.uint8), cv2.DIST_L2, 3)[ys, xs]
    t = texture_fn(u, v, edge, r, rng)
    c0, c1 = _two_colours(rng)
    return (c0 + (c1 - c0) * t[:, None]).astype(np.uint8)


def _draw_scene(rng: np.random.Generator, classes: Sequence[int], size: int):
    """Like :func:`render_scene`, also returning the layers: ``[(class_id, HxW bool full shape)]`` bottom-up."""
    ids = [int(c) for c in classes]
    if any(not 1 <= c < len(WORLD_CLASSES) for c in ids):
        raise ValueError(f"object class ids must be in 1..{len(WORLD_CLASSES) - 1}, got {ids}")
    image = cluttered_background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    inst = np.full((size, size), -1, np.int64)
    areas, layers = [], []
    for k, cls in enumerate(rng.permutation(ids) if ids else []):
        shape_fn, texture_fn = CATEGORIES[WORLD_CLASSES[cls]]
        shape, frame = place_shape(rng, shape_fn, size, inst, areas)
        ys, xs = np.nonzero(shape)
        image[ys, xs] = paint_texture(rng, texture_fn, shape, ys, xs, frame)
        mask[ys, xs], inst[ys, xs] = cls, k
        areas.append(len(ys))
        layers.append((int(cls), shape))
    return camera(rng, image), mask, layers


def camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A slight blur that softens edges in the image only (masks stay exact), plus sensor noise: uint8 out."""
    image = cv2.GaussianBlur(image, (3, 3), 0.6).astype(np.float32)
    image += 3.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


# ---- public API --------------------------------------------------------------------------------------------
def render_scene(rng: np.random.Generator, classes: Sequence[int], size: int = 128) -> Scene:
    """One object per entry of ``classes`` (ids >= 1), drawn in random order over a cluttered background.

    Returns ``(image, mask)``: ``size x size x 3`` uint8 RGB and ``size x size`` uint8 class ids
    (0 = background), the mask exact under occlusion.
    """
    image, mask, _ = _draw_scene(rng, classes, size)
    return image, mask


def sample_scene(rng: np.random.Generator, *, size: int = 128, min_objects: int = 2, max_objects: int = 5,
                 allowed: Sequence[int] | None = None, required: Sequence[int] = ()) -> Scene:
    """A scene of ``min_objects..max_objects`` objects (at least ``len(required)``) whose classes are drawn
    uniformly from ``allowed`` (default: every category), always including each class in ``required``."""
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    pool = np.arange(1, len(WORLD_CLASSES)) if allowed is None else np.asarray(list(allowed), dtype=np.int64)
    n = max(int(rng.integers(min_objects, max_objects + 1)), len(required))
    if n > len(required) and len(pool) == 0:
        raise ValueError("allowed is empty but extra objects are needed")
    extra = rng.choice(pool, n - len(required)) if n > len(required) else []
    return render_scene(rng, [*required, *extra], size)


def _scenes(n: int, seed: int, **kwargs) -> Iterator[Scene]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield sample_scene(rng, **kwargs)


def generate(n: int, *, seed: int, size: int = 128, min_objects: int = 2, max_objects: int = 5,
             allowed: Sequence[int] | None = None) -> list[Scene]:
    """``n`` scenes from :func:`sample_scene`; the same seed gives identical arrays."""
    return list(_scenes(n, seed, size=size, min_objects=min_objects, max_objects=max_objects, allowed=allowed))


def _check_empty(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} already exists and is not empty; refusing to overwrite a split")


def _read_meta(json_path: Path) -> dict:
    meta = json.loads(json_path.read_text()) if json_path.exists() else {"classes": list(WORLD_CLASSES)}
    if meta.get("classes") != list(WORLD_CLASSES):
        raise ValueError(f"{json_path} lists classes {meta.get('classes')}, not {list(WORLD_CLASSES)}")
    return meta


def save_palette_mask(path: Path, mask: np.ndarray) -> None:
    """Write ``mask`` (``HxW`` uint8 class ids) atomically as a mode 'P' PNG with the VOC palette, as VOC does."""
    from PIL import Image

    from wilss.conventions import voc_palette  # lazy: conventions imports torch, generation doesn't need it

    png = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    png.putpalette(voc_palette().flatten().tolist())  # 'L' -> 'P'
    atomic_write(Path(path), png.save)


def write_split(root: Path, split: str, samples: Iterable[Scene]) -> None:
    """Write ``root/split/{images,masks}/NNNNN.png`` and record the split in ``root/world.json``.

    Masks are mode 'P' PNGs with the VOC palette (pixel value = class id). ``world.json`` maps each stem to
    the sorted object class ids (>= 1, background left out) present in its mask: the image-level tags.
    Raises FileExistsError if ``root/split`` exists and is not empty.
    """
    from PIL import Image

    root, folder = Path(root), Path(root) / split
    _check_empty(folder)
    _read_meta(root / "world.json")  # fail early on a world of other classes
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    tags: dict[str, list[int]] = {}
    for i, (image, mask) in enumerate(samples):
        stem = f"{i:05d}"
        atomic_write(folder / "images" / f"{stem}.png", Image.fromarray(image).save)
        save_palette_mask(folder / "masks" / f"{stem}.png", mask)
        tags[stem] = [int(c) for c in np.unique(mask) if c != 0]
    meta = _read_meta(root / "world.json")  # re-read: another split may have been written meanwhile
    meta.setdefault("splits", {})[split] = tags
    atomic_write(root / "world.json", lambda p: p.write_text(json.dumps(meta, indent=1)))


def write_world(root: Path, *, seed: int = 0, size: int = 128, n_train: int = 600, n_val: int = 100,
                n_test: int = 200) -> Path:
    """Generate and write the train / val / test splits (independent seeds derived from ``seed``)."""
    root = Path(root)
    splits = {"train": n_train, "val": n_val, "test": n_test}
    for split in splits:
        _check_empty(root / split)  # fail before writing anything
    for (split, n), s in zip(splits.items(), np.random.SeedSequence(seed).generate_state(len(splits))):
        write_split(root, split, _scenes(n, int(s), size=size))
    return root


# ------------------------------------------------------------------------------ a VOC-layout tree
def write_voc_tree(root, *, n_train: int = 40, n_val: int = 12, size: int = 64, seed: int = 0) -> Path:
    """A small tree in the VOC layout from the procedural world (this module's): JPEGImages/*.jpg, palette PNG
    masks in SegmentationClass/, ImageSets/Segmentation/{train,val,trainval}.txt, and classes.txt (the world's
    10 classes, so a task must fit 9 named ids, e.g. '5-2'). Scenes hold 1-3 objects, so the disjoint setting
    keeps enough images per step. Refuses a non-empty ``root``."""
    from PIL import Image

    from wilss.datasets import CLASSES_FILE, IMAGE_DIR, LIST_DIRS, MASK_DIRS  # lazy: wilss.data imports torch

    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not an empty folder; a VOC tree is only written into a new one")
    lists_dir = root / LIST_DIRS[0]
    for folder in (root / IMAGE_DIR, root / MASK_DIRS[0], lists_dir):
        folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for split, n, s in zip(("train", "val"), (n_train, n_val), np.random.SeedSequence(seed).generate_state(2)):
        names[split] = [f"{split}_{i:05d}" for i in range(n)]
        for name, (image, mask) in zip(names[split], generate(n, seed=int(s), size=size, min_objects=1,
                                                                 max_objects=3)):
            Image.fromarray(image).save(root / IMAGE_DIR / f"{name}.jpg", quality=95)
            save_palette_mask(root / MASK_DIRS[0] / f"{name}.png", mask)
    names["trainval"] = names["train"] + names["val"]
    for split, stems in names.items():
        (lists_dir / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    (root / CLASSES_FILE).write_text("".join(f"{c}\n" for c in WORLD_CLASSES))
    return root
