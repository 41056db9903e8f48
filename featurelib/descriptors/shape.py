"""Shape descriptors of the grayscale image: Hu's seven moment invariants and Zernike moments.

Every function here reads the ``gray`` view: OpenCV's ``COLOR_RGB2GRAY`` of the
preprocessed uint8 RGB image, (H, W) uint8.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from featurelib import registry
from featurelib.descriptors._checks import check_gray_uint8

BINARIZE = ("none", "otsu", "threshold")


def signed_log10(values: np.ndarray) -> np.ndarray:
    """``-sign(h) * log10(|h|)`` element-wise, with 0 mapped to 0 (the usual Hu moment scaling).

    Parameters
    ----------
    values : ndarray of float

    Returns
    -------
    ndarray of float64, same shape.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(values)
    nonzero = values != 0
    out[nonzero] = -np.sign(values[nonzero]) * np.log10(np.abs(values[nonzero]))
    return out


def hu_moments(gray: np.ndarray, *, log_scale: bool = True, binarize: str = "none",
               threshold: int = 128) -> np.ndarray:
    """The seven Hu moment invariants of a grayscale image.

    Parameters
    ----------
    gray : (H, W) uint8 ndarray
        Grayscale image (the ``gray`` view).
    log_scale : bool, optional
        Return ``-sign(h) * log10(|h|)`` (0 stays 0): the moments span many orders
        of magnitude, and a linear model wants them on one scale.
    binarize : {'none', 'otsu', 'threshold'}, optional
        ``none``: moments of the intensities. ``otsu``: of the foreground of
        Otsu's threshold (``cv2.THRESH_OTSU``). ``threshold``: of the pixels
        ``> threshold``. Binary images enter :func:`cv2.moments` with
        ``binaryImage=True`` (every foreground pixel weighs 1).
    threshold : int, optional
        The threshold of ``binarize: threshold``, in [0, 255].

    Returns
    -------
    hu : (7,) float32 ndarray
        ``cv2.HuMoments(cv2.moments(image))`` in OpenCV's order, log-scaled when
        asked. An image without mass (all zero) gives seven zeros.

    References
    ----------
    M.-K. Hu, "Visual pattern recognition by moment invariants", IRE Trans.
    Information Theory 8(2), 1962.
    """
    check_gray_uint8(gray)
    if binarize == "none":
        moments = cv2.moments(gray, binaryImage=False)
    elif binarize == "otsu":
        _, mask = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        moments = cv2.moments(mask, binaryImage=True)
    elif binarize == "threshold":
        _, mask = cv2.threshold(gray, threshold, 255, cv2.THRESH_BINARY)
        moments = cv2.moments(mask, binaryImage=True)
    else:
        raise ValueError(f"binarize must be one of {list(BINARIZE)}, got {binarize!r}")
    hu = cv2.HuMoments(moments).reshape(-1)
    if log_scale:
        hu = signed_log10(hu)
    return hu.astype(np.float32)


