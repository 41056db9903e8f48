"""What featurelib knows about each ``keras.applications`` backbone without importing TensorFlow.

One :class:`Backbone` per network: the Keras constructor and preprocessing
module, Keras' own smallest input side, the feature map a run reads by default
and its channels, the spatial size of that map as a formula of the input size
(checked against the built Keras models at many sizes by the tests), the
ImageNet weights file Keras downloads, and what its weighted layers look like
(for checking a weights file on the driver with h5py alone).

Formulas (each axis separately; ``ceil_halve(s, k)`` halves ``k`` times rounding up):

* VGG16: five 2x2 valid max-pools: ``s // 32``;
* ResNet50, MobileNetV2, EfficientNetB0: five stride-2 steps with "same"-like
  padding (Keras pads explicitly: ``ZeroPadding2D`` / ``correct_pad``): ``ceil(s / 32)``;
* Xception: a valid 3x3 stride-2 and a valid 3x3 convolution, then four
  "same" stride-2 steps: ``ceil(((s - 3) // 2 - 1) / 16)``;
* InceptionV3: valid convolutions and pools all the way:
  ``s1 = (s-3)//2+1``, ``-2``, ``(.-3)//2+1``, ``-2``, then ``(.-3)//2+1`` three times.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence

#: Where Keras downloads the ImageNet weights from (``keras.applications`` sources, Keras 3.15).
_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """An ImageNet weights file as Keras fetches it: ``keras.utils.get_file(fname, origin,
    cache_subdir="models", file_hash=md5)`` into ``$KERAS_HOME/models`` (default ``~/.keras/models``)."""

    fname: str
    origin: str
    md5: str | None


def ceil_halve(size: int, times: int) -> int:
    for _ in range(times):
        size = (size + 1) // 2
    return size


def _valid(size: int, kernel: int = 3, stride: int = 1) -> int:
    return (size - kernel) // stride + 1


def _inception_side(s: int) -> int:
    s = _valid(s, 3, 2) - 2          # conv 3x3/2 valid, conv 3x3 valid, conv 3x3 same
    s = _valid(s, 3, 2) - 2          # max-pool 3x3/2, conv 1x1, conv 3x3 valid
    s = _valid(s, 3, 2)              # max-pool 3x3/2, then mixed0-2 keep the size
    return _valid(_valid(s, 3, 2), 3, 2)  # mixed3 and mixed8 reduce with valid 3x3/2


def _xception_side(s: int) -> int:
    return ceil_halve(_valid(s, 3, 2) - 2, 4)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One ``keras.applications`` network, as far as the driver needs to know it.

    Attributes
    ----------
    name : str
        The value of the ``cnn`` extractor's ``model`` parameter (``vgg16`` for the ``vgg16`` extractor).
    constructor, module : str
        ``keras.applications.<constructor>`` builds it; ``keras.applications.<module>.preprocess_input``
        is its preprocessing.
    min_side : int
        Keras' smallest input height and width (``imagenet_utils.obtain_input_shape``'s ``min_size``).
    feature_layer : str
        The last feature map of the network without its top (what ``include_top=False`` ends with).
    channels : int
        Channels of that map.
    side : callable
        ``side(s) -> int``: the map's height (width) for an input height (width) ``s``.
    imagenet : WeightsFile
        The ImageNet weights without the top, as Keras downloads them.
    layer_count, layer_digest : int, str
        How many layers with weights the network without its top has, and
        :func:`shapes_digest` of their weight shapes (the tests check both against Keras).
    """

    name: str
    constructor: str
    module: str
    min_side: int
    feature_layer: str
    channels: int
    side: Callable[[int], int]
    imagenet: WeightsFile
    layer_count: int
    layer_digest: str

    def map_size(self, size: Sequence[int]) -> tuple[int, int]:
        """(height, width) of the feature map for an input of ``size = (height, width)``."""
        return self.side(size[0]), self.side(size[1])


