"""A stand-in extractor as wide as VGG16's ``block5_pool`` flattened: 25,088 float32 values per image.

Loaded as a plugin (``FEATURELIB_PLUGINS=benchmarks.standin_wide``) by ``bench_memory.py``: it
measures what rows of that width cost the engines (memory, writing) without running the
network (half an hour per engine at 10,000 images). A batched handler like the CNN one: each
image's values are its RGB pixels tiled and scaled, cheap and different per image.
"""

from __future__ import annotations

import numpy as np

from featurelib import registry

WIDTH = 7 * 7 * 512


class WideStandIn(registry.Handler):
    """``(N, H, W, 3)`` uint8 -> ``(N, 25088)`` float32."""

    batch_size = 16

    def load(self, params, artifacts) -> None:
        del params, artifacts

    def extract_batch(self, images: np.ndarray) -> np.ndarray:
        flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
        reps = -(-WIDTH // flat.shape[1])
        return np.ascontiguousarray(np.tile(flat, (1, reps))[:, :WIDTH])


registry.register(registry.ExtractorDef(
    name="wide_standin", version=1, defaults={}, check=lambda params, report: params,
    dim=lambda params, size: WIDTH, handler=WideStandIn, view="rgb"))
