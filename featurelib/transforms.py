"""Geometric and photometric transforms of (H, W, 3) uint8 RGB images.

Preprocessing (:func:`resize_image`) brings every decoded image to the spec's
``image.size``; augmentation (:func:`augment_image`) derives variants from the
preprocessed image, so every variant has the same size. Randomness comes only
from an explicit :class:`numpy.random.Generator` seeded per record by
:func:`record_rng` (a stable hash of the global seed and the record key), so a
retry, another worker or another engine draws the same variant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

#: Bump whenever the same ops could give a variant other pixels (it is part of the run fingerprint).
#: 2: brightness/contrast by exact per-value tables (float64 mean), the ops of issue #8.
AUGMENT_VERSION = 2

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


# --- augmentation ops ----------------------------------------------------------------------------------
#
# Each op is ``function(image, rng, **params) -> image`` on (H, W, 3) uint8 RGB. An op draws the same
# number of values from `rng` whatever the image and whether it applies, so skipping one (by its
# probability `p`, or because its amount is 0) never shifts the draws of the ops after it. An op whose
# amount is 0 returns its input untouched: no warp, no round trip through HSV (which alone changes most
# pixels of a uint8 image).

_WARP_INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
#: ``fill`` of the geometric ops: how pixels that come from outside the image are made up.
FILLS = {"reflect_101": cv2.BORDER_REFLECT_101, "reflect": cv2.BORDER_REFLECT,
         "replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}


def _warp(image: np.ndarray, matrix: np.ndarray, *, interpolation: str, fill: str,
          fill_color: Sequence[int]) -> np.ndarray:
    """``cv2.warpAffine`` into the same size; `fill` decides what appears beyond the borders."""
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix, (w, h), flags=_WARP_INTERPOLATIONS[interpolation],
                          borderMode=FILLS[fill], borderValue=tuple(int(v) for v in fill_color))


def _centre(image: np.ndarray) -> tuple[float, float]:
    h, w = image.shape[:2]
    return (w - 1) / 2.0, (h - 1) / 2.0


def _flip(image: np.ndarray, rng: np.random.Generator, *, horizontal: bool, vertical: bool, p: float) -> np.ndarray:
    draw_h, draw_v = rng.random(2).tolist()
    left_right, top_bottom = horizontal and draw_h < p, vertical and draw_v < p
    if not (left_right or top_bottom):
        return image
    # cv2.flip writes a contiguous copy 10x faster than numpy's copy of a negative-stride view
    return cv2.flip(image, -1 if left_right and top_bottom else (1 if left_right else 0))


def _quarter_turns(angle: float, shape: tuple[int, ...]) -> int | None:
    """``k`` when rotating by `angle` degrees is exactly ``np.rot90(image, k)`` in the same frame."""
    if angle % 90.0 != 0.0:
        return None
    k = int(angle // 90.0) % 4
    return k if k % 2 == 0 or shape[0] == shape[1] else None


def _rotate(image: np.ndarray, rng: np.random.Generator, *, degrees: float | Sequence[float], p: float,
            interpolation: str, fill: str, fill_color: Sequence[int]) -> np.ndarray:
    apply, unit = rng.random(2).tolist()
    if isinstance(degrees, (int, float)):
        if apply >= p or degrees == 0:
            return image
        angle = (2.0 * unit - 1.0) * degrees
    else:
        low, high = degrees
        if apply >= p or low == high == 0:
            return image
        angle = low + unit * (high - low)
    turns = _quarter_turns(angle, image.shape)
    if turns is not None:  # exact, and no interpolation blur: a right angle is a permutation of pixels
        return np.ascontiguousarray(np.rot90(image, turns))
    matrix = cv2.getRotationMatrix2D(_centre(image), angle, 1.0)  # positive: counter-clockwise
    return _warp(image, matrix, interpolation=interpolation, fill=fill, fill_color=fill_color)


def _translate(image: np.ndarray, rng: np.random.Generator, *, fraction: float, p: float,
               interpolation: str, fill: str, fill_color: Sequence[int]) -> np.ndarray:
    apply, ux, uy = rng.random(3).tolist()
    if apply >= p or fraction == 0:
        return image
    h, w = image.shape[:2]
    dx, dy = (2.0 * ux - 1.0) * fraction * w, (2.0 * uy - 1.0) * fraction * h
    return _warp(image, np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]]), interpolation=interpolation, fill=fill,
                 fill_color=fill_color)


def _scale(image: np.ndarray, rng: np.random.Generator, *, factor: Sequence[float], p: float,
           interpolation: str, fill: str, fill_color: Sequence[int]) -> np.ndarray:
    apply, unit = rng.random(2).tolist()
    low, high = factor
    if apply >= p or low == high == 1.0:
        return image
    zoom = low + unit * (high - low)
    matrix = cv2.getRotationMatrix2D(_centre(image), 0.0, zoom)
    return _warp(image, matrix, interpolation=interpolation, fill=fill, fill_color=fill_color)


def _shear(image: np.ndarray, rng: np.random.Generator, *, degrees: float, axis: str, p: float,
           interpolation: str, fill: str, fill_color: Sequence[int]) -> np.ndarray:
    apply, ux, uy = rng.random(3).tolist()
    if apply >= p or degrees == 0:
        return image
    sx = float(np.tan(np.radians((2.0 * ux - 1.0) * degrees))) if axis in ("x", "both") else 0.0
    sy = float(np.tan(np.radians((2.0 * uy - 1.0) * degrees))) if axis in ("y", "both") else 0.0
    cx, cy = _centre(image)
    # x' = x + sx (y - cy), y' = y + sy (x - cx): the centre stays where it is
    matrix = np.array([[1.0, sx, -sx * cy], [sy, 1.0, -sy * cx]])
    return _warp(image, matrix, interpolation=interpolation, fill=fill, fill_color=fill_color)


def _crop(image: np.ndarray, rng: np.random.Generator, *, scale: Sequence[float], p: float,
          interpolation: str) -> np.ndarray:
    apply, us, ux, uy = rng.random(4).tolist()
    if apply >= p or scale[0] == 1.0:
        return image
    h, w = image.shape[:2]
    area = scale[0] + us * (scale[1] - scale[0])
    side = float(np.sqrt(area))
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    top, left = int(uy * (h - ch + 1)), int(ux * (w - cw + 1))
    patch = image[top : top + ch, left : left + cw]
    return cv2.resize(patch, (w, h), interpolation=_WARP_INTERPOLATIONS[interpolation])


def mask_box(shape: tuple[int, ...], fraction: float, position: str | Sequence[float], draw_y: float,
             draw_x: float, *, circle: bool) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a mask covering `fraction` of each side, inside the image.

    A rectangle is ``round(fraction * H) x round(fraction * W)``; a circle's bounding square has side
    ``round(fraction * min(H, W))``. A random position is uniform over the places where the whole box
    fits; a fixed ``[y, x]`` (fractions of the height and width) is the box centre, moved inside.
    """
    h, w = shape[:2]
    mh, mw = (round(fraction * min(h, w)),) * 2 if circle else (round(fraction * h), round(fraction * w))
    if position == "random":
        top, left = int(draw_y * (h - mh + 1)), int(draw_x * (w - mw + 1))
    else:
        top = min(max(round(position[0] * h - mh / 2.0), 0), h - mh)
        left = min(max(round(position[1] * w - mw / 2.0), 0), w - mw)
    return top, left, mh, mw


