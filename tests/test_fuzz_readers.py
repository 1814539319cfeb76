"""Fuzz: random malformed lines in otherwise valid files of every text format, damaged shards.

Each read either succeeds with every line accounted for (rows read + lines
skipped = non-empty lines written, `on_error="skip"`), or stops with an error whose
readable line names the file and the line (`on_error="raise"`): never
another kind of exception, never a NaN feature value from a malformed line.
"""

import math
import re

import numpy as np
import pytest
import tensorflow as tf

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tf_fm  # noqa: E402
from tf_fm.errors import readable_message  # noqa: E402

# Fragments a broken line is made of: separators, numbers, junk, odd bytes.
JUNK = st.lists(
    st.sampled_from(
        [":", "::", "\t", " ", ",", "-1", "3", "1e999", "nan", "inf", "abc", "7:", ":5", "'", '"']
        + ["\u00e9", "9" * 20, "0x1f", "1:2:3:4", "", "2:-0.5"]
    ),
    min_size=1,
    max_size=8,
).map("".join)


from tf_fm.data.delimited import AVAZU_COLUMNS  # noqa: E402


def _good_line(fmt, i):
    if fmt == "criteo":  # label, I1..I13 (may be empty), C1..C26 (hashed hex, may be empty)
        ints = [str(i % 9) if (i + j) % 4 else "" for j in range(13)]
        cats = [f"{(i * 31 + j) % 4096:08x}" if (i + j) % 5 else "" for j in range(26)]
        return "\t".join([str(i % 2), *ints, *cats])
    if fmt == "avazu":  # id, click, hour, then 21 categorical columns
        cats = [f"c{(i + j) % 6}" for j in range(len(AVAZU_COLUMNS) - 3)]
        return ",".join([str(10_000 + i), str(i % 2), f"141021{i % 24:02d}", *cats])
    if fmt == "libsvm":
        return f"{i % 2} {i % 7}:1 {7 + i % 5}:0.5"
    if fmt == "libffm":
        return f"{i % 2} 0:{i % 7}:1 1:{7 + i % 5}:0.5"
    return f"{i % 2},{i % 5},{['a', 'b', 'c'][i % 3]}"


def _reader(fmt, path, **kwargs):
    if fmt == "libsvm":
        return tf_fm.data.read_libsvm(path, **kwargs)
    if fmt == "libffm":
        return tf_fm.data.read_libffm(path, **kwargs)
    if fmt == "criteo":
        return tf_fm.data.read_criteo(path, **kwargs)
    if fmt == "avazu":
        return tf_fm.data.read_avazu(path, **kwargs)
    return tf_fm.data.read_csv(
        path, label="label", column_types={"x": "float", "c": "string"}, **kwargs
    )


def _write(tmp_path, fmt, bad):
    lines = [_good_line(fmt, i) for i in range(40)]
    for position, text in bad:
        lines[position % len(lines)] = text
    header = {"csv": ["label,x,c"], "avazu": [",".join(AVAZU_COLUMNS)]}.get(fmt, [])
    path = tmp_path / f"data.{fmt}"
    path.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    # An empty line is no row (the readers pass over it, as libSVM tools do).
    return str(path), sum(1 for line in lines if line)


def _values(features):
    return [v.numpy() for k, v in features.items() if v.dtype.is_floating]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["libsvm", "libffm", "csv", "criteo", "avazu"])
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bad=st.lists(st.tuples(st.integers(0, 39), JUNK), min_size=1, max_size=3))
def test_every_line_is_read_skipped_or_named(tmp_path, fmt, bad):
    path, n_lines = _write(tmp_path, fmt, bad)
    report = tf_fm.data.ReadReport()
    rows = 0
    try:
        for features, labels in _reader(fmt, path, batch_size=16, on_error="skip", report=report):
            rows += int(labels.shape[0])
            if fmt in ("libsvm", "libffm"):  # never NaN (a CSV / Criteo number may be missing)
                assert all(np.isfinite(v).all() for v in _values(features))
    except Exception as error:  # a skip-mode read must not fail on a bad line
        pytest.fail(f"skip mode raised {type(error).__name__}: {readable_message(error)}")
    assert rows + report.skipped == n_lines
    assert rows >= n_lines - len(bad)  # the good lines are read, not skipped
    try:
        for _ in _reader(fmt, path, batch_size=16, on_error="raise"):
            pass
    except Exception as error:
        message = readable_message(error)
        assert re.search(r"data\.\w+:\d+: ", message), message
        assert report.skipped > 0, f"raise mode failed on a file skip mode read whole: {message}"
    else:
        assert report.skipped == 0
    assert math.isfinite(rows)


def _shard(tmp_path, n=120):
    rows = {"a": np.arange(n, dtype=np.int64), "x": np.linspace(0, 1, n).astype("float32")}
    dataset = tf.data.Dataset.from_tensor_slices((rows, np.zeros(n, np.float32))).batch(32)
    (path,) = tf_fm.data.write_tfrecords(dataset, str(tmp_path / "shard"))
    return path, open(path, "rb").read()


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=3),
    cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)),
)
def test_a_damaged_tfrecord_shard_reads_whole_or_is_named(tmp_path, flips, cut):
    """Flipped bytes or a cut anywhere in a shard: every row back, or the shard's name."""
    path, data = _shard(tmp_path)
    damaged = bytearray(data)
    for where, mask in flips:
        damaged[int(where * len(damaged))] ^= mask
    if cut is not None:
        damaged = damaged[: int(cut * len(damaged))]
    open(path, "wb").write(bytes(damaged))
    spec = tf_fm.data.DataSpec("tfrecord")
    try:
        with tf_fm.data.formats.naming_files(spec, [path]):
            rows = sum(int(y.shape[0]) for _, y in tf_fm.data.read_files(spec, [path]))
    except ValueError as error:
        message = readable_message(error)
        assert re.match(rf"{re.escape(path)}: (truncated|corrupted) record at byte \d+", message)
    else:
        assert bytes(damaged) == data and rows == 120, "a damaged shard read without an error"
