"""HDF5 files that point at other files are refused by every reader, before any data is read.

HDF5 can make a dataset read another file: external storage (``external=``), an
external link, a virtual dataset's sources. A planted shard or ``features.h5``
could so hand a reader the bytes of any file it can open. Each attack below
alters one HDF5 file of a copy of a real output and relists it in the manifest
with its new size and hash, so that the check under test is the one that fires;
each first shows with plain h5py that the attack reads the outside file.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil

import h5py
import numpy as np
import pytest

from featurelib.driver import execute, reused_result
from featurelib.engines.local import LocalEngine
from featurelib.errors import SchemaError
from featurelib.io import files as layout
from featurelib.io.dataset import open_dataset
from featurelib.io.readers import read_hdf5, read_shard_keys
from featurelib.plan import plan
from featurelib.spec import RunSpec

#: What the outside files hold: a float32 no descriptor of these images produces.
SECRET = np.float32(31337.25)
SHARD = "hdf5/part-00001-of-00002.h5"
OTHER = "hdf5/part-00000-of-00002.h5"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """A committed output of 24 small noise images (two classes), Parquet and HDF5 in 2 shards;
    returns the output and its spec."""
    import cv2
    from conftest import write_spec

    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(3)
    for label in ("a", "b"):
        (root / "images" / label).mkdir(parents=True)
        for number in range(12):
            cv2.imwrite(str(root / "images" / label / f"{number:02d}.png"), rng.integers(0, 256, (12, 12, 3), np.uint8))
    spec = write_spec(root / "spec.yaml", image={"size": [12, 12]}, features=[{"name": "color_stats"}],
                      split={"train": 0.5, "val": 0.25, "test": 0.25},
                      output={"shards": 2, "formats": ["parquet", "hdf5"]})
    out = root / "out"
    execute(RunSpec.from_yaml(str(spec)).with_overrides(input=str(root / "images"), output=str(out)),
            LocalEngine(1), log=lambda m: None)
    return out, spec


@pytest.fixture
def copy(made, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(made[0], tmp_path / "out"))


def relist(out: pathlib.Path, rel: str) -> None:
    """Record the altered file's size and sha256 in the manifest, as if the run had written it."""
    manifest = json.loads((out / layout.MANIFEST).read_text())
    entry = next(f for f in manifest["files"] if f["path"] == rel)
    entry.update(bytes=(out / rel).stat().st_size, sha256=layout.file_sha256(str(out / rel)))
    (out / layout.MANIFEST).write_text(json.dumps(manifest))


def rewrite_features(path: pathlib.Path, make) -> None:
    """Rewrite the HDF5 shard at `path` with ``make(new_file, old_features)`` creating ``features``."""
    original = path.with_name("original.h5")
    path.rename(original)
    with h5py.File(original, "r") as src, h5py.File(path, "w", libver=("v110", "latest")) as dst:
        for name in src:
            if name != "features":
                src.copy(src[name], dst, name)
        dst.attrs.update(src.attrs)
        make(dst, src["features"])
    original.unlink()


def secret_shard(src: pathlib.Path, dst: pathlib.Path) -> None:
    """A copy of shard `src` at `dst` whose features are all SECRET."""
    shutil.copyfile(src, dst)
    rewrite_features(dst, lambda h5, old: h5.create_dataset("features", data=np.full(old.shape, SECRET)))


def secret_file(old, path: pathlib.Path) -> pathlib.Path:
    """An HDF5 file at `path` whose ``features`` (shaped as `old`) are all SECRET."""
    with h5py.File(path, "w") as h5:
        h5["features"] = np.full(old.shape, SECRET)
    return path


