"""TFRecord shards of `tf.train.Example`: write any reader's dataset, read it back."""

import contextlib
import json
import os
import re
import uuid

import numpy as np
import tensorflow as tf

from tf_fm.data import text
from tf_fm.errors import readable_message

SPEC_FORMAT = "tf_fm.tfrecord/1"
_SHARD = re.compile(r"^(.*)-\d{5}-of-\d{5}\.tfrecord(\.gz|\.zz)?$")
_DTYPES = {"string": tf.string, "float32": tf.float32, "int64": tf.int64}


def spec_path(path_prefix):
    """Path of the spec file `write_tfrecords` writes beside its shards."""
    return f"{os.fspath(path_prefix)}.spec.json"


_LISTS = {
    "string": ("tensorflow.BytesList", "bytes_list"),
    "float32": ("tensorflow.FloatList", "float_list"),
    "int64": ("tensorflow.Int64List", "int64_list"),
}


def _kind(dtype):
    if dtype == tf.string:
        return "string"
    if dtype.is_floating:
        return "float32"
    if dtype.is_integer or dtype == tf.bool:
        return "int64"
    raise TypeError(f"Cannot write values of dtype {dtype.name} to tf.train.Example.")


def _encode(message, fields, values, counts):
    """`tf.io.encode_proto` of one message per row; `counts` values per field."""
    rows = tf.shape(values[0])[0]
    sizes = tf.tile(tf.constant([counts], tf.int32), [rows, 1])
    return tf.io.encode_proto(sizes, values, fields, message)


def _serializer(columns):
    """Function from a batch dict to its serialized `tf.train.Example`s, vectorized."""

    def serialize(batch):
        entries = []
        for name, (kind, shape) in columns.items():
            length = int(np.prod(shape, dtype=np.int64))
            value = batch[name]
            value = tf.reshape(value, [-1, length])
            value = value if kind == "string" else tf.cast(value, _DTYPES[kind])
            message, field = _LISTS[kind]
            values = _encode(message, ["value"], [value], [length])
            feature = _encode("tensorflow.Feature", [field], [values[:, None]], [1])
            key = tf.fill(tf.shape(feature)[:1], name)[:, None]
            entry = _encode(
                "tensorflow.Features.FeatureEntry",
                ["key", "value"],
                [key, feature[:, None]],
                [1, 1],
            )
            entries.append(entry)
        features = _encode(
            "tensorflow.Features", ["feature"], [tf.stack(entries, axis=1)], [len(entries)]
        )
        return _encode("tensorflow.Example", ["features"], [features[:, None]], [1])

    return serialize


def write_tfrecords(
    dataset, path_prefix, *, num_shards=1, compression_type=None, label_key="label"
):
    """Writes a dataset of `(features, label)` batches to TFRecord shards.

    Row `r` goes to shard `r % num_shards`; each row is one
    `tf.train.Example` with one feature per input (the label under
    `label_key`), so `read_tfrecords` gives back the same tensors, NaN
    included. The Examples are serialized in tf.data, a batch at a time
    (`tf.io.encode_proto`). Every shard is written under a temporary name and
    renamed when all are complete (as is the spec file
    `<path_prefix>.spec.json`, which records names, dtypes and shapes), so a
    reader never sees a half-written shard; on an error the temporary files
    are removed.

    Args:
        dataset: `tf.data.Dataset` of `(features, label)` batches (any
            reader of `tf_fm.data`) or of `features` dicts; values string,
            float (written as float32) or integer (int64), shape `(batch,)`
            or `(batch, ...)` with known inner dimensions.
        path_prefix: str. Shards are `<path_prefix>-00000-of-0000N.tfrecord`
            (`.tfrecord.gz` with GZIP).
        num_shards: int. Number of shards. Defaults to 1.
        compression_type: None/`""` or `"GZIP"`. Defaults to None.
        label_key: str. Feature name of the label. Defaults to `"label"`.

    Returns:
        list of str, the shard paths.
    """
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards <= 0:
        raise ValueError(f"`num_shards` must be a positive integer. Received: {num_shards!r}")
    compression = compression_type or ""
    if compression not in ("", "GZIP"):
        raise ValueError(f"`compression_type` must be None or 'GZIP'. Received: {compression!r}")
    labeled = isinstance(dataset.element_spec, tuple)
    columns = _columns(dataset.element_spec, label_key)
    records = _serialized(dataset, columns, label_key if labeled else None)

    prefix = os.fspath(path_prefix)
    parent = os.path.dirname(prefix)
    if parent:
        tf.io.gfile.makedirs(parent)
    suffix = ".tfrecord.gz" if compression else ".tfrecord"
    shards = [f"{prefix}-{i:05d}-of-{num_shards:05d}{suffix}" for i in range(num_shards)]
    token = uuid.uuid4().hex[:12]
    temporary = [f"{s}.tmp-{token}" for s in shards]
    spec_file = spec_path(prefix)
    spec_temporary = f"{spec_file}.tmp-{token}"
    try:
        rows = _write_rows(records, temporary, compression)
        spec = {
            "format": SPEC_FORMAT,
            "label": label_key if labeled else None,
            "features": {n: {"dtype": k, "shape": shape} for n, (k, shape) in columns.items()},
            "compression_type": compression,
            "rows": rows,
            "shards": [os.path.basename(s) for s in shards],
        }
        with tf.io.gfile.GFile(spec_temporary, "w") as f:
            json.dump(spec, f, indent=1)
        tf.io.gfile.rename(spec_temporary, spec_file, overwrite=True)
        for source, target in zip(temporary, shards, strict=True):
            tf.io.gfile.rename(source, target, overwrite=True)
    except BaseException:
        for path in [*temporary, spec_temporary]:
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        raise
    return shards


