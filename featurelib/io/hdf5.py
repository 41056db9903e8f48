"""HDF5 output: ``hdf5/features.h5``, virtual datasets stitching every shard together.

Source paths in the virtual datasets are relative (``part-00003-of-00008.h5``),
so the output folder can be moved or copied as a whole. HDF5 resolves them
next to ``features.h5``.

Every reader of an output's HDF5 files calls :func:`check_self_contained` right
after opening one: HDF5 can make a dataset read another file (external storage,
external links, virtual datasets), so a planted file could make a reader return
the bytes of any file the reader can open.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence

import numpy as np

from featurelib import contract as c
from featurelib.errors import SchemaError
from featurelib.io import files as layout
from featurelib.schema import OutputSchema


def write_virtual_index(root: str, shard_files: Sequence[str], schema: OutputSchema, label_names: list[str], *,
                        target: str | None = None) -> int:
    """Write ``hdf5/features.h5`` over the HDF5 shard files `shard_files`; returns the total row count.

    Parameters
    ----------
    root : str
        Output root.
    shard_files : sequence of str
        The HDF5 shard files (relative to `root`, all in ``hdf5/``), in the order their rows
        appear: shard order, and within a shard generation order.
    schema : OutputSchema
    label_names : list of str
    target : str, optional
        Write here (an absolute path) instead of replacing ``hdf5/features.h5``: the caller
        renames it into place (an incremental commit renames its run-level files together).
    """
    import h5py

    sources = []
    for rel in shard_files:
        if not is_shard_name(os.path.basename(rel)) or os.path.dirname(rel) != os.path.dirname(layout.FEATURES_H5):
            raise ValueError(f"not an HDF5 shard file of the output: {rel!r}")
        with h5py.File(os.path.join(root, rel), "r") as shard:
            sources.append((os.path.basename(rel), shard[c.H5_FEATURES].shape[0]))
    total = sum(n for _, n in sources)
    dim = schema.total_dim
    strings = h5py.string_dtype("utf-8")
    shapes = {c.H5_FEATURES: ((dim,), np.float32), c.H5_LABELS: ((), np.int32), c.H5_KEYS: ((), strings),
              c.H5_SPLIT: ((), strings), c.H5_AUG_INDEX: ((), np.int16)}
    if schema.pixels:
        shapes[c.H5_IMAGES] = ((*schema.image_size, 3), np.uint8)
    path = os.path.join(root, layout.FEATURES_H5)
    tmp = target or layout.temp_path(path)
    with h5py.File(tmp, "w", libver=("v110", "latest")) as out:
        for name, (tail, dtype) in shapes.items():
            virtual = h5py.VirtualLayout(shape=(total, *tail), dtype=dtype)
            start = 0
            for filename, n in sources:
                if n:
                    virtual[start : start + n] = h5py.VirtualSource(filename, name, shape=(n, *tail))
                start += n
            out.create_virtual_dataset(name, virtual, fillvalue=None)
        out.create_dataset(c.H5_LABEL_NAMES, data=np.array(label_names, dtype=object), dtype=strings)
        out.attrs[c.H5_ATTR_COLUMNS] = json.dumps(schema.column_ranges())
        out.attrs[c.H5_ATTR_FEATURE_FP] = schema.feature_fingerprint
        out.attrs[c.H5_ATTR_RUN_FP] = schema.run_fingerprint
        out.attrs["shards"] = json.dumps([{"file": f, "rows": n} for f, n in sources])
    if target is None:
        os.replace(tmp, path)
    return total


#: A shard file's name within ``hdf5/`` (``layout.shard_relpath``): what ``features.h5`` may read.
#: Generation 1 has no suffix; an incremental generation g >= 2 adds ``.g{g:04d}``.
_SHARD_NAME = re.compile(r"part-\d{5,}-of-\d{5,}(?:\.g(\d{4,}))?\.h5")


def is_shard_name(name: str) -> bool:
    """Whether `name` is a plain HDF5 shard file name (``part-00003-of-00008.h5``, or
    ``part-00003-of-00008.g0002.h5`` for an incremental generation): no folder, nothing else."""
    match = _SHARD_NAME.fullmatch(name)
    return match is not None and (match.group(1) is None or int(match.group(1)) >= 2)


def check_self_contained(h5, name: str, *, sources: Callable[[str], bool] | None = None) -> None:
    """Refuse an open HDF5 file that points at other files, before any of its data is read.

    HDF5 reads other files for a dataset with external storage (``external=``),
    through an external link, or for a virtual dataset's sources. featurelib's
    shard files use none of them; ``features.h5`` holds virtual datasets over
    the shard files next to it, named as written (``part-00003-of-00008.h5``).
    Only the file's metadata is read here (links, dataset creation properties),
    never a dataset's values, so the check works alike on a path and on a Python
    file object.

    Parameters
    ----------
    h5 : h5py.File
        Open for reading.
    name : str
        The file as the error message should name it (``hdf5/part-00001-of-00004.h5``).
    sources : callable, optional
        ``sources(file_name) -> bool``: which virtual dataset source file names
        are allowed, as stored in the file (e.g. :func:`is_shard_name`). By
        default a virtual dataset is refused.

    Raises
    ------
    SchemaError
        Naming the file, the member and the kind of reference: external
        storage, an external link, a virtual dataset source not allowed, or a
        link of a type HDF5 does not define.
    """
    import h5py

    def reference(member: str) -> str | None:
        """What `member` (a link path under the root) reads outside the file, or None."""
        try:
            link = h5.get(member, getlink=True)
        except TypeError:  # h5py knows hard, soft and external links only
            return f"/{member} is a user-defined link"
        if isinstance(link, h5py.ExternalLink):
            return f"/{member} is an external link to {link.filename!r}"
        if not isinstance(link, h5py.HardLink):  # a soft link names an object of this file
            return None
        obj = h5[member]
        if not isinstance(obj, h5py.Dataset):
            return None
        if obj.external:
            return f"dataset /{member} has external storage in {obj.external[0][0]!r}"
        if obj.is_virtual:
            for source in obj.virtual_sources():
                if sources is None or not sources(source.file_name):
                    return f"virtual dataset /{member} reads {source.file_name!r}"
        return None

    # visit_links walks every link once, following hard links only (never into another file).
    found = h5.visit_links(reference)
    if found:
        raise SchemaError(f"{name}: {found}: refusing an HDF5 file that points at other files "
                          f"(an output's shard files hold their own data; features.h5 reads only the "
                          f"shard files next to it)")
