"""The extractor protocol and registry: every feature a spec can name, declared before it runs.

An extractor is two things:

* a declaration, :class:`ExtractorDef`: name, version, default parameters, a
  parameter check, the output length for a given image size (output dtype is
  always float32), the input view it wants (``rgb`` or ``gray``, so several
  grayscale descriptors share one conversion per image), its preferred batch
  size, and optionally an :class:`ArtifactDef` (something fitted on a sample of
  the train split by a pre-pass before the main pass, such as a vocabulary);
* a handler (:class:`Handler`), built in each worker process:
  ``load(params, artifacts)`` once per process per spec, then
  ``extract_batch(images) -> (N, D) float32`` for bounded batches.

Per-image descriptors stay plain functions of one image; :func:`per_image`
wraps one in the adapter handler. Declarations live with their code (each
``featurelib/descriptors/<family>.py`` registers its own); third-party
extractors register from modules named in the ``featurelib.extractors``
entry-point group or in the ``FEATURELIB_PLUGINS`` environment variable
(comma-separated module names, imported in the driver and in every worker).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from featurelib.errors import SpecError

#: Input views a declaration may ask for.
VIEWS = ("rgb", "gray")

#: Environment variable naming extra modules that register extractors.
PLUGINS_ENV = "FEATURELIB_PLUGINS"

#: Entry-point group of installed extractor plugins (each entry point names a module).
ENTRY_POINT_GROUP = "featurelib.extractors"

#: Built-in families, imported on first lookup (each registers its declarations).
BUILTIN_FAMILIES = ("featurelib.descriptors.color", "featurelib.descriptors.shape", "featurelib.descriptors.texture",
                    "featurelib.descriptors.gradient", "featurelib.descriptors.keypoints",
                    "featurelib.deep.extractors")

#: Batch size of the per-image adapter: images are stacked only to be walked one by one,
#: so the size just bounds memory (64 x 224 x 224 x 3 = 9.6 MB).
PER_IMAGE_BATCH = 64

Report = Callable[[str], None]


class Handler(abc.ABC):
    """What a worker process holds for one feature column of one spec.

    Built once per worker process per spec (see :mod:`featurelib.worker`);
    :meth:`load` may be expensive (CNN weights), :meth:`extract_batch` is called
    for every bounded batch of a shard's images.
    """

    #: Preferred number of images per :meth:`extract_batch` call.
    batch_size: int = PER_IMAGE_BATCH

    @abc.abstractmethod
    def load(self, params: Mapping[str, Any], artifacts: Mapping[str, bytes]) -> None:
        """Prepare for extraction with normalised `params` and fitted `artifacts` ({what: bytes})."""

    @abc.abstractmethod
    def extract_batch(self, images: np.ndarray) -> np.ndarray:
        """Features of a batch.

        Parameters
        ----------
        images : (N, H, W, 3) uint8 ndarray for the ``rgb`` view, (N, H, W) uint8 for ``gray``

        Returns
        -------
        (N, D) float32 ndarray
        """

    def close(self) -> None:
        """Release what :meth:`load` acquired (called when the worker drops the spec)."""


class PerImageHandler(Handler):
    """Adapter: a plain function of one image, called image by image over a batch.

    Parameters
    ----------
    function : callable
        ``function(image, **params) -> (D,)`` for one (H, W, 3) or (H, W) uint8 image.
    """

    def __init__(self, function: Callable[..., np.ndarray]) -> None:
        self.function = function
        self.params: dict[str, Any] = {}

    def load(self, params: Mapping[str, Any], artifacts: Mapping[str, bytes]) -> None:
        self.params = dict(params)

    def extract_batch(self, images: np.ndarray) -> np.ndarray:
        rows = [np.asarray(self.function(image, **self.params), dtype=np.float32).reshape(-1) for image in images]
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        lengths = {r.shape[0] for r in rows}
        if len(lengths) != 1:
            raise ValueError(f"returned vectors of different lengths {sorted(lengths)}")
        return np.stack(rows)


@dataclasses.dataclass(frozen=True)
class ArtifactDef:
    """Something an extractor fits on a sample of the train split before the main pass.

    The pre-pass draws, in each shard, up to ``ceil(sample_images(params) / n_shards)``
    preprocessed train originals (those with the smallest ``sha256(f"{seed}:{column}:{key}")``,
    so every engine draws the same ones) and calls ``sample`` on each; the driver
    concatenates the samples in shard order and calls ``fit``. The bytes it returns
    are written to ``OUT/artifacts/<column>.<what>.<ext>``; their sha256 enters the
    feature fingerprint.

    Attributes
    ----------
    what, ext : str
        Name parts of the artefact file.
    sample_images : callable
        ``sample_images(params) -> int``: how many train images to sample in all.
    sample : callable
        ``sample(params, image, rng) -> ndarray``: a small sample of one image
        (in the declaration's view), `rng` seeded per image.
    fit : callable
        ``fit(params, samples, seed) -> bytes``; `samples` in shard order, and within a
        shard in the order the pre-pass drew them (a stable hash of seed, column and key).
    param : str or None
        A parameter that may name a saved artefact file instead of fitting one.
        It is left out of the feature's identity: the file enters the fingerprint
        by its content hash, so reusing a saved artefact gives the fingerprint of
        the run that fitted it.
    fit_params : tuple of str
        Parameters that only steer the fit (how much to sample): left out of the
        identity too, since the artefact's hash already says what was fitted.
    check_saved : callable or None
        ``check_saved(params, data)`` raises ValueError when a saved artefact
        cannot serve these parameters (checked before any image is read).
    """

    what: str
    ext: str
    sample_images: Callable[[Mapping[str, Any]], int]
    sample: Callable[[Mapping[str, Any], np.ndarray, np.random.Generator], np.ndarray]
    fit: Callable[[Mapping[str, Any], list[np.ndarray], int], bytes]
    param: str | None = None
    fit_params: tuple[str, ...] = ()
    check_saved: Callable[[Mapping[str, Any], bytes], None] | None = None

    def filename(self, column: str) -> str:
        return f"{column}.{self.what}.{self.ext}"


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
        ``check(params, report) -> params``: validates complete parameters, calls
        ``report(message)`` for each problem (and may go on to find more), and
        returns them in canonical form. Raising ValueError or TypeError reports one problem.
    dim : callable
        ``dim(params, image_size) -> int``: output length for an image of
        ``image_size = (height, width)``; raises ValueError if the size is unusable.
    handler : callable
        ``handler() -> Handler``: a fresh, unloaded handler (built in the worker).
    view : {'rgb', 'gray'}
        The image the handler reads: RGB, or OpenCV's ``COLOR_RGB2GRAY`` luma.
    tags : frozenset of str
        e.g. ``{"deep"}`` for extractors that need heavy per-worker state.
    artifact : ArtifactDef or None
        Fitted by a pre-pass before the main pass.
    files : callable or None
        ``files(params) -> {param: path}``: input files that parameters name (network
        weights). Each such parameter enters the feature's identity as the file's
        content hash (``"sha256:<hex>"``) instead of its value, so moving a file keeps
        the fingerprint and another file changes it; the manifest lists them
        (``extractor_files``). It may resolve a symbolic value to a cached file
        (``weights: imagenet``), fetching it first, and raises SpecError when it cannot.
    """

    name: str
    version: int
    defaults: Mapping[str, Any]
    check: Callable[[dict[str, Any], Report], dict[str, Any]]
    dim: Callable[[dict[str, Any], tuple[int, int]], int]
    handler: Callable[[], Handler]
    view: str = "rgb"
    tags: frozenset[str] = frozenset()
    artifact: ArtifactDef | None = None
    files: Callable[[Mapping[str, Any]], Mapping[str, str]] | None = None
    dtype = np.float32  # every extractor returns float32 (the output schema relies on it)

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"extractor {self.name!r}: view must be one of {VIEWS}, got {self.view!r}")

    def normalize_params(self, params: Mapping[str, Any] | None, report: Report | None = None) -> dict[str, Any]:
        """Complete `params` with defaults and validate them.

        Parameters
        ----------
        params : mapping or None
        report : callable, optional
            Receives each problem as a message naming the extractor. Without it,
            the first problem raises.

        Raises
        ------
        SpecError
            Without `report`, on an unknown parameter or an invalid value.
        """
        problems: list[str] = []
        sink = report or problems.append
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            sink(f"feature {self.name!r}: unknown parameter(s) {unknown}; known: {sorted(self.defaults)}")
        merged = {**self.defaults, **{k: v for k, v in params.items() if k in self.defaults}}
        try:
            normalized = self.check(merged, lambda message: sink(f"feature {self.name!r}: {message}"))
        except (ValueError, TypeError) as exc:
            sink(f"feature {self.name!r}: {exc}")
            normalized = merged
        if problems and report is None:
            raise SpecError(problems[0])
        return normalized

    def output_dim(self, params: Mapping[str, Any], image_size: tuple[int, int]) -> int:
        """Length D of the output vector for normalised `params` at `image_size`."""
        try:
            return int(self.dim(dict(params), tuple(image_size)))
        except ValueError as exc:
            raise SpecError(f"feature {self.name!r} cannot take image size {list(image_size)}: {exc}") from None
        except Exception as exc:  # parameters a check let through: still the spec's problem, in one line
            raise SpecError(f"feature {self.name!r}: parameters {dict(params)} give no output length "
                            f"({type(exc).__name__}: {exc})") from None

    def identity_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters that enter the fingerprint: a saved artefact's path does not, and a
        parameter naming an input file (:attr:`files`) enters as ``"sha256:<hex>"`` of its content."""
        skip = {self.artifact.param, *self.artifact.fit_params} if self.artifact is not None else set()
        identity = {k: v for k, v in params.items() if k not in skip}
        for param, path in self.input_files(params).items():
            identity[param] = f"sha256:{file_sha256(path, where=f'feature {self.name!r}: {param}')}"
        return identity

    def input_files(self, params: Mapping[str, Any]) -> dict[str, str]:
        """``{param: path}`` of the input files `params` name (empty without :attr:`files`)."""
        return dict(self.files(params)) if self.files is not None else {}

    def file_entries(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``[{param, path, sha256, bytes}]`` of the input files `params` name (for the manifest)."""
        return [{"param": param, "path": path, "sha256": file_sha256(path), "bytes": os.path.getsize(path)}
                for param, path in self.input_files(params).items()]

    def build(self, params: Mapping[str, Any], artifacts: Mapping[str, bytes] | None = None) -> Handler:
        """A loaded handler for normalised `params` (what a worker does once per spec)."""
        handler = self.handler()
        handler.load(dict(params), dict(artifacts or {}))
        return handler


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str, *, where: str = "input file") -> str:
    """sha256 hex of a file's content, computed once per process per (path, size, mtime).

    Network weights run to hundreds of megabytes (VGG16's ImageNet file: 528 MB)
    and enter every fingerprint of a run; a changed file gets a new size or
    modification time and is hashed again.

    Raises
    ------
    SpecError
        If the file cannot be read (`where` names the parameter in the message).
    """
    try:
        status = os.stat(path)
        key = (os.path.abspath(path), status.st_size, status.st_mtime_ns)
        if key not in _FILE_HASHES:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
            _FILE_HASHES[key] = digest.hexdigest()
        return _FILE_HASHES[key]
    except OSError as exc:
        raise SpecError(f"{where}: cannot read {path!r}: {exc.strerror or exc}") from None