def _columns(element, label_key):
    """`{name: (kind, inner shape)}` of every input of a dataset element, the label last."""
    labeled = isinstance(element, tuple)
    feature_specs = dict(element[0] if labeled else element)
    if labeled:
        if label_key in feature_specs:
            raise ValueError(f"A feature is named {label_key!r}; pass another `label_key`.")
        feature_specs[label_key] = element[1]
    columns = {}
    for name, spec in feature_specs.items():
        inner = spec.shape[1:]
        if spec.shape.rank is None or not inner.is_fully_defined():
            raise ValueError(f"Feature {name!r} has shape {spec.shape}: inner sizes must be known.")
        columns[str(name)] = (_kind(spec.dtype), inner.as_list())
    return columns


def _serialized(dataset, columns, label_key):
    """Dataset of batches of serialized Examples; `label_key` None: no label in the elements."""
    serialize = _serializer(columns)

    def to_batch(*element):
        batch = dict(element[0])
        if label_key is not None:
            batch[label_key] = element[1]
        return serialize(batch)

    return dataset.map(text.graph_function(to_batch), num_parallel_calls=text.AUTOTUNE).prefetch(
        text.AUTOTUNE
    )


def _write_rows(records, paths, compression):
    """Writes row `r` of `records` to `paths[r % len(paths)]`; returns the number of rows."""
    options = tf.io.TFRecordOptions(compression_type=compression)
    writers = [tf.io.TFRecordWriter(path, options) for path in paths]
    num_shards = len(writers)
    rows = 0
    try:
        for serialized in records.as_numpy_iterator():
            for record in serialized:
                writers[rows % num_shards].write(record)
                rows += 1
    finally:
        for writer in writers:
            writer.close()
    return rows


def load_spec(spec, files=()):
    """The spec dict from a dict, a JSON path, or (None) the file beside the shards."""
    if isinstance(spec, dict):
        return spec
    if spec is None:
        match = _SHARD.match(files[0]) if files else None
        if match is None or not tf.io.gfile.exists(spec_path(match.group(1))):
            raise ValueError(
                "No spec file found beside the shards; pass `spec` (the dict or the "
                "path of the .spec.json written by write_tfrecords)."
            )
        spec = spec_path(match.group(1))
    with tf.io.gfile.GFile(os.fspath(spec)) as f:
        return json.load(f)