def disc(side: int) -> np.ndarray:
    """(side, side) bool: pixel centres within ``side / 2`` of the square's centre."""
    yy, xx = np.ogrid[:side, :side]
    centre = (side - 1) / 2.0
    return (yy - centre) ** 2 + (xx - centre) ** 2 <= (side / 2.0) ** 2


def _mask(image: np.ndarray, rng: np.random.Generator, *, shape: str, size: Sequence[float],
          position: str | Sequence[float], color: Sequence[int], p: float) -> np.ndarray:
    apply, us, uy, ux = rng.random(4).tolist()
    if apply >= p or size[1] == 0:
        return image
    fraction = size[0] + us * (size[1] - size[0])
    top, left, mh, mw = mask_box(image.shape, fraction, position, uy, ux, circle=shape == "circle")
    if mh == 0 or mw == 0:
        return image
    out = np.ascontiguousarray(image).copy()
    paint = tuple(int(v) for v in color)
    # OpenCV fills: numpy broadcasting a 3-value colour over a region costs 10-20x more
    if shape == "rect":
        cv2.rectangle(out, (left, top), (left + mw - 1, top + mh - 1), paint, thickness=-1)
        return out
    solid = np.empty((mh, mw, 3), np.uint8)
    cv2.rectangle(solid, (0, 0), (mw - 1, mh - 1), paint, thickness=-1)
    cv2.copyTo(solid, disc(mh).view(np.uint8), out[top : top + mh, left : left + mw])
    return out


