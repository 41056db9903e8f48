"""The Keras side of the deep extractors: imported only inside a handler's ``load`` (it imports TensorFlow).

A :class:`FeatureNet` holds one backbone's weights (read with h5py by
:mod:`featurelib.deep.weights`) and builds the Keras feature model for the
input size of the images it is given (Keras' MobileNetV2 and EfficientNet pad
according to the static input size, so the model is built at the exact size;
every batch of a run has the same size, so that is once per worker process).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Sequence

import numpy as np

from featurelib.deep import weights as weightsfile
from featurelib.deep.backbones import Backbone
from featurelib.deep.quiet import quiet_import_tensorflow

#: Environment variable the worker sets to ``execution.threads_per_worker`` (featurelib.worker).
THREADS_ENV = "TF_NUM_INTRAOP_THREADS"


def import_keras():
    """Import Keras (TensorFlow backend) with the worker's thread setting; returns the ``keras`` module.

    TensorFlow reads ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS`` when it
    starts; the same values are set through ``tf.config.threading`` in case it
    started before the worker's setup (where it cannot change any more, nothing is changed).
    The import itself prints nothing unless ``featurize run --verbose``
    (:func:`featurelib.deep.quiet.quiet_import_tensorflow`: TensorFlow's C++ start-up lines).
    """
    tf = quiet_import_tensorflow()
    import keras

    threads = os.environ.get(THREADS_ENV)
    if threads and threads.isdigit() and int(threads) > 0:
        with contextlib.suppress(RuntimeError):  # already initialised: it keeps what it started with
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(int(threads))
    return keras


def preprocess(keras, backbone: Backbone, images: np.ndarray) -> np.ndarray:
    """``keras.applications.<module>.preprocess_input`` of the float32 copy of a uint8 RGB batch."""
    module = importlib.import_module(f"keras.applications.{backbone.module}")
    return np.asarray(module.preprocess_input(images.astype(np.float32)), dtype=np.float32)


def _head(keras, pooling: str):
    return {"flatten": keras.layers.Flatten, "avg": keras.layers.GlobalAveragePooling2D,
            "max": keras.layers.GlobalMaxPooling2D}[pooling]()


def build_model(keras, backbone: Backbone, layer: str, pooling: str, size: Sequence[int]):
    """The Keras feature model (random weights) for ``size = (height, width)``.

    VGG16's ``fc1`` / ``fc2``: the network without its top, then the top's own
    ``Flatten`` and ``Dense(4096, relu)`` layers under Keras' names (the
    ``predictions`` layer is not built: its 4 M weights are never read).
    Otherwise the named feature map, then ``pooling``.
    """
    height, width = size
    constructor = getattr(keras.applications, backbone.constructor)
    base = constructor(include_top=False, weights=None, input_shape=(height, width, 3))
    if layer in ("fc1", "fc2"):
        x = keras.layers.Flatten(name="flatten")(base.output)
        x = keras.layers.Dense(4096, activation="relu", name="fc1")(x)
        if layer == "fc2":
            x = keras.layers.Dense(4096, activation="relu", name="fc2")(x)
        return keras.Model(base.input, x, name=f"{backbone.name}_{layer}")
    features = base.get_layer(layer).output
    return keras.Model(base.input, _head(keras, pooling)(features), name=f"{backbone.name}_{layer}_{pooling}")


class FeatureNet:
    """One backbone's feature model in a worker process: weights read once, model built per input size.

    Parameters
    ----------
    backbone : Backbone
    layer, pooling : str
        Normalised parameters of the extractor.
    path : str
        Weights file (either layout); read now, checked against the model when it is built.
    """

    def __init__(self, backbone: Backbone, layer: str, pooling: str, path: str) -> None:
        self.keras = import_keras()
        self.backbone, self.layer, self.pooling, self.path = backbone, layer, pooling, path
        self.models: dict[tuple[int, int], tuple] = {}
        self._weights = self._read()

    def _read(self) -> tuple[str, list]:
        if self.backbone.name == "vgg16":  # VGG16 names every layer: matched by name, whatever the layout
            found = weightsfile.vgg16_weights(self.path, self.layer)
            return weightsfile.LEGACY, [weightsfile.FileLayer(name, values) for name, values in found.items()]
        return weightsfile.backbone_weights(self.backbone, self.path)

    def model(self, size: tuple[int, int]):
        """``(keras model, compiled call)`` for input `size`, built (and its weights set) the first time.

        The call is ``tf.function(model(x, training=False))`` traced once for any
        batch length: the graph ``model.predict`` runs (equal outputs, measured),
        without ``predict_on_batch``'s retracing when a shard's last batch is shorter.
        """
        if size not in self.models:
            import tensorflow as tf

            model = build_model(self.keras, self.backbone, self.layer, self.pooling, size)
            layout, layers = self._weights or self._read()
            weightsfile.assign(model, layers, layout)
            self._weights = None  # one copy of the weights (the model's) once built: 528 MB for fc1/fc2
            call = tf.function(lambda x: model(x, training=False), autograph=False, reduce_retracing=True,
                               input_signature=[tf.TensorSpec((None, *size, 3), tf.float32)])
            self.models[size] = (model, call)
        return self.models[size]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, D) float32 features of an (N, H, W, 3) uint8 RGB batch."""
        model, call = self.model(tuple(images.shape[1:3]))
        if not len(images):
            return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32)
        out = call(preprocess(self.keras, self.backbone, images))
        return np.asarray(out, dtype=np.float32).reshape(len(images), -1)
