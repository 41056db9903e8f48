"""Object stores (issue #12): inputs on S3-compatible storage through fsspec (s3fs), against a ``moto``
server on 127.0.0.1 (no network, fake credentials).

Every S3 run is compared with a run of the same files from a local folder: same keys (relative
paths for folders, the manifest's ids otherwise) and identical rows per key.
"""

from __future__ import annotations

import json
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import copy_digits, write_spec
from featurelib.cli import main

import moto.server  # noqa: E402,F401  (the test extra installs both: a missing one fails, never skips)
import s3fs  # noqa: E402,F401

BUCKET = "featurelib-test"
SECRET = "moto-SECRET-do-not-leak"
KEY_ID = "testing-key-id"


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1 (a free port), a bucket, and the storage options that reach it.

    The credentials travel in ``storage_options`` (what a spec holds), not only in the environment:
    workers (forked from the local engine's forkserver, Beam's and Spark's workers) get them from
    the spec's JSON in their shard task. The environment gets fake ones too, so that nothing on
    this machine ever looks for real ones.
    """
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                      "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {"key": KEY_ID, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}
    import s3fs

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield {"endpoint": endpoint, "options": options, "fs": fs, "bucket": BUCKET}
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def upload_tree(fs, local: pathlib.Path, prefix: str) -> list[str]:
    """Every file under `local` to ``s3://<prefix>/<relative path>``; returns the relative paths."""
    rels = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for rel in rels:
        fs.pipe(f"{prefix}/{rel}", (local / rel).read_bytes())
    fs.invalidate_cache()
    return rels


@pytest.fixture(scope="module")
def corpus(digits_dir, tmp_path_factory) -> pathlib.Path:
    """90 real digits in their class folders (local)."""
    return copy_digits(digits_dir, tmp_path_factory.mktemp("objstore") / "digits", step=20, limit=90)


@pytest.fixture(scope="module")
def s3_corpus(s3, corpus) -> str:
    """The same digits at ``s3://bucket/in/<label>/<file>.png``; returns the folder's URI."""
    upload_tree(s3["fs"], corpus, f"{BUCKET}/in")
    return f"s3://{BUCKET}/in"


FEATURES = [{"name": "color_stats"}, {"name": "intensity_hist", "params": {"bins": 16}}]


def rows_by_key(out: pathlib.Path, *, drop=("uri",)) -> dict[str, dict]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted((out / "parquet").glob("part-*.parquet")))
    rows = table.drop_columns([c for c in drop if c in table.column_names]).to_pylist()
    by_key = {row["key"]: row for row in rows}
    assert len(by_key) == len(rows)
    return by_key


def run_spec(tmp_path: pathlib.Path, name: str, input_section: dict, out: pathlib.Path, *args: str) -> int:
    spec = write_spec(tmp_path / f"{name}.yaml", input=input_section, features=FEATURES,
                      output={"path": str(out), "shards": 3})
    return main(["run", "--spec", str(spec), *args])


@pytest.fixture(scope="module")
def local_rows(corpus, tmp_path_factory) -> dict[str, dict]:
    """The reference: the same files from a local folder."""
    tmp = tmp_path_factory.mktemp("objstore-ref")
    assert run_spec(tmp, "local", {"path": str(corpus)}, tmp / "out", "--workers", "2") == 0
    return rows_by_key(tmp / "out")


def test_moto_server_lists_and_reads_back(s3, s3_corpus, corpus):
    from featurelib.sources import list_inputs, read_bytes

    listing = list_inputs(s3_corpus, storage_options=s3["options"], seed=42)
    keys = [r.source_key for r in listing.records]
    assert keys == sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.png"))
    assert all(r.uri == f"{s3_corpus}/{r.source_key}" for r in listing.records)
    assert listing.label_names == tuple(sorted({k.split("/")[0] for k in keys}))
    first = listing.records[0]
    assert read_bytes(first.uri, s3["options"]) == (corpus / first.source_key).read_bytes()


