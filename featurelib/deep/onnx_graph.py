"""VGG16 as an ONNX graph built straight from Keras weights, and a runner on ONNX Runtime or OpenCV DNN.

Why build the graph by hand: OpenCV's DNN importer rejects the frozen graphs
Keras 3 exports, and VGG16 is simple enough to write down: 13 convolutions
(3x3, pad 1, ReLU) in 5 blocks, each block closed by a 2x2 stride-2 max-pool,
then optionally Flatten -> Dense ``fc1`` (ReLU) -> Dense ``fc2`` (ReLU). No
converter is involved (no tf2onnx, no keras2onnx): :func:`build_vgg16` writes
the nodes with :mod:`onnx.helper` from the arrays Keras gives,
``{layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}``.

The graph takes raw pixels: input ``images``, float32 ``(N, H, W, 3)`` RGB in
0..255 (dynamic ``N``). Keras' caffe preprocessing
(``keras.applications.vgg16.preprocess_input``: RGB -> BGR, minus the ImageNet
BGR means, no scaling) is inside the graph: the means are subtracted in RGB
order and the channel flip is folded into ``block1_conv1``'s kernel (its
input-channel axis reversed, which is the same convolution of the flipped
image), then the batch is transposed to NCHW. Output ``features``: float32
``(N, D)`` in Keras' element order. For ``pooling="flatten"`` the block output
is transposed back to NHWC before flattening, as Keras' ``Flatten`` sees it
(and as ``fc1``'s kernel expects).

Layers and poolings (:func:`feature_dim`):

* a conv or pool layer (``block1_conv1`` .. ``block5_pool``, usually
  ``block5_pool``) with ``pooling`` ``"flatten"`` (``h * w * c``, 25,088 for
  ``block5_pool`` at 224x224), ``"avg"`` or ``"max"`` (``c``: global pooling
  over ``h, w``; 512 for block 4 and 5). Any input of at least 32x32 works; every
  max-pool halves the size, rounding down, as Keras' ``padding="valid"`` does.
* ``fc1`` or ``fc2`` (4,096 values, after ReLU), only at 224x224 (the size
  ``fc1``'s 25,088 inputs come from); ``pooling`` must be ``None`` (or
  ``"flatten"``, which is what the top does anyway).

Runtimes (:class:`OnnxVGG16`): ONNX Runtime (CPU provider) and OpenCV DNN
(``cv2.dnn.readNetFromONNX``, Winograd convolutions), both load the same bytes.
On this graph they run fp32 at the same speed on the 2-core AMD EPYC (AVX2) it
was measured on (``benchmarks/bench_vgg16_backends.py``, four runs, and
one-thread runs: within +-10 % of each other, the sign changing between runs;
1.1..1.4x Keras' CPU time per image, 1.1..1.2x its img/s at 2 threads when
Keras' ``predict`` uses both cores), so ``runtime="auto"`` takes ONNX Runtime:
5x closer to Keras (7.5e-7 vs 4.2e-6 relative), threads set per session rather
than OpenCV's process-wide count, and the runtime int8 needs anyway.
``precision="int8"`` runs a statically quantised copy (:func:`quantize_int8`:
QDQ, uint8 activations, int8 per-channel weights with 7-bit range, calibrated
on a fixed set of crops of the photographs bundled with scikit-image and
scikit-learn) on ONNX Runtime: 2.7..3.4x Keras' CPU time per image, 2.7..3.5x its img/s,
relative error 2.9 % median, 4.3 % max against fp32 (random weights); the same
fp32 bytes always give byte-identical int8 bytes. OpenCV loads that model too
but runs it no faster than fp32 (0.42 s vs ONNX Runtime's 0.19 s CPU per
image), so int8 is ONNX Runtime only.

ONNX and ONNX Runtime are imported lazily (the ``onnx`` extra), so importing
this module costs nothing and needs neither; OpenCV is a core dependency.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["OPSET", "LAYERS", "POOLINGS", "RUNTIMES", "PRECISIONS", "vgg16_layers", "feature_dim", "build_vgg16",
           "calibration_images", "quantize_int8", "model_properties", "OnnxVGG16"]

#: The opset the graph declares: it has every operator used (Sub, Transpose, Conv, Relu, MaxPool,
#: GlobalAveragePool, GlobalMaxPool, Flatten, Gemm, Identity) in the form written here, and both
#: ONNX Runtime 1.32 and OpenCV 4.14's importer load it (tests/test_deep_onnx.py runs both).
OPSET = 13
#: IR version 7 is the one opset 13 came with; readers older than onnx 1.23's default IR accept it.
IR_VERSION = 7

#: Keras' caffe-mode means, in BGR order (``keras.applications.imagenet_utils``).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

#: (output channels, convolutions) of VGG16's five blocks.
_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
#: Units of fc1 and fc2; fc1 takes block5_pool flattened at 224x224.
FC_UNITS = 4096
TOP_SIZE = (224, 224)
#: The smallest input side: five 2x pools leave 1x1 (Keras' own bound for VGG16 without top).
MIN_SIDE = 32


def _layer_table() -> tuple[tuple[str, str, int], ...]:
    rows = []
    for block, (channels, convs) in enumerate(_BLOCKS, start=1):
        rows += [(f"block{block}_conv{i}", "conv", channels) for i in range(1, convs + 1)]
        rows.append((f"block{block}_pool", "pool", channels))
    rows += [("fc1", "dense", FC_UNITS), ("fc2", "dense", FC_UNITS)]
    return tuple(rows)


_TABLE = _layer_table()
#: (Keras layer name, kind) in network order; kind is ``conv``, ``pool`` or ``dense``.
LAYERS: tuple[tuple[str, str], ...] = tuple((name, kind) for name, kind, _ in _TABLE)
POOLINGS = ("flatten", "avg", "max")
RUNTIMES = ("auto", "onnxruntime", "opencv")
PRECISIONS = ("fp32", "int8")
_INDEX = {name: i for i, (name, _kind) in enumerate(LAYERS)}


def vgg16_layers() -> tuple[tuple[str, str], ...]:
    """The layers :func:`build_vgg16` can stop at, in order: ``(Keras layer name, kind)``.

    Kinds: ``conv`` (3x3, pad 1, ReLU), ``pool`` (2x2 max, stride 2), ``dense`` (ReLU).
    Keras' ``input_layer``, ``flatten`` and ``predictions`` are not features.
    """
    return LAYERS


def _check_request(layer: str, pooling: str | None, height: int, width: int) -> str | None:
    """Validate a (layer, pooling, size) request; returns the pooling to build (None for dense)."""
    if layer not in _INDEX:
        raise ValueError(f"unknown VGG16 layer {layer!r}; valid: {', '.join(name for name, _ in LAYERS)}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < MIN_SIDE:
            raise ValueError(f"{name} must be an integer >= {MIN_SIDE} (five 2x max-pools), got {value!r}")
    if dict(LAYERS)[layer] == "dense":
        if (height, width) != TOP_SIZE:
            raise ValueError(f"layer {layer!r} needs a {TOP_SIZE[0]}x{TOP_SIZE[1]} input (fc1 takes block5_pool "
                             f"flattened at that size: 7x7x512), got {height}x{width}")
        if pooling not in (None, "flatten"):
            raise ValueError(f"pooling {pooling!r} does not apply to {layer!r} (the top flattens block5_pool); "
                             "use pooling=None")
        return None
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r} for {layer!r}; valid: {', '.join(POOLINGS)}")
    return pooling


def _spatial(layer: str, height: int, width: int) -> tuple[int, int]:
    """(h, w) of a conv/pool layer's output: every pool before it (and itself) halves, rounding down."""
    pools = sum(1 for name, kind in LAYERS[: _INDEX[layer] + 1] if kind == "pool")
    return height >> pools, width >> pools