def per_image(function: Callable[..., np.ndarray]) -> Callable[[], Handler]:
    """Handler factory for a plain per-image function ``function(image, **params) -> (D,)``."""

    return functools.partial(PerImageHandler, function)


def no_params(params: dict[str, Any], report: Report) -> dict[str, Any]:
    """The check of an extractor without parameters."""
    return params


_REGISTRY: dict[str, ExtractorDef] = {}
_LOADED = False


def register(definition: ExtractorDef) -> ExtractorDef:
    """Add `definition` to the registry (names are unique)."""
    if definition.name in _REGISTRY and _REGISTRY[definition.name] is not definition:
        raise ValueError(f"extractor {definition.name!r} is already registered")
    _REGISTRY[definition.name] = definition
    return definition


def _plugin_modules() -> list[str]:
    from importlib import metadata

    modules = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    modules += [ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    return modules


def load_families() -> None:
    """Import the built-in families and every plugin module (once per process).

    Raises
    ------
    SpecError
        If a plugin module named in ``FEATURELIB_PLUGINS`` cannot be imported.
    """
    global _LOADED
    if _LOADED:
        return
    for module in BUILTIN_FAMILIES:
        importlib.import_module(module)
    for module in _plugin_modules():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SpecError(f"extractor plugin module {module!r} ({PLUGINS_ENV} or the "
                            f"{ENTRY_POINT_GROUP!r} entry points) cannot be imported: {exc}") from None
    _LOADED = True


def get(name: str) -> ExtractorDef:
    """The extractor called `name`.

    Raises
    ------
    SpecError
        If no extractor has that name (the message lists the known names).
    """
    load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown extractor {name!r}; known: {sorted(_REGISTRY)}") from None


def names(*, exclude_tags: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Registered names, sorted, without those carrying any of `exclude_tags`."""
    load_families()
    return sorted(n for n, d in _REGISTRY.items() if not (d.tags & set(exclude_tags)))