def _check_hu(params: dict, report) -> dict:
    if not isinstance(params["log_scale"], bool):
        report(f"log_scale must be true or false, got {params['log_scale']!r}")
    if params["binarize"] not in BINARIZE:
        report(f"binarize must be one of {list(BINARIZE)}, got {params['binarize']!r}")
    threshold = params["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold <= 255:
        report(f"threshold must be an integer in [0, 255], got {threshold!r}")
    return dict(params)


HU_MOMENTS = registry.register(registry.ExtractorDef(
    name="hu_moments", version=1, defaults={"log_scale": True, "binarize": "none", "threshold": 128},
    check=_check_hu, dim=lambda params, size: 7, handler=registry.per_image(hu_moments), view="gray"))


# --- Zernike moments ----------------------------------------------------------------------------


def zernike_orders(degree: int) -> list[tuple[int, int]]:
    """``(n, m)`` with ``0 <= m <= n <= degree`` and ``n - m`` even, in (n, m) order (25 for degree 8)."""
    return [(n, m) for n in range(degree + 1) for m in range(n % 2, n + 1, 2)]


def zernike_radial(n: int, m: int, rho: np.ndarray) -> np.ndarray:
    """The radial polynomial ``R_nm(rho) = sum_s (-1)^s (n-s)! / (s! ((n+m)/2-s)! ((n-m)/2-s)!) rho^(n-2s)``."""
    out = np.zeros_like(rho, dtype=np.float64)
    for s in range((n - m) // 2 + 1):
        coefficient = (-1) ** s * math.factorial(n - s) / (
            math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s))
        out += coefficient * rho ** (n - 2 * s)
    return out


@functools.lru_cache(maxsize=8)
def _zernike_basis(shape: tuple[int, int], radius: float, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, P) complex conjugate basis over the P pixels inside the disk, and their flat indices."""
    h, w = shape
    rows, cols = np.mgrid[:h, :w]
    y = (rows - (h - 1) / 2) / radius
    x = (cols - (w - 1) / 2) / radius
    rho = np.hypot(x, y)
    inside = (rho <= 1).reshape(-1)
    rho, theta = rho.reshape(-1)[inside], np.arctan2(y, x).reshape(-1)[inside]
    basis = np.stack([(n + 1) / np.pi * zernike_radial(n, m, rho) * np.exp(-1j * m * theta)
                      for n, m in zernike_orders(degree)])
    return basis, np.flatnonzero(inside)


def zernike(gray: np.ndarray, *, radius: float | None = None, degree: int = 8) -> np.ndarray:
    """Magnitudes of the Zernike moments of the gray intensities over a centred disk.

    Parameters
    ----------
    gray : (H, W) uint8 ndarray
        Grayscale image (the ``gray`` view); no binarisation.
    radius : float or None, optional
        Disk radius in pixels (>= 1), centred on the image centre ((H-1)/2, (W-1)/2);
        None: half the shorter side. Pixels with normalised distance <= 1 count.
    degree : int, optional
        Highest order n.

    Returns
    -------
    (K,) float32 ndarray
        ``|A_nm|`` for every ``(n, m)`` of :func:`zernike_orders` (K = 25 for
        degree 8), ``A_nm = (n + 1) / pi * sum f(x, y) R_nm(rho) exp(-i m theta)``
        with f the intensities divided by their sum over the disk (so the
        moments do not depend on exposure). An image black over the whole disk
        gives zeros. Rotation-invariant (tested: 90-degree rotations exactly,
        other angles approximately, as pixels resample).

    References
    ----------
    A. Khotanzad, Y. H. Hong, "Invariant image recognition by Zernike moments",
    IEEE PAMI 12(5), 1990.
    """
    check_gray_uint8(gray)
    if radius is None:
        radius = min(gray.shape) / 2
    basis, inside = _zernike_basis(gray.shape, float(radius), degree)
    values = gray.reshape(-1)[inside].astype(np.float64)
    total = values.sum()
    if total == 0:
        return np.zeros(basis.shape[0], dtype=np.float32)
    return np.abs(basis @ (values / total)).astype(np.float32)


def _check_zernike(params: dict, report) -> dict:
    out = dict(params)
    radius, degree = params["radius"], params["degree"]
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, (int, float))
                               or not math.isfinite(radius) or radius < 1):
        report(f"radius must be a finite number of pixels >= 1, or null (half the shorter side), got {radius!r}")
    elif radius is not None:
        out["radius"] = float(radius)
    if isinstance(degree, bool) or not isinstance(degree, int) or not 0 <= degree <= 24:
        report(f"degree must be an integer in [0, 24], got {degree!r}")
    return out


ZERNIKE = registry.register(registry.ExtractorDef(
    name="zernike", version=1, defaults={"radius": None, "degree": 8}, check=_check_zernike,
    dim=lambda params, size: len(zernike_orders(params["degree"])), handler=registry.per_image(zernike),
    view="gray"))
