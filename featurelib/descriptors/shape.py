"""Shape descriptors of the grayscale image: Hu's seven moment invariants.

Every function here reads the ``gray`` view: OpenCV's ``COLOR_RGB2GRAY`` of the
preprocessed uint8 RGB image, (H, W) uint8.
"""

from __future__ import annotations

import cv2
import numpy as np

from featurelib import registry

BINARIZE = ("none", "otsu", "threshold")


def _check_gray(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty (H, W) uint8 grayscale image, got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")


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
    _check_gray(gray)
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