def test_s3_folder_input_on_the_local_engine_equals_the_local_folder(s3, s3_corpus, local_rows, tmp_path):
    """Workers forked from the local engine's forkserver read s3:// with the spec's storage options."""
    out = tmp_path / "out"
    assert run_spec(tmp_path, "s3", {"path": s3_corpus, "storage_options": s3["options"]}, out,
                    "--workers", "2") == 0
    got = rows_by_key(out)
    assert got.keys() == local_rows.keys() and len(got) == 90
    assert got == local_rows
    assert {row["uri"] for row in pq.read_table(out / "parquet").to_pylist()} == {
        f"{s3_corpus}/{key}" for key in got}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["spec"]["input"]["storage_options"] == {}
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_a_manifest_on_s3_naming_s3_uris(s3, s3_corpus, corpus, local_rows, tmp_path, kind):
    """A manifest object on S3 whose uris are s3:// objects: with ``id`` = the relative path, the same
    keys and rows as the local folder (labels from the manifest's column)."""
    keys = sorted(local_rows)
    table = pa.table({"uri": [f"{s3_corpus}/{k}" for k in keys], "label": [k.split("/")[0] for k in keys],
                      "id": keys})
    sink = pa.BufferOutputStream()
    if kind == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sink)
    else:
        pq.write_table(table, sink)
    uri = f"s3://{BUCKET}/manifests/inputs.{kind}"
    s3["fs"].pipe(uri, sink.getvalue().to_pybytes())
    out = tmp_path / "out"
    assert run_spec(tmp_path, f"m-{kind}", {"path": uri, "storage_options": s3["options"]}, out,
                    "--workers", "2") == 0
    assert rows_by_key(out) == local_rows


def test_s3_folder_input_on_beam_in_process_equals_the_local_folder(s3, s3_corpus, local_rows, tmp_path):
    import apache_beam  # noqa: F401  (the beam extra is part of the test install: never skipped)
    from pipelines.extract_features import run as beam_run

    out = tmp_path / "beam"
    spec = write_spec(tmp_path / "beam.yaml", input={"path": s3_corpus, "storage_options": s3["options"]},
                      features=FEATURES, output={"path": str(out), "shards": 3})
    beam_run(["--spec", str(spec)])
    assert rows_by_key(out) == local_rows


def test_open_dataset_reads_an_uploaded_output_from_s3(s3, corpus, tmp_path):
    """A committed output copied to S3 (``aws s3 sync`` would do the same) reads through
    ``open_dataset("s3://...")`` with the same arrays as from the local folder, Parquet and HDF5 alike,
    with every file's sha256 checked."""
    import numpy as np

    from featurelib.io import open_dataset

    out = tmp_path / "out"
    spec = write_spec(tmp_path / "up.yaml", input={"path": str(corpus)}, features=FEATURES,
                      output={"path": str(out), "shards": 3, "formats": ["parquet", "hdf5"]})
    assert main(["run", "--spec", str(spec), "--workers", "2"]) == 0
    upload_tree(s3["fs"], out, f"{BUCKET}/uploaded")
    local = open_dataset(out)
    remote = open_dataset(f"s3://{BUCKET}/uploaded", storage_options=s3["options"], verify="sha256")
    assert remote.manifest == local.manifest
    for source in ("parquet", "hdf5"):
        want = local.read(split=None, source=source)
        got = remote.read(split=None, source=source)
        assert len(got.keys) == 90
        assert list(got.keys) == list(want.keys)
        np.testing.assert_array_equal(got.X, want.X)
        np.testing.assert_array_equal(got.y, want.y)


@pytest.fixture(params=["local", "s3", "memory"])
def output_at(request, tmp_path):
    """open_output(...) of a fresh output root: a local folder, an S3 prefix on moto, fsspec's memory."""
    from featurelib.io.outfs import open_output

    if request.param == "local":
        yield open_output(str(tmp_path / "out"))
    elif request.param == "s3":
        s3 = request.getfixturevalue("s3")
        yield open_output(f"s3://{BUCKET}/outfs-{tmp_path.name}", s3["options"])
    else:
        yield open_output(f"memory://outfs-{tmp_path.name}")


def test_output_file_operations_on_a_folder_and_object_stores(output_at, tmp_path):
    """The operations a commit on an object store needs (featurelib.io.outfs): put a finished file in
    place whole, create a lock exclusively (a conditional put on S3), list, read, delete."""
    out = output_at
    out.makedirs("parquet")
    assert out.listdir() == (["parquet"] if not out.remote else [])
    staged = out.staging("parquet/part-00000-of-00002.parquet")
    pathlib.Path(staged).write_bytes(b"rows")
    out.put(staged, "parquet/part-00000-of-00002.parquet")
    assert not os.path.exists(staged)
    out.write_bytes("_manifest.json", b"{}")
    assert out.exists("parquet/part-00000-of-00002.parquet") and out.exists("_manifest.json")
    assert out.read_bytes("parquet/part-00000-of-00002.parquet") == b"rows"
    assert out.listdir() == ["_manifest.json", "parquet"]
    assert out.listdir("parquet") == ["part-00000-of-00002.parquet"]
    assert out.create_exclusive("_LOCK", b"first")
    assert not out.create_exclusive("_LOCK", b"second")
    assert out.read_bytes("_LOCK") == b"first" and out.exclusive
    out.remove("_LOCK")
    assert out.create_exclusive("_LOCK", b"third")
    out.remove("parquet")
    out.remove("missing")
    assert out.listdir() == ["_LOCK", "_manifest.json"]
    assert not any(".tmp-" in name for name in out.listdir() + out.listdir("parquet"))


