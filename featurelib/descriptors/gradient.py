"""Gradient descriptors of the grayscale image: histograms of oriented gradients (HOG).

``hog`` equals ``skimage.feature.hog(gray, ..., feature_vector=True)`` to 1e-6
(tested): the same gradients, magnitudes and orientations in float64, the same
orientation bin edges (scikit-image's C code computes them in float32, and so do
we), the same cells, blocks and block normalisations; the per-cell sums are
accumulated in float64 over the whole image at once (scikit-image sums each
cell in float32), the only source of difference.

Speed: a uint8 image has integer gradients in [-255, 255], so every pixel's
magnitude and orientation bin is one of 511 x 511 values. Both are tabulated
once per process with the very expressions scikit-image evaluates per pixel
(``np.hypot``, ``np.rad2deg(np.arctan2(...)) % 180``, the float32 edges), and a
pixel costs two table reads instead of a square root and an arc tangent.
``transform_sqrt`` makes gradients non-integer: those images take the direct route.
"""

from __future__ import annotations

import functools

import numpy as np

from featurelib import registry
from featurelib.descriptors._checks import check_gray_uint8

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
IMPLS = ("skimage", "opencv")
_EPS = 1e-5


def hog_shape(image_size: tuple[int, int], orientations: int, pixels_per_cell, cells_per_block) -> tuple[int, ...]:
    """``(blocks_row, blocks_col, cells_row, cells_col, orientations)`` of the normalised blocks.

    Raises
    ------
    ValueError
        If the image holds fewer cells than one block.
    """
    n_rows, n_cols = image_size[0] // pixels_per_cell[0], image_size[1] // pixels_per_cell[1]
    blocks = (n_rows - cells_per_block[0] + 1, n_cols - cells_per_block[1] + 1)
    if min(blocks) < 1:
        raise ValueError(f"an image of {list(image_size)} holds {n_rows} x {n_cols} cells of "
                         f"{list(pixels_per_cell)} pixels, fewer than one block of {list(cells_per_block)} cells")
    return (*blocks, *cells_per_block, orientations)


def orientation_edges(orientations: int) -> np.ndarray:
    """Upper edges of the orientation bins in degrees, computed in float32 as scikit-image does."""
    per_bin = np.float32(180.0 / orientations)
    return (per_bin * np.arange(1, orientations + 1, dtype=np.float32)).astype(np.float64)


def _orientation_bins(g_row: np.ndarray, g_col: np.ndarray, orientations: int) -> np.ndarray:
    """Bin of each gradient: bin i holds edge[i-1] <= o < edge[i], o = rad2deg(arctan2) % 180;
    an o at or beyond the last float32 edge gets bin ``orientations`` (in no histogram)."""
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    return np.searchsorted(orientation_edges(orientations), orientation, side="right")


@functools.lru_cache(maxsize=1)
def _magnitude_table() -> np.ndarray:
    """(511 * 511,) float64: ``np.hypot(g_col, g_row)`` for every integer gradient pair, index
    ``(g_row + 255) * 511 + g_col + 255``."""
    values = np.arange(-255, 256, dtype=np.float64)
    return np.hypot(values[None, :], values[:, None]).reshape(-1)


@functools.lru_cache(maxsize=8)
def _bin_table(orientations: int) -> np.ndarray:
    """(511 * 511,) uint8: :func:`_orientation_bins` of every integer gradient pair (same index)."""
    values = np.arange(-255, 256, dtype=np.float64)
    g_row, g_col = np.broadcast_arrays(values[:, None], values[None, :])
    return _orientation_bins(g_row, g_col, orientations).astype(np.uint8).reshape(-1)


