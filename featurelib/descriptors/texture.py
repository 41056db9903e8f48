"""Texture descriptors of the grayscale image: grey-level co-occurrence properties.

``haralick`` follows scikit-image's ``graycomatrix`` / ``graycoprops``: six
properties of the normalised co-occurrence matrix (contrast, dissimilarity,
homogeneity, energy, correlation, ASM). These are *not* Haralick's full set of
13 features; the name is the one users search for.
"""

from __future__ import annotations

import numpy as np

from featurelib import registry

PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")


def quantize(gray: np.ndarray, levels: int) -> np.ndarray:
    """``floor(g * levels / 256)`` as uint8: grey levels 0..levels-1 (256 levels: unchanged)."""
    if levels == 256:
        return gray
    return ((gray.astype(np.uint16) * levels) >> 8).astype(np.uint8)


def haralick(gray: np.ndarray, *, distances=(1,), angles=(0, 45, 90, 135), levels: int = 256,
             symmetric: bool = True, properties=PROPERTIES) -> np.ndarray:
    """Grey-level co-occurrence properties, as ``skimage.feature.graycoprops``.

    Parameters
    ----------
    gray : (H, W) uint8 ndarray
        Grayscale image (the ``gray`` view).
    distances : sequence of int, optional
        Pixel pair distances.
    angles : sequence of float, optional
        Pair directions in degrees (scikit-image takes radians: ``angle * pi / 180``).
    levels : int, optional
        Grey levels after quantisation ``floor(g * levels / 256)``, in [2, 256].
    symmetric : bool, optional
        Count each pair in both orders.
    properties : sequence of str, optional
        Drawn from ``contrast, dissimilarity, homogeneity, energy, correlation, ASM``.

    Returns
    -------
    (len(properties) * len(distances) * len(angles),) float32 ndarray
        Property-major, then distance, then angle: ``out[p, d, a]`` flattened in C order.
        A flat image has a zero-variance matrix; scikit-image defines its
        correlation as 1, which is kept.

    References
    ----------
    R. M. Haralick, K. Shanmugam, I. Dinstein, "Textural features for image
    classification", IEEE Trans. SMC 3(6), 1973.
    """
    from skimage.feature import graycomatrix, graycoprops

    if not isinstance(gray, np.ndarray) or gray.dtype != np.uint8 or gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"expected a non-empty (H, W) uint8 grayscale image, got {getattr(gray, 'shape', gray)}")
    matrix = graycomatrix(quantize(gray, levels), list(distances), [np.deg2rad(a) for a in angles],
                          levels=levels, symmetric=symmetric, normed=True)
    return np.stack([graycoprops(matrix, p) for p in properties]).reshape(-1).astype(np.float32)


def _int_list(value, *, low: int, high: int) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in value))


def _check_haralick(params: dict, report) -> dict:
    out = dict(params)
    if not _int_list(params["distances"], low=1, high=64):
        report(f"distances must be a non-empty list of integers in [1, 64], got {params['distances']!r}")
    else:
        out["distances"] = list(params["distances"])
    angles = params["angles"]
    if (not isinstance(angles, (list, tuple)) or not angles
            or not all(isinstance(a, (int, float)) and not isinstance(a, bool) and 0 <= a < 180 for a in angles)):
        report(f"angles must be a non-empty list of degrees in [0, 180), got {angles!r}")
    else:
        out["angles"] = [float(a) for a in angles]
    levels = params["levels"]
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= 256:
        report(f"levels must be an integer in [2, 256], got {levels!r}")
    if not isinstance(params["symmetric"], bool):
        report(f"symmetric must be true or false, got {params['symmetric']!r}")
    properties = params["properties"]
    if (not isinstance(properties, (list, tuple)) or not properties
            or any(p not in PROPERTIES for p in properties) or len(set(properties)) != len(properties)):
        report(f"properties must be a non-empty list of distinct names from {list(PROPERTIES)}, got {properties!r}")
    else:
        out["properties"] = list(properties)
    return out


def _haralick_dim(params: dict, size: tuple[int, int]) -> int:
    if max(params["distances"]) >= max(size):
        raise ValueError(f"distance {max(params['distances'])} does not fit in the image")
    return len(params["properties"]) * len(params["distances"]) * len(params["angles"])


HARALICK = registry.register(registry.ExtractorDef(
    name="haralick", version=1,
    defaults={"distances": [1], "angles": [0.0, 45.0, 90.0, 135.0], "levels": 256, "symmetric": True,
              "properties": list(PROPERTIES)},
    check=_check_haralick, dim=_haralick_dim, handler=registry.per_image(haralick), view="gray"))