def external_storage(h5, old, tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "secret.bin"
    np.full(old.shape, SECRET).tofile(secret)
    h5.create_dataset("features", old.shape, old.dtype, external=[(str(secret), 0, secret.stat().st_size)])


def external_link(h5, old, tmp_path: pathlib.Path) -> None:
    h5["features"] = h5py.ExternalLink(str(secret_file(old, tmp_path / "secret.h5")), "features")


def virtual_shard(h5, old, tmp_path: pathlib.Path) -> None:
    """A shard that is itself virtual, over a file with a shard's name: shards never are."""
    virtual = h5py.VirtualLayout(old.shape, old.dtype)
    virtual[:] = h5py.VirtualSource(str(secret_file(old, tmp_path / "part-00000-of-00002.h5")), "features",
                                    shape=old.shape)
    h5.create_virtual_dataset("features", virtual)


def on_shard(make):
    """Attack: SHARD's ``features`` made by ``make(h5, old_features, tmp_path)``."""
    return lambda out, tmp_path: rewrite_features(out / SHARD, lambda h5, old: make(h5, old, tmp_path))


def revirtualise(out: pathlib.Path, rename) -> None:
    """Rewrite ``features.h5`` with every virtual source's file name passed through `rename`."""
    path = out / layout.FEATURES_H5
    original = path.with_name("original-index.h5")
    path.rename(original)
    with h5py.File(original, "r") as src, h5py.File(path, "w", libver=("v110", "latest")) as dst:
        for name in src:
            old = src[name]
            if not old.is_virtual:
                src.copy(old, dst, name)
                continue
            virtual = h5py.VirtualLayout(old.shape, old.dtype)
            for vs in old.virtual_sources():
                (first, *_), (last, *_) = vs.vspace.get_select_bounds()
                virtual[first : last + 1] = h5py.VirtualSource(rename(vs.file_name), vs.dset_name,
                                                               shape=(last + 1 - first, *old.shape[1:]))
            dst.create_virtual_dataset(name, virtual, fillvalue=None)
        dst.attrs.update(src.attrs)
    original.unlink()


def index_reading(rename, *, inside: bool = False):
    """Attack: features.h5 reads SECRET copies of the shards, put in ``elsewhere/`` next to the output
    (or, `inside`, in its ``hdf5/``) and named there by ``rename(name, folder)``."""

    def attack(out: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
        folder = out / "hdf5" if inside else tmp_path / "elsewhere"
        folder.mkdir(exist_ok=True)
        for shard in (OTHER, SHARD):
            name = pathlib.Path(shard).name
            secret_shard(out / shard, folder / pathlib.Path(rename(name, folder)).name)
        revirtualise(out, lambda name: rename(name, folder))
        return folder

    return attack


SHARD_ATTACKS = {
    "external storage": (on_shard(external_storage), r"dataset /features has external storage in '.*secret.bin'"),
    "external link": (on_shard(external_link), r"/features is an external link to '.*secret.h5'"),
    "virtual shard": (on_shard(virtual_shard), r"virtual dataset /features reads '.*part-00000-of-00002.h5'"),
}
INDEX_ATTACKS = {
    "absolute": (index_reading(lambda name, folder: str(folder / name)),
                 r"virtual dataset /\w+ reads '/.*/elsewhere/part-00000-of-00002.h5'"),
    "dot-dot": (index_reading(lambda name, folder: f"../../elsewhere/{name}"),
                r"virtual dataset /\w+ reads '\.\./\.\./elsewhere/part-00000-of-00002.h5'"),
    "not a shard name": (index_reading(lambda name, folder: f"x{name}", inside=True),
                         r"virtual dataset /\w+ reads 'xpart-00000-of-00002.h5'"),
}
TAIL = r": refusing an HDF5 file that points at other files"


def assert_reads_secret(path: pathlib.Path) -> None:
    """The attack is real: plain h5py reads the outside file's values through `path`."""
    with h5py.File(path, "r") as h5:
        assert np.any(h5["features"][:] == SECRET)


def no_secret(arrays) -> None:
    assert not np.any(arrays.X == SECRET)


def drain(ds, message: str) -> None:
    """Batches in shard order: those of the clean shard come out, then the hostile one is refused."""
    seen = []
    with pytest.raises(SchemaError, match=message):
        for batch in ds.batches(split=None, include_unlabelled=True, source="hdf5", batch_size=4):
            seen.append(batch)
    assert seen, "the clean shard's rows come before the refusal"
    for batch in seen:
        no_secret(batch)


@pytest.mark.parametrize("attack", list(SHARD_ATTACKS))
def test_a_shard_pointing_at_another_file_is_refused_by_every_reader(made, copy, tmp_path, attack):
    make, what = SHARD_ATTACKS[attack]
    make(copy, tmp_path)
    relist(copy, SHARD)
    assert_reads_secret(copy / SHARD)
    message = rf"^{re.escape(SHARD)}: {what}{TAIL}"
    with pytest.raises(SchemaError, match=message):
        open_dataset(copy)
    with pytest.raises(SchemaError, match=message):
        open_dataset(copy, verify="none").read(split=None, source="hdf5")
    drain(open_dataset(copy, verify="none"), message)
    no_secret(open_dataset(copy, verify="none").read(split=None, source="parquet"))
    with pytest.raises(SchemaError, match=message):
        read_hdf5(str(copy))
    with pytest.raises(SchemaError, match=rf"^{re.escape(str(copy / SHARD))}: {what}"):
        read_shard_keys(str(copy / SHARD))
    spec = RunSpec.from_yaml(str(made[1])).with_overrides(input=str(made[0].parent / "images"), output=str(copy))
    task = next(t for t in plan(spec) if t.shard == 1)
    with pytest.raises(SchemaError, match=message):
        reused_result(spec, task)


def test_a_resumed_run_refuses_to_reuse_such_a_shard(made, copy, tmp_path):
    SHARD_ATTACKS["external storage"][0](copy, tmp_path)
    (copy / "rejects/part-00000-of-00002.parquet").unlink()  # shard 0 is redone, shard 1 would be reused
    spec = RunSpec.from_yaml(str(made[1])).with_overrides(input=str(made[0].parent / "images"), output=str(copy))
    with pytest.raises(SchemaError, match=rf"^{re.escape(SHARD)}: dataset /features has external storage"):
        execute(spec, LocalEngine(1), resume=True, log=lambda m: None)
    assert not (copy / layout.MANIFEST).exists()


@pytest.mark.parametrize("attack", list(INDEX_ATTACKS))
def test_a_virtual_index_reading_files_outside_hdf5_is_refused(copy, tmp_path, attack):
    make, what = INDEX_ATTACKS[attack]
    make(copy, tmp_path)
    relist(copy, layout.FEATURES_H5)
    assert_reads_secret(copy / layout.FEATURES_H5)
    message = rf"^{re.escape(layout.FEATURES_H5)}: {what}{TAIL}"
    with pytest.raises(SchemaError, match=message):
        open_dataset(copy)
    with pytest.raises(SchemaError, match=message):
        read_hdf5(str(copy))


@pytest.mark.parametrize("attack", ["external storage", "absolute"])
def test_the_same_refusals_through_a_file_object(copy, tmp_path, attack):
    """Over fsspec, HDF5 is opened through a Python file object: the check reads metadata only, so
    it works there too (a shard is refused when read, the index when opened)."""
    import fsspec

    make, what = {**SHARD_ATTACKS, **INDEX_ATTACKS}[attack]
    make(copy, tmp_path)
    rel = SHARD if attack in SHARD_ATTACKS else layout.FEATURES_H5
    relist(copy, rel)
    memory = fsspec.filesystem("memory")
    try:
        for path in copy.rglob("*"):
            if path.is_file():
                memory.pipe(f"/hostile-hdf5/{path.relative_to(copy).as_posix()}", path.read_bytes())
        message = rf"^{re.escape(rel)}: {what}{TAIL}"
        with pytest.raises(SchemaError, match=message):
            open_dataset("memory://hostile-hdf5")
        if attack in SHARD_ATTACKS:
            drain(open_dataset("memory://hostile-hdf5", verify="none"), message)
    finally:
        memory.rm("/hostile-hdf5", recursive=True)


def test_the_legitimate_output_reads_through_every_reader(made, copy):
    out, spec_path = made
    ds = open_dataset(out, verify="sha256")
    from_hdf5 = ds.read(split=None, include_unlabelled=True, source="hdf5")
    from_parquet = ds.read(split=None, include_unlabelled=True, source="parquet")
    assert len(from_hdf5) == 24 and from_hdf5.keys == from_parquet.keys
    np.testing.assert_array_equal(from_hdf5.X, from_parquet.X)
    whole = read_hdf5(str(out))
    np.testing.assert_array_equal(whole["features"], from_hdf5.X)
    assert read_shard_keys(str(out / SHARD)) == read_shard_keys(str(out / "parquet/part-00001-of-00002.parquet"))
    # resume: the second shard is redone, the first reused (its HDF5 file checked, then listed)
    (copy / "rejects/part-00001-of-00002.parquet").unlink()
    spec = RunSpec.from_yaml(str(spec_path)).with_overrides(input=str(out.parent / "images"), output=str(copy))
    report = execute(spec, LocalEngine(1), resume=True, log=lambda m: None)
    assert report.manifest["metrics"]["reused_shards"] == 1
    np.testing.assert_array_equal(open_dataset(copy).read(split=None, include_unlabelled=True, source="hdf5").X,
                                  from_hdf5.X)


def test_a_weights_file_pointing_at_other_files_is_refused_unread(tmp_path):
    """A CNN weights file (Keras 3 layout) whose kernel is external storage, or which links out, is refused."""
    from featurelib.deep.weights import WeightsError, scan

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    stored = tmp_path / "external.weights.h5"
    with h5py.File(stored, "w") as h5:
        layer = h5.create_group("layers/conv/vars")
        layer.create_dataset("0", shape=(4, 4), dtype=np.float32, external=[(str(secret), 0, 64)])
    linked = tmp_path / "linked.weights.h5"
    with h5py.File(linked, "w") as h5:
        h5.create_group("layers/conv/vars")
        h5["layers/conv/vars/0"] = h5py.ExternalLink(str(stored), "/layers/conv/vars/0")
    for path, kind in ((stored, "external storage"), (linked, "external link")):
        with pytest.raises(WeightsError, match=kind):
            scan(str(path), read="all")
