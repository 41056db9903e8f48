"""Texture descriptors of the grayscale image: local binary patterns and grey-level co-occurrence.

``lbp`` computes exactly the codes of scikit-image's ``local_binary_pattern``
(same sampling circle, same bilinear interpolation in float64 with zero outside
the image, same ``>=`` threshold, same pattern mappings), vectorised over the
image instead of looping per pixel. ``haralick`` follows scikit-image's ``graycomatrix`` / ``graycoprops``: six
properties of the normalised co-occurrence matrix (contrast, dissimilarity,
homogeneity, energy, correlation, ASM). These are *not* Haralick's full set of
13 features; the name is the one users search for.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from featurelib import registry
from featurelib.descriptors._checks import check_gray_uint8

LBP_METHODS = ("default", "ror", "uniform", "nri_uniform", "var")

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

    check_gray_uint8(gray)
    # scikit-image's Cython loop takes a writable buffer only, and the kernel hands every column a
    # read-only view (shared by all columns): at 256 levels quantize() returns that view unchanged.
    quantized = quantize(gray, levels)
    if not quantized.flags.writeable:
        quantized = quantized.copy()
    matrix = graycomatrix(quantized, list(distances), [np.deg2rad(a) for a in angles],
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


# --- local binary patterns -------------------------------------------------------------------


def lbp_offsets(points: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the sampling circle, rounded to 5 decimals (as scikit-image)."""
    angles = 2 * np.pi * np.arange(points, dtype=np.float64) / points
    return np.round(-radius * np.sin(angles), 5), np.round(radius * np.cos(angles), 5)


class _Sampler:
    """Bilinear samples of one image on the LBP circle, in scikit-image's float64 operation order.

    scikit-image interpolates at the absolute coordinate ``(r + dr, c + dc)``, so the
    fractional weights ``(r + dr) - floor(r + dr)`` differ in their last bits from
    row to row: they are computed per row and per column here, exactly as there.
    Integer offsets need no interpolation (``(1 - 0) * a + 0 * b == a`` in IEEE
    arithmetic) and are compared on the uint8 pixels directly.
    """

    def __init__(self, gray: np.ndarray, radius: float) -> None:
        self.gray = gray
        self.h, self.w = gray.shape
        self.pad = int(math.ceil(radius)) + 1
        p = self.pad
        self.padded_u8 = np.zeros((self.h + 2 * p, self.w + 2 * p), dtype=np.uint8)
        self.padded_u8[p : p + self.h, p : p + self.w] = gray
        self.padded = self.padded_u8.astype(np.float64)
        self.center = self.padded[p : p + self.h, p : p + self.w]
        self.rows_cache: dict[float, np.ndarray] = {}
        self.out = np.empty((self.h, self.w))
        self.tmp = np.empty((self.h, self.w))

    def view(self, padded: np.ndarray, r: int, c: int) -> np.ndarray:
        p = self.pad
        return padded[p + r : p + r + self.h, p + c : p + c + self.w]

    @staticmethod
    def fractions(offset: float, length: int) -> tuple[int, int, np.ndarray | None]:
        """floor and ceil of the offset, and the per-position fraction (None when it is an integer)."""
        low, high = math.floor(offset), math.ceil(offset)
        if low == high:
            return low, high, None
        absolute = np.arange(length, dtype=np.float64) + offset
        return low, high, absolute - np.floor(absolute)

    def horizontal(self, dc_: float) -> np.ndarray:
        """``(1 - fc) * left + fc * right`` for every padded row and image column (shared by the
        samples of one column offset: the vertical blend reads two of its rows)."""
        cached = self.rows_cache.get(dc_)
        if cached is None:
            c0, c1, fc = self.fractions(dc_, self.w)
            left = self.padded[:, self.pad + c0 : self.pad + c0 + self.w]
            if fc is None:
                cached = left
            else:
                cached = (1 - fc) * left
                cached += fc * self.padded[:, self.pad + c1 : self.pad + c1 + self.w]
            self.rows_cache[dc_] = cached
        return cached

    def interpolated(self, dr_: float, dc_: float) -> np.ndarray:
        """(H, W) float64 samples at every pixel + (dr_, dc_); the result may be a buffer reused later."""
        rows = self.horizontal(dc_)
        r0, r1, fr = self.fractions(dr_, self.h)
        top = rows[self.pad + r0 : self.pad + r0 + self.h]
        if fr is None:
            return top
        bottom = rows[self.pad + r1 : self.pad + r1 + self.h]
        fr = fr[:, None]
        np.multiply(1 - fr, top, out=self.out)
        np.multiply(fr, bottom, out=self.tmp)
        self.out += self.tmp
        return self.out


