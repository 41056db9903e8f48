"""``featurize compare``: one real small output, copies of it tampered with, the exact lines printed."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import copy_digits, write_spec
from featurelib import cli
from featurelib.driver import execute
from featurelib.engines.local import LocalEngine
from featurelib.spec import RunSpec

PART0 = "parquet/part-00000-of-00004.parquet"


def _run(digits, tmp, name, **sections):
    spec = RunSpec.from_yaml(str(write_spec(tmp / f"{name}.yaml", **sections))).with_overrides(
        input=str(digits), output=str(tmp / name))
    execute(spec, LocalEngine(1), log=lambda m: None)
    return tmp / name


@pytest.fixture(scope="module")
def outputs(digits_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    digits = copy_digits(digits_dir, tmp / "digits", step=50, limit=36)
    base = _run(digits, tmp, "base")
    isolated = _run(digits, tmp, "isolated", decode={"isolation": "subprocess"})
    return tmp, base, isolated


def _copy(tmp, base, name, tamper=None):
    out = tmp / name
    if not out.exists():
        shutil.copytree(base, out)
        if tamper:
            tamper(out)
    return out


def _rewrite(path, change):
    table = pq.read_table(path)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), path)


def _assert_differs(capsys, base, out, kinds, *details):
    """compare exits 1 with exactly the summary line, these detail lines and the verdict."""
    assert _compare(capsys, base, out) == (1, [f"DIFFERENT local {out} vs {base}: {kinds}",
                                               *(f"  {line}" for line in details), "outputs differ"])


def _compare(capsys, *paths, json_out=False):
    code = cli.main(["compare", *map(str, paths)] + (["--json"] if json_out else []))
    return code, capsys.readouterr().out.splitlines()


def test_identical_copy_is_same(outputs, capsys):
    tmp, base, _ = outputs
    copy = _copy(tmp, base, "copy")
    code, lines = _compare(capsys, base, copy)
    assert (code, lines) == (0, [f"same      local {copy} vs {base}: identical Parquet and reject files",
                                 "outputs hold the same data"])


def _change_one_value(out):
    def change(table):
        values = table.column("color_stats").to_pylist()
        values[0][2] += 0.25
        i = table.column_names.index("color_stats")
        return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    _rewrite(out / PART0, change)


def test_one_changed_value(outputs, capsys):
    tmp, base, _ = outputs
    _assert_differs(capsys, base, _copy(tmp, base, "value", _change_one_value), "values",
                    "values: color_stats differs in 1 of 36 rows, max abs diff 0.25")


def test_dropped_row(outputs, capsys):
    tmp, base, _ = outputs
    dropped = pq.read_table(base / PART0).column("key")[0].as_py()
    out = _copy(tmp, base, "dropped", lambda o: _rewrite(o / PART0, lambda t: t.slice(1)))
    _assert_differs(capsys, base, out, "rows", "rows: 36 vs 35", f"rows: 1 key only in the first: {dropped}")


def test_renamed_column(outputs, capsys):
    tmp, base, _ = outputs

    def tamper(out):
        for path in (out / "parquet").glob("*.parquet"):
            _rewrite(path, lambda t: t.rename_columns(
                ["intensity" if n == "intensity_hist" else n for n in t.column_names]))

    out = _copy(tmp, base, "renamed", tamper)
    _assert_differs(capsys, base, out, "columns",
                    "columns: only in the first: intensity_hist; only in the second: intensity")


def test_settings_only_difference_is_same_data(outputs, capsys):
    tmp, base, isolated = outputs
    code, lines = _compare(capsys, base, isolated)
    assert (code, lines) == (0, [f"same      local {isolated} vs {base}: same data, different settings: "
                                 "decode.isolation",
                                 "outputs hold the same data"])


def test_json_and_several_outputs_and_user_mistake(outputs, capsys):
    tmp, base, isolated = outputs
    copy = _copy(tmp, base, "copy")
    value = _copy(tmp, base, "value", _change_one_value)  # the same copy test_one_changed_value makes
    code, lines = _compare(capsys, base, copy, value, json_out=True)
    report = json.loads("\n".join(lines))
    assert code == 1 and report["same_data"] is False
    assert [p["same_data"] for p in report["pairs"]] == [True, False]
    assert report["pairs"][1]["rows"]["columns"] == {"color_stats": {"rows": 1, "max_abs_diff": 0.25}}
    assert cli.main(["compare", str(base), str(tmp)]) == 2
