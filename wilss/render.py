"""Pure rendering helpers: numpy arrays in, numpy arrays out (no UI, no torch). Used by the CLI and the app.

Images are ``HxWx3`` uint8 RGB; masks ``HxW`` integer class ids; CAMs and score maps ``HxW`` floats in [0, 1];
colours ``K x 3`` uint8 (a checkpoint's ``colours``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from wilss.conventions import colorize

def heatmap(values: np.ndarray) -> np.ndarray:
    """``HxW`` floats in [0, 1] (clipped; NaN -> 0) -> ``HxWx3`` uint8 RGB 'jet' colours (blue low, red high)."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    if values.ndim != 2:
        raise ValueError(f"expected an HxW map, got shape {values.shape}")
    scaled = np.uint8(np.clip(values, 0.0, 1.0) * 255.0 + 0.5)
    return cv2.applyColorMap(scaled, cv2.COLORMAP_JET)[..., ::-1].copy()  # OpenCV gives BGR


def blend(image: np.ndarray, layer: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """``(1 - weight) * image + weight * layer``, both ``HxWx3`` uint8, rounded."""
    image, layer = _rgb(image), _rgb(layer)
    if image.shape != layer.shape:
        raise ValueError(f"image {image.shape} and layer {layer.shape} differ in size")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    out = (1.0 - weight) * image.astype(np.float32) + weight * layer.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def cam_overlay(image: np.ndarray, cam: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """A class activation map (``HxW`` in [0, 1]) as a heat map over ``image``; resized to it if needed."""
    image = _rgb(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != image.shape[:2]:
        cam = cv2.resize(cam, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return blend(image, heatmap(cam), weight)


def colour_mask(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """``HxW`` class ids -> ``HxWx3`` uint8 in the class colours (void and unknown ids white)."""
    return colorize(np.asarray(mask), np.asarray(colours, dtype=np.uint8))


def mask_overlay(image: np.ndarray, mask: np.ndarray, colours: np.ndarray, weight: float = 0.5,
                 *, background_clear: bool = True) -> np.ndarray:
    """The class colours blended over ``image``; with ``background_clear`` background (id 0) pixels stay as they are."""
    image = _rgb(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    out = blend(image, colour_mask(mask, colours), weight)
    if background_clear:
        out[mask == 0] = image[mask == 0]
    return out


def upscale(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor so the shorter side reaches ``min_side`` (small images
    stay crisp in a gallery); larger images are returned as they are."""
    h, w = image.shape[:2]
    factor = max(1, math.ceil(min_side / max(min(h, w), 1)))
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    return image