def _pattern_values(bits: np.ndarray, points: int, method: str) -> np.ndarray:
    """The code of each bit pattern, by scikit-image's rules.

    Parameters
    ----------
    bits : (P, ...) bool ndarray
        Bit i of each pattern (sample i >= centre).

    Returns
    -------
    (...) int64 ndarray
    """
    shape = bits.shape[1:]
    if method in ("default", "ror"):
        code = np.zeros(shape, dtype=np.int64)
        for i in range(points):
            code |= bits[i].astype(np.int64) << i
        if method == "ror":
            best, rotated = code.copy(), code
            for _ in range(1, points):  # rotate right by one bit, P - 1 times
                rotated = (rotated >> 1) | ((rotated & 1) << (points - 1))
                np.minimum(best, rotated, out=best)
            code = best
        return code
    # scikit-image counts 0/1 changes between consecutive samples without the wrap-around pair
    changes = np.zeros(shape, dtype=np.int64)
    ones = bits[0].astype(np.int64)
    for i in range(1, points):
        changes += bits[i] != bits[i - 1]
        ones += bits[i]
    if method == "uniform":
        return np.where(changes <= 2, ones, points + 1)
    first_one = np.argmax(bits, axis=0)
    first_zero = np.argmax(~bits, axis=0)
    rotation = np.where(first_one == 0, ones - first_zero, points - first_one)
    code = 1 + (ones - 1) * points + rotation
    code = np.where(ones == 0, 0, np.where(ones == points, points * (points - 1) + 1, code))
    return np.where(changes <= 2, code, points * (points - 1) + 2)


#: P up to which codes go through a table of all 2^P patterns (65,536 entries at most).
TABLE_POINTS = 16


@functools.lru_cache(maxsize=16)
def pattern_table(points: int, method: str) -> np.ndarray:
    """(2^P,) int64: the code of every packed pattern (bit i = sample i), for P <= :data:`TABLE_POINTS`."""
    patterns = np.arange(2**points, dtype=np.int64)
    bits = np.stack([(patterns >> i) & 1 for i in range(points)]).astype(bool)
    return _pattern_values(bits, points, method)


def _samples(gray: np.ndarray, points: int, radius: float):
    """Yield ``(i, bool (H, W) array: sample i >= centre)`` for the P samples (the array is reused)."""
    sampler = _Sampler(gray, radius)
    rows, cols = lbp_offsets(points, radius)
    bit = np.empty(gray.shape, dtype=bool)
    for i, (dr_, dc_) in enumerate(zip(rows, cols)):
        if dr_ == math.floor(dr_) and dc_ == math.floor(dc_):  # a pixel: compare the uint8 values
            np.greater_equal(sampler.view(sampler.padded_u8, int(dr_), int(dc_)), gray, out=bit)
        else:  # a - b >= 0 is a >= b for finite doubles
            np.greater_equal(sampler.interpolated(float(dr_), float(dc_)), sampler.center, out=bit)
        yield i, bit


def _packed(gray: np.ndarray, points: int, radius: float) -> np.ndarray:
    """(H, W) int32: bit i set where sample i >= centre (P <= 31)."""
    code = np.zeros(gray.shape, dtype=np.int32)
    for i, bit in _samples(gray, points, radius):
        code |= bit.astype(np.int32) << i
    return code


def _variance(gray: np.ndarray, points: int, radius: float) -> np.ndarray:
    sampler = _Sampler(gray, radius)
    total = np.zeros(gray.shape)
    squares = np.zeros(gray.shape)
    for dr_, dc_ in zip(*lbp_offsets(points, radius)):
        texture = sampler.interpolated(float(dr_), float(dc_))
        total += texture
        squares += texture * texture
    variance = (squares - (total * total) / points) / points
    variance[variance == 0] = np.nan
    return variance


def lbp_codes(gray: np.ndarray, points: int, radius: float, method: str = "default") -> np.ndarray:
    """The LBP image: equal to ``skimage.feature.local_binary_pattern(gray, points, radius, method)``.

    Parameters
    ----------
    gray : (H, W) uint8 ndarray
    points, radius : int, float
        P sampling points on a circle of radius R.
    method : {'default', 'ror', 'uniform', 'nri_uniform', 'var'}

    Returns
    -------
    (H, W) float64 ndarray
        Codes (integers stored as float64, as scikit-image), or for ``var`` the
        local variance of the P samples (NaN where it is 0).
    """
    if method == "var":
        return _variance(gray, points, radius)
    if points <= TABLE_POINTS:
        return pattern_table(points, method)[_packed(gray, points, radius)].astype(np.float64)
    bits = np.empty((points, *gray.shape), dtype=bool)
    for i, bit in _samples(gray, points, radius):
        bits[i] = bit
    return _pattern_values(bits, points, method).astype(np.float64)


def lbp_bins(points: int, method: str, var_bins: int) -> int:
    """Histogram length of one cell: P+2 (uniform), P(P-1)+3 (nri_uniform), 2^P (default, ror), `bins` (var)."""
    return {"uniform": points + 2, "nri_uniform": points * (points - 1) + 3,
            "default": 2**points, "ror": 2**points}.get(method, var_bins)


