"""FeatureComputer: decode -> preprocess -> augment -> extract, for one source image.

Built once per worker process per spec (see :func:`featurelib.run.worker_state`);
everything here is deterministic given the spec and the input bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from featurelib import registry, transforms
from featurelib.errors import RecordError
from featurelib.spec import RunSpec


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row to write: ``aug_index`` 0 is the original."""

    aug_index: int
    key: str
    image: np.ndarray  # (H, W, 3) uint8 at spec.image.size


def variant_key(source_key: str, aug_index: int) -> str:
    """``source_key`` for the original, ``f"{source_key}#aug{n}"`` for variant n >= 1."""
    return source_key if aug_index == 0 else f"{source_key}#aug{aug_index}"


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FeatureComputer:
    """Applies one spec's preprocessing, augmentation and extractors.

    Parameters
    ----------
    spec : RunSpec
    """

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.extractors = [registry.get(f.name).build(f.params) for f in spec.features]
        self.dims = [dim for _, dim in spec.feature_dims()]
        self.columns = [f.column for f in spec.features]

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """Bring a decoded (h, w, 3) uint8 image to ``image.size``."""
        image = self.spec.image
        return transforms.resize_image(pixels, image.size, mode=image.resize,
                                       interpolation=image.interpolation, fill=self.spec.decode.background)

    def variants(self, image: np.ndarray, source_key: str, split: str) -> list[Variant]:
        """The original and, for sources in ``augment.splits``, ``augment.copies`` variants.

        Variant n's randomness is seeded from ``(seed, key of variant n)``.
        """
        out = [Variant(0, source_key, image)]
        augment = self.spec.augment
        if augment.copies and split in augment.splits:
            for n in range(1, augment.copies + 1):
                key = variant_key(source_key, n)
                rng = transforms.record_rng(self.spec.seed, key)
                out.append(Variant(n, key, transforms.augment_image(image, augment.ops, rng)))
        return out

    def extract(self, image: np.ndarray) -> list[np.ndarray]:
        """Every feature column of one preprocessed image.

        Returns
        -------
        list of (D_c,) float32 ndarrays, in spec order.

        Raises
        ------
        RecordError
            ``extract_failed`` if an extractor raises or breaks its declared shape;
            ``non_finite`` if it returns NaN or infinity.
        """
        out: list[np.ndarray] = []
        for column, extractor, dim in zip(self.columns, self.extractors, self.dims):
            try:
                vector = np.asarray(extractor(image), dtype=np.float32).reshape(-1)
            except Exception as exc:  # any extractor bug is one reject, not a dead job
                raise RecordError("extract_failed", f"{column}: {type(exc).__name__}: {exc}") from None
            if vector.shape != (dim,):
                raise RecordError("extract_failed", f"{column}: returned {vector.shape[0]} values, declared {dim}")
            if not np.isfinite(vector).all():
                raise RecordError("non_finite", f"{column}: NaN or infinity in the output")
            out.append(vector)
        return out

    def info(self) -> dict[str, Any]:
        return {"columns": self.columns, "dims": self.dims}
