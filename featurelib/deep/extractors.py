"""The ``vgg16`` and ``cnn`` extractors: ``keras.applications`` backbones as feature extractors.

* ``vgg16``: VGG16 (Simonyan and Zisserman 2015) read at ``block5_pool``
  (``flatten``: (H//32)*(W//32)*512 values, 25,088 at 224x224, Keras' ``Flatten``
  order; ``avg`` or ``max``: 512) or at ``fc1`` / ``fc2`` (4,096, after ReLU; only
  at 224x224, where the top's 7x7x512 input comes from). Backends ``keras``
  (TensorFlow) and ``onnx`` (:mod:`featurelib.deep.onnx_graph`: ONNX Runtime or
  OpenCV DNN, ``precision: int8`` too; no TensorFlow in the worker).
* ``cnn``: ResNet50, InceptionV3, Xception, MobileNetV2 or EfficientNetB0
  without their top, read at their last feature map, pooled.

Preprocessing is each network's ``keras.applications.<module>.preprocess_input``
on the float32 of the uint8 RGB batch (VGG16 and ResNet50: caffe mode, RGB->BGR
minus the ImageNet means; InceptionV3, Xception, MobileNetV2: x/127.5 - 1;
EfficientNet: inside the model). Weights: ``imagenet`` (Keras' own files, from
Keras' cache, downloaded once on the driver when absent) or the path of a
weights file, Keras 3 ``.weights.h5`` or legacy ``.h5`` layout
(:mod:`featurelib.deep.weights`). The file enters the feature fingerprint by its
sha256 (:attr:`featurelib.registry.ExtractorDef.files`), not by its path.

Everything the driver checks (parameters, image size, the weights file's
layers and shapes, whether TensorFlow or ONNX Runtime is installed) is checked
without importing TensorFlow: this module is imported with the core install.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from featurelib import registry
from featurelib.deep import weights as weightsfile
from featurelib.deep.backbones import CNN, VGG16, VGG16_NEEDS, VGG16_TOP, Backbone

VGG16_LAYERS = ("block5_pool", "fc1", "fc2")
POOLINGS = ("flatten", "avg", "max")
BACKENDS = ("keras", "onnx")
PRECISIONS = ("fp32", "int8")
#: The input size of VGG16's fully connected top.
TOP_SIZE = (224, 224)
TAGS = frozenset({"deep"})

DEEP_EXTRA = "pip install 'featurelib[deep]'"
ONNX_EXTRA = "pip install 'featurelib[onnx]'"

#: Images per call. VGG16 at 224x224 on one thread: 16 and 32 cost the same per image (measured),
#: 16 holds half the activations (block1: 16 x 224 x 224 x 64 float32 = 205 MB per layer).
BATCH_SIZE = 16


def _absent(*modules: str) -> list[str]:
    """The modules of `modules` that cannot be imported here (found without importing them)."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that fails, or a module without a spec
            found = False
        if not found:
            missing.append(module)
    return missing


def _choice(params: dict, key: str, choices, report) -> bool:
    if params[key] not in choices:
        report(f"{key} must be one of {list(choices)}, got {params[key]!r}")
        return False
    return True


def _weights_path(params: dict, report) -> str | None:
    """Canonical ``weights``: ``imagenet``, or an absolute path (workers resolve nothing relative)."""
    value = params["weights"]
    if value == "imagenet":
        return None
    if not isinstance(value, str) or not value:
        report(f"weights must be 'imagenet' or the path of a weights file (.weights.h5 or .h5), got {value!r}")
        return None
    params["weights"] = os.path.abspath(os.path.expanduser(value))
    return params["weights"]


def _check_file(path: str | None, imagenet, check: Callable[[list], None] | None, report) -> None:
    """A named file must exist and pass `check` (None: parameters too broken to say what it must hold);
    Keras' cached ImageNet file `imagenet` is checked when it is there."""
    where = f"weights file {path!r}" if path else None
    if path is None:
        path = weightsfile.cached_file(imagenet) if imagenet is not None else None
        if path is None:
            return  # fetched into Keras' cache before any image is read (ExtractorDef.files)
        where = f"weights: imagenet: Keras' cached {path!r} (delete it to download it again)"
    if not os.path.isfile(path):
        report(f"{where} does not exist or is not a file (weights: imagenet, or the path of a weights file "
               f"that every worker can read)")
        return
    if check is None:
        return
    try:
        check(weightsfile.scan(path)[1])
    except weightsfile.WeightsError as exc:
        report(f"{where} cannot be used: {exc}")