def _cell_edges(length: int, parts: int) -> list[int]:
    return [length * k // parts for k in range(parts + 1)]


def lbp(gray: np.ndarray, *, points: int = 8, radius: float = 1, method: str = "uniform", bins: int = 16,
        range: tuple[float, float] = (0.0, 4096.0), grid: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Histogram of local binary patterns, L1-normalised per grid cell.

    Parameters
    ----------
    gray : (H, W) uint8 ndarray
        Grayscale image (the ``gray`` view).
    points, radius : int, float, optional
        P and R of the sampling circle.
    method : {'default', 'ror', 'uniform', 'nri_uniform', 'var'}, optional
        Pattern mapping, as scikit-image's ``local_binary_pattern``.
    bins, range : int, (float, float), optional
        ``var`` only: uniform bins over ``[low, high)``; variances at or above
        ``high`` count in the last bin; those below ``low`` and NaN (flat
        neighbourhoods) in none.
    grid : (rows, cols), optional
        The image is cut into ``rows x cols`` cells (cell k of a side of length L
        spans ``[floor(k L / n), floor((k + 1) L / n))``); their histograms are
        concatenated row-major.

    Returns
    -------
    (rows * cols * n_bins,) float32 ndarray
        Each cell's histogram sums to 1, or is all zero when the cell has no
        finite value (``var`` on a flat cell).

    References
    ----------
    T. Ojala, M. Pietikainen, T. Maenpaa, "Multiresolution gray-scale and rotation
    invariant texture classification with local binary patterns", IEEE PAMI 24(7), 2002.
    """
    check_gray_uint8(gray)
    n_bins = lbp_bins(points, method, bins)
    table = None
    if method == "var":
        variance = _variance(gray, points, radius)
        low, high = range
        finite = np.isfinite(variance)
        index = np.full(variance.shape, -1, dtype=np.int64)
        scaled = np.floor((variance[finite] - low) * (bins / (high - low)))
        index[finite] = np.where(scaled < 0, -1, np.minimum(scaled, bins - 1)).astype(np.int64)
    elif points <= TABLE_POINTS:
        # Count the 2^P raw patterns, then fold the counts through the pattern table:
        # the mapping costs 2^P operations instead of one per pixel.
        index, table = _packed(gray, points, radius), pattern_table(points, method)
    else:
        index = lbp_codes(gray, points, radius, method).astype(np.int64)
    rows_edges, cols_edges = _cell_edges(gray.shape[0], grid[0]), _cell_edges(gray.shape[1], grid[1])
    out = []
    for r in np.arange(grid[0]):
        for c in np.arange(grid[1]):
            cell = index[rows_edges[r] : rows_edges[r + 1], cols_edges[c] : cols_edges[c + 1]].reshape(-1)
            if table is not None:
                raw = np.bincount(cell, minlength=table.size)
                counts = np.bincount(table, weights=raw, minlength=n_bins)
                total = cell.size
            else:
                cell = cell[cell >= 0]
                counts = np.bincount(cell, minlength=n_bins).astype(np.float64)
                total = cell.size
            out.append(counts / total if total else counts)
    return np.concatenate(out).astype(np.float32)


def _check_lbp(params: dict, report) -> dict:
    out = dict(params)
    points, radius, method = params["points"], params["radius"], params["method"]
    if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= 32:
        report(f"points must be an integer in [1, 32], got {points!r}")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0 < radius <= 32:  # NaN fails too
        report(f"radius must be a number in (0, 32], got {radius!r}")
    else:
        out["radius"] = float(radius)
    if method not in LBP_METHODS:
        report(f"method must be one of {list(LBP_METHODS)}, got {method!r}")
    elif method in ("default", "ror") and isinstance(points, int) and points > 16:
        report(f"method {method!r} needs points <= 16 (2^P bins), got {points}")
    bins, value_range = params["bins"], params["range"]
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 4096:
        report(f"bins must be an integer in [1, 4096], got {bins!r}")
    if (not isinstance(value_range, (list, tuple)) or len(value_range) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in value_range)
            or not 0 <= value_range[0] < value_range[1]):
        report(f"range must be [low, high] with 0 <= low < high, got {value_range!r}")
    else:
        out["range"] = [float(v) for v in value_range]
    grid = params["grid"]
    if (not isinstance(grid, (list, tuple)) or len(grid) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid)):
        report(f"grid must be [rows, cols] of positive integers, got {grid!r}")
    else:
        out["grid"] = list(grid)
    if method != "var":  # bins and range mean nothing for codes: keep them out of the identity
        out["bins"], out["range"] = LBP_DEFAULTS["bins"], LBP_DEFAULTS["range"]
    return out


def _lbp_dim(params: dict, size: tuple[int, int]) -> int:
    rows, cols = params["grid"]
    if rows > size[0] or cols > size[1]:
        raise ValueError(f"grid {params['grid']} has more cells than pixels")
    return rows * cols * lbp_bins(params["points"], params["method"], params["bins"])


LBP_DEFAULTS = {"points": 8, "radius": 1.0, "method": "uniform", "bins": 16, "range": [0.0, 4096.0], "grid": [1, 1]}

LBP = registry.register(registry.ExtractorDef(
    name="lbp", version=1, defaults=LBP_DEFAULTS, check=_check_lbp, dim=_lbp_dim,
    handler=registry.per_image(lbp), view="gray"))
