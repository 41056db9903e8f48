"""Arrays built from buffers (featurelib.io.arrow_columns) equal pa.array's, and a worker writes without pandas."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurelib.io import arrow_columns as ac

TEXT = st.one_of(st.none(), st.text(max_size=12))  # any unicode, empty strings, nulls


@settings(max_examples=200, deadline=None)
@given(st.lists(TEXT, max_size=40))
def test_string_array_equals_pa_array(values):
    built = ac.string_array(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, type=pa.string()))
    assert built.null_count == sum(v is None for v in values)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([pa.int16(), pa.int32(), pa.int64()]), st.data())
def test_numeric_array_equals_pa_array(arrow_type, data):
    info = np.iinfo(arrow_type.to_pandas_dtype())
    values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), max_size=40))
    built = ac.numeric_array(values, arrow_type)
    built.validate(full=True)
    assert built.equals(pa.array(values, type=arrow_type))


def test_numeric_array_refuses_values_out_of_range_and_2d_input():
    with pytest.raises(OverflowError):
        ac.numeric_array([40000], pa.int16())
    with pytest.raises(ValueError, match="flat"):
        ac.numeric_array(np.zeros((2, 2)), pa.float32())


def test_fixed_size_lists_and_a_reject_batch():
    flat = np.arange(12, dtype=np.float32)
    rows = ac.fixed_size_list_array(flat, pa.float32(), 4)
    assert rows.equals(pa.FixedSizeListArray.from_arrays(pa.array(flat), 4)) and len(rows) == 3
    from featurelib import contract as c

    columns = {f.name: [f"{f.name}-{i}" for i in range(3)] for f in c.REJECT_SCHEMA}
    batch = ac.record_batch(columns, c.REJECT_SCHEMA)
    assert batch.to_pylist() == pa.Table.from_pydict(columns, schema=c.REJECT_SCHEMA).to_pylist()
    assert ac.record_batch({f.name: [] for f in c.REJECT_SCHEMA}, c.REJECT_SCHEMA).num_rows == 0


def test_a_shard_task_imports_no_pandas(digits_dir, spec_file, tmp_path):
    """A worker's first shard used to import pandas through pa.array (0.3 s of CPU, 40 MB per worker)."""
    spec = spec_file(output={"shards": 1, "pixels": True, "formats": ["parquet", "hdf5"]})
    code = (
        "import sys\n"
        "from featurelib.driver import execute\n"
        "from featurelib.engines.base import Engine\n"
        "from featurelib.spec import RunSpec\n"
        "class InProcess(Engine):\n"
        "    def map(self, function, items, *, work_dir=None):\n"
        "        return [function(item) for item in items]\n"
        f"spec = RunSpec.from_yaml({str(spec)!r}).with_overrides(input={str(digits_dir)!r}, "
        f"output={str(tmp_path / 'out')!r})\n"
        "report = execute(spec, InProcess(), log=lambda m: None)\n"
        "print(report.manifest['counts']['written_sources'], 'pandas' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    written, pandas = done.stdout.split()
    assert int(written) > 1000 and pandas == "False"
