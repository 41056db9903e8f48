"""Stored pixels: the HDF5 `images` layout, HDF5 = Parquet, and docs/PIXELS.md's recipes run as written."""

from __future__ import annotations

import pathlib
import re

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.errors import SpecError
from featurelib.spec import RunSpec

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "PIXELS.md"
SIZE = (20, 16)  # H != W: a transposed reshape cannot pass


def recipes() -> dict[str, str]:
    """``{name: code}`` of the ```python blocks marked ``<!-- recipe: name -->`` in docs/PIXELS.md."""
    found = re.findall(r"<!-- recipe: ([\w-]+) -->\s*```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return dict(found)


@pytest.fixture(scope="module")
def small_digits(digits_dir, tmp_path_factory):
    from conftest import copy_digits

    return copy_digits(digits_dir, tmp_path_factory.mktemp("pixels") / "digits", step=40, limit=45)


@pytest.fixture(scope="module", params=["none", "gzip"])
def output(request, small_digits, tmp_path_factory):
    """(output folder, pixels_compression) of a 2-shard local run with pixels stored."""
    from conftest import write_spec

    tmp = tmp_path_factory.mktemp(f"out-{request.param}")
    output = {"shards": 2, "pixels": True}
    if request.param != "none":
        output["pixels_compression"] = request.param
    path = write_spec(tmp / "spec.yaml", image={"size": list(SIZE)}, features=[{"name": "color_stats"}],
                      output=output)
    spec = RunSpec.from_yaml(str(path)).with_overrides(input=str(small_digits), output=str(tmp / "out"))
    execute(spec, LocalEngine(1), log=lambda m: None)
    return tmp / "out", request.param


def expected(out: pathlib.Path) -> tuple[list[str], np.ndarray]:
    """Keys and (N, H, W, 3) pixels of every HDF5 row, through features.h5."""
    with h5py.File(out / "hdf5" / "features.h5", "r") as h5:
        return list(h5["keys"].asstr()[:]), h5["images"][:]


def test_images_are_one_row_per_chunk_with_the_chosen_filter(output):
    out, compression = output
    shards = sorted((out / "hdf5").glob("part-*.h5"))
    assert len(shards) == 2
    for path in shards:
        with h5py.File(path, "r") as h5:
            images = h5["images"]
            assert images.dtype == np.uint8 and images.shape[1:] == (*SIZE, 3)
            assert images.chunks == (1, *SIZE, 3)
            if compression == "none":
                assert images.compression is None and not images.shuffle
            else:
                assert (images.compression, images.compression_opts) == ("gzip", 1) and not images.shuffle


def test_features_h5_images_equal_the_parquet_pixels_by_key(output):
    out, _ = output
    keys, images = expected(out)
    assert images.shape == (len(keys), *SIZE, 3) and len(keys) > 40
    assert images.reshape(len(keys), -1).std(axis=1).min() > 0  # real digits, not fill values
    by_key = dict(zip(keys, images))
    seen = 0
    for path in sorted((out / "parquet").glob("*.parquet")):
        table = pq.read_table(path, columns=["key", "pixels"])
        flat = np.stack([np.asarray(v, dtype=np.uint8) for v in table.column("pixels").to_pylist()])
        for key, image in zip(table.column("key").to_pylist(), flat.reshape(-1, *SIZE, 3)):
            assert np.array_equal(by_key[key], image), key
            seen += 1
    assert seen == len(keys)


def test_documented_recipes_read_what_was_written(output):
    """The pyarrow, pandas and h5py snippets of docs/PIXELS.md, executed as written, in order."""
    out, _ = output
    keys, images = expected(out)
    code = recipes()
    assert {"pyarrow", "pyarrow-batches", "pandas", "h5py"} <= code.keys()
    ns: dict = {"out": str(out)}
    exec(code["pyarrow"], ns)
    assert (ns["h"], ns["w"]) == SIZE
    assert ns["images"].dtype == np.uint8 and ns["images"].shape == (len(keys), *SIZE, 3)
    assert ns["keys"] == keys and np.array_equal(ns["images"], images)

    exec(code["pyarrow-batches"], ns)  # ns["paths"][0], batch by batch: x is the shard's last batch
    first = pq.read_table(ns["paths"][0], columns=["key"]).column("key").to_pylist()
    assert ns["x"].shape[1:] == (*SIZE, 3) and ns["x"].dtype == np.uint8
    assert np.array_equal(ns["x"], images[len(first) - len(ns["x"]) : len(first)])

    ns.pop("images")
    exec(code["pandas"], ns)  # one shard
    assert ns["images"].dtype == np.uint8 and np.array_equal(ns["images"], images[: len(first)])

    ns = {"out": str(out)}
    exec(code["h5py"], ns)
    assert np.array_equal(ns["x"], images[(len(keys) - 1) // 64 * 64 :])
    assert np.array_equal(ns["batch"], images[ns["order"][:32]])


def test_pixels_compression_is_checked_and_fingerprinted():
    base = {"input": {"path": "in"}, "features": [{"name": "color_stats"}]}

    def spec(**output):
        return RunSpec.from_dict({**base, "output": {"path": "out", **output}})

    plain, none = spec(pixels=True), spec(pixels=True, pixels_compression="none")
    assert plain == none and plain.run_fingerprint() == none.run_fingerprint()
    gzip = spec(pixels=True, pixels_compression="gzip")
    assert gzip.run_fingerprint() != plain.run_fingerprint()
    assert gzip.feature_fingerprint() == plain.feature_fingerprint()
    assert RunSpec.from_dict({**gzip.to_dict()}) == gzip
    with pytest.raises(SpecError, match=r"output.pixels_compression must be one of \['none', 'gzip'\]"):
        spec(pixels=True, pixels_compression="lzf")
    with pytest.raises(SpecError, match="needs output.pixels: true and hdf5 in output.formats"):
        spec(pixels_compression="gzip")
    with pytest.raises(SpecError, match="needs output.pixels: true and hdf5 in output.formats"):
        spec(pixels=True, formats=["parquet"], pixels_compression="gzip")