def shapes_digest(layers: Sequence[Sequence[Sequence[int]]]) -> str:
    """A digest of the weight shapes of a network's layers, independent of layer names and order
    (legacy files and Keras 3 files name and order layers differently): sha256 of the sorted
    canonical JSON of each layer's list of shapes."""
    rows = sorted(json.dumps([list(shape) for shape in layer], separators=(",", ":")) for layer in layers)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _file(folder: str, fname: str, md5: str | None) -> WeightsFile:
    return WeightsFile(fname, f"{_KERAS_APPS}{folder}/{fname}", md5)


VGG16 = Backbone(
    "vgg16", "VGG16", "vgg16", 32, "block5_pool", 512, lambda s: s // 32,
    _file("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "6d6bbae143d832006294945121d1f1fc"),
    13, "")  # VGG16's layers are checked one by one against VGG16_LAYERS instead

#: The ImageNet weights of the whole VGG16 (528 MB), for ``layer: fc1`` / ``fc2``.
VGG16_TOP = _file("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels.h5", "64373286793e3c8b2b4e3219cbf3544b")

#: The ``cnn`` extractor's backbones, by the name its ``model`` parameter takes.
CNN: dict[str, Backbone] = {b.name: b for b in (
    Backbone("resnet50", "ResNet50", "resnet50", 32, "conv5_block3_out", 2048, lambda s: ceil_halve(s, 5),
             _file("resnet", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                   "4d473c1dd8becc155b73f8504c6f6626"),
             106, "00be6d5d7c9e9e81e363c455a30f706d6bfce089fbbae3858be472e4969e0737"),
    Backbone("inception_v3", "InceptionV3", "inception_v3", 75, "mixed10", 2048, _inception_side,
             _file("inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                   "bcbd6486424b2319ff4ef7d526e38f63"),
             188, "a319e27e1649cb7b1d81bce4eae68fc968b1a69ffafad3685c7f2b3443e202ae"),
    Backbone("xception", "Xception", "xception", 71, "block14_sepconv2_act", 2048, _xception_side,
             _file("xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                   "b0042744bf5b25fce3cb969f33bebb97"),
             80, "c67acd66390402c2070f1dfc0054f4e848c343b5d9fb8d76746565a9206a3988"),
    # Keras picks MobileNetV2 ImageNet weights trained at 96-192 px for those square sizes; featurelib always
    # uses the 224 px file, so a column's weights never depend on image.size (give weights: PATH for others).
    Backbone("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 32, "out_relu", 1280, lambda s: ceil_halve(s, 5),
             WeightsFile("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
                         "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
                         "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", None),
             104, "33bd9afe1d7a63dd3c71566dab4b9d70a1e764e640f5560385c024e37dcb7c84"),
    Backbone("efficientnet_b0", "EfficientNetB0", "efficientnet", 32, "top_activation", 1280,
             lambda s: ceil_halve(s, 5),
             WeightsFile("efficientnetb0_notop.h5", "https://storage.googleapis.com/keras-applications/"
                         "efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"),
             131, "e4b75eb5c8f738d7f8506ddde6b6172f79b1e0519539d59322e6a3d4fd894f61"),
)}


def vgg16_layers() -> dict[str, list[tuple[int, ...]]]:
    """Every layer of VGG16 with weights, in order, with the shapes of its [kernel, bias]."""
    table: dict[str, list[tuple[int, ...]]] = {}
    inputs = 3
    for block, (channels, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1):
        for conv in range(1, convs + 1):
            table[f"block{block}_conv{conv}"] = [(3, 3, inputs, channels), (channels,)]
            inputs = channels
    table["fc1"] = [(7 * 7 * 512, 4096), (4096,)]
    table["fc2"] = [(4096, 4096), (4096,)]
    table["predictions"] = [(4096, 1000), (1000,)]
    return table


#: VGG16's layers with weights: 13 convolutions, then the top's fc1, fc2 and predictions.
VGG16_LAYERS = vgg16_layers()
VGG16_CONVS = tuple(name for name in VGG16_LAYERS if name.startswith("block"))
#: The layers each ``vgg16`` ``layer`` reads.
VGG16_NEEDS = {"block5_pool": VGG16_CONVS, "fc1": (*VGG16_CONVS, "fc1"), "fc2": (*VGG16_CONVS, "fc1", "fc2")}
