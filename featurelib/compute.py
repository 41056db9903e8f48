"""FeatureComputer: preprocess -> augment -> extract, for one spec in one worker process.

Built once per worker process per spec (see :func:`featurelib.shard.shard_state`):
it holds the loaded extractor handlers. Everything here is deterministic given
the spec, the fitted artefacts and the input pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from featurelib import registry, transforms
from featurelib.contract import variant_key
from featurelib.spec import RunSpec

#: Failures that are never about one record: they fail the task (and the run), not the image.
FATAL = (MemoryError, ImportError)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row to write: ``aug_index`` 0 is the original."""

    aug_index: int
    key: str
    image: np.ndarray  # (H, W, 3) uint8 at spec.image.size


@dataclasses.dataclass(frozen=True)
class ExtractFailure:
    """Why one image got no features: an extractor raised (``error``), or broke its contract."""

    column: str
    reason: str  # extract_failed | non_finite
    detail: str
    error: BaseException | None = None


def content_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def preprocess(spec: RunSpec, pixels: np.ndarray) -> np.ndarray:
    """Bring a decoded (h, w, 3) uint8 image to the spec's ``image.size``, resize mode and interpolation.

    Returns
    -------
    (H, W, 3) uint8 ndarray, ``(H, W) = image.size``.
    """
    image = spec.image
    return transforms.resize_image(pixels, image.size, mode=image.resize,
                                   interpolation=image.interpolation, fill=spec.decode.background)


def make_variants(spec: RunSpec, image: np.ndarray, source_key: str, split: str) -> list[Variant]:
    """The original and, for sources in ``augment.splits``, ``augment.copies`` variants.

    Variant n's randomness is seeded from ``(seed, key of variant n)`` only: the same pixels on every
    engine, shard count, retry and process. ``featurize preview`` draws its tiles here too.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
        The preprocessed source image, at ``image.size``.

    Returns
    -------
    list of Variant, ``aug_index`` 0 (the original, `image` itself) first.
    """
    out = [Variant(0, source_key, image)]
    augment = spec.augment
    if augment.copies and split in augment.splits:
        for n in range(1, augment.copies + 1):
            key = variant_key(source_key, n)
            rng = transforms.record_rng(spec.seed, key)
            out.append(Variant(n, key, transforms.augment_image(image, augment.ops, rng)))
    return out


class FeatureComputer:
    """Applies one spec's preprocessing, augmentation and extractors.

    Parameters
    ----------
    spec : RunSpec
    artifacts : mapping, optional
        ``{column: {what: bytes}}`` of the artefacts fitted by pre-passes.
    """

    def __init__(self, spec: RunSpec, artifacts: Mapping[str, Mapping[str, bytes]] | None = None) -> None:
        artifacts = artifacts or {}
        self.spec = spec
        self.columns = [f.column for f in spec.features]
        definitions = [registry.get(f.name) for f in spec.features]
        self.views = [d.view for d in definitions]
        self.dims = [dim for _, dim in spec.feature_dims()]
        self.handlers: list[registry.Handler] = []
        try:
            for feature, definition in zip(spec.features, definitions):
                self.handlers.append(definition.build(feature.params, artifacts.get(feature.column, {})))
        except BaseException:
            self.close()
            raise
        preferred = min((h.batch_size for h in self.handlers), default=registry.PER_IMAGE_BATCH)
        self.batch_size = max(1, spec.execution.batch_size or preferred)

    def close(self) -> None:
        for handler in self.handlers:
            handler.close()

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """Bring a decoded (h, w, 3) uint8 image to ``image.size`` (see :func:`preprocess`)."""
        return preprocess(self.spec, pixels)

    def variants(self, image: np.ndarray, source_key: str, split: str) -> list[Variant]:
        """The original and its augmented variants (see :func:`make_variants`)."""
        return make_variants(self.spec, image, source_key, split)

    def extract(self, images: Sequence[np.ndarray]) -> list[list[np.ndarray] | ExtractFailure]:
        """Every feature column of each preprocessed image, in bounded batches.

        Parameters
        ----------
        images : sequence of (H, W, 3) uint8 ndarrays at ``image.size``

        Returns
        -------
        One entry per image: its (D_c,) float32 vectors in spec order, or the
        first :class:`ExtractFailure` it met.

        Raises
        ------
        MemoryError, ImportError
            Never about one image: they fail the task.
        """
        out: list[list[np.ndarray] | ExtractFailure] = []
        for start in range(0, len(images), self.batch_size):
            out.extend(self._extract_batch(images[start : start + self.batch_size]))
        return out

    def _extract_batch(self, images: Sequence[np.ndarray]) -> list[list[np.ndarray] | ExtractFailure]:
        n = len(images)
        stacks = {"rgb": np.stack(images)}
        if "gray" in self.views:  # one conversion per image, shared by every grayscale descriptor
            stacks["gray"] = np.stack([cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in images])
        for stack in stacks.values():  # shared by every column: no handler may change another's input
            stack.flags.writeable = False
        results: list[list[np.ndarray] | ExtractFailure] = [[] for _ in range(n)]
        for column, handler, view, dim in zip(self.columns, self.handlers, self.views, self.dims):
            alive = [i for i in range(n) if not isinstance(results[i], ExtractFailure)]
            if not alive:
                break
            batch = stacks[view] if len(alive) == n else stacks[view][alive]
            try:
                matrix = _checked(handler.extract_batch(batch), len(alive), dim)
            except FATAL:
                raise
            except Exception:  # one bad image must cost one reject: retry image by image
                done, vectors = [], []
                for j, i in enumerate(alive):
                    try:
                        vectors.append(_checked(handler.extract_batch(batch[j : j + 1]), 1, dim)[0])
                        done.append(i)
                    except FATAL:
                        raise
                    except Exception as exc:
                        results[i] = ExtractFailure(column, "extract_failed", f"{column}: {type(exc).__name__}: {exc}",
                                                    exc)
                alive = done
                matrix = np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)
            finite = np.isfinite(matrix).all(axis=1)
            for i, vector, ok in zip(alive, matrix, finite):
                if ok:
                    results[i].append(vector)
                else:
                    results[i] = ExtractFailure(column, "non_finite", f"{column}: NaN or infinity in the output")
        return results


def _checked(matrix: np.ndarray, n: int, dim: int) -> np.ndarray:
    """`matrix` as (n, dim) float32, or ValueError naming what the handler returned instead."""
    matrix = np.asarray(matrix)
    if matrix.ndim == 1 and n == 1:
        matrix = matrix[None, :]
    if matrix.shape != (n, dim):
        raise ValueError(f"returned shape {matrix.shape}, declared ({n}, {dim})")
    return matrix.astype(np.float32, copy=False)
