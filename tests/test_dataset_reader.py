"""open_dataset on real outputs: both shard formats agree, filters, the seeded cross-shard shuffle,
bounded memory, normalisation, every refusal, fsspec, plain consumers, tf.data and PyTorch."""

from __future__ import annotations

import csv
import json
import pathlib
import pickle
import shutil
import tracemalloc

import numpy as np
import pytest

from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.errors import SchemaError, UserError
from featurelib.io.dataset import open_dataset
from featurelib.spec import RunSpec

SPLITS = ("train", "val", "test")


def run(spec_path: pathlib.Path, inp: pathlib.Path, out: pathlib.Path, workers: int = 2) -> pathlib.Path:
    spec = RunSpec.from_yaml(str(spec_path)).with_overrides(input=str(inp), output=str(out))
    execute(spec, LocalEngine(workers), log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def digits(digits_output):
    return open_dataset(digits_output)


@pytest.fixture(scope="module")
def mixed_output(digits_dir, tmp_path_factory) -> tuple[pathlib.Path, set[str]]:
    """All digits through a CSV manifest where every 5th row has no label, two flipped variants
    of every source (all splits), pixels, both formats, 6 shards: 5,391 rows.

    Returns the output and the uris of the unlabelled rows.
    """
    from conftest import write_spec

    root = tmp_path_factory.mktemp("mixed-reader")
    unlabelled = set()
    with open(root / "inputs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "label"])
        for number, path in enumerate(sorted(digits_dir.rglob("*.png"))):
            label = "" if number % 5 == 0 else path.parent.name
            if not label:
                unlabelled.add(str(path))
            writer.writerow([str(path), label])
    spec = write_spec(root / "spec.yaml", features=[{"name": "intensity_hist", "params": {"bins": 16}},
                                                    {"name": "color_stats"}],
                      augment={"copies": 2, "splits": list(SPLITS), "ops": [{"op": "flip", "p": 0.5}]},
                      output={"shards": 6, "pixels": True, "formats": ["parquet", "hdf5"]})
    return run(spec, root / "inputs.csv", root / "out"), unlabelled


@pytest.fixture(scope="module")
def colour_dir(tmp_path_factory) -> pathlib.Path:
    """80 16x16 noise images in two classes, each RGB channel with its own mean and spread."""
    import cv2

    root = tmp_path_factory.mktemp("colour") / "images"
    rng = np.random.default_rng(7)
    for label, means in (("warm", (200, 120, 40)), ("cool", (40, 110, 190))):
        (root / label).mkdir(parents=True)
        for number in range(40):
            rgb = np.stack([rng.normal(m, s, (16, 16)) for m, s in zip(means, (10, 30, 60))], axis=-1)
            cv2.imwrite(str(root / label / f"{number:03d}.png"), np.clip(rgb, 0, 255).astype(np.uint8)[..., ::-1])
    return root


@pytest.fixture(scope="module")
def colour_output(colour_dir, tmp_path_factory) -> pathlib.Path:
    """colour_dir with pixels, both formats, 4 shards: shard names like digits_output's, other features."""
    from conftest import write_spec

    root = tmp_path_factory.mktemp("colour-out")
    spec = write_spec(root / "spec.yaml", image={"size": [16, 16]}, features=[{"name": "color_stats"}],
                      split={"train": 0.5, "val": 0.25, "test": 0.25},
                      output={"shards": 4, "pixels": True, "formats": ["parquet", "hdf5"]})
    return run(spec, colour_dir, root / "out", workers=1)


@pytest.fixture(scope="module")
def plain_output(colour_dir, tmp_path_factory) -> pathlib.Path:
    """colour_dir as Parquet only, without pixels."""
    from conftest import write_spec

    root = tmp_path_factory.mktemp("plain-out")
    spec = write_spec(root / "spec.yaml", image={"size": [16, 16]}, features=[{"name": "color_stats"}],
                      output={"shards": 2, "formats": ["parquet"]})
    return run(spec, colour_dir, root / "out", workers=1)


def assert_same_rows(a, b, *, pixels: bool = True) -> None:
    assert a.keys == b.keys
    assert a.split == b.split
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.aug_index, b.aug_index)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.columns == b.columns
    if pixels:
        np.testing.assert_array_equal(a.pixels, b.pixels)


def copy_output(out: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(out, tmp_path / "copy"))


def manifest_of(out: pathlib.Path) -> dict:
    return json.loads((out / "_manifest.json").read_text())


# --- both formats, filters ---------------------------------------------------------------------------

def test_parquet_and_hdf5_give_identical_arrays_for_every_split(digits):
    sizes = {}
    for split in (*SPLITS, None):
        parquet = digits.read(["lbp", "hog"], split=split, pixels=True, source="parquet")
        hdf5 = digits.read(["lbp", "hog"], split=split, pixels=True, source="hdf5")
        assert_same_rows(parquet, hdf5)
        assert parquet.X.shape == (len(parquet), 334) and parquet.X.dtype == np.float32
        assert parquet.pixels.shape == (len(parquet), 32, 32, 3) and parquet.pixels.dtype == np.uint8
        assert parquet.columns == {"lbp": (0, 10), "hog": (10, 334)}
        assert set(parquet.split) == ({split} if split else set(SPLITS))
        sizes[split] = len(parquet)
    assert sizes["train"] + sizes["val"] + sizes["test"] == sizes[None] == digits.counts["written_rows"] == 1797
    assert sizes == {**digits.split_sizes(), None: 1797}
    assert sizes["test"] >= 300


def test_split_filter_and_unlabelled_rows_from_a_csv_manifest(mixed_output):
    import pyarrow.dataset as pads

    out, unlabelled_uris = mixed_output
    ds = open_dataset(out)
    table = pads.dataset(str(out / "parquet"), format="parquet").to_table(
        columns=["key", "uri", "label", "split", "aug_index"]).to_pylist()
    assert len(table) == ds.counts["written_rows"] == 3 * 1797

    everything = ds.read(split=None, include_unlabelled=True)
    assert sorted(everything.keys) == sorted(r["key"] for r in table)
    unlabelled = {r["key"] for r in table if r["label"] == -1}
    assert {r["uri"] for r in table if r["label"] == -1} == unlabelled_uris
    assert len(unlabelled) == 3 * len(unlabelled_uris)  # each with its two variants
    assert {k for k, y in zip(everything.keys, everything.y) if y == -1} == unlabelled

    for source in ("parquet", "hdf5"):
        labelled = ds.read(split=None, source=source)
        assert (labelled.y >= 0).all() and len(labelled) == len(table) - len(unlabelled)
        for split in SPLITS:
            rows = ds.read(split=split, source=source)
            assert set(rows.split) == {split} and (rows.y >= 0).all()
            assert set(rows.keys) == {r["key"] for r in table if r["split"] == split and r["label"] >= 0}
            assert ds.count(split=split, source=source) == len(rows)
            with_unlabelled = ds.read(split=split, source=source, include_unlabelled=True)
            assert set(with_unlabelled.keys) == {r["key"] for r in table if r["split"] == split}
        originals = ds.read(split=["train", "val"], originals_only=True, source=source)
        assert (originals.aug_index == 0).all()
        assert len(originals) == sum(sum(ds.stats["labels"][s].values()) for s in ("train", "val"))


# --- batches: order, seeded shuffle, memory -----------------------------------------------------------

def shard_of_keys(ds) -> dict[str, int]:
    return {key: index for index in range(len(ds.shard_paths()))
            for batch in ds.batches(["lbp"], split=None, shards=[index]) for key in batch.keys}


def test_unshuffled_batches_are_read_in_order(digits):
    whole = digits.read(["hog"], split="val", pixels=True)
    for source in ("parquet", "hdf5"):
        batches = list(digits.batches(["hog"], split="val", pixels=True, batch_size=50, source=source))
        assert [len(b) for b in batches[:-1]] == [50] * (len(batches) - 1) and 0 < len(batches[-1]) <= 50
        assert_same_rows(whole, type(whole).concat(batches, whole))
    dropped = list(digits.batches(["hog"], split="val", batch_size=50, drop_remainder=True))
    assert all(len(b) == 50 for b in dropped) and len(dropped) == len(whole) // 50


def test_seeded_shuffle_covers_every_row_once_and_mixes_shards(digits):
    def order(seed, **kwargs):
        batches = list(digits.batches(["lbp"], split=None, batch_size=64, shuffle=True, seed=seed,
                                      shuffle_buffer=256, **kwargs))
        return batches, [k for b in batches for k in b.keys]

    batches, first = order(1)
    _, again = order(1)
    _, other = order(2)
    _, from_hdf5 = order(1, source="hdf5")
    keys = digits.read(["lbp"], split=None).keys
    assert first == again
    assert first != other and sorted(first) == sorted(other)
    assert len(first) == len(set(first)) == len(keys) and set(first) == set(keys)
    assert sorted(from_hdf5) == sorted(keys)
    assert first[:200] != keys[:200]

    shard = shard_of_keys(digits)
    assert len(set(shard.values())) == 4
    full = [b for b in batches if len(b) == 64]
    mixing = [len({shard[k] for k in b.keys}) for b in full]
    assert sum(m > 1 for m in mixing) >= 0.9 * len(full), mixing  # rows of several shards per batch
    assert all(len(set(b.y.tolist())) >= 4 for b in full)  # and several classes (shards are sorted by key)
    shuffled = digits.read(["lbp"], split=None, shuffle=True, seed=5)
    assert shuffled.keys == digits.read(["lbp"], split=None, shuffle=True, seed=5).keys != keys


def test_batches_memory_is_bounded_by_the_buffer_not_the_dataset(mixed_output):
    out, _ = mixed_output
    ds = open_dataset(out)
    kwargs = dict(split=None, include_unlabelled=True, pixels=True)
    list(ds.batches(batch_size=32, shuffle=True, **kwargs))  # imports and caches outside the measurement

    def peak(action) -> int:
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            action()
            return tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    whole = ds.read(**kwargs)
    row_bytes = (whole.X.nbytes + whole.pixels.nbytes) / len(whole) + 200  # + key and split strings
    dataset_bytes = row_bytes * len(whole)
    del whole

    def drain(**options):
        rows = 0
        for batch in ds.batches(batch_size=32, **kwargs, **options):
            rows += len(batch)
        assert rows == 5391

    read_peak = peak(lambda: ds.read(**kwargs))
    shuffled_peak = peak(lambda: drain(shuffle=True, shuffle_buffer=256, seed=3))
    hdf5_peak = peak(lambda: drain(shuffle=True, shuffle_buffer=256, source="hdf5"))
    ordered_peak = peak(lambda: drain(shuffle=False, shuffle_buffer=256))
    assert read_peak > dataset_bytes * 0.9  # tracemalloc sees the arrays
    for measured in (shuffled_peak, hdf5_peak, ordered_peak):
        assert measured < 5 * 256 * row_bytes, (measured, row_bytes)
        assert measured < dataset_bytes / 5, (measured, dataset_bytes)


# --- normalisation ---------------------------------------------------------------------------------------

def test_standardisation_equals_train_statistics_computed_independently(digits):
    train = digits.read(["hog", "lbp"], split="train", originals_only=True)
    X = train.X.astype(np.float64)
    mean, std = X.mean(axis=0), X.std(axis=0)  # population std
    constant = std == 0
    assert constant.sum() == 4  # lbp bins never seen on digits: only centred
    scale = np.where(constant, 1.0, std)
    for split in ("train", "test"):
        raw = digits.read(["hog", "lbp"], split=split).X.astype(np.float64)
        standard = digits.read(["hog", "lbp"], split=split, normalize="standard").X
        centred = digits.read(["hog", "lbp"], split=split, normalize="center").X
        assert standard.dtype == np.float32 and np.isfinite(standard).all()
        np.testing.assert_allclose(standard, (raw - mean) / scale, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(centred, raw - mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(standard[:, constant], (raw - mean)[:, constant], atol=1e-6)
    again = digits.read(["lbp"], split="test", normalize="standard", source="hdf5").X
    np.testing.assert_array_equal(again, digits.read(["lbp"], split="test", normalize="standard").X)
    batched = np.concatenate([b.X for b in digits.batches(["hog", "lbp"], split="test", normalize="standard")])
    np.testing.assert_array_equal(batched, digits.read(["hog", "lbp"], split="test", normalize="standard").X)


def test_pixel_standardisation_is_per_channel(colour_output):
    ds = open_dataset(colour_output)
    pixels = ds.read(split="train", pixels=True, originals_only=True).pixels.astype(np.float64)
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
    assert np.ptp(std) > 10  # the channels really differ
    for source in ("parquet", "hdf5"):
        raw = ds.read(split="val", pixels=True, source=source).pixels.astype(np.float64)
        standard = ds.read(split="val", pixels=True, normalize="standard", source=source).pixels
        assert standard.dtype == np.float32 and standard.shape == raw.shape
        np.testing.assert_allclose(standard, (raw - mean) / std, rtol=1e-4, atol=1e-4)
        centred = ds.read(split="val", pixels=True, normalize="center", source=source).pixels
        np.testing.assert_allclose(centred, raw - mean, rtol=1e-5, atol=1e-3)


# --- refusals ----------------------------------------------------------------------------------------------

def test_a_folder_without_manifest_is_refused_with_the_reason(digits_output, tmp_path):
    with pytest.raises(UserError, match=r"not a committed featurelib output: no _manifest.json: the folder does not"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no _manifest.json \(a run in progress, or not a featurelib output\)"):
        open_dataset(tmp_path / "empty")
    failed = copy_output(digits_output, tmp_path)
    (failed / "_manifest.json").unlink()
    (failed / "_FAILED.json").write_text(json.dumps({"kind": "policy", "error": "too many rejects"}))
    with pytest.raises(UserError, match=r"no _manifest.json; the last run failed, see .*_FAILED.json"):
        open_dataset(failed)


def test_missing_truncated_and_modified_shards_are_refused(digits_output, tmp_path):
    out = copy_output(digits_output, tmp_path)
    shard = out / "parquet/part-00002-of-00004.parquet"
    data = shard.read_bytes()
    shard.unlink()
    with pytest.raises(SchemaError, match=r"^parquet/part-00002-of-00004.parquet is listed in the manifest of .* "
                                          r"but missing$"):
        open_dataset(out)
    shard.write_bytes(data)
    h5 = out / "hdf5/part-00001-of-00004.h5"
    size = h5.stat().st_size
    with open(h5, "r+b") as handle:
        handle.truncate(size - 100)
    with pytest.raises(SchemaError, match=rf"hdf5/part-00001-of-00004.h5 has {size - 100} bytes, the manifest "
                                          rf"of .* says {size}: the output was modified after the run"):
        open_dataset(out)
    shutil.copyfile(digits_output / "hdf5/part-00001-of-00004.h5", h5)
    modified = bytearray(data)
    modified[len(data) // 2] ^= 0xFF  # same size: only the hash tells
    shard.write_bytes(bytes(modified))
    open_dataset(out, verify="size")
    with pytest.raises(SchemaError, match=r"parquet/part-00002-of-00004.parquet does not match the sha256 in the "
                                          r"manifest of .*: the output was modified"):
        open_dataset(out, verify="sha256")
    shard.write_bytes(data)
    assert open_dataset(out, verify="sha256").counts["written_rows"] == 1797


def test_a_shard_of_another_run_is_refused_by_its_feature_fingerprint(digits_output, colour_output, tmp_path):
    out = copy_output(digits_output, tmp_path)
    ours = manifest_of(out)["feature_fingerprint"]
    theirs = manifest_of(colour_output)["feature_fingerprint"]
    for rel in ("parquet/part-00001-of-00004.parquet", "hdf5/part-00003-of-00004.h5"):
        shutil.copyfile(digits_output / rel, out / rel)
        shutil.copyfile(colour_output / rel, out / rel)  # same name, another run
        # verify="none" opens; the shard's fingerprint is still checked when it is read
        lazy = open_dataset(out, verify="none")
        source = rel.split("/")[0]
        with pytest.raises(SchemaError, match=rf"{rel} has feature_fingerprint {theirs}, the manifest of .* "
                                              rf"{ours}: refusing to mix features of two runs"):
            lazy.read(["lbp"], source=source)
        # a manifest listing it with its size and hash (rebuilt by hand) is refused at opening
        manifest = manifest_of(digits_output)
        stranger = next(f for f in manifest_of(colour_output)["files"] if f["path"] == rel)
        entry = next(f for f in manifest["files"] if f["path"] == rel)
        entry.update(bytes=stranger["bytes"], sha256=stranger["sha256"])
        (out / "_manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(SchemaError, match=rf"{rel} has feature_fingerprint {theirs}.*refusing to mix"):
            open_dataset(out, verify="sha256")
        shutil.copyfile(digits_output / rel, out / rel)
        shutil.copyfile(digits_output / "_manifest.json", out / "_manifest.json")


def test_a_virtual_index_over_unlisted_shards_is_refused(digits_output, tmp_path):
    out = copy_output(digits_output, tmp_path)
    manifest = manifest_of(out)
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "hdf5/part-00003-of-00004.h5"]
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / "hdf5/part-00003-of-00004.h5").unlink()
    with pytest.raises(SchemaError, match=r"hdf5/features.h5 reads hdf5/part-00003-of-00004.h5, which the manifest "
                                          r"of .* does not list"):
        open_dataset(out)


def test_wrong_requests_say_what_exists(digits, plain_output):
    plain = open_dataset(plain_output)
    with pytest.raises(UserError, match=r"has no hdf5 shards \(its run wrote output.formats = \['parquet'\]\); "
                                        r"read it with source='parquet'$"):
        plain.read(source="hdf5")
    with pytest.raises(UserError, match=r"no feature column 'sift' in .*; its columns: hog, lbp$"):
        digits.read(["hog", "sift"])
    with pytest.raises(UserError, match=r"no feature column 'pixels' .*its columns: hog, lbp \(pixels are read "
                                        r"with pixels=True\)"):
        digits.batches("hog,pixels")
    with pytest.raises(UserError, match=r"holds no pixels \(its run had output.pixels: false\); feature columns: "
                                        r"color_stats$"):
        plain.read(pixels=True)
    with pytest.raises(UserError, match=r"holds no pixels"):
        plain.tf_dataset(pixels=True)
    with pytest.raises(UserError, match=r"split must be train, val, test"):
        digits.read(split="validation")
    with pytest.raises(UserError, match=r"normalize must be one of"):
        digits.read(normalize="minmax")
    with pytest.raises(UserError, match=r"batch_size must be an integer >= 1"):
        digits.batches(batch_size=0)
    with pytest.raises(UserError, match=r"shards must be indices below 4"):
        digits.batches(shards=[4])
    with pytest.raises(UserError, match=r"verify must be one of size, sha256, none"):
        open_dataset(plain_output, verify="md5")
    assert plain.read().X.shape[1] == 9 and plain.sources == ("parquet",)


# --- fsspec -------------------------------------------------------------------------------------------

def test_an_output_in_fsspec_memory_reads_identically_hdf5_included(digits, digits_output):
    import fsspec

    memory = fsspec.filesystem("memory")
    try:
        for path in digits_output.rglob("*"):
            if path.is_file():
                memory.pipe(f"/reader-test/{path.relative_to(digits_output).as_posix()}", path.read_bytes())
        remote = open_dataset("memory://reader-test", verify="sha256")
        assert remote.manifest == digits.manifest and remote.stats == digits.stats
        for source in ("parquet", "hdf5"):
            assert_same_rows(remote.read(split="test", pixels=True, source=source),
                             digits.read(split="test", pixels=True, source=source))
            ours = [k for b in remote.batches(split=None, shuffle=True, seed=4, source=source) for k in b.keys]
            assert ours == [k for b in digits.batches(split=None, shuffle=True, seed=4, source=source) for k in b.keys]
        assert remote.arrow_dataset().count_rows() == 1797
        assert remote.shard_paths("hdf5")[0] == "/reader-test/hdf5/part-00000-of-00004.h5"
        memory.rm("/reader-test/parquet/part-00000-of-00004.parquet")
        with pytest.raises(SchemaError, match="part-00000-of-00004.parquet is listed .* but missing"):
            open_dataset("memory://reader-test")
    finally:
        memory.rm("/reader-test", recursive=True)


# --- plain consumers -----------------------------------------------------------------------------------

def test_pyarrow_pandas_and_duckdb_read_the_parquet_shards(digits, digits_output):
    import duckdb
    import pandas as pd
    import pyarrow.dataset as pads

    folder = digits_output / "parquet"
    assert pads.dataset(str(folder), format="parquet").count_rows() == 1797
    assert digits.arrow_dataset().count_rows() == 1797
    frame = pd.read_parquet(folder)
    assert len(frame) == 1797 and set(frame.columns) >= {"key", "label", "label_name", "split", "hog", "lbp"}
    test = digits.read(["hog"], split="test")
    by_key = frame.set_index("key")
    np.testing.assert_array_equal(np.stack(by_key.loc[test.keys[:20], "hog"].to_numpy()), test.X[:20])
    view = digits.to_pandas(["lbp"], split="test")
    assert sorted(view["key"]) == sorted(test.keys) and view["lbp"].iloc[0].shape == (10,)

    counts = duckdb.sql(f"SELECT label, count(*) FROM read_parquet('{folder}/*.parquet') GROUP BY label "
                        f"ORDER BY label").fetchall()
    per_label = {digits.label_names.index(name): 0 for name in digits.label_names}
    for split in SPLITS:
        for name, n in digits.stats["labels"][split].items():
            per_label[digits.label_names.index(name)] += n
    assert dict(counts) == per_label
    assert sum(n for _, n in counts) == digits.manifest["counts"]["written_rows"]


def test_spark_reads_the_parquet_shards(spark, digits, digits_output):
    frame = spark.read.parquet(str(digits_output / "parquet"))
    assert frame.count() == digits.manifest["counts"]["written_rows"]
    test = digits.read(["hog"], split="test")
    key = test.keys[7]
    row = frame.where(frame.key == key).select("hog", "label", "split").collect()
    assert len(row) == 1 and row[0]["label"] == test.y[7] and row[0]["split"] == "test"
    assert np.float32(row[0]["hog"][123]) == test.X[7, 123]
    np.testing.assert_array_equal(np.asarray(row[0]["hog"], np.float32), test.X[7])


def test_plain_h5py_reads_the_virtual_index(digits, digits_output):
    import h5py

    with h5py.File(digits_output / "hdf5/features.h5", "r") as h5:
        features, labels = h5["features"][:], h5["labels"][:]
        names = list(h5["label_names"].asstr()[:])
        keys = list(h5["keys"].asstr()[:])
        columns = json.loads(h5.attrs["columns"])
    everything = digits.read(split=None, include_unlabelled=True, source="hdf5")
    assert names == digits.label_names
    assert keys == everything.keys
    np.testing.assert_array_equal(features, everything.X)
    np.testing.assert_array_equal(labels, everything.y)
    assert [(c["name"], c["start"], c["stop"]) for c in columns] == [("hog", 0, 324), ("lbp", 324, 334)]


# --- PyTorch (first: its workers fork before TensorFlow starts threads), tf.data -----------------

def test_torch_dataset_with_two_workers_reads_every_row_once_each_worker_its_shards(digits):
    from torch.utils.data import DataLoader

    rows = digits.torch_dataset(["hog"], split=None, shuffle=True, seed=2, with_keys=True)
    copy = pickle.loads(pickle.dumps(rows))  # what spawn/forkserver workers receive
    assert [k for _, _, k in copy] == [k for _, _, k in rows]

    shard = shard_of_keys(digits)
    batches = list(DataLoader(rows, batch_size=64, num_workers=2))
    keys = [k for _, _, ks in batches for k in ks]
    assert len(keys) == len(set(keys)) == 1797
    assert sorted(keys) == sorted(digits.read(["hog"], split=None).keys)
    owners = [{shard[k] % 2 for k in ks} for _, _, ks in batches]
    assert all(len(o) == 1 for o in owners) and {min(o) for o in owners} == {0, 1}  # worker w: shards w, w + 2
    x, y, _ = batches[0]
    assert x.shape == (64, 324) and str(x.dtype) == "torch.float32" and str(y.dtype) == "torch.int64"
    whole = digits.read(["hog"], split=None)
    by_key = dict(zip(whole.keys, range(len(whole))))
    np.testing.assert_array_equal(x.numpy(), whole.X[[by_key[k] for k in batches[0][2]]])
    np.testing.assert_array_equal(y.numpy(), whole.y[[by_key[k] for k in batches[0][2]]])

    rows.set_epoch(1)
    assert [k for _, _, k in rows] != [k for _, _, k in copy]
    images = digits.torch_dataset(split="test", pixels=True, normalize="standard")
    x, y = next(iter(DataLoader(images, batch_size=16)))
    assert x.shape == (16, 3, 32, 32) and str(x.dtype) == "torch.float32"
    first = digits.read(split="test", pixels=True, normalize="standard").pixels[:16]
    np.testing.assert_array_equal(x.numpy(), first.transpose(0, 3, 1, 2))


def test_tf_dataset_yields_the_batches_of_read(digits):
    import tensorflow as tf

    features = digits.tf_dataset(["hog", "lbp"], split="val", batch_size=100)
    assert int(features.cardinality()) == -(-digits.count(split="val") // 100)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in features])
    whole = digits.read(["hog", "lbp"], split="val")
    np.testing.assert_array_equal(np.concatenate(xs), whole.X)
    np.testing.assert_array_equal(np.concatenate(ys), whole.y)

    pixels = digits.tf_dataset(split="test", pixels=True, batch_size=64, normalize="standard")
    assert pixels.element_spec[0] == tf.TensorSpec((None, 32, 32, 3), tf.float32)
    stacked = np.concatenate([x.numpy() for x, _ in pixels])
    np.testing.assert_array_equal(stacked, digits.read(split="test", pixels=True, normalize="standard").pixels)

    shuffled = digits.tf_dataset(["lbp"], split="train", batch_size=128, shuffle=True, seed=3)
    first = np.concatenate([y.numpy() for _, y in shuffled])
    second = np.concatenate([y.numpy() for _, y in shuffled])  # the next epoch: another order
    assert (first != second).any() and sorted(first) == sorted(second)
    again = np.concatenate([y.numpy() for _, y in digits.tf_dataset(["lbp"], split="train", batch_size=128,
                                                                      shuffle=True, seed=3)])
    np.testing.assert_array_equal(first, again)
