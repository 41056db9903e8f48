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

from featurelib.descriptors._checks import check_rgb_uint8

#: Value range of each channel per colour space, as OpenCV's 8-bit conversions produce.
COLOR_SPACE_RANGES: dict[str, tuple[int, int, int]] = {
    "rgb": (256, 256, 256),
    "hsv": (180, 256, 256),
    "lab": (256, 256, 256),
}

_CONVERSIONS = {"hsv": cv2.COLOR_RGB2HSV, "lab": cv2.COLOR_RGB2LAB}


def color_stats(image: np.ndarray) -> np.ndarray:
    """Per-channel mean, standard deviation and skewness.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
        RGB image.

    Returns
    -------
    stats : (9,) float32 ndarray
        ``[mean_R, std_R, skew_R, mean_G, std_G, skew_G, mean_B, std_B, skew_B]``
        on the 0..255 scale. Standard deviation and skewness are the population
        (biased) moments, as ``numpy.std`` and ``scipy.stats.skew(bias=True)``;
        the skewness of a flat channel (std 0) is defined here as 0.

    Raises
    ------
    ValueError
        If `image` is not (H, W, 3) uint8.
    """
    check_rgb_uint8(image)
    pixels = image.reshape(-1, 3).astype(np.float64)
    mean = pixels.mean(axis=0)
    centred = pixels - mean
    m2 = np.mean(centred**2, axis=0)
    m3 = np.mean(centred**3, axis=0)
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
    # Integer bin indices, then one bincount: exact, and faster than histogramdd.
    flat = converted.reshape(-1, 3).astype(np.int64)
    index = np.zeros(flat.shape[0], dtype=np.int64)
    for channel in range(3):
        index = index * b[channel] + (flat[:, channel] * b[channel]) // ranges[channel]
    counts = np.bincount(index, minlength=b[0] * b[1] * b[2])
    return (counts / flat.shape[0]).astype(np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luma of an RGB image, with OpenCV's ``COLOR_RGB2GRAY``."""
    check_rgb_uint8(image)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def intensity_histogram(image: np.ndarray, *, bins: int = 256) -> np.ndarray:
    """Histogram of grayscale intensities, L1-normalised.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
        RGB image, converted with :func:`to_gray`.
    bins : int, optional
        Number of uniform bins over [0, 256); value ``v`` goes to ``floor(v * bins / 256)``.

    Returns
    -------
    hist : (bins,) float32 ndarray
        Sums to 1.

    Raises
    ------
    ValueError
        If `image` is not (H, W, 3) uint8 or `bins` is not in [1, 256].
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= 256:
        raise ValueError(f"bins must be an integer in [1, 256], got {bins!r}")
    gray = to_gray(image).reshape(-1).astype(np.int64)
    counts = np.bincount((gray * bins) // 256, minlength=bins)
    return (counts / gray.shape[0]).astype(np.float32)
