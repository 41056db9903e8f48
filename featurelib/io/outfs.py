"""The file operations an output needs, on a local folder or an fsspec object store.

The driver, the shard writers and the commit reach an output only through these objects, so
an output may be a local folder or an object store alike (docs/CONTRACT.md, "Object stores"). Paths are
relative to the output root, ``/`` separators.

* :class:`LocalOutput`: plain ``os`` calls; a file is put in place by ``os.replace`` of a
  temporary sibling (atomic on a POSIX file system), an exclusive create by ``os.link``.
* :class:`RemoteOutput`: an fsspec file system (``s3://``, ``gs://``, ``memory://``, ...). An object
  store has no rename: a file is written locally first, then uploaded to its final key (an S3 PUT,
  multipart or not, makes the object visible whole or not at all), so no temporary object ever
  exists. An exclusive create is a conditional put (``If-None-Match: *``, fsspec's
  ``pipe(..., mode="create")``), which S3 and moto honour; a file system without it gets a
  best-effort create (look, write, read back), which :attr:`RemoteOutput.exclusive` reports.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from typing import Any

from featurelib.io.files import WORK, temp_path
from featurelib.processes import process_alive


def is_remote(root: str) -> bool:
    """True for URIs other than plain paths and ``file://``."""
    return "://" in root and not root.startswith("file://")