def _check_keras(report) -> None:
    missing = _absent("tensorflow", "keras")
    if missing:
        report(f"backend keras needs TensorFlow, which is not installed here ({', '.join(missing)} cannot be "
               f"imported): {DEEP_EXTRA}")


# --- vgg16 -------------------------------------------------------------------------------------


def _vgg16_imagenet(layer: str):
    return VGG16_TOP if layer in ("fc1", "fc2") else VGG16.imagenet


def _check_vgg16(params: dict, report) -> dict:
    params = dict(params)
    layer_ok = _choice(params, "layer", VGG16_LAYERS, report)
    if _choice(params, "pooling", POOLINGS, report) and layer_ok and params["layer"] != "block5_pool" \
            and params["pooling"] != "flatten":
        report(f"pooling applies to layer block5_pool; {params['layer']} is a dense layer after the network's own "
               f"flatten: leave pooling out (or flatten), got {params['pooling']!r}")
    backend_ok = _choice(params, "backend", BACKENDS, report)
    if _choice(params, "precision", PRECISIONS, report) and backend_ok and params["precision"] == "int8" \
            and params["backend"] != "onnx":
        report("precision int8 runs on backend onnx only (a statically quantised ONNX graph); "
               "backend keras computes in fp32")
    if backend_ok and params["backend"] == "keras":
        _check_keras(report)
    elif backend_ok:
        missing = _absent("onnx", "onnxruntime")
        if missing:
            report(f"backend onnx needs ONNX and ONNX Runtime, which are not installed here "
                   f"({', '.join(missing)} cannot be imported): {ONNX_EXTRA}")
    path = _weights_path(params, report)
    if layer_ok:
        needed = VGG16_NEEDS[params["layer"]]
        _check_file(path, _vgg16_imagenet(params["layer"]),
                    lambda layers: weightsfile.check_vgg16(layers, needed), report)
    else:
        _check_file(path, None, None, report)
    return params