def feature_dim(layer: str, pooling: str | None, height: int, width: int) -> int:
    """Length of the feature vector of ``(layer, pooling)`` at ``height x width`` (as Keras gives it)."""
    pooling = _check_request(layer, pooling, height, width)
    channels = _TABLE[_INDEX[layer]][2]
    if pooling == "flatten":
        h, w = _spatial(layer, height, width)
        return h * w * channels
    return channels


def _weights_of(weights: Mapping[str, Sequence[Any]], name: str,
                shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of one layer as float32, their shapes checked against VGG16's."""
    if name not in weights:
        raise ValueError(f"weights has no entry for layer {name!r} (expected [kernel {shape}, bias "
                         f"({shape[-1]},)] as Keras' layer.get_weights() gives)")
    entry = weights[name]
    if len(entry) != 2:
        raise ValueError(f"weights[{name!r}] must be [kernel, bias], got {len(entry)} arrays")
    kernel, bias = (np.asarray(a, dtype=np.float32) for a in entry)
    if kernel.shape != shape or bias.shape != (shape[-1],):
        raise ValueError(f"weights[{name!r}] has kernel {kernel.shape} and bias {bias.shape}; VGG16 needs "
                         f"kernel {shape} and bias ({shape[-1]},)")
    return kernel, bias


def build_vgg16(weights: Mapping[str, Sequence[Any]], *, layer: str, pooling: str | None, height: int,
                width: int) -> bytes:
    """A serialized ONNX ModelProto of VGG16 up to ``layer``, features as Keras computes them.

    Parameters
    ----------
    weights : mapping
        ``{Keras layer name: [kernel, bias]}`` as
        ``{l.name: l.get_weights() for l in model.layers if l.get_weights()}`` gives: conv
        kernels HWIO ``(3, 3, in, out)``, Dense kernels ``(in, out)``. Only the layers up to
        ``layer`` are needed (and read); extra entries (``predictions``) are ignored.
    layer : str
        A name from :func:`vgg16_layers`, e.g. ``"block5_pool"``, ``"fc1"``, ``"fc2"``.
    pooling : {'flatten', 'avg', 'max'} or None
        How a conv/pool layer's ``(h, w, c)`` output becomes a vector; ``None`` (or ``"flatten"``,
        what the top does) for fc1/fc2.
    height, width : int
        The input size (>= 32; exactly 224x224 for fc1/fc2).

    Returns
    -------
    bytes
        The model: input ``images`` float32 ``(N, height, width, 3)`` raw RGB 0..255,
        output ``features`` float32 ``(N, feature_dim(...))``; opset :data:`OPSET`.

    Raises
    ------
    ValueError
        Unknown layer or pooling, a size the layer cannot take, a missing or misshapen weight.
    """
    from onnx import TensorProto, helper

    pooling = _check_request(layer, pooling, height, width)
    nodes: list = []
    inits: list[tuple[str, np.ndarray]] = []

    def const(name: str, array: np.ndarray) -> str:
        inits.append((name, array))
        return name

    mean_rgb = np.asarray(CAFFE_MEAN_BGR[::-1], dtype=np.float32)
    nodes.append(helper.make_node("Sub", ["images", const("caffe_mean_rgb", mean_rgb)], ["centred"]))
    nodes.append(helper.make_node("Transpose", ["centred"], ["x0"], perm=[0, 3, 1, 2]))
    x, channels = "x0", 3
    for name, kind, out in _TABLE[: _INDEX[layer] + 1]:
        if kind == "conv":
            kernel, bias = _weights_of(weights, name, (3, 3, channels, out))
            if channels == 3:  # block1_conv1: Keras sees BGR, the graph keeps RGB; reverse the input axis
                kernel = kernel[:, :, ::-1, :]
            w_name, b_name = const(f"{name}/kernel", kernel.transpose(3, 2, 0, 1)), const(f"{name}/bias", bias)
            nodes.append(helper.make_node("Conv", [x, w_name, b_name], [f"{name}/conv"], name=name,
                                          kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
            nodes.append(helper.make_node("Relu", [f"{name}/conv"], [name], name=f"{name}/relu"))
            channels = out
        elif kind == "pool":
            nodes.append(helper.make_node("MaxPool", [x], [name], name=name, kernel_shape=[2, 2], strides=[2, 2]))
        else:
            if name == "fc1":  # Keras' Flatten of block5_pool, NHWC order
                nodes.append(helper.make_node("Transpose", [x], ["block5_pool/nhwc"], perm=[0, 2, 3, 1]))
                nodes.append(helper.make_node("Flatten", ["block5_pool/nhwc"], ["flatten"], axis=1))
                x = "flatten"
                channels *= int(np.prod(_spatial("block5_pool", height, width)))
            kernel, bias = _weights_of(weights, name, (channels, out))
            w_name, b_name = const(f"{name}/kernel", kernel), const(f"{name}/bias", bias)
            nodes.append(helper.make_node("Gemm", [x, w_name, b_name], [f"{name}/dense"], name=name))
            nodes.append(helper.make_node("Relu", [f"{name}/dense"], [name], name=f"{name}/relu"))
            channels = out
        x = name
    if pooling == "flatten":
        nodes.append(helper.make_node("Transpose", [x], [f"{x}/nhwc"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Flatten", [f"{x}/nhwc"], ["features"], axis=1))
    elif pooling in ("avg", "max"):
        op = "GlobalAveragePool" if pooling == "avg" else "GlobalMaxPool"
        nodes.append(helper.make_node(op, [x], [f"{x}/{pooling}"]))
        nodes.append(helper.make_node("Flatten", [f"{x}/{pooling}"], ["features"], axis=1))
    else:
        nodes.append(helper.make_node("Identity", [x], ["features"]))
    dim = feature_dim(layer, pooling, height, width)
    graph = helper.make_graph(
        nodes, f"vgg16_{layer}_{pooling or 'top'}_{height}x{width}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", height, width, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="featurelib", producer_version="1")
    helper.set_model_props(model, {"featurelib.layer": layer, "featurelib.pooling": pooling or "",
                                   "featurelib.height": str(height), "featurelib.width": str(width),
                                   "featurelib.preprocess": "caffe", "featurelib.precision": "fp32"})
    # No onnx.checker here: both runtimes validate what they load, and checking costs a parse of the
    # whole model (fc1: 470 MB); tests/test_deep_onnx.py runs the checker on every kind of graph.
    return _serialize_with_weights(model, inits)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, size: int) -> bytes:
    """The key and length of a protobuf length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(size)


#: Field numbers in onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _serialize_with_weights(model: Any, inits: list[tuple[str, np.ndarray]]) -> bytes:
    """``model`` serialized with ``inits`` appended to its graph as float32 ``raw_data`` initializers.

    The same bytes a parser reads as ``model.graph.initializer`` (protobuf merges a repeated message
    field and its fields in any order), written with one copy of each array: setting ``raw_data`` from
    ``tobytes()`` and serializing would copy every array three times (fc1: 3 x 411 MB).
    """
    from onnx import TensorProto

    pieces: list = []
    for name, array in inits:
        data = memoryview(np.ascontiguousarray(array, dtype="<f4")).cast("B")
        header = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape).SerializeToString()
        raw = _length_delimited(_TENSOR_RAW_DATA, data.nbytes)
        pieces += [_length_delimited(_GRAPH_INITIALIZER, len(header) + len(raw) + data.nbytes), header, raw, data]
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    size = len(graph) + sum(piece.nbytes if isinstance(piece, memoryview) else len(piece) for piece in pieces)
    return b"".join([model.SerializeToString(), _length_delimited(_MODEL_GRAPH, size), graph, *pieces])


# --- int8 ----------------------------------------------------------------------------------------

#: Crops per bundled photograph in the calibration set: (fraction of the largest region with the
#: target's aspect, horizontal position 0..1, mirrored). 10 photographs x 3 = 30 images.
CALIBRATION_CROPS = ((1.0, 0.5, False), (0.6, 0.25, False), (0.6, 0.75, True))


def calibration_images(height: int, width: int) -> np.ndarray:
    """The fixed calibration set: (30, height, width, 3) uint8 RGB, the same on every machine.

    Crops (:data:`CALIBRATION_CROPS`) of the ten colour photographs that ship inside the
    scikit-image and scikit-learn wheels (:data:`featurelib.sample_data.PHOTO_CLASSES`),
    resized with ``INTER_AREA`` (``INTER_CUBIC`` when enlarging). Nothing is downloaded.
    """
    import cv2

    from featurelib.sample_data import PHOTO_CLASSES, load_photo_bgr

    out = []
    for name in PHOTO_CLASSES:
        rgb = np.ascontiguousarray(load_photo_bgr(name)[..., ::-1])
        h, w = rgb.shape[:2]
        full = min(h, w * height / width)  # the tallest region of the target's aspect
        for fraction, position, mirrored in CALIBRATION_CROPS:
            ch = max(1, round(full * fraction))
            cw = max(1, min(w, round(ch * width / height)))
            top, left = (h - ch) // 2, round((w - cw) * position)
            crop = rgb[top: top + ch, left: left + cw]
            flag = cv2.INTER_AREA if ch >= height else cv2.INTER_CUBIC
            crop = cv2.resize(crop, (width, height), interpolation=flag)
            out.append(crop[:, ::-1] if mirrored else crop)
    return np.ascontiguousarray(np.stack(out))


_QUANTIZED: dict[str, bytes] = {}
_QUANTIZE_LOCK = threading.Lock()


def quantize_int8(model_bytes: bytes) -> bytes:
    """A statically quantised copy of a :func:`build_vgg16` model, deterministic in its input bytes.

    QDQ format, uint8 activations (asymmetric), int8 weights per output channel with 7-bit range
    (``reduce_range``: the AVX2 u8 x s8 kernels without VNNI saturate on full-range weights),
    MinMax ranges from :func:`calibration_images` at the model's size. The Sub/Transpose
    preprocessing stays float. Cached per process by the SHA-256 of ``model_bytes``: quantise once in
    the driver and ship the bytes, or let every worker do it (same bytes, some seconds each).
    """
    digest = hashlib.sha256(model_bytes).hexdigest()
    with _QUANTIZE_LOCK:
        if digest not in _QUANTIZED:
            _QUANTIZED[digest] = _quantize(model_bytes)
        return _QUANTIZED[digest]


class _DropPreprocessHint(logging.Filter):
    """quantize_static logs (root logger, every call) a hint to run its shape pre-processing, which
    this graph does not need (every shape but N is static): keep it out of the workers' logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def _quantize(model_bytes: bytes, quant_format: str = "QDQ") -> bytes:
    """quantize_int8 without the cache; `quant_format` ``QOperator`` is for the benchmark's comparison."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    props = model_properties(model_bytes)
    if props.get("featurelib.precision") != "fp32":
        raise ValueError("quantize_int8 takes the fp32 bytes of build_vgg16")
    images = calibration_images(int(props["featurelib.height"]), int(props["featurelib.width"]))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"images": images[i: i + 6].astype(np.float32)}
                                  for i in range(0, len(images), 6)])

        def get_next(self):
            return next(self._batches, None)

    hint = _DropPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        with tempfile.TemporaryDirectory(prefix="featurelib-int8-") as tmp:
            source, target = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
            with open(source, "wb") as handle:
                handle.write(model_bytes)
            quantize_static(source, target, Reader(), quant_format=QuantFormat[quant_format], per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv", "Gemm", "MaxPool", "Relu"],
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            quantized = onnx.load_model(target)
    finally:
        logging.getLogger().removeFilter(hint)
    for prop in quantized.metadata_props:
        if prop.key == "featurelib.precision":
            prop.value = "int8"
    return quantized.SerializeToString()


def _read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _fields(data: memoryview):
    """(field number, value) of one protobuf message's top-level fields; length-delimited values
    are memoryviews (the graph's weights are skipped, not copied)."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        kind = key & 7
        if kind == 0:
            value, pos = _read_varint(data, pos)
        elif kind == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos: pos + size], pos + size
        elif kind in (1, 5):
            value, pos = None, pos + (8 if kind == 1 else 4)
        else:
            raise ValueError("model_bytes is not a serialized ONNX model")
        yield key >> 3, value


#: ModelProto.metadata_props and StringStringEntryProto's key, value (onnx.proto).
_METADATA_FIELD, _KEY_FIELD, _VALUE_FIELD = 14, 1, 2


def model_properties(model_bytes: bytes) -> dict[str, str]:
    """The ``metadata_props`` of a serialized ModelProto, read without parsing the graph."""
    props = {}
    try:
        for field, value in _fields(memoryview(model_bytes)):
            if field == _METADATA_FIELD:
                entry = {f: bytes(v).decode() for f, v in _fields(value) if f in (_KEY_FIELD, _VALUE_FIELD)}
                props[entry.get(_KEY_FIELD, "")] = entry.get(_VALUE_FIELD, "")
    except (IndexError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"model_bytes is not a serialized ONNX model ({error})") from None
    return props


# --- runner --------------------------------------------------------------------------------------

#: fp32 runtime of ``runtime="auto"``: as fast as OpenCV DNN here, closer to Keras (module docstring).
AUTO_FP32 = "onnxruntime"


class OnnxVGG16:
    """Run a :func:`build_vgg16` model on raw RGB images.

    Parameters
    ----------
    model_bytes : bytes
        What :func:`build_vgg16` returned. With ``precision="int8"`` it is quantised here
        (:func:`quantize_int8`, cached per process), or it is already what
        :func:`quantize_int8` returned (quantised once, e.g. in the driver).
    runtime : {'auto', 'onnxruntime', 'opencv'}
        ``auto``: ONNX Runtime (fp32: as fast as OpenCV DNN here; int8: the only one).
    threads : int
        Native threads: ONNX Runtime's ``intra_op_num_threads`` (spinning off), OpenCV's
        ``cv2.setNumThreads`` for the duration of each :meth:`run` (restored after).
    precision : {'fp32', 'int8'}
        ``int8`` runs on ONNX Runtime only.
    """

    def __init__(self, model_bytes: bytes, *, runtime: str = "auto", threads: int = 1,
                 precision: str = "fp32") -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        if runtime == "auto":
            runtime = AUTO_FP32 if precision == "fp32" else "onnxruntime"
        if precision == "int8" and runtime != "onnxruntime":
            raise ValueError("precision='int8' runs on onnxruntime only (OpenCV DNN runs the int8 model with "
                             "other arithmetic, no faster than fp32); use runtime='onnxruntime' or 'auto'")
        props = model_properties(model_bytes)
        given = props.get("featurelib.precision")
        if given not in PRECISIONS or (given == "int8" and precision != "int8"):
            raise ValueError(f"model_bytes must be what build_vgg16 returned (or, for precision='int8', "
                             f"quantize_int8), got a model of precision {given!r}")
        self.layer = props["featurelib.layer"]
        self.pooling = props["featurelib.pooling"] or None
        self.height, self.width = int(props["featurelib.height"]), int(props["featurelib.width"])
        self.dim = feature_dim(self.layer, self.pooling, self.height, self.width)
        self.runtime, self.precision, self.threads = runtime, precision, int(threads)
        if given == "fp32" and precision == "int8":
            model_bytes = quantize_int8(model_bytes)
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        else:
            import cv2

            self._net = cv2.dnn.readNetFromONNX(np.frombuffer(model_bytes, np.uint8))
            self._net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            self._net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def run(self, images: np.ndarray) -> np.ndarray:
        """Features of ``images``, ``(N, H, W, 3)`` RGB (uint8, or float 0..255): ``(N, D)`` float32."""
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"images must be (N, {self.height}, {self.width}, 3) RGB, got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"images must be uint8 or float, got {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.runtime == "onnxruntime":
            out = self._session.run(["features"], {"images": x})[0]
        else:
            import cv2

            previous = cv2.getNumThreads()
            cv2.setNumThreads(self.threads)
            try:
                self._net.setInput(x)
                out = self._net.forward()
            finally:
                cv2.setNumThreads(previous)
        return np.ascontiguousarray(out, dtype=np.float32).reshape(len(x), self.dim)
