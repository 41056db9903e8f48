"""Weights files: finding Keras' ImageNet files, checking a file with h5py alone, reading it.

Two layouts are read, whatever the file is called:

* Keras 3 (``model.save_weights("x.weights.h5")``): a group ``layers`` holding
  one group per layer (``layers/conv2d_3``, keyed by class and counter), whose
  ``vars`` group carries the layer's name as attribute ``name`` and its
  variables as datasets ``0``, ``1``, ... (trainable first, then the others);
* legacy Keras 2 (the ImageNet files in Keras' cache, ``model.save_weights("x.h5")``
  of Keras 2): root attribute ``layer_names`` (possibly chunked as
  ``layer_names0``, ``layer_names1``, ...; or the same under a ``model_weights``
  group of a whole saved model), one group per layer with attribute
  ``weight_names`` (``block1_conv1/kernel:0``, ...) naming its datasets.

Both give ``[(layer name, [array or shape, ...]), ...]`` in the file's order.
Links (soft or external) are refused, as Keras refuses them: a weights file
must not read other files.

Nothing here imports TensorFlow: the driver checks files before any image is
read, and the ONNX backend reads its weights without TensorFlow in the worker.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from featurelib.deep.backbones import VGG16_LAYERS, VGG16_NEEDS, Backbone, WeightsFile, shapes_digest
from featurelib.errors import SchemaError, SpecError
from featurelib.io.hdf5 import check_self_contained

KERAS3, LEGACY = "keras3", "legacy"


class FileLayer(NamedTuple):
    """A layer with weights in a file: its name, its arrays (or only their shapes), and in a Keras 3
    file its key (``conv2d_3``: class and counter, what Keras 3 matches on)."""

    name: str
    values: list[Any]
    key: str | None = None


class WeightsError(ValueError):
    """A weights file cannot serve the network asked for (the message says why)."""


# --- Keras' cache of ImageNet files ------------------------------------------------------------


def keras_cache_dirs() -> list[str]:
    """Where ``keras.utils.get_file(..., cache_subdir="models")`` puts files, in the order Keras
    tries them: ``$KERAS_HOME/models`` (default ``~/.keras/models``, or ``/tmp/.keras/models``
    when the home folder is not writable)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    home = os.path.expanduser(home)
    dirs = [os.path.join(home, "models"), os.path.join("/tmp", ".keras", "models")]
    return list(dict.fromkeys(dirs))


def cached_file(spec: WeightsFile) -> str | None:
    """The ImageNet file in Keras' cache, or None when it is not there."""
    for folder in keras_cache_dirs():
        path = os.path.join(folder, spec.fname)
        if os.path.isfile(path):
            return path
    return None