def _vgg16_dim(params: dict, size: tuple[int, int]) -> int:
    height, width = size
    if params["layer"] in ("fc1", "fc2"):
        if tuple(size) != TOP_SIZE:
            raise ValueError(f"layer {params['layer']} needs image.size [224, 224] (the fully connected top takes "
                             f"7x7x512 values); at other sizes use layer block5_pool")
        return 4096
    if min(height, width) < VGG16.min_side:
        raise ValueError(f"VGG16 needs images of at least {VGG16.min_side}x{VGG16.min_side} (five 2x2 pools)")
    if params["pooling"] == "flatten":
        return (height // 32) * (width // 32) * VGG16.channels
    return VGG16.channels


def _vgg16_files(params: Mapping[str, Any]) -> dict[str, str]:
    if params["weights"] != "imagenet":
        return {"weights": params["weights"]}
    return {"weights": weightsfile.imagenet_file(_vgg16_imagenet(params["layer"]),
                                                 where="feature 'vgg16': weights: imagenet")}


def resolve_weights(params: Mapping[str, Any], imagenet) -> str:
    """The weights file of normalised `params` (Keras' cached ImageNet file, fetched if absent)."""
    if params["weights"] != "imagenet":
        return params["weights"]
    return weightsfile.imagenet_file(imagenet)


def _worker_threads() -> int:
    """``execution.threads_per_worker`` as the worker set it up (featurelib.worker), else 1."""
    value = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


class _OnnxNet:
    """VGG16 through :mod:`featurelib.deep.onnx_graph`: weights read with h5py, graph built per input size."""

    def __init__(self, params: Mapping[str, Any], path: str) -> None:
        from featurelib.deep import onnx_graph

        self.onnx_graph = onnx_graph
        self.params, self.path = dict(params), path
        self.weights: dict[str, list[np.ndarray]] | None = weightsfile.vgg16_weights(path, params["layer"])
        self.runners: dict[tuple[int, int], Any] = {}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        size = tuple(images.shape[1:3])
        if size not in self.runners:
            weights = self.weights or weightsfile.vgg16_weights(self.path, self.params["layer"])
            model = self.onnx_graph.build_vgg16(weights, layer=self.params["layer"], pooling=self.params["pooling"],
                                                height=size[0], width=size[1])
            self.runners[size] = self.onnx_graph.OnnxVGG16(model, runtime="auto", threads=_worker_threads(),
                                                           precision=self.params["precision"])
            self.weights = None
        return np.asarray(self.runners[size].run(images.astype(np.float32)), dtype=np.float32)


class _DeepHandler(registry.Handler):
    """Shared by both extractors: the network is built in ``load`` (once per worker process) and
    rebuilt, not pickled, when a handler is shipped (a runner may pickle a warm handler)."""

    batch_size = BATCH_SIZE

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.net: Callable[[np.ndarray], np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"params": self.params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
        if state["params"]:
            self.load(state["params"], {})

    def extract_batch(self, images: np.ndarray) -> np.ndarray:
        return self.net(images)

    def close(self) -> None:
        self.net = None


class Vgg16Handler(_DeepHandler):
    def load(self, params, artifacts) -> None:
        self.params = dict(params)
        path = resolve_weights(params, _vgg16_imagenet(params["layer"]))
        if params["backend"] == "onnx":
            self.net = _OnnxNet(params, path)
        else:
            from featurelib.deep.keras_backend import FeatureNet

            self.net = FeatureNet(VGG16, params["layer"], params["pooling"], path)


VGG16_DEF = registry.register(registry.ExtractorDef(
    name="vgg16", version=1,
    defaults={"layer": "block5_pool", "pooling": "flatten", "weights": "imagenet", "backend": "keras",
              "precision": "fp32"},
    check=_check_vgg16, dim=_vgg16_dim, handler=Vgg16Handler, tags=TAGS, files=_vgg16_files))


# --- cnn ---------------------------------------------------------------------------------------


def _backbone(params: Mapping[str, Any]) -> Backbone:
    return CNN[params["model"]]


def _check_cnn(params: dict, report) -> dict:
    params = dict(params)
    model_ok = isinstance(params["model"], str) and params["model"] in CNN
    if not model_ok:
        report(f"model must be one of {list(CNN)}, got {params['model']!r}")
    if model_ok:
        backbone = _backbone(params)
        if params["layer"] in (None, backbone.feature_layer):
            params["layer"] = backbone.feature_layer
        else:
            report(f"layer: {backbone.name} is read at its last feature map {backbone.feature_layer!r} (the default); "
                   f"other layers are not offered (their output length is not known without building the "
                   f"network), got {params['layer']!r}")
    _choice(params, "pooling", POOLINGS, report)
    _check_keras(report)
    path = _weights_path(params, report)
    if model_ok:
        backbone = _backbone(params)
        _check_file(path, backbone.imagenet, lambda layers: weightsfile.check_backbone(backbone, layers), report)
    else:
        _check_file(path, None, None, report)
    return params


def _cnn_dim(params: dict, size: tuple[int, int]) -> int:
    backbone = _backbone(params)
    if min(size) < backbone.min_side:
        raise ValueError(f"{backbone.name} needs images of at least {backbone.min_side}x{backbone.min_side} "
                         f"(Keras' minimum for it)")
    if params["pooling"] == "flatten":
        height, width = backbone.map_size(size)
        return height * width * backbone.channels
    return backbone.channels


def _cnn_files(params: Mapping[str, Any]) -> dict[str, str]:
    if params["weights"] != "imagenet":
        return {"weights": params["weights"]}
    return {"weights": weightsfile.imagenet_file(_backbone(params).imagenet,
                                                 where=f"feature 'cnn' ({params['model']}): weights: imagenet")}


class CnnHandler(_DeepHandler):
    def load(self, params, artifacts) -> None:
        from featurelib.deep.keras_backend import FeatureNet

        self.params = dict(params)
        backbone = _backbone(params)
        self.net = FeatureNet(backbone, params["layer"], params["pooling"], resolve_weights(params, backbone.imagenet))


CNN_DEF = registry.register(registry.ExtractorDef(
    name="cnn", version=1,
    defaults={"model": None, "layer": None, "pooling": "avg", "weights": "imagenet"},
    check=_check_cnn, dim=_cnn_dim, handler=CnnHandler, tags=TAGS, files=_cnn_files))