_LEVELS = np.arange(256, dtype=np.float64)


def _per_channel_map(image: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """Apply a (3, 256) float table of new values per channel: rounded, clipped, by ``cv2.LUT``.

    A per-value table is exact (each output is the formula of its input value) and about 20x
    faster than the arithmetic on the float image.
    """
    lut = np.clip(np.rint(tables), 0, 255).astype(np.uint8).T.reshape(1, 256, 3)
    return cv2.LUT(np.ascontiguousarray(image), np.ascontiguousarray(lut))


def _brightness(image: np.ndarray, rng: np.random.Generator, *, delta: float, p: float) -> np.ndarray:
    apply, unit = rng.random(2).tolist()
    if apply >= p or delta == 0:
        return image
    factor = 1.0 + (2.0 * unit - 1.0) * delta
    return _per_channel_map(image, np.tile(_LEVELS * factor, (3, 1)))


def _contrast(image: np.ndarray, rng: np.random.Generator, *, delta: float, p: float) -> np.ndarray:
    apply, unit = rng.random(2).tolist()
    if apply >= p or delta == 0:
        return image
    factor = 1.0 + (2.0 * unit - 1.0) * delta
    mean = np.array(cv2.mean(image)[:3])[:, None]  # per channel, exact (float64 sums of integers)
    return _per_channel_map(image, (_LEVELS[None, :] - mean) * factor + mean)


def _saturation(image: np.ndarray, rng: np.random.Generator, *, delta: float, p: float) -> np.ndarray:
    apply, unit = rng.random(2).tolist()
    if apply >= p or delta == 0:
        return image
    factor = 1.0 + (2.0 * unit - 1.0) * delta
    # Blend with the pixel's own gray (as PIL's ImageEnhance.Color): 0 is gray, 1 the image, >1 more vivid.
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None]
    return np.clip(np.rint(gray + factor * (image.astype(np.float32) - gray)), 0, 255).astype(np.uint8)


def _hue(image: np.ndarray, rng: np.random.Generator, *, delta: float, p: float) -> np.ndarray:
    apply, unit = rng.random(2).tolist()
    steps = round((2.0 * unit - 1.0) * delta * 256) % 256  # OpenCV's *_FULL hue: 256 steps per turn
    if apply >= p or steps == 0:
        return image
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(steps)  # uint8 arithmetic wraps around the colour circle
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def _noise(image: np.ndarray, rng: np.random.Generator, *, sigma: float, p: float) -> np.ndarray:
    apply = float(rng.random())
    stream = int(rng.integers(0, 2**63))  # the noise comes from its own stream: one draw here either way
    if apply >= p or sigma == 0:
        return image
    noise = np.random.default_rng(stream).standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image.astype(np.float32) + np.float32(sigma) * noise), 0, 255).astype(np.uint8)


def _grayscale(image: np.ndarray, rng: np.random.Generator, *, p: float) -> np.ndarray:
    if rng.random() >= p:
        return image
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


# --- op parameters: defaults, checks and the one-line documentation docs/AUGMENT.md repeats -----------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _number(low: float, high: float):
    def check(value: Any) -> float:
        if not _is_number(value) or not low <= value <= high:
            raise ValueError(f"must be a number in [{low:g}, {high:g}], got {value!r}")
        return float(value)
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _choice(options: Sequence[str]):
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return value
    return check


def _range(low: float, high: float, *, open_low: bool = False):
    """``[a, b]`` with ``low <= a <= b <= high`` (``low < a`` when `open_low`)."""
    def check(value: Any) -> list[float]:
        if (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)
                and (low < value[0] if open_low else low <= value[0]) and value[0] <= value[1] <= high):
            return [float(v) for v in value]
        bound = "<" if open_low else "<="
        raise ValueError(f"must be [low, high] with {low:g} {bound} low <= high <= {high:g}, got {value!r}")
    return check


def _degrees(value: Any) -> float | list[float]:
    """A number ``d`` (uniform in [-d, d]) or a range ``[low, high]`` within [-360, 360]."""
    if _is_number(value):
        if not 0 <= value <= 180:
            raise ValueError(f"must be a number in [0, 180] or [low, high] within [-360, 360], got {value!r}")
        return float(value)
    try:
        return _range(-360.0, 360.0)(value)
    except ValueError:
        raise ValueError(f"must be a number in [0, 180] or [low, high] within [-360, 360], got {value!r}") from None


def _color(value: Any) -> list[int]:
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return [int(v) for v in value]
    raise ValueError(f"must be three integers in [0, 255] (R, G, B), got {value!r}")