def test_an_exclusive_create_on_s3_has_one_winner_among_racing_writers(s3):
    """The lock's primitive on an object store: 8 writers at once, one conditional put succeeds."""
    import threading

    from featurelib.io.outfs import open_output

    for trial in range(5):
        outs = [open_output(f"s3://{BUCKET}/race-{trial}", s3["options"]) for _ in range(8)]
        won = [None] * 8
        barrier = threading.Barrier(8)

        def create(i, outs=outs, won=won, barrier=barrier):
            barrier.wait()
            won[i] = outs[i].create_exclusive("_LOCK", str(i).encode())

        threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(won) == 1, won
        assert outs[0].read_bytes("_LOCK") == str(won.index(True)).encode()


# --- outputs on S3 ----------------------------------------------------------------------------------

def staged_files() -> set[str]:
    """Files in every process's staging folder on this machine (featurelib.io.outfs.stage_dir)."""
    from featurelib.io.outfs import private_tmp

    return {str(p) for p in (pathlib.Path(private_tmp()) / "stage").rglob("*") if p.is_file()}


def s3_rows_by_key(fs, prefix: str, *, drop=("uri",)) -> dict[str, dict]:
    """Rows of every Parquet shard under ``s3://<prefix>/parquet`` by key (like :func:`rows_by_key`)."""
    tables = []
    fs.invalidate_cache()  # this instance's listings predate the run's uploads and deletions
    for path in sorted(fs.glob(f"{prefix}/parquet/part-*.parquet")):
        with fs.open(path, "rb") as handle:
            tables.append(pq.read_table(handle))
    table = pa.concat_tables(tables)
    rows = table.drop_columns([c for c in drop if c in table.column_names]).to_pylist()
    by_key = {row["key"]: row for row in rows}
    assert len(by_key) == len(rows)
    return by_key


def s3_output_spec(tmp_path, name, s3, input_section, prefix, **output):
    return write_spec(tmp_path / f"{name}.yaml", input=input_section, features=FEATURES,
                      output={"path": f"s3://{prefix}", "shards": 3, "storage_options": s3["options"], **output})


def assert_clean_s3_output(s3, prefix: str) -> list[str]:
    """No lock, scratch or temporary object under `prefix`, no secret in any object; returns the object names."""
    fs = s3["fs"]
    fs.invalidate_cache()
    names = sorted(p[len(prefix) + 1:] for p in fs.find(prefix))
    assert not [n for n in names if n == "_LOCK" or n.startswith("_work") or ".tmp-" in n], names
    for name in names:
        assert SECRET.encode() not in fs.cat_file(f"{prefix}/{name}"), name
    return names


