"""Colour and intensity descriptors: channel statistics and histograms.

Conventions follow OpenCV for 8-bit images, so results can be checked against
``cv2.calcHist``: HSV has H in [0, 180) and S, V in [0, 256); CIE L*a*b* is the
8-bit encoding (L scaled to [0, 255], a and b offset by 128); grayscale is
``cv2.COLOR_RGB2GRAY`` (0.299 R + 0.587 G + 0.114 B, rounded).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from featurelib import registry
from featurelib.descriptors._checks import check_rgb_uint8

#: Value range of each channel per colour space, as OpenCV's 8-bit conversions produce.
COLOR_SPACE_RANGES: dict[str, tuple[int, int, int]] = {
    "rgb": (256, 256, 256),
    "hsv": (180, 256, 256),
    "lab": (256, 256, 256),
}

_CONVERSIONS = {"hsv": cv2.COLOR_RGB2HSV, "lab": cv2.COLOR_RGB2LAB}


def _channel_counts(image: np.ndarray) -> np.ndarray:
    """(3, 256) float64 histogram of each channel's values (exact integer counts)."""
    return np.stack([cv2.calcHist([image], [c], None, [256], [0, 256]).reshape(-1) for c in range(3)]).astype(
        np.float64
    )


def color_stats(image: np.ndarray, *, color_space: str = "rgb") -> np.ndarray:
    """Per-channel mean, standard deviation and skewness.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
        RGB image.
    color_space : {'rgb', 'hsv', 'lab'}, optional
        Space of the channels (OpenCV's 8-bit conversions, see the module docstring).

    Returns
    -------
    stats : (9,) float32 ndarray
        ``[mean_0, std_0, skew_0, mean_1, std_1, skew_1, mean_2, std_2, skew_2]``
        for the channels of `color_space` (R, G, B by default) on their 8-bit scale. Standard deviation and skewness are the population
        (biased) moments, as ``numpy.std`` and ``scipy.stats.skew(bias=True)``;
        the skewness of a flat channel (std 0) is defined here as 0.

    Notes
    -----
    The moments are computed in float64 from each channel's 256-bin value
    histogram: exact, and about ten times faster than moments over the pixels.

    Raises
    ------
    ValueError
        If `image` is not (H, W, 3) uint8.
    """
    check_rgb_uint8(image)
    counts = _channel_counts(np.ascontiguousarray(convert_color(image, color_space)))
    n = counts[0].sum()
    values = np.arange(256, dtype=np.float64)
    mean = counts @ values / n
    centred = values[None, :] - mean[:, None]
    m2 = np.sum(counts * centred**2, axis=1) / n
    m3 = np.sum(counts * centred**3, axis=1) / n
    std = np.sqrt(m2)
    # A flat channel has no defined skewness; 0 keeps the vector finite.
    flat = m2 <= 1e-12
    skew = np.where(flat, 0.0, m3 / np.where(flat, 1.0, m2) ** 1.5)
    return np.stack([mean, std, skew], axis=1).reshape(-1).astype(np.float32)


