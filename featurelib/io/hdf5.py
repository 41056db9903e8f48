"""HDF5 output: ``hdf5/features.h5``, virtual datasets stitching every shard together.

Source paths in the virtual datasets are relative (``part-00003-of-00008.h5``),
so the output folder can be moved or copied as a whole. HDF5 resolves them
next to ``features.h5``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from featurelib import contract as c
from featurelib.io import files as layout
from featurelib.schema import OutputSchema


def write_virtual_index(root: str, tasks: Sequence, schema: OutputSchema, label_names: list[str]) -> int:
    """Write ``hdf5/features.h5`` over the HDF5 shards of `tasks`; returns the total row count.

    Parameters
    ----------
    root : str
        Output root.
    tasks : sequence of ShardTask
        All shards of the run, in shard order.
    schema : OutputSchema
    label_names : list of str
    """
    import h5py

    sources = []
    for task in tasks:
        rel = layout.shard_relpath("hdf5", task.shard, task.n_shards)
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
    tmp = layout.temp_path(path)
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
    os.replace(tmp, path)
    return total
