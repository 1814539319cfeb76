"""tf_fm/export/verify_child.py: the TensorFlow-only verification process, as a module.

Its helpers are tested here in process; the whole child runs in the export
tests (`test_export.py`), on real SavedModels.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_fm import export as export_lib
from tf_fm.export import verification, verify_child
from tf_fm.export.rows import json_columns, typed_columns


def test_child_names_agree_with_the_package():
    # The child cannot import tf_fm: it repeats these names.
    assert verify_child.DEFAULT_SIGNATURE == export_lib.DEFAULT_SIGNATURE
    assert verify_child.EXAMPLE_SIGNATURES == (
        export_lib.CLASSIFY_SIGNATURE,
        export_lib.REGRESS_SIGNATURE,
    )
    assert verify_child.WARMUP_FILE == (export_lib.ASSETS_EXTRA, export_lib.WARMUP_FILENAME)
    assert verification.CHILD.name == "verify_child.py" and verification.CHILD.is_file()


def test_guard_refuses_tf_fm_and_nothing_else(monkeypatch):
    monkeypatch.setattr(verify_child.BlockTfFm, "attempts", [])
    guard = verify_child.BlockTfFm()
    for name in ("tf_fm", "tf_fm.export"):
        with pytest.raises(ImportError, match="tf_fm is blocked"):
            guard.find_spec(name)
    assert guard.find_spec("numpy") is None and guard.find_spec("tf_fmx") is None
    assert verify_child.BlockTfFm.attempts == ["tf_fm", "tf_fm.export"]


def test_guard_blocks_tf_fm_in_the_isolated_child():
    # The child's own guard, in the process `verify` starts (python -I, clean cwd), where
    # the editable-install finder (or site-packages) would find tf_fm without it. numpy
    # and TensorFlow are stubbed: only the guard is under test (the export tests run the
    # whole child).
    code = (
        "import runpy, sys, types; "
        "sys.modules.update(numpy=types.ModuleType('numpy'), "
        "tensorflow=types.ModuleType('tensorflow')); "
        f"runpy.run_path({str(verification.CHILD)!r}, run_name='guard_check')['install_guard'](); "
        "print('tf_fm' in sys.modules); import tf_fm"
    )
    done = verification.run_without_tf_fm(["-c", code], timeout=300)
    assert done.stdout.split() == ["False"], done.stderr
    assert done.returncode != 0 and "tf_fm is blocked" in done.stderr


def test_payload_values_come_back_as_the_typed_columns():
    # rows.json_columns (the parent) -> verify_child.column (the child): the same batch.
    specs = {"s": ("string", ()), "f": ("float32", ()), "i": ("int64", (2,))}
    rows = {
        "s": ["a", b"\xff\xfe", None],
        "f": [1.5, None, float("nan")],
        "i": [[1, 2], [3, 4], [5, 6]],
    }
    columns = typed_columns(rows, specs)
    payload = json_columns(columns, specs)
    for name, (dtype, shape) in specs.items():
        got = verify_child.column(payload[name], dtype, shape)
        if dtype == "string":
            assert got.tolist() == [b"a", b"\xff\xfe", b""]
        else:
            np.testing.assert_array_equal(got, columns[name])
            assert got.dtype == columns[name].dtype


def test_examples_leave_missing_numerics_out():
    dtypes = {"s": "string", "f": "float32", "i": "int64"}
    spec = {
        "s": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "f": tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
        "i": tf.io.FixedLenFeature([], tf.int64),
    }
    rows = [{"s": "x", "f": 2.0, "i": 7}, {"s": "\udcff", "f": None, "i": 8}]
    parsed = tf.io.parse_example([verify_child.example(r, dtypes) for r in rows], spec)
    assert parsed["s"].numpy().tolist() == [b"x", b"\xff"]
    assert parsed["f"].numpy().tolist() == [2.0, -1.0]  # absent: the parser's default
    assert parsed["i"].numpy().tolist() == [7, 8]


def test_sample_batches_and_output_helpers():
    payload = {"rows": {"a": [1.0, 2.0, 3.0]}, "batch_size": 5, "single_rows": 16}
    sample = verify_child.Sample(payload, {"a": ("float32", [])})
    assert sample.num_rows == 3 and sample.single == [0, 1, 2]
    assert sample.batch == [0, 1, 2, 0, 1]
    assert sample.feed([2, 0])["a"].tolist() == [3.0, 1.0]
    assert len(sample.examples) == 5
    parts = [{"p": np.array([0.5]), "c": np.array([[b"0", b"1"]], dtype=object)}] * 2
    merged = verify_child.concat([verify_child.tolist(p) for p in parts])
    assert merged == {"p": [0.5, 0.5], "c": [["0", "1"], ["0", "1"]]}
    assert verify_child.shapes(parts[0]) == {"p": [1], "c": [1, 2]}
