"""Weights files for the deep extractor tests, written here (nothing is downloaded).

* :func:`save_keras3`: Keras 3's own ``model.save_weights("x.weights.h5")``;
* :func:`save_legacy`: the legacy Keras 2 layout of the ImageNet files in Keras'
  cache, written with h5py alone: root attributes ``layer_names`` (every layer,
  those without weights too, as Keras 2 wrote them), ``backend`` and
  ``keras_version``; one group per layer with attribute ``weight_names``
  (``block1_conv1/kernel:0``, ...) naming its datasets, which h5py stores under
  nested groups (``block1_conv1/block1_conv1/kernel:0``). Keras 3 reads it with
  ``legacy_h5_format.load_weights_from_hdf5_group`` (the tests check that it does).
"""

from __future__ import annotations

import pathlib

import h5py
import numpy as np


def keras():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import keras

    return keras


def random_model(constructor: str, size, *, seed: int = 0, include_top: bool = False):
    """``keras.applications.<constructor>`` with random weights (seeded) at input ``size = (h, w)``."""
    k = keras()
    k.utils.set_random_seed(seed)
    return getattr(k.applications, constructor)(include_top=include_top, weights=None, input_shape=(*size, 3))


def save_keras3(model, path) -> pathlib.Path:
    model.save_weights(str(path))
    return pathlib.Path(path)


def save_legacy(model, path) -> pathlib.Path:
    """The legacy ``.h5`` layout, written with h5py (see the module docstring)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
            names = [f"{layer.name}/{v.path.split('/')[-1]}:0".encode("utf8") for v in variables]
            group.attrs["weight_names"] = np.array(names, dtype="S") if names else np.zeros((0,), dtype="S1")
            for name, variable in zip(names, variables):
                group.create_dataset(name.decode("utf8"), data=np.asarray(variable.numpy()))
    return pathlib.Path(path)


def save_with_wrong_shape(model, path, layer: str) -> pathlib.Path:
    """A legacy file whose `layer` kernel has one output channel too few (a corrupt or foreign file)."""
    save_legacy(model, path)
    with h5py.File(path, "r+") as f:
        group = f[layer][layer]
        kernel = group["kernel:0"][()]
        del group["kernel:0"]
        group.create_dataset("kernel:0", data=kernel[..., :-1])
    return pathlib.Path(path)