def normalize_bins(bins: int | Sequence[int]) -> tuple[int, int, int]:
    """Bins per channel as a 3-tuple; accepts one int or three.

    Raises
    ------
    ValueError
        If a bin count is not an integer in [1, 256] or there are not 1 or 3 of them.
    """
    values = [bins] * 3 if isinstance(bins, (int, np.integer)) else list(bins)
    if len(values) != 3:
        raise ValueError(f"bins must be one int or three ints, got {bins!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 256:
            raise ValueError(f"bins: each bin count must be an integer in [1, 256], got {bins!r}")
    return int(values[0]), int(values[1]), int(values[2])


def convert_color(image: np.ndarray, color_space: str) -> np.ndarray:
    """Convert an RGB uint8 image to `color_space` ('rgb', 'hsv' or 'lab') with OpenCV."""
    if color_space not in COLOR_SPACE_RANGES:
        raise ValueError(f"color_space must be one of {sorted(COLOR_SPACE_RANGES)}, got {color_space!r}")
    if color_space == "rgb":
        return image
    return cv2.cvtColor(image, _CONVERSIONS[color_space])


def color_histogram(
    image: np.ndarray, *, bins: int | Sequence[int] = 8, color_space: str = "hsv"
) -> np.ndarray:
    """Joint 3-D colour histogram, L1-normalised.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
        RGB image.
    bins : int or sequence of 3 ints, optional
        Bins per channel; the output has ``b0 * b1 * b2`` entries. Channel ``c``
        with range ``R_c`` maps value ``v`` to bin ``floor(v * b_c / R_c)``
        (uniform bins over OpenCV's range, as ``cv2.calcHist``).
    color_space : {'rgb', 'hsv', 'lab'}, optional
        Space in which the histogram is computed (OpenCV's 8-bit conventions).

    Returns
    -------
    hist : (b0 * b1 * b2,) float32 ndarray
        Row-major (C order) flattening of the (b0, b1, b2) histogram; sums to 1.

    Raises
    ------
    ValueError
        If `image` is not (H, W, 3) uint8, `bins` is invalid or `color_space` unknown.
    """
    check_rgb_uint8(image)
    b = normalize_bins(bins)
    converted = convert_color(image, color_space)
    ranges = COLOR_SPACE_RANGES[color_space]
    # cv2.calcHist with uniform bins puts integer value v of range R into floor(v * b / R):
    # exactly the documented binning, and ~10x faster than numpy bincount over the pixels.
    counts = cv2.calcHist([np.ascontiguousarray(converted)], [0, 1, 2], None, list(b),
                          [0, ranges[0], 0, ranges[1], 0, ranges[2]])
    return (counts.reshape(-1).astype(np.float64) / (image.shape[0] * image.shape[1])).astype(np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luma of an RGB image, with OpenCV's ``COLOR_RGB2GRAY``."""
    check_rgb_uint8(image)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def intensity_histogram(image: np.ndarray, *, bins: int = 256) -> np.ndarray:
    """Histogram of grayscale intensities, L1-normalised.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) uint8 ndarray
        Grayscale image, or an RGB image converted with :func:`to_gray`.
    bins : int, optional
        Number of uniform bins over [0, 256); value ``v`` goes to ``floor(v * bins / 256)``.

    Returns
    -------
    hist : (bins,) float32 ndarray
        Sums to 1.

    Raises
    ------
    ValueError
        If `image` is not (H, W) or (H, W, 3) uint8 or `bins` is not in [1, 256].
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= 256:
        raise ValueError(f"bins must be an integer in [1, 256], got {bins!r}")
    gray = image if getattr(image, "ndim", 0) == 2 and image.dtype == np.uint8 and image.size else to_gray(image)
    counts = cv2.calcHist([gray], [0], None, [bins], [0, 256]).reshape(-1).astype(np.float64)
    return (counts / gray.size).astype(np.float32)


# --- declarations (the registry imports this module on first lookup) ---------------------


def _check_color_space(params: dict, report) -> dict:
    if params["color_space"] not in COLOR_SPACE_RANGES:
        report(f"color_space must be one of {sorted(COLOR_SPACE_RANGES)}, got {params['color_space']!r}")
    return dict(params)


def _check_color_hist(params: dict, report) -> dict:
    try:
        bins = list(normalize_bins(params["bins"]))
    except ValueError as exc:
        report(str(exc))
        bins = params["bins"]
    if params["color_space"] not in COLOR_SPACE_RANGES:
        report(f"color_space must be one of {sorted(COLOR_SPACE_RANGES)}, got {params['color_space']!r}")
    return {"bins": bins, "color_space": params["color_space"]}


def _check_intensity_hist(params: dict, report) -> dict:
    bins = params["bins"]
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 256:
        report(f"bins must be an integer in [1, 256], got {bins!r}")
    return {"bins": bins}


def _color_hist_dim(params: dict, size: tuple[int, int]) -> int:
    return int(np.prod(normalize_bins(params["bins"])))


COLOR_STATS = registry.register(registry.ExtractorDef(
    name="color_stats", version=1, defaults={"color_space": "rgb"}, check=_check_color_space,
    dim=lambda params, size: 9, handler=registry.per_image(color_stats)))

COLOR_HIST = registry.register(registry.ExtractorDef(
    name="color_hist", version=1, defaults={"bins": 8, "color_space": "hsv"}, check=_check_color_hist,
    dim=_color_hist_dim, handler=registry.per_image(color_histogram)))

INTENSITY_HIST = registry.register(registry.ExtractorDef(
    name="intensity_hist", version=1, defaults={"bins": 256}, check=_check_intensity_hist,
    dim=lambda params, size: params["bins"], handler=registry.per_image(intensity_histogram), view="gray"))
