"""Argument checks shared by the descriptor modules."""

from __future__ import annotations

import numpy as np


def check_rgb_uint8(image: np.ndarray) -> None:
    """Raise ValueError unless `image` is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 ndarray, got {getattr(image, 'dtype', type(image))}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")


def check_gray_uint8(image: np.ndarray) -> None:
    """Raise ValueError unless `image` is a non-empty (H, W) uint8 grayscale image (the ``gray`` view)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        raise ValueError(f"expected a non-empty (H, W) uint8 grayscale image, got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
