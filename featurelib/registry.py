"""The extractor registry: every feature a spec can name, with its output declared in advance.

An :class:`ExtractorDef` knows its name, version, default parameters, how to
validate parameters (before any image is read), the length of its output for a
given image size, and how to build a picklable callable
``(H, W, 3) uint8 -> (D,) float32``. Engines and writers derive every column,
shape and layout from here; nothing declares them by hand.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from featurelib.descriptors import color
from featurelib.errors import SpecError

Extractor = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ExtractorDef:
    """Declaration of one extractor.

    Attributes
    ----------
    name : str
        Registry name used in specs.
    version : int
        Bumped whenever the values it returns could change; part of the feature fingerprint.
    defaults : Mapping[str, Any]
        Every accepted parameter with its default; other keys are spec errors.
    check : callable
        ``check(params) -> params``: validates complete parameters and returns them
        in canonical form (raises ValueError with a readable message).
    dim : callable
        ``dim(params, image_size) -> int``: output length for an image of
        ``image_size = (height, width)``; raises ValueError if the size is unusable.
    function : callable
        ``function(image, **params) -> (D,) float32``.
    tags : frozenset of str
        e.g. ``{"deep"}`` for extractors that need heavy per-worker state.
    """

    name: str
    version: int
    defaults: Mapping[str, Any]
    check: Callable[[dict[str, Any]], dict[str, Any]]
    dim: Callable[[dict[str, Any], tuple[int, int]], int]
    function: Callable[..., np.ndarray]
    tags: frozenset[str] = frozenset()

    def normalize_params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Complete `params` with defaults and validate them.

        Raises
        ------
        SpecError
            On an unknown parameter or an invalid value, naming the extractor.
        """
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise SpecError(
                f"feature {self.name!r}: unknown parameter(s) {unknown}; known: {sorted(self.defaults)}"
            )
        merged = {**self.defaults, **params}
        try:
            return self.check(merged)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"feature {self.name!r}: {exc}") from None

    def output_dim(self, params: Mapping[str, Any], image_size: tuple[int, int]) -> int:
        """Length D of the output vector for normalised `params` at `image_size`."""
        try:
            return int(self.dim(dict(params), tuple(image_size)))
        except ValueError as exc:
            raise SpecError(f"feature {self.name!r} cannot take image size {list(image_size)}: {exc}") from None

    def build(self, params: Mapping[str, Any]) -> Extractor:
        """A picklable callable computing this feature with normalised `params`."""
        return functools.partial(self.function, **dict(params))


_REGISTRY: dict[str, ExtractorDef] = {}


def register(definition: ExtractorDef) -> ExtractorDef:
    """Add `definition` to the registry (names are unique)."""
    if definition.name in _REGISTRY:
        raise ValueError(f"extractor {definition.name!r} is already registered")
    _REGISTRY[definition.name] = definition
    return definition


def get(name: str) -> ExtractorDef:
    """The extractor called `name`.

    Raises
    ------
    SpecError
        If no extractor has that name (the message lists the known names).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown extractor {name!r}; known: {sorted(_REGISTRY)}") from None


def names(*, exclude_tags: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Registered names, sorted, without those carrying any of `exclude_tags`."""
    return sorted(n for n, d in _REGISTRY.items() if not (d.tags & set(exclude_tags)))


# --- colour family ---------------------------------------------------------


def _no_params(params: dict[str, Any]) -> dict[str, Any]:
    return params


def _check_color_hist(params: dict[str, Any]) -> dict[str, Any]:
    bins = color.normalize_bins(params["bins"])
    if params["color_space"] not in color.COLOR_SPACE_RANGES:
        raise ValueError(
            f"color_space must be one of {sorted(color.COLOR_SPACE_RANGES)}, got {params['color_space']!r}"
        )
    return {"bins": list(bins), "color_space": params["color_space"]}


def _check_intensity_hist(params: dict[str, Any]) -> dict[str, Any]:
    bins = params["bins"]
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 256:
        raise ValueError(f"bins must be an integer in [1, 256], got {bins!r}")
    return {"bins": bins}


register(
    ExtractorDef(
        name="color_stats",
        version=1,
        defaults={},
        check=_no_params,
        dim=lambda params, size: 9,
        function=color.color_stats,
    )
)
register(
    ExtractorDef(
        name="color_hist",
        version=1,
        defaults={"bins": 8, "color_space": "hsv"},
        check=_check_color_hist,
        dim=lambda params, size: int(np.prod(params["bins"])),
        function=color.color_histogram,
    )
)
register(
    ExtractorDef(
        name="intensity_hist",
        version=1,
        defaults={"bins": 256},
        check=_check_intensity_hist,
        dim=lambda params, size: params["bins"],
        function=color.intensity_histogram,
    )
)
