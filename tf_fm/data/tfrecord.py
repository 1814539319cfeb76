"""TFRecord shards of `tf.train.Example`: write any reader's dataset, read it back."""

import json
import os
import re
import uuid

import numpy as np
import tensorflow as tf

from tf_fm.data import text

SPEC_FORMAT = "tf_fm.tfrecord/1"
_SHARD = re.compile(r"^(.*)-\d{5}-of-\d{5}\.tfrecord(\.gz|\.zz)?$")
_DTYPES = {"string": tf.string, "float32": tf.float32, "int64": tf.int64}


def spec_path(path_prefix):
    """Path of the spec file `write_tfrecords` writes beside its shards."""
    return f"{os.fspath(path_prefix)}.spec.json"


def _kind(array):
    if array.dtype.kind in "OSU":
        return "string"
    if array.dtype.kind == "f":
        return "float32"
    if array.dtype.kind in "iub":
        return "int64"
    raise TypeError(f"Cannot write values of dtype {array.dtype} to tf.train.Example.")


def _column(values, kind):
    """Per-row lists of a batch column, in the proto's value type."""
    flat = values.reshape(values.shape[0], -1)
    if kind == "string":
        return [[v if isinstance(v, bytes) else str(v).encode() for v in row] for row in flat]
    if kind == "float32":
        return flat.astype(np.float32).tolist()
    return flat.astype(np.int64).tolist()


def _feature(values, kind):
    if kind == "string":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if kind == "float32":
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def write_tfrecords(
    dataset, path_prefix, *, num_shards=1, compression_type=None, label_key="label"
):
    """Writes a dataset of `(features, label)` batches to TFRecord shards.

    Row `r` goes to shard `r % num_shards`; each row is one
    `tf.train.Example` with one feature per input (the label under
    `label_key`), so `read_tfrecords` gives back the same tensors, NaN
    included. Every shard is written under a temporary name and renamed
    when all are complete (as is the spec file `<path_prefix>.spec.json`,
    which records names, dtypes and shapes), so a reader never sees a
    half-written shard; on an error the temporary files are removed.

    Args:
        dataset: `tf.data.Dataset` of `(features, label)` batches (any
            reader of `tf_fm.data`) or of `features` dicts; values string,
            float (written as float32) or integer (int64), shape `(batch,)`
            or `(batch, ...)`.
        path_prefix: str. Shards are `<path_prefix>-00000-of-0000N.tfrecord`
            (`.tfrecord.gz` with GZIP).
        num_shards: int. Number of shards. Defaults to 1.
        compression_type: None/`""` or `"GZIP"`. Defaults to None.
        label_key: str. Feature name of the label. Defaults to `"label"`.

    Returns:
        list of str, the shard paths.
    """
    if not isinstance(num_shards, int) or num_shards <= 0:
        raise ValueError(f"`num_shards` must be a positive integer. Received: {num_shards!r}")
    compression = compression_type or ""
    if compression not in ("", "GZIP"):
        raise ValueError(f"`compression_type` must be None or 'GZIP'. Received: {compression!r}")
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
    options = tf.io.TFRecordOptions(compression_type=compression)
    writers = [tf.io.TFRecordWriter(t, options) for t in temporary]
    spec = None
    rows = 0
    try:
        for element in dataset.as_numpy_iterator():
            features, label = element if isinstance(element, tuple) else (element, None)
            arrays = {str(k): np.asarray(v) for k, v in features.items()}
            if label is not None:
                if label_key in arrays:
                    raise ValueError(f"A feature is named {label_key!r}; pass another `label_key`.")
                arrays[label_key] = np.asarray(label, np.float32)
            if spec is None:
                spec = {
                    "format": SPEC_FORMAT,
                    "label": None if label is None else label_key,
                    "features": {
                        name: {"dtype": _kind(a), "shape": list(a.shape[1:])}
                        for name, a in arrays.items()
                    },
                    "compression_type": compression,
                }
            expected = {n: tuple(f["shape"]) for n, f in spec["features"].items()}
            found = {n: a.shape[1:] for n, a in arrays.items()}
            if found != expected:
                raise ValueError(f"Batches differ in features or shapes: {found} vs {expected}.")
            kinds = {n: f["dtype"] for n, f in spec["features"].items()}
            columns = {n: _column(a, kinds[n]) for n, a in arrays.items()}
            for i in range(len(next(iter(arrays.values())))):
                feature = {n: _feature(columns[n][i], kinds[n]) for n in columns}
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writers[rows % num_shards].write(example.SerializeToString())
                rows += 1
        for writer in writers:
            writer.close()
        if spec is None:
            raise ValueError("The dataset is empty: nothing to write.")
        spec["rows"] = rows
        spec["shards"] = [os.path.basename(s) for s in shards]
        with tf.io.gfile.GFile(spec_temporary, "w") as f:
            json.dump(spec, f, indent=1)
        tf.io.gfile.rename(spec_temporary, spec_file, overwrite=True)
        for source, target in zip(temporary, shards, strict=True):
            tf.io.gfile.rename(source, target, overwrite=True)
    except BaseException:
        for writer in writers:
            writer.close()
        for path in [*temporary, spec_temporary]:
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        raise
    return shards


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