def _download(spec: WeightsFile) -> str:
    """Fetch an ImageNet file into Keras' cache: ``keras.utils.get_file`` with Keras' known hash when
    Keras is installed, else the same URL, file name, folder and md5 check with urllib."""
    try:
        from featurelib.deep.quiet import quiet_import_tensorflow

        quiet_import_tensorflow()  # in the driver: without TensorFlow's start-up lines unless --verbose
        import keras
    except ImportError:
        keras = None
    if keras is not None:
        return keras.utils.get_file(spec.fname, spec.origin, cache_subdir="models", file_hash=spec.md5)
    import urllib.request

    folder = keras_cache_dirs()[0]
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, spec.fname)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{spec.fname}.")
    try:
        digest = hashlib.md5()  # noqa: S324 - the hash Keras publishes for the file, not a security check
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(spec.origin, timeout=60) as response:  # noqa: S310
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        if spec.md5 and digest.hexdigest() != spec.md5:
            raise OSError(f"md5 {digest.hexdigest()} of the download is not Keras' {spec.md5}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def imagenet_file(spec: WeightsFile, *, fetch: bool = True, where: str = "weights: imagenet") -> str:
    """The path of an ImageNet weights file in Keras' cache, downloaded first if absent (as Keras does).

    Raises
    ------
    SpecError
        When it is absent and cannot be fetched (offline): the message names the
        ``weights: /path`` alternative for machines without internet.
    """
    path = cached_file(spec)
    if path is not None or not fetch:
        return path or os.path.join(keras_cache_dirs()[0], spec.fname)
    try:
        return _download(spec)
    except Exception as exc:  # urllib / Keras raise many types for one cause: no file
        raise SpecError(
            f"{where}: {spec.fname} is not in Keras' cache ({keras_cache_dirs()[0]}) and downloading it from "
            f"{spec.origin} failed ({type(exc).__name__}: {exc}). On a machine without internet, copy the file "
            f"there, or give its path: weights: /path/to/{spec.fname}") from None


# --- reading either layout with h5py ---------------------------------------------------------


def _attribute_list(group, name: str) -> list[str]:
    """A string list attribute, chunked as name0, name1, ... when too large for one header (as Keras)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _dataset(group, name: str):
    import h5py

    parent = group
    *folders, leaf = name.split("/")
    for part in folders:
        if not part or part not in parent or parent.get(part, getlink=True).__class__ is not h5py.HardLink:
            raise WeightsError(f"no dataset {name!r} under {group.name!r}")
        parent = parent[part]
    if leaf not in parent:
        raise WeightsError(f"no dataset {name!r} under {group.name!r}")
    if not isinstance(parent.get(leaf, getlink=True), h5py.HardLink):
        raise WeightsError(f"{name!r} under {group.name!r} is a link; weights files must hold their data")
    dataset = parent[leaf]
    if not isinstance(dataset, h5py.Dataset):
        raise WeightsError(f"{name!r} under {group.name!r} is not a dataset")
    return dataset


def _layers(handle, read: Iterable[str] | str | None) -> tuple[str, list[FileLayer]]:
    """(layout, layers) of an open file; arrays for the layers in `read` (``"all"``: every one)."""
    import h5py

    wanted = _All() if read == "all" else set(read or ())
    root = handle
    if "layer_names" not in root.attrs and "layer_names0" not in root.attrs and "model_weights" in root:
        root = root["model_weights"]
    if "layer_names" in root.attrs or "layer_names0" in root.attrs:
        out = []
        for name in _attribute_list(root, "layer_names"):
            if name not in root or not isinstance(root[name], h5py.Group):
                raise WeightsError(f"layer_names lists {name!r} but the file has no such group")
            names = _attribute_list(root[name], "weight_names")
            if names:
                datasets = [_dataset(root[name], w) for w in names]
                out.append(FileLayer(name, [d[()] if name in wanted else tuple(d.shape) for d in datasets]))
        return LEGACY, out
    if "layers" in root and isinstance(root["layers"], h5py.Group):
        out = []
        for key, group in root["layers"].items():
            if not isinstance(group, h5py.Group) or "vars" not in group:
                continue
            variables = group["vars"]
            count = len(variables)
            if not count:
                continue
            name = variables.attrs.get("name", key)
            name = name.decode("utf8") if isinstance(name, bytes) else str(name)
            datasets = [_dataset(variables, str(i)) for i in range(count)]
            out.append(FileLayer(name, [d[()] if name in wanted else tuple(d.shape) for d in datasets], key))
        return KERAS3, out
    raise WeightsError("it is HDF5 but not a Keras weights file (neither a Keras 3 .weights.h5 with a 'layers' "
                       "group nor a legacy .h5 with a 'layer_names' attribute)")


class _All:
    def __contains__(self, name: object) -> bool:
        return True


def scan(path: str, read: Iterable[str] | str | None = None) -> tuple[str, list[FileLayer]]:
    """The layout and the layers with weights of a weights file, in the file's order.

    Parameters
    ----------
    path : str
    read : iterable of str, ``"all"`` or None
        Layers whose arrays to read; the others give their shapes only (a check
        of a 528 MB file reads a few kilobytes).

    Raises
    ------
    WeightsError
        Not a readable HDF5 Keras weights file (the message says why).
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"not a readable HDF5 file ({exc})") from None
    with handle:
        try:
            # A weights file comes from anywhere (a shared drive, a download): one that makes HDF5
            # read other files (external storage or links, virtual datasets) is refused unread.
            check_self_contained(handle, os.path.basename(path))
        except SchemaError as exc:
            raise WeightsError(str(exc)) from None
        try:
            return _layers(handle, read)
        except WeightsError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise WeightsError(f"an unreadable HDF5 weights file ({type(exc).__name__}: {exc})") from None


# --- checks against what a network needs ------------------------------------------------------


def _shapes(values: Sequence[Any]) -> list[tuple[int, ...]]:
    return [tuple(np.shape(v)) if not isinstance(v, tuple) else v for v in values]