def _gradients(image: np.ndarray, rows: int, cols: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Central differences over the first `rows` x `cols` pixels; 0 on the image's border rows and
    columns (as scikit-image)."""
    h, w = image.shape
    g_row = np.zeros((rows, cols), dtype=dtype)
    g_col = np.zeros((rows, cols), dtype=dtype)
    top = min(rows, h - 1)  # the last image row has no gradient
    np.subtract(image[2 : top + 1, :cols], image[: top - 1, :cols], out=g_row[1:top], dtype=dtype)
    right = min(cols, w - 1)
    np.subtract(image[:rows, 2 : right + 1], image[:rows, : right - 1], out=g_col[:, 1:right], dtype=dtype)
    return g_row, g_col


@functools.lru_cache(maxsize=16)
def _cell_offsets(rows: int, cols: int, cr: int, cc: int, stride: int) -> np.ndarray:
    """(rows * cols,) int64: ``cell index * stride`` of every pixel, row-major."""
    n_cols = cols // cc
    cells = (np.arange(rows) // cr)[:, None] * n_cols + (np.arange(cols) // cc)[None, :]
    return (cells * stride).reshape(-1)


def cell_histograms(gray: np.ndarray, orientations: int, pixels_per_cell, transform_sqrt: bool) -> np.ndarray:
    """(cells_row, cells_col, orientations) float64: mean gradient magnitude per cell and orientation bin."""
    h, w = gray.shape
    cr, cc = pixels_per_cell
    n_rows, n_cols = h // cr, w // cc
    rows, cols = n_rows * cr, n_cols * cc  # pixels outside whole cells never count
    if transform_sqrt:
        g_row, g_col = _gradients(np.sqrt(gray.astype(np.float64)), rows, cols, np.float64)
        magnitude = np.hypot(g_col, g_row).reshape(-1)
        bins = _orientation_bins(g_row, g_col, orientations).reshape(-1)
    else:
        g_row, g_col = _gradients(gray, rows, cols, np.int32)
        index = ((g_row + 255) * 511 + (g_col + 255)).reshape(-1)
        magnitude = _magnitude_table()[index]
        bins = _bin_table(orientations)[index].astype(np.int64)
    sums = np.bincount(_cell_offsets(rows, cols, cr, cc, orientations + 1) + bins, weights=magnitude,
                       minlength=n_rows * n_cols * (orientations + 1))
    return sums.reshape(n_rows, n_cols, orientations + 1)[:, :, :orientations] / (cr * cc)


def normalize_blocks(histograms: np.ndarray, cells_per_block, block_norm: str) -> np.ndarray:
    """(blocks_row, blocks_col, cells_row, cells_col, orientations) normalised blocks (scikit-image's formulas)."""
    br, bc = cells_per_block
    windows = np.lib.stride_tricks.sliding_window_view(histograms, (br, bc), axis=(0, 1))
    blocks = np.ascontiguousarray(windows.transpose(0, 1, 3, 4, 2))
    axes = (2, 3, 4)
    if block_norm == "L1":
        return blocks / (np.abs(blocks).sum(axis=axes, keepdims=True) + _EPS)
    if block_norm == "L1-sqrt":
        return np.sqrt(blocks / (np.abs(blocks).sum(axis=axes, keepdims=True) + _EPS))
    out = blocks / np.sqrt((blocks**2).sum(axis=axes, keepdims=True) + _EPS**2)
    if block_norm == "L2":
        return out
    out = np.minimum(out, 0.2)  # L2-Hys: clip, then normalise again
    return out / np.sqrt((out**2).sum(axis=axes, keepdims=True) + _EPS**2)


def hog_opencv(gray: np.ndarray, *, orientations: int = 9, pixels_per_cell=(8, 8), cells_per_block=(3, 3),
               transform_sqrt: bool = False) -> np.ndarray:
    """OpenCV's ``HOGDescriptor`` with the same geometry: faster, and numerically different.

    Same cells, blocks (stride one cell), unsigned orientations and L2-Hys
    normalisation (clip 0.2) as :func:`hog`, over the same whole cells, and the
    same length; but OpenCV weights each block with a Gaussian, spreads each
    gradient over neighbouring bins and cells (trilinear interpolation), and
    orders blocks column by column. Its values are its own: compare runs of one
    ``impl`` only (it is part of the column's parameters and fingerprint).
    ``transform_sqrt`` maps to OpenCV's ``gammaCorrection``.

    Returns
    -------
    (D,) float32 ndarray, D as :func:`hog`.
    """
    import cv2

    cr, cc = pixels_per_cell
    br, bc = cells_per_block
    hog_shape(gray.shape, orientations, pixels_per_cell, cells_per_block)
    rows, cols = (gray.shape[0] // cr) * cr, (gray.shape[1] // cc) * cc
    descriptor = cv2.HOGDescriptor((cols, rows), (bc * cc, br * cr), (cc, cr), (cc, cr), orientations, 1, -1.0,
                                   cv2.HOGDESCRIPTOR_L2HYS, 0.2, transform_sqrt, 64, False)
    return descriptor.compute(np.ascontiguousarray(gray[:rows, :cols])).reshape(-1).astype(np.float32)


def hog(gray: np.ndarray, *, orientations: int = 9, pixels_per_cell=(8, 8), cells_per_block=(3, 3),
        block_norm: str = "L2-Hys", transform_sqrt: bool = False, impl: str = "skimage") -> np.ndarray:
    """Histogram of oriented gradients, as ``skimage.feature.hog(..., feature_vector=True)``.

    Parameters
    ----------
    gray : (H, W) uint8 ndarray
        Grayscale image (the ``gray`` view).
    orientations : int, optional
        Orientation bins over [0, 180) degrees (unsigned gradients).
    pixels_per_cell : (rows, cols), optional
    cells_per_block : (rows, cols), optional
    block_norm : {'L1', 'L1-sqrt', 'L2', 'L2-Hys'}, optional
    transform_sqrt : bool, optional
        Square root of the intensities first (gamma compression).
    impl : {'skimage', 'opencv'}, optional
        ``skimage`` (the default): scikit-image's values. ``opencv``:
        :func:`hog_opencv`, faster and different (L2-Hys only).

    Returns
    -------
    (B_r * B_c * C_r * C_c * orientations,) float32 ndarray
        ``B = n_cells - cells_per_block + 1`` blocks per axis, ``n_cells = size // pixels_per_cell``;
        blocks row-major, then the cells of a block, then the orientations.
        scikit-image's defaults give 54,756 values at 224x224; 16x16 cells and
        2x2 blocks give 6,084.

    References
    ----------
    N. Dalal, B. Triggs, "Histograms of oriented gradients for human detection", CVPR 2005.
    """
    check_gray_uint8(gray)
    if impl == "opencv":
        return hog_opencv(gray, orientations=orientations, pixels_per_cell=pixels_per_cell,
                          cells_per_block=cells_per_block, transform_sqrt=transform_sqrt)
    hog_shape(gray.shape, orientations, pixels_per_cell, cells_per_block)  # raises if too small
    histograms = cell_histograms(gray, orientations, pixels_per_cell, transform_sqrt)
    return normalize_blocks(histograms, cells_per_block, block_norm).reshape(-1).astype(np.float32)


def _pair(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))


def _check_hog(params: dict, report) -> dict:
    out = dict(params)
    orientations = params["orientations"]
    if isinstance(orientations, bool) or not isinstance(orientations, int) or not 1 <= orientations <= 180:
        report(f"orientations must be an integer in [1, 180], got {orientations!r}")
    for key in ("pixels_per_cell", "cells_per_block"):
        if not _pair(params[key]):
            report(f"{key} must be [rows, cols] of positive integers, got {params[key]!r}")
        else:
            out[key] = list(params[key])
    if params["block_norm"] not in BLOCK_NORMS:
        report(f"block_norm must be one of {list(BLOCK_NORMS)}, got {params['block_norm']!r}")
    if not isinstance(params["transform_sqrt"], bool):
        report(f"transform_sqrt must be true or false, got {params['transform_sqrt']!r}")
    if params["impl"] not in IMPLS:
        report(f"impl must be one of {list(IMPLS)}, got {params['impl']!r}")
    elif params["impl"] == "opencv" and params["block_norm"] != "L2-Hys":
        report(f"impl: opencv normalises blocks with L2-Hys only, got block_norm {params['block_norm']!r}")
    return out


def _hog_dim(params: dict, size: tuple[int, int]) -> int:
    return int(np.prod(hog_shape(size, params["orientations"], params["pixels_per_cell"], params["cells_per_block"])))


HOG = registry.register(registry.ExtractorDef(
    name="hog", version=1,
    defaults={"orientations": 9, "pixels_per_cell": [8, 8], "cells_per_block": [3, 3], "block_norm": "L2-Hys",
              "transform_sqrt": False, "impl": "skimage"},
    check=_check_hog, dim=_hog_dim, handler=registry.per_image(hog), view="gray"))
