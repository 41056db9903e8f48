"""Extractors that exist only for the tests: loaded in every worker through FEATURELIB_PLUGINS.

* ``toy_centered``: a fitted pre-pass. Its artefact is the mean gray level of a
  sample of train images (JSON); its features are each RGB channel's mean minus
  that constant. The parameter ``constant`` may name a saved artefact file.
* ``fragile_mean``: a batched handler (numpy over the whole batch) that raises
  when any image of the batch is flat (one value everywhere): the kernel must
  retry image by image so only the flat image is rejected.
* ``always_fails``, ``needs_missing_module``, ``runs_out_of_memory``: broken
  extractors, which must fail the run (exit 1), not reject every record.
* ``sleepy``: the mean gray level, after sleeping ``seconds`` per image (default 0): a run
  slow enough to be interrupted, killed or raced, on purpose and on time.
* the augmentation op ``fail_on_flat``: raises on flat images (``transform_failed``).

Every ``load`` appends ``pid column`` to the file named by ``FEATURELIB_TEST_LOAD_LOG``
(when set), so tests count how often each worker process loaded a handler.
"""

from __future__ import annotations

import json
import os

import numpy as np

from featurelib import registry, transforms


def _log_load(column_hint: str) -> None:
    path = os.environ.get("FEATURELIB_TEST_LOAD_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {column_hint}\n")


class ToyCentered(registry.Handler):
    batch_size = 16

    def load(self, params, artifacts):
        self.constant = json.loads(artifacts["constant"].decode())["mean_gray"]
        _log_load("toy_centered")

    def extract_batch(self, images):
        means = images.reshape(len(images), -1, 3).mean(axis=1, dtype=np.float64)
        return (means - self.constant).astype(np.float32)


def _fit_constant(params, samples, seed):
    if not samples:
        raise ValueError("no sample")
    return json.dumps({"mean_gray": float(np.mean(np.concatenate(samples)))}, sort_keys=True).encode()


TOY = registry.register(registry.ExtractorDef(
    name="toy_centered", version=1, defaults={"sample_images": 40, "constant": None},
    check=lambda params, report: params, dim=lambda params, size: 3, handler=ToyCentered,
    artifact=registry.ArtifactDef(
        what="constant", ext="json", param="constant",
        sample_images=lambda params: params["sample_images"],
        sample=lambda params, image, rng: np.array([image.mean(dtype=np.float64)]),
        fit=_fit_constant)))


class FragileMean(registry.Handler):
    batch_size = 8

    def load(self, params, artifacts):
        _log_load("fragile_mean")

    def extract_batch(self, images):
        flat = images.reshape(len(images), -1)
        if (flat.max(axis=1) == flat.min(axis=1)).any():
            raise ValueError("a flat image in the batch")
        return flat.mean(axis=1, dtype=np.float64)[:, None].astype(np.float32) / 255.0


registry.register(registry.ExtractorDef(
    name="fragile_mean", version=1, defaults={}, check=registry.no_params, dim=lambda params, size: 1,
    handler=FragileMean, view="gray"))


def _always_fails(image):
    raise ZeroDivisionError("division by zero")


def _needs_missing_module(image):
    import featurelib_module_that_does_not_exist  # noqa: F401

    return np.zeros(1, np.float32)


def _runs_out_of_memory(image):
    raise MemoryError("simulated: cannot allocate")


for _name, _function in (("always_fails", _always_fails), ("needs_missing_module", _needs_missing_module),
                         ("runs_out_of_memory", _runs_out_of_memory)):
    registry.register(registry.ExtractorDef(
        name=_name, version=1, defaults={}, check=registry.no_params, dim=lambda params, size: 1,
        handler=registry.per_image(_function)))


def _check_sleepy(params, report):
    seconds = params["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 5:
        report(f"seconds must be a number in [0, 5], got {seconds!r}")
    return params


def _sleepy(image, *, seconds):
    import time

    time.sleep(seconds)
    return np.array([image.mean()], np.float32)


registry.register(registry.ExtractorDef(
    name="sleepy", version=1, defaults={"seconds": 0}, check=_check_sleepy, dim=lambda params, size: 1,
    handler=registry.per_image(_sleepy), view="gray"))


def _fail_on_flat(image, rng, *, p):
    rng.random()
    if (image == image[0, 0]).all():
        raise ValueError("cannot augment a flat image")
    return image


transforms.register_op("fail_on_flat", _fail_on_flat, {"p": transforms.probability(1.0)},
                       doc="raises on flat images", identity="p: 0")