def read_tfrecords(
    paths,
    *,
    spec=None,
    batch_size=1024,
    shuffle_buffer=None,
    seed=None,
    drop_remainder=False,
    deterministic=None,
    cycle_length=None,
    compression_type=None,
    prefetch=True,
):
    """Reads shards written by `write_tfrecords` into `(features, label)` batches.

    Without shuffling, and with all shards read at once (`cycle_length` at
    least the number of shards, the default up to 16), rows come back in
    the order they were written.

    Args:
        paths: shard files, a glob pattern, or a list of them.
        spec: dict, or path of the `.spec.json`. Defaults to the spec file
            beside the shards.
        batch_size: int. Rows per batch. Defaults to 1024.
        shuffle_buffer: int or None. `Dataset.shuffle` buffer of records (and
            the shard order is shuffled). Defaults to None.
        seed: int or None. Seed of the shuffling. Defaults to None.
        drop_remainder: bool. Drop the last, smaller batch. Defaults to False.
        deterministic: bool or None. Passed to tf.data. Defaults to None.
        cycle_length: int. Shards read at the same time. Defaults to
            `min(16, number of shards)`.
        compression_type: `""` or `"GZIP"`. Defaults to the spec's.
        prefetch: bool. Prefetch batches. Defaults to True.

    Returns:
        `tf.data.Dataset` of `(features, label)` batches (`features` only
        when the shards have no label).
    """
    text.check_options(batch_size=batch_size, on_error="raise")
    files = text.resolve_paths(paths)
    spec = load_spec(spec, files)
    if compression_type is None:
        compression_type = spec.get("compression_type", "")
    label_key = spec.get("label")
    parse_spec = {
        name: tf.io.FixedLenFeature(f["shape"], _DTYPES[f["dtype"]])
        for name, f in spec["features"].items()
    }
    source = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_buffer and len(files) > 1:
        source = source.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle = max(1, min(len(files), cycle_length or 16))
    records = source.interleave(
        text.graph_function(
            lambda path: tf.data.TFRecordDataset(path, compression_type=compression_type)
        ),
        cycle_length=cycle,
        block_length=1,
        num_parallel_calls=text.AUTOTUNE if cycle > 1 else None,
        deterministic=deterministic,
    )
    if shuffle_buffer:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    @text.graph_function
    def parse(serialized):
        parsed = tf.io.parse_example(serialized, parse_spec)
        features = {name: parsed[name] for name in parse_spec if name != label_key}
        if label_key is None:
            return features
        return features, parsed[label_key]

    dataset = records.batch(batch_size, drop_remainder=drop_remainder).map(
        parse, num_parallel_calls=text.AUTOTUNE, deterministic=deterministic
    )
    if prefetch:
        dataset = dataset.prefetch(text.AUTOTUNE)
    return dataset


def _expected_records(path):
    """Records the spec beside a shard says it holds (row r went to shard r % N), or None."""
    try:
        spec = load_spec(None, [path])
        shards = spec["shards"]
        return len(range(shards.index(os.path.basename(path)), spec["rows"], len(shards)))
    except (ValueError, KeyError, TypeError):  # no spec, or an older or foreign one: no count
        return None


def _walk(path):
    """Number of records of an uncompressed shard; ValueError naming it where it is cut short."""
    size, offset, records = os.path.getsize(path), 0, 0
    with open(path, "rb") as handle:
        while offset < size:
            header = handle.read(12)
            length = int.from_bytes(header[:8], "little") if len(header) == 12 else 0
            end = offset + 12 + length
            if len(header) < 12 or end + 4 > size:
                raise ValueError(
                    f"{path}: truncated record at byte {offset} (the shard is cut short)"
                )
            handle.seek(end + 4)
            offset, records = end + 4, records + 1
    return records


def check_shards(files) -> None:
    """Walks the record framing of uncompressed TFRecord shards: a cut-short shard is named.

    A TFRecord is `length (8 bytes), crc (4), data (length), crc (4)`. The
    walk reads the 12 header bytes of each record and seeks past the rest,
    so it costs a seek per record, not a read of the data. TensorFlow's own
    reader reports a truncated shard as `truncated record at N` without the
    file; this says which file. A shard cut at a record boundary is found by
    its count: the spec written beside it records the rows of the shards.
    GZIP shards (`.gz`) are not walked.

    Raises:
        ValueError: `<path>: truncated record at byte N (the shard is cut short)`,
            or `<path>: N records where its spec says M (...)`.
    """
    for path in files:
        path = os.fspath(path)
        if path.endswith(".gz"):
            continue
        records, expected = _walk(path), _expected_records(path)
        if expected is not None and records != expected:
            raise ValueError(
                f"{path}: truncated record at byte {os.path.getsize(path)}: {records} records "
                f"where its spec says {expected} (the shard is cut short)"
            )


def damaged_shard(files) -> str | None:
    """`path: what is damaged` of the first shard whose records do not all read, or None.

    Reads every record of each shard once (TensorFlow checks each record's
    length and data checksums); the cost of a pass over the data, paid only
    when a read has already failed (`naming_damaged_shards`).
    """
    for path in files:
        path = os.fspath(path)
        compression = "GZIP" if path.endswith(".gz") else ""
        try:
            for _ in tf.data.TFRecordDataset(path, compression).batch(1 << 16):
                pass
        except tf.errors.DataLossError as error:
            reason = readable_message(error).replace("record at ", "record at byte ")
            return f"{path}: {reason} (a checksum does not match: the shard is damaged)"
    return None


@contextlib.contextmanager
def naming_damaged_shards(files):
    """Turns TensorFlow's `corrupted record at N` (no file named) into the shard's name.

    Around a training or a prediction that reads `files`: a
    `tf.errors.DataLossError` raised inside becomes a `ValueError`
    `<path>: corrupted record at byte N (...)` when one of the shards is
    damaged; any other error goes through unchanged.
    """
    try:
        yield
    except tf.errors.DataLossError as error:
        found = damaged_shard(files)
        if found is None:
            raise
        raise ValueError(found) from error