def check_vgg16(layers: Sequence[FileLayer], needed: Sequence[str]) -> None:
    """Raise WeightsError unless `layers` hold VGG16's `needed` layers with VGG16's shapes.

    Layers of VGG16 that are not needed may be there (a whole-network file serves
    ``block5_pool``); a layer VGG16 does not have, or a VGG16 layer of another shape, may not.
    """
    found = {layer.name: _shapes(layer.values) for layer in layers}
    unknown = sorted(set(found) - set(VGG16_LAYERS))
    if unknown:
        raise WeightsError(f"not VGG16 weights: layers {unknown[:5]} are not VGG16's")
    wrong = [f"{name} {found[name]} (VGG16: {VGG16_LAYERS[name]})" for name in VGG16_LAYERS
             if name in found and found[name] != VGG16_LAYERS[name]]
    if wrong:
        raise WeightsError(f"wrong weight shapes: {'; '.join(wrong[:3])}")
    missing = [name for name in needed if name not in found]
    if missing:
        has_top = "fc1" in needed
        raise WeightsError(f"it lacks layer(s) {missing[:5]}" + (
            " (fc1/fc2 need the weights of the whole network, include_top=True)" if has_top else ""))


def check_backbone(backbone: Backbone, layers: Sequence[FileLayer]) -> None:
    """Raise WeightsError unless `layers` are those of `backbone` without its top (count and shapes)."""
    if len(layers) != backbone.layer_count:
        raise WeightsError(f"it holds {len(layers)} layers with weights; {backbone.name} without its top "
                           f"(include_top=False) has {backbone.layer_count}")
    if shapes_digest([_shapes(layer.values) for layer in layers]) != backbone.layer_digest:
        raise WeightsError(f"its weight shapes are not those of {backbone.name} without its top (include_top=False)")


def vgg16_weights(path: str, layer: str) -> dict[str, list[np.ndarray]]:
    """``{layer name: [kernel, bias]}`` of the VGG16 layers `layer` reads, from a file of either layout."""
    needed = VGG16_NEEDS[layer]
    _, layers = scan(path, read=needed)
    check_vgg16(layers, needed)
    found = {layer.name: layer.values for layer in layers}
    return {name: [np.asarray(v) for v in found[name]] for name in needed}


def backbone_weights(backbone: Backbone, path: str) -> tuple[str, list[FileLayer]]:
    """(layout, layers with their arrays) of a `backbone` weights file, checked."""
    layout, layers = scan(path, read="all")
    check_backbone(backbone, layers)
    return layout, layers


def to_snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case`` (``Conv2D`` -> ``conv2d``, ``BatchNormalization`` -> ``batch_normalization``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def keras3_keys(model) -> dict[str, str]:
    """``{layer name: key}`` under which Keras 3 saves each of `model`'s layers in a ``.weights.h5``:
    the snake-case class name, numbered from the second layer of a class on (``conv2d``, ``conv2d_1``, ...)."""
    keys, used = {}, {}
    for layer in model.layers:
        key = to_snake_case(type(layer).__name__)
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        keys[layer.name] = key
    return keys


def assign(model, layers: Sequence[FileLayer], layout: str) -> None:
    """Set the weights of a Keras `model` from a file's `layers` (as :func:`scan` read them).

    Keras' own rules: a Keras 3 file by layer key (class and counter in the
    model's layer order, whatever the layers are called: Keras numbers unnamed
    layers per process); a legacy file by name when it names every layer of the
    model that has weights (it may hold more, such as a top the model leaves
    out), else in order. Each layer's variables are set in the order both
    layouts store them: trainable, then the others.

    Raises
    ------
    WeightsError
        A layer is missing, or a count or shape differs.
    """
    weighted = [layer for layer in model.layers if layer.weights]
    if layout == KERAS3:
        keys = keras3_keys(model)
        by_key = {layer.key: layer.values for layer in layers}
        missing = [layer.name for layer in weighted if keys[layer.name] not in by_key]
        pairs = [(layer, by_key.get(keys[layer.name])) for layer in weighted]
    else:
        by_name = {layer.name: layer.values for layer in layers}
        missing = [layer.name for layer in weighted if layer.name not in by_name]
        if not missing:
            pairs = [(layer, by_name[layer.name]) for layer in weighted]
        elif len(layers) == len(weighted):
            missing, pairs = [], [(layer, entry.values) for layer, entry in zip(weighted, layers)]
    if missing:
        raise WeightsError(f"it lacks layer(s) {missing[:5]} of {model.name}")
    for layer, values in pairs:
        variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        if len(variables) != len(values):
            raise WeightsError(f"layer {layer.name}: {len(values)} arrays in the file, {len(variables)} in the model")
        for variable, value in zip(variables, values):
            if tuple(variable.shape) != tuple(np.shape(value)):
                raise WeightsError(f"layer {layer.name}: shape {tuple(np.shape(value))} in the file, "
                                   f"{tuple(variable.shape)} in the model")
        for variable, value in zip(variables, values):
            variable.assign(np.asarray(value, dtype=variable.dtype))