class LocalOutput:
    """An output folder on a local or mounted file system."""

    remote = False
    exclusive = True

    def __init__(self, root: str) -> None:
        self.root = root[len("file://"):] if root.startswith("file://") else root

    def path(self, rel: str = "") -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def uri(self, rel: str = "") -> str:
        """`rel` as messages name it (its path)."""
        return self.path(rel)

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def isdir(self, rel: str = "") -> bool:
        return os.path.isdir(self.path(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under `rel` (sorted; none if it is no folder)."""
        return sorted(os.listdir(self.path(rel))) if self.isdir(rel) else []

    def read_bytes(self, rel: str) -> bytes:
        with open(self.path(rel), "rb") as handle:
            return handle.read()

    def open(self, rel: str):
        """A binary file object to read `rel` (pyarrow and h5py read it; close it)."""
        return open(self.path(rel), "rb")

    @contextlib.contextmanager
    def reading(self, rel: str):
        """What pyarrow and h5py should read `rel` from: its path (their native reads)."""
        yield self.path(rel)

    def size(self, rel: str) -> int:
        return os.path.getsize(self.path(rel))

    def makedirs(self, rel: str = "") -> None:
        os.makedirs(self.path(rel), exist_ok=True)

    def staging(self, rel: str) -> str:
        """Where to write the file that will become `rel`: a unique temporary sibling (same file system)."""
        self.makedirs(os.path.dirname(rel))
        return temp_path(self.path(rel))

    def put(self, staged: str, rel: str) -> None:
        """Move the finished file `staged` (from :meth:`staging`) to `rel`, atomically."""
        os.replace(staged, self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        staged = self.staging(rel)
        try:
            with open(staged, "wb") as handle:
                handle.write(data)
            self.put(staged, rel)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` only if nothing is there; False if something is."""
        staged = self.staging(rel)
        try:
            with open(staged, "wb") as handle:
                handle.write(data)
            os.link(staged, self.path(rel))  # never half-written, fails if it exists
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: an exclusive create
            try:
                fd = os.open(self.path(rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged)
        return True

    def remove(self, rel: str) -> None:
        """Delete the file or folder `rel`, if there is one."""
        path = self.path(rel)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


class RemoteOutput:
    """An output under an fsspec URI; files are staged in a local folder, then uploaded."""

    remote = True

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.fs, base = fsspec.core.url_to_fs(root, **dict(storage_options or {}))
        self.root = root.rstrip("/")
        self.base = base.rstrip("/")
        self.exclusive = True  # until a put with mode="create" is refused as unsupported

    def path(self, rel: str = "") -> str:
        """The file system's path (no protocol) of `rel`."""
        return f"{self.base}/{rel}" if rel else self.base

    def _fresh(self, rel: str) -> str:
        """The path of `rel`, with fsspec's cached listings of it and its parents dropped first.

        fsspec file systems cache directory listings per instance (one per process and options):
        a listing taken before the workers uploaded their shards would otherwise answer "missing"
        for files that are there now.
        """
        path = self.path(rel)
        self.fs.invalidate_cache(path)
        return path

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._fresh(rel))

    def isdir(self, rel: str = "") -> bool:
        return self.fs.isdir(self._fresh(rel))

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under `rel` (files and prefixes, sorted; none if there are none)."""
        try:
            entries = self.fs.ls(self._fresh(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        finally:  # leave no listing in the process's shared instance: readers there would trust it
            self.fs.invalidate_cache(self.path(rel))
        prefix = self.path(rel).rstrip("/") + "/"
        return sorted({e[len(prefix):].split("/")[0] for e in entries if e.startswith(prefix)} - {""})

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._fresh(rel))

    def open(self, rel: str):
        """A binary, seekable file object reading `rel` from the store (ranged reads; close it)."""
        return self.fs.open(self._fresh(rel), "rb")

    @contextlib.contextmanager
    def reading(self, rel: str):
        """What pyarrow and h5py should read `rel` from: a seekable file object on the store."""
        with self.open(rel) as handle:
            yield handle

    def size(self, rel: str) -> int:
        return int(self.fs.size(self._fresh(rel)))

    def makedirs(self, rel: str = "") -> None:
        """Nothing to do on an object store (prefixes exist through their objects)."""

    def uri(self, rel: str = "") -> str:
        """`rel` as a URI with its protocol, for messages."""
        return f"{self.root}/{rel}" if rel else self.root

    def staging(self, rel: str) -> str:
        """A local file to write `rel` into before :meth:`put` uploads it: a unique name in this
        process's staging folder (:func:`stage_dir`); :meth:`put` or the writer's abort deletes it."""
        return temp_path(os.path.join(stage_dir(), rel.replace("/", "__")))

    def put(self, staged: str, rel: str) -> None:
        """Upload the finished local file `staged` to `rel` (visible whole or not at all), then delete it."""
        try:
            self.fs.put_file(staged, self.path(rel))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(staged)
        self.fs.invalidate_cache(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(rel), data)
        self.fs.invalidate_cache(self.path(rel))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create `rel` holding `data` only if nothing is there: a conditional put where the store has
        one; otherwise best effort (:attr:`exclusive` becomes False): look, write, read back."""
        path = self.path(rel)
        if self.exclusive:
            try:
                self.fs.pipe_file(path, data, mode="create")
                return True
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError, ValueError):
                self.exclusive = False
            except OSError:
                # A conflict the client does not map to FileExistsError (S3's 409 for concurrent
                # conditional writes, a 412 without its condition named): someone else's create won,
                # unless nothing is there (then it was another failure: raise it).
                self.fs.invalidate_cache(path)
                if self.fs.exists(path):
                    return False
                raise
        self.fs.invalidate_cache(path)
        if self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        self.fs.invalidate_cache(path)
        return self.fs.cat_file(path) == data

    def remove(self, rel: str) -> None:
        """Delete the object `rel`, or every object under the prefix `rel`, if any."""
        path = self.path(rel)
        with contextlib.suppress(FileNotFoundError):
            if self.fs.isdir(path):
                self.fs.rm(path, recursive=True)
            else:
                self.fs.rm_file(path)
        self.fs.invalidate_cache(path)


#: Either kind of output.
Output = LocalOutput | RemoteOutput


def open_output(root: str, storage_options: Mapping[str, Any] | None = None) -> LocalOutput | RemoteOutput:
    """The output at `root`: :class:`LocalOutput` for paths and ``file://``, else :class:`RemoteOutput`."""
    return RemoteOutput(root, storage_options) if is_remote(root) else LocalOutput(root)


def output_of(spec) -> LocalOutput | RemoteOutput:
    """The output of a :class:`featurelib.spec.RunSpec` (its ``output.path`` and ``output.storage_options``)."""
    return open_output(spec.output.path, spec.output.storage_options)


def file_sha256_of(output: LocalOutput | RemoteOutput, rel: str, *, chunk: int = 1 << 20) -> str:
    """sha256 of the file `rel` of `output`, streamed."""
    digest = hashlib.sha256()
    with output.open(rel) as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def work_dir(root: str) -> str:
    """The engines' scratch folder of the output at `root` (pass results, progress files).

    ``OUT/_work`` for a local output. For an object store, a local folder named after the output:
    an object store is no place for small files rewritten every few seconds, and every engine this
    works with reaches the driver's disk (the local pool, Beam's direct runner, Spark's executors
    report results through the driver; progress files of executors on other machines stay there).
    """
    if not is_remote(root):
        return os.path.join(root[len("file://"):] if root.startswith("file://") else root, WORK)
    name = hashlib.sha256(root.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(private_tmp(), f"work-{name}")


def private_tmp() -> str:
    """``$TMPDIR/featurelib-<uid>``: this user's folder for featurelib's local scratch, mode 0700.

    Beam's pass results are unpickled from the work folder, and staged shards are uploaded as
    they are: a folder another user could create or write first would let them plant either.

    Raises
    ------
    PermissionError
        The folder exists but belongs to another user or is open to others.
    """
    folder = os.path.join(tempfile.gettempdir(), f"featurelib-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder} is not a private folder of this user (owner uid {info.st_uid}, "
                              f"mode {stat.filemode(info.st_mode)}): remove it, or set TMPDIR elsewhere")
    return folder


_STAGE: dict[int, str] = {}


def stage_dir() -> str:
    """This process's folder for shard files on their way to an object store:
    ``$TMPDIR/featurelib-<uid>/stage/<pid>``, removed when the process exits.

    A worker killed mid-upload (SIGKILL, a lost executor) cannot clean up: the first call of each
    process removes the folders of processes that no longer run on this machine.
    """
    pid = os.getpid()
    if pid not in _STAGE:  # per pid: a forked worker gets its own
        parent = os.path.join(private_tmp(), "stage")
        os.makedirs(parent, exist_ok=True)
        for name in os.listdir(parent):
            if name.isdigit() and int(name) != pid and not process_alive(int(name)):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        folder = os.path.join(parent, str(pid))
        os.makedirs(folder, exist_ok=True)
        atexit.register(_remove_stage, pid, folder)
        _STAGE[pid] = folder
    return _STAGE[pid]


def _remove_stage(pid: int, folder: str) -> None:
    if os.getpid() == pid:  # a forked child exiting through atexit leaves its parent's folder alone
        shutil.rmtree(folder, ignore_errors=True)