def test_a_run_writes_its_output_to_s3_equal_to_a_local_run(s3, corpus, local_rows, tmp_path, capsys):
    """Local engine, 2 workers: each shard written on the worker's disk and uploaded whole, the manifest
    PUT last (the commit point); the output reads back through open_dataset with every sha256 checked,
    Parquet and HDF5, equal to the same run into a local folder."""
    import numpy as np

    from featurelib.io import open_dataset

    prefix = f"{BUCKET}/out-local"
    staged_before = staged_files()
    spec = s3_output_spec(tmp_path, "out", s3, {"path": str(corpus)}, prefix, formats=["parquet", "hdf5"])
    assert main(["run", "--spec", str(spec), "--workers", "2"]) == 0
    names = assert_clean_s3_output(s3, prefix)
    assert "_manifest.json" in names and "features.h5" not in names  # no virtual index on an object store
    assert sum(n.startswith("hdf5/part-") for n in names) == 3
    assert s3_rows_by_key(s3["fs"], prefix) == local_rows
    assert staged_files() == staged_before  # uploads left nothing behind
    remote = open_dataset(f"s3://{prefix}", storage_options=s3["options"], verify="sha256")
    assert remote.manifest["counts"]["written_sources"] == 90
    assert remote.manifest["spec"]["output"]["path"] == f"s3://{prefix}"
    assert "storage_options" not in remote.manifest["spec"]["output"]
    parquet, hdf5 = remote.read(split=None, source="parquet"), remote.read(split=None, source="hdf5")
    assert sorted(parquet.keys) == sorted(local_rows) and list(hdf5.keys) == list(parquet.keys)
    np.testing.assert_array_equal(hdf5.X, parquet.X)

    # featurize inspect reads it with --storage-options; train, which writes beside it, refuses in one line.
    options_file = tmp_path / "options.json"
    options_file.write_text(json.dumps(s3["options"]))
    assert main(["inspect", f"s3://{prefix}", "--storage-options", json.dumps(s3["options"])]) == 0
    capsys.readouterr()
    assert main(["inspect", f"s3://{prefix}", "--storage-options", f"@{options_file}"]) == 0
    assert main(["train", f"s3://{prefix}", "--features", "color_stats", "--model", "logreg"]) == 2
    out, err = capsys.readouterr()
    assert f"output           s3://{prefix}" in out and "written sources  90" in out
    assert err.strip().splitlines()[-1] == (
        f"featurize: error: featurize train works on local or mounted outputs; 's3://{prefix}' is an object "
        f"store: copy it first (e.g. aws s3 sync), or read it in Python with "
        f"featurelib.io.open_dataset('s3://{prefix}', storage_options=...)")
    assert SECRET not in out + err

    # A rerun of the same spec rewrites the same keys (deterministic names: nothing doubles).
    assert main(["run", "--spec", str(spec), "--workers", "2"]) == 0
    assert assert_clean_s3_output(s3, prefix) == names
    assert s3_rows_by_key(s3["fs"], prefix) == local_rows