def _position(value: Any) -> str | list[float]:
    if value == "random":
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) and 0 <= v <= 1 for v in value):
        return [float(v) for v in value]
    raise ValueError(f"must be 'random' or [y, x], fractions in [0, 1] of the height and width, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Param:
    """One op parameter: its default, its check (returns the normalised value) and its documentation."""

    default: Any
    check: Callable[[Any], Any]
    doc: str


@dataclasses.dataclass(frozen=True)
class Op:
    """An augmentation op: the function, its parameters, what it does and which amount 0 skips it."""

    function: Callable[..., np.ndarray]
    params: dict[str, Param]
    doc: str
    identity: str


def _p(default: float) -> Param:
    return Param(default, _number(0.0, 1.0), "probability that the op applies to a variant")


_GEOMETRY = {
    "interpolation": Param("linear", _choice(tuple(_WARP_INTERPOLATIONS)), "nearest | linear | cubic"),
    "fill": Param("reflect_101", _choice(tuple(FILLS)),
                  "what appears beyond the borders: reflect_101 (dcb|abcd|cba), reflect (cba|abcd|dcb), "
                  "replicate (aaa|abcd|ddd), constant (fill_color)"),
    "fill_color": Param([0, 0, 0], _color, "RGB colour of fill: constant"),
}

#: op name -> :class:`Op`. The names and parameters are part of the spec contract.
OPS: dict[str, Op] = {
    "flip": Op(_flip, {"horizontal": Param(True, _boolean, "mirror left-right"),
                       "vertical": Param(False, _boolean, "mirror top-bottom"), "p": _p(0.5)},
               "mirror the image; each axis is drawn separately", "p: 0"),
    "rotate": Op(_rotate, {"degrees": Param(15.0, _degrees, "d: uniform in [-d, d]; or [low, high]"), "p": _p(1.0),
                           **_GEOMETRY},
                 "rotate about the centre, counter-clockwise for positive angles; a multiple of 90 degrees on "
                 "a square image (or of 180 on any) is an exact pixel permutation", "degrees: 0"),
    "translate": Op(_translate, {"fraction": Param(0.1, _number(0.0, 0.5),
                                                   "shift uniform in [-f, f] of the width and of the height"),
                                 "p": _p(1.0), **_GEOMETRY}, "shift the image", "fraction: 0"),
    "scale": Op(_scale, {"factor": Param([0.8, 1.2], _range(0.0, 10.0, open_low=True),
                                         "zoom uniform in [low, high]; < 1 zooms out, > 1 in"),
                         "p": _p(1.0), **_GEOMETRY}, "zoom about the centre, keeping the size", "factor: [1, 1]"),
    "shear": Op(_shear, {"degrees": Param(10.0, _number(0.0, 60.0), "shear angle uniform in [-d, d]"),
                         "axis": Param("x", _choice(("x", "y", "both")),
                                       "x slants vertical lines, y horizontal ones; both draws each"),
                         "p": _p(1.0), **_GEOMETRY}, "shear about the centre", "degrees: 0"),
    "crop": Op(_crop, {"scale": Param([0.64, 1.0], _range(0.0, 1.0, open_low=True),
                                      "area of the crop uniform in [low, high] of the image's, same aspect"),
                       "p": _p(1.0), "interpolation": _GEOMETRY["interpolation"]},
               "random crop, resized back to image.size", "scale: [1, 1]"),
    "mask": Op(_mask, {"shape": Param("rect", _choice(("rect", "circle")), "rect | circle"),
                       "size": Param([0.2, 0.4], _range(0.0, 1.0),
                                     "side uniform in [low, high]: a fraction of each side (rect) or of the "
                                     "shorter side (circle's diameter); [s, s] is a fixed size"),
                       "position": Param("random", _position,
                                         "random (uniform where the mask fits) or [y, x]: the centre as fractions "
                                         "of the height and width"),
                       "color": Param([0, 0, 0], _color, "RGB the masked pixels get"), "p": _p(0.5)},
             "cutout: paint one rectangle or disc", "size: [0, 0]"),
    "brightness": Op(_brightness, {"delta": Param(0.2, _number(0.0, 1.0), "multiply by uniform [1-d, 1+d]"),
                                   "p": _p(1.0)}, "scale every value", "delta: 0"),
    "contrast": Op(_contrast, {"delta": Param(0.2, _number(0.0, 1.0),
                                              "stretch around each channel's mean by uniform [1-d, 1+d]"),
                               "p": _p(1.0)}, "stretch values around their mean", "delta: 0"),
    "saturation": Op(_saturation, {"delta": Param(0.2, _number(0.0, 1.0),
                                                  "blend factor with the gray image, uniform [1-d, 1+d]"),
                                   "p": _p(1.0)}, "more or less colourful (0 = gray)", "delta: 0"),
    "hue": Op(_hue, {"delta": Param(0.05, _number(0.0, 0.5),
                                    "rotate hue by uniform [-d, d] of a full turn (256 steps per turn)"),
                     "p": _p(1.0)}, "rotate the colours around the colour circle (HSV)", "delta: 0"),
    "noise": Op(_noise, {"sigma": Param(8.0, _number(0.0, 255.0), "standard deviation, in levels of 0..255"),
                         "p": _p(1.0)}, "add Gaussian noise to every value", "sigma: 0"),
    "grayscale": Op(_grayscale, {"p": _p(0.1)},
                    "OpenCV's RGB2GRAY (0.299 R + 0.587 G + 0.114 B) copied into the three channels", "p: 0"),
}


#: The ops featurelib ships (docs/AUGMENT.md lists these; plugins may add others).
BUILTIN_OPS: tuple[str, ...] = tuple(OPS)


def register_op(name: str, function: Callable[..., np.ndarray], params: Mapping[str, Param], *, doc: str,
                identity: str) -> Op:
    """Add an augmentation op (for plugin modules: see docs/EXTENDING.md).

    Parameters
    ----------
    function : callable
        ``function(image, rng, **params) -> image``: (H, W, 3) uint8 in and out, the same size; it
        must draw a fixed number of values from `rng` whatever the image and whether it applies.
    params : mapping of str to Param
        Every parameter with its default, check and documentation (include ``p``).

    Raises
    ------
    ValueError
        If another op already has that name.
    """
    op = Op(function, dict(params), doc, identity)
    if name in OPS and OPS[name] != op:
        raise ValueError(f"augmentation op {name!r} is already registered")
    OPS[name] = op
    return op


def probability(default: float) -> Param:
    """The usual ``p`` parameter, for :func:`register_op`."""
    return _p(default)


def normalize_op(raw: Any) -> dict[str, Any]:
    """Validate one augmentation op and complete it with defaults.

    Returns
    -------
    dict
        ``{"op": name, **every parameter}`` with normalised values.

    Raises
    ------
    ValueError
        Naming the op, the offending parameter and what is valid.
    """
    if not isinstance(raw, Mapping) or "op" not in raw:
        raise ValueError(f"each op must be a mapping with an 'op' key, got {raw!r}")
    name = raw["op"]
    if not isinstance(name, str) or name not in OPS:
        raise ValueError(f"unknown op {name!r}; known: {', '.join(OPS)}")
    params = OPS[name].params
    given = {k: v for k, v in raw.items() if k != "op"}
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ValueError(f"op {name!r}: unknown parameter(s) {unknown}; known: {sorted(params)}")
    out: dict[str, Any] = {"op": name}
    for key, param in params.items():
        try:
            out[key] = param.check(given.get(key, param.default))
        except ValueError as exc:
            raise ValueError(f"op {name!r}: {key} {exc}") from None
    return out


def augment_image(image: np.ndarray, ops: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> np.ndarray:
    """Apply normalised `ops` in order, drawing from `rng`.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    ops : sequence of normalised op mappings (see :func:`normalize_op`)
    rng : numpy Generator, from :func:`record_rng`

    Returns
    -------
    out : (H, W, 3) uint8 ndarray, same size as `image`, C-contiguous.
    """
    out = image
    for op in ops:
        out = OPS[op["op"]].function(out, rng, **{k: v for k, v in op.items() if k != "op"})
    return np.ascontiguousarray(out)


def ops_reference() -> str:
    """The Markdown table of every op and parameter with its default (docs/AUGMENT.md holds it verbatim)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")  # a bare | would end the table cell

    lines = ["| op | parameter | default | meaning |", "|---|---|---|---|"]
    for name in BUILTIN_OPS:
        op = OPS[name]
        lines.append(f"| `{name}` | | | {cell(op.doc)}; skipped when `{op.identity}` |")
        for key, param in op.params.items():
            default = json.dumps(param.default) if isinstance(param.default, (bool, list)) else param.default
            lines.append(f"| | `{key}` | `{default}` | {cell(param.doc)} |")
    return "\n".join(lines)
