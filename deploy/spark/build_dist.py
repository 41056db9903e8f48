"""Build the project's code as one zip for ``spark-submit --py-files`` (``make dist``).

    python deploy/spark/build_dist.py [--output dist/featurelib-code.zip]

The zip holds the ``featurelib``, ``jobs`` and ``pipelines`` packages (their
``.py`` files; no tests, no ``__pycache__``) at its root, so a Python worker that
has the zip on ``sys.path`` imports them from it. It is deterministic: entries
sorted by name, every timestamp 1980-01-01 00:00:00, every mode 0644, one
compression level; the same checkout gives the same bytes (and the same
sha256, printed with the path), whoever builds it and whenever. Only the
standard library is needed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys
import zipfile
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("featurelib", "jobs", "pipelines")
DEFAULT_OUTPUT = ROOT / "dist" / "featurelib-code.zip"
#: The earliest time a zip entry can carry: nothing about the build leaks into the bytes.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def code_files(root: pathlib.Path = ROOT, packages: Sequence[str] = PACKAGES) -> list[str]:
    """The archive names (``featurelib/cli.py``, ...) of every package's ``.py`` files, sorted."""
    names = []
    for package in packages:
        base = root / package
        if not (base / "__init__.py").is_file():
            raise SystemExit(f"build_dist: {base} is not a package (no __init__.py)")
        for directory, subdirs, files in os.walk(base):
            subdirs[:] = [d for d in subdirs if d != "__pycache__" and not d.startswith(".")]
            for name in files:
                if name.endswith(".py"):
                    names.append((pathlib.Path(directory) / name).relative_to(root).as_posix())
    return sorted(names)


def build(output: pathlib.Path = DEFAULT_OUTPUT, root: pathlib.Path = ROOT,
          packages: Sequence[str] = PACKAGES) -> str:
    """Write the zip (via a temporary name, then rename); return its sha256."""
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name in code_files(root, packages):
            entry = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            entry.create_system = 3  # Unix, whatever builds it
            archive.writestr(entry, (root / name).read_bytes(), compresslevel=9)
    os.replace(partial, output)
    return hashlib.sha256(output.read_bytes()).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_dist.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="default: %(default)s")
    args = parser.parse_args(argv)
    output = pathlib.Path(args.output)
    digest = build(output)
    print(f"{digest}  {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