def test_s3_output_failure_then_resume_and_the_lock(s3, corpus, local_rows, tmp_path, arm_fault, capsys):
    """A shard that fails leaves _FAILED.json and no manifest on S3; --resume reuses the complete shards
    and commits the same rows. A live run's _LOCK object refuses a second run (exit 2); a lock left by a
    dead run on another host is taken over with one line."""
    import json as _json
    import socket
    import time

    prefix = f"{BUCKET}/out-resume"
    fs = s3["fs"]
    spec = s3_output_spec(tmp_path, "resume", s3, {"path": str(corpus)}, prefix, shards=4)
    arm_fault(f"s3://{prefix}", 2, kind="disk_full")
    assert main(["run", "--spec", str(spec), "--workers", "2"]) == 1
    capsys.readouterr()
    names = assert_clean_s3_output(s3, prefix)
    assert "_FAILED.json" in names and "_manifest.json" not in names
    assert "parquet/part-00002-of-00004.parquet" not in names
    failed = _json.loads(fs.cat_file(f"{prefix}/_FAILED.json"))
    assert failed["kind"] == "error" and "No space left on device" in failed["error"]

    fs.pipe(f"{prefix}/_LOCK", _json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                            "heartbeat_s": time.time(), "token": "x"}).encode())
    fs.invalidate_cache()
    assert main(["run", "--spec", str(spec), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"output 's3://{prefix}' is in use by another run (pid {os.getpid()} on host" in err

    fs.pipe(f"{prefix}/_LOCK", _json.dumps({"host": "elsewhere", "pid": 1, "heartbeat_s": time.time() - 3600,
                                            "token": "y"}).encode())
    fs.invalidate_cache()
    assert main(["run", "--spec", str(spec), "--resume", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert f"taking over the lock of 's3://{prefix}' from a run that is gone" in err
    manifest = _json.loads(fs.cat_file(f"{prefix}/_manifest.json"))
    assert manifest["metrics"]["fresh_shards"] >= 1 and manifest["metrics"]["reused_shards"] >= 1
    names = assert_clean_s3_output(s3, prefix)
    assert "_FAILED.json" not in names
    assert s3_rows_by_key(fs, prefix) == local_rows
    listed = {f["path"]: f for f in manifest["files"]}
    for path, entry in listed.items():
        assert fs.size(f"{prefix}/{path}") == entry["bytes"], path


def test_s3_output_on_beam_and_spark_equals_the_local_run(s3, s3_corpus, local_rows, tmp_path, spark):
    """S3 in, S3 out, on Beam's multi-processing runner and on Spark local[2,3]: the same rows."""
    from featurelib.driver import execute
    from jobs.extract_features import SparkEngine
    from pipelines.extract_features import BeamEngine

    from featurelib.spec import RunSpec

    engines = {"beam": BeamEngine(["--direct_num_workers=2", "--direct_running_mode=multi_processing"]),
               "spark": SparkEngine(spark)}
    for name, engine in engines.items():
        prefix = f"{BUCKET}/out-{name}"
        spec = s3_output_spec(tmp_path, name, s3, {"path": s3_corpus, "storage_options": s3["options"]}, prefix)
        manifest = execute(RunSpec.from_yaml(str(spec)), engine, log=lambda m: None).manifest
        assert manifest["engine"] == name
        assert_clean_s3_output(s3, prefix)
        assert s3_rows_by_key(s3["fs"], prefix) == local_rows, name


def test_s3_output_mistakes_fail_fast_with_one_line(s3, corpus, tmp_path, capsys):
    """A bucket that does not exist, an endpoint that does not answer, --incremental with nothing
    committed there: exit 2, one line, before any image is read."""
    options = s3["options"]
    cases = [
        ({"path": "s3://no-such-bucket-here/out", "storage_options": options}, [], "output 's3://no-such-bucket-here/out'"),
        ({"path": f"s3://{BUCKET}/unreachable", "storage_options": {
            **options, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}}, [],  # nothing listens there
         f"output 's3://{BUCKET}/unreachable' cannot be read: "),
        ({"path": f"s3://{BUCKET}/flink", "storage_options": options}, ["--engine", "beam", "--runner", "FlinkRunner"],
         "the Beam runner FlinkRunner with an object-store output: pass results come back through the driver's disk"),
        ({"path": f"s3://{BUCKET}/incr", "storage_options": options}, ["--incremental"],
         f"--incremental: output 's3://{BUCKET}/incr' holds no committed run"),
    ]
    for index, (output, flags, start) in enumerate(cases):
        spec = write_spec(tmp_path / f"bad-{index}.yaml", input={"path": str(corpus)}, features=FEATURES,
                          output={"shards": 2, **output})
        code = main(["run", "--spec", str(spec), *flags])
        err = capsys.readouterr().err
        assert code == 2, (index, err)
        lines = [line for line in err.strip().splitlines() if line.startswith("featurize: error")]
        assert len(lines) == 1 and start in lines[0], (index, err)
        assert "Traceback" not in err and SECRET not in err


def test_a_listing_taken_before_workers_uploaded_never_hides_their_files(s3):
    """fsspec caches listings per file-system instance (one per process): the driver lists the shards
    before a resumed run, workers (other processes, here another instance) upload the missing ones,
    then the commit looks for them. The stale listing broke a resume in a new user's trial."""
    from featurelib.io.outfs import open_output

    out = open_output(f"s3://{BUCKET}/listing-cache", s3["options"])
    out.write_bytes("parquet/part-00000-of-00002.parquet", b"first")
    assert out.listdir("parquet") == ["part-00000-of-00002.parquet"]
    s3["fs"].pipe(f"{BUCKET}/listing-cache/parquet/part-00001-of-00002.parquet", b"second")  # another process
    assert out.exists("parquet/part-00001-of-00002.parquet")
    assert out.size("parquet/part-00001-of-00002.parquet") == 6
    assert out.read_bytes("parquet/part-00001-of-00002.parquet") == b"second"
    assert out.listdir("parquet") == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]


def test_incremental_runs_into_s3_add_new_inputs_as_a_new_generation(s3, corpus, local_rows, tmp_path, capsys):
    """The nightly job over a growing folder, its output on S3: 60 inputs, then all 90 with --incremental
    (a g0002 generation of 30 rows beside the first run's files, the manifest listing both), then nothing
    new, then 10 inputs deleted with --prune (their rows dropped)."""
    import json as _json
    import shutil

    prefix = f"{BUCKET}/out-incremental"
    fs = s3["fs"]
    growing = tmp_path / "in"
    keys = sorted(local_rows)
    keys = [k for i, k in enumerate(keys) if i % 3 != 2] + [k for i, k in enumerate(keys) if i % 3 == 2]
    for key in keys[:60]:
        (growing / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / key, growing / key)
    spec = s3_output_spec(tmp_path, "incr", s3, {"path": str(growing)}, prefix, formats=["parquet", "hdf5"])
    assert main(["run", "--spec", str(spec), "--workers", "2"]) == 0
    assert s3_rows_by_key(fs, prefix).keys() == set(keys[:60])
    for key in keys[60:]:
        (growing / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / key, growing / key)
    assert main(["run", "--spec", str(spec), "--incremental", "--workers", "2"]) == 0
    names = assert_clean_s3_output(s3, prefix)
    assert any(".g0002." in n for n in names) and "parquet/part-00000-of-00003.parquet" in names
    assert s3_rows_by_key(fs, prefix) == local_rows
    manifest = _json.loads(fs.cat_file(f"{prefix}/_manifest.json"))
    assert [g["generation"] for g in manifest["generations"]] == [1, 2]
    assert manifest["counts"]["written_sources"] == 90
    capsys.readouterr()
    assert main(["run", "--spec", str(spec), "--incremental"]) == 0
    assert "nothing new to add" in capsys.readouterr().err

    for key in keys[:10]:
        (growing / key).unlink()
    assert main(["run", "--spec", str(spec), "--incremental", "--prune", "--workers", "2"]) == 0
    assert s3_rows_by_key(fs, prefix) == {k: v for k, v in local_rows.items() if k not in keys[:10]}
    from featurelib.io import open_dataset

    remote = open_dataset(f"s3://{prefix}", storage_options=s3["options"], verify="sha256")
    assert remote.manifest["counts"]["listed"] == 80
    assert sorted(remote.read(split=None, source="hdf5").keys) == sorted(keys[10:])
    assert sorted(remote.read(split=None, source="parquet").keys) == sorted(keys[10:])
    assert_clean_s3_output(s3, prefix)


def test_staging_folders_are_private_and_a_dead_process_s_are_swept(tmp_path, monkeypatch):
    """Shards on their way to a store wait in $TMPDIR/featurelib-<uid>/stage/<pid> (mode 0700: Beam
    unpickles pass results from the same private folder); a worker killed mid-upload cannot clean up,
    so the next process to stage removes the folders of processes that are gone. A featurelib folder
    another user could write is refused."""
    import subprocess
    import sys
    import tempfile

    from featurelib.io import outfs

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(outfs, "_STAGE", {})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    leftover = tmp_path / f"featurelib-{os.getuid()}" / "stage" / dead
    leftover.mkdir(parents=True, mode=0o700)
    (leftover / ".parquet__part-00001-of-00004.parquet.tmp-x").write_bytes(b"half")
    (tmp_path / f"featurelib-{os.getuid()}").chmod(0o700)
    mine = outfs.stage_dir()
    assert mine == str(tmp_path / f"featurelib-{os.getuid()}" / "stage" / str(os.getpid()))
    assert not leftover.exists()
    assert outfs.work_dir("s3://bucket/out").startswith(str(tmp_path / f"featurelib-{os.getuid()}") + "/work-")
    (tmp_path / f"featurelib-{os.getuid()}").chmod(0o777)
    with pytest.raises(PermissionError, match="is not a private folder of this user"):
        outfs.private_tmp()
    (tmp_path / f"featurelib-{os.getuid()}").chmod(0o700)


def test_the_lock_survives_a_store_that_fails_now_and_then(tmp_path):
    """An object store's network errors are not OSError (botocore's EndpointConnectionError): a failed
    heartbeat is skipped, not fatal to the heartbeat thread, and a release that fails never fails the run."""
    import json as _json
    import time

    from featurelib.io.lock import acquire
    from featurelib.io.outfs import LocalOutput

    class Flaky(LocalOutput):
        failures = 0

        def read_bytes(self, rel):
            if self.failures:
                self.failures -= 1
                raise RuntimeError("Could not connect to the endpoint URL")  # not an OSError
            return super().read_bytes(rel)

        def remove(self, rel):
            raise RuntimeError("Could not connect to the endpoint URL")

    out = Flaky(str(tmp_path))
    lock = acquire(str(tmp_path), log=print, heartbeat_s=0.05, output=out)
    first = _json.loads((tmp_path / "_LOCK").read_text())["heartbeat_s"]
    out.failures = 3
    time.sleep(0.5)
    assert lock._thread.is_alive()
    assert _json.loads((tmp_path / "_LOCK").read_text())["heartbeat_s"] > first  # beats again after the errors
    lock.release()  # the delete fails: no exception, the next run takes the lock over as stale
    assert not lock._thread.is_alive()
