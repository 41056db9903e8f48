"""Geometric and photometric transforms of (H, W, 3) uint8 RGB images.

Preprocessing (:func:`resize_image`) brings every decoded image to the spec's
``image.size``; augmentation (:func:`augment_image`) derives variants from the
preprocessed image, so every variant has the same size. Randomness comes only
from an explicit :class:`numpy.random.Generator` seeded per record by
:func:`record_rng` (a stable hash of the global seed and the record key), so a
retry, another worker or another engine draws the same variant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


def record_rng(seed: int, key: str) -> np.random.Generator:
    """A Generator seeded from ``sha256(f"{seed}:{key}")``: stable across processes and runs."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def resize_image(
    image: np.ndarray,
    size: Sequence[int],
    *,
    mode: str = "stretch",
    interpolation: str = "area",
    fill: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Bring an image to ``size = (height, width)``.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    size : (height, width)
    mode : {'stretch', 'aspect_crop', 'pad'}
        ``stretch`` ignores the aspect ratio; ``aspect_crop`` scales so the image
        covers the target (the shorter side fits) and crops the centre; ``pad``
        scales so the image fits inside and pads the borders with `fill`.
    interpolation : {'area', 'linear', 'cubic'}
        OpenCV interpolation (``INTER_AREA`` is the right choice for shrinking).
    fill : 3 ints
        Pad colour for ``mode='pad'``.

    Returns
    -------
    out : (height, width, 3) uint8 ndarray, C-contiguous.
    """
    height, width = int(size[0]), int(size[1])
    flag = _INTERPOLATIONS[interpolation]
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(image)
    if mode == "stretch":
        return cv2.resize(image, (width, height), interpolation=flag)
    if mode == "aspect_crop":
        scale = max(height / h, width / w)
        new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
        scaled = cv2.resize(image, (new_w, new_h), interpolation=flag)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return np.ascontiguousarray(scaled[top : top + height, left : left + width])
    if mode == "pad":
        scale = min(height / h, width / w)
        new_h, new_w = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
        scaled = cv2.resize(image, (new_w, new_h), interpolation=flag)
        out = np.empty((height, width, 3), dtype=np.uint8)
        out[:] = np.asarray(fill, dtype=np.uint8)
        top, left = (height - new_h) // 2, (width - new_w) // 2
        out[top : top + new_h, left : left + new_w] = scaled
        return out
    raise ValueError(f"unknown resize mode {mode!r}")


# --- augmentation ops: each takes (image, rng, **params) and draws a fixed number of values ---


def _flip(image: np.ndarray, rng: np.random.Generator, *, horizontal: bool, vertical: bool, p: float) -> np.ndarray:
    draw_h, draw_v = rng.random(2)  # always two draws, so later ops see the same stream
    if horizontal and draw_h < p:
        image = image[:, ::-1]
    if vertical and draw_v < p:
        image = image[::-1, :]
    return np.ascontiguousarray(image)


def _warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    # Reflection avoids black corners that would become a feature of their own.
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _rotate(image: np.ndarray, rng: np.random.Generator, *, degrees: float, p: float) -> np.ndarray:
    apply, unit = rng.random(2)
    if apply >= p:
        return image
    h, w = image.shape[:2]
    angle = (2.0 * unit - 1.0) * degrees
    return _warp(image, cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0))


def _translate(image: np.ndarray, rng: np.random.Generator, *, fraction: float, p: float) -> np.ndarray:
    apply, ux, uy = rng.random(3)
    if apply >= p:
        return image
    h, w = image.shape[:2]
    dx, dy = (2.0 * ux - 1.0) * fraction * w, (2.0 * uy - 1.0) * fraction * h
    return _warp(image, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]))


def _crop(image: np.ndarray, rng: np.random.Generator, *, scale: Sequence[float], p: float) -> np.ndarray:
    apply, us, ux, uy = rng.random(4)
    if apply >= p:
        return image
    h, w = image.shape[:2]
    area = scale[0] + us * (scale[1] - scale[0])
    side = float(np.sqrt(area))
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    top, left = int(uy * (h - ch + 1)), int(ux * (w - cw + 1))
    patch = image[top : top + ch, left : left + cw]
    return cv2.resize(patch, (w, h), interpolation=cv2.INTER_LINEAR)


def _brightness(image: np.ndarray, rng: np.random.Generator, *, delta: float, p: float) -> np.ndarray:
    apply, unit = rng.random(2)
    if apply >= p:
        return image
    factor = 1.0 + (2.0 * unit - 1.0) * delta
    return np.clip(np.rint(image.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def _contrast(image: np.ndarray, rng: np.random.Generator, *, delta: float, p: float) -> np.ndarray:
    apply, unit = rng.random(2)
    if apply >= p:
        return image
    factor = 1.0 + (2.0 * unit - 1.0) * delta
    pixels = image.astype(np.float32)
    mean = pixels.mean(axis=(0, 1), keepdims=True)
    return np.clip(np.rint((pixels - mean) * factor + mean), 0, 255).astype(np.uint8)


#: op name -> (function, defaults). Parameters are validated by :func:`normalize_op`.
OPS: dict[str, tuple[Any, dict[str, Any]]] = {
    "flip": (_flip, {"horizontal": True, "vertical": False, "p": 0.5}),
    "rotate": (_rotate, {"degrees": 15.0, "p": 1.0}),
    "translate": (_translate, {"fraction": 0.1, "p": 1.0}),
    "crop": (_crop, {"scale": [0.64, 1.0], "p": 1.0}),
    "brightness": (_brightness, {"delta": 0.2, "p": 1.0}),
    "contrast": (_contrast, {"delta": 0.2, "p": 1.0}),
}

_LIMITS = {"p": (0.0, 1.0), "degrees": (0.0, 180.0), "fraction": (0.0, 0.5), "delta": (0.0, 1.0)}


def normalize_op(raw: Any) -> dict[str, Any]:
    """Validate one augmentation op and complete it with defaults.

    Raises
    ------
    ValueError
        Naming the op and the offending parameter.
    """
    if not isinstance(raw, Mapping) or "op" not in raw:
        raise ValueError(f"each op must be a mapping with an 'op' key, got {raw!r}")
    name = raw["op"]
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; known: {sorted(OPS)}")
    defaults = OPS[name][1]
    params = {k: v for k, v in raw.items() if k != "op"}
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"op {name!r}: unknown parameter(s) {unknown}; known: {sorted(defaults)}")
    merged = {**defaults, **params}
    for key, value in merged.items():
        if key in ("horizontal", "vertical"):
            if not isinstance(value, bool):
                raise ValueError(f"op {name!r}: {key} must be true or false, got {value!r}")
        elif key == "scale":
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                    or not 0.0 < value[0] <= value[1] <= 1.0):
                raise ValueError(f"op {name!r}: scale must be [low, high] with 0 < low <= high <= 1, got {value!r}")
            merged[key] = [float(v) for v in value]
        else:
            low, high = _LIMITS[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"op {name!r}: {key} must be a number in [{low}, {high}], got {value!r}")
            merged[key] = float(value)
    return {"op": name, **merged}


def augment_image(image: np.ndarray, ops: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> np.ndarray:
    """Apply normalised `ops` in order, drawing from `rng`.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    ops : sequence of normalised op mappings (see :func:`normalize_op`)
    rng : numpy Generator, from :func:`record_rng`

    Returns
    -------
    out : (H, W, 3) uint8 ndarray, same size as `image`.
    """
    out = image
    for op in ops:
        function = OPS[op["op"]][0]
        out = function(out, rng, **{k: v for k, v in op.items() if k != "op"})
    return np.ascontiguousarray(out)
