"""pandas DataFrame reader, with the same output as the file readers."""

import numpy as np
import pandas as pd
import tensorflow as tf

from tf_fm import schema as schema_lib
from tf_fm.data import text

COLUMN_TYPES = ("string", "int", "float")


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _as_float(series, name):
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float32, na_value=np.nan)
    text = series.astype("string")
    present = text.notna() & (text != "")
    values = pd.to_numeric(text.where(present), errors="coerce")
    literal_nan = text.str.strip().str.lower().isin(["nan", "+nan", "-nan"]).fillna(False)
    bad = (present & values.isna() & ~literal_nan).to_numpy(dtype=bool)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"Column {name!r}, row {series.index[position]!r}: "
            f"{_plain(series.iloc[position])!r} is not a number."
        )
    return values.to_numpy(dtype=np.float32, na_value=np.nan)


def _as_int(series, name):
    values = pd.to_numeric(series, errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"Column {name!r}, row {series.index[position]!r}: "
            f"{_plain(series.iloc[position])!r} is not an integer id."
        )
    return values.to_numpy(dtype=np.int64)


def _as_string(series):
    strings = series.astype("string").fillna("")
    return strings.to_numpy(dtype=object)


def _labels(series, name, task):
    values = _as_float(series, name)
    if task == "binary":
        bad = ~np.isin(values, [0.0, 1.0, -1.0])
        need = "0 or 1 (or -1/+1) as task='binary' needs"
    else:
        bad = ~np.isfinite(values)
        need = "a finite number"
    if bad.any():
        position = int(np.argmax(bad))
        row = series.index[position]
        value = _plain(series.iloc[position])
        raise ValueError(f"Label {name!r}, row {row!r}: {value!r} is not {need}.")
    return np.maximum(values, 0.0) if task == "binary" else values


def _column_types(df, columns, schema):
    """Per column `"string"`, `"int"` or `"float"`: the schema's, else the shared rule's."""
    if schema is not None:
        declared = {f.name: schema_lib.raw_column_type(f) for f in schema.features}
        return {c: declared[c] for c in columns if c in declared}
    return {
        c: schema_lib.raw_column_type(schema_lib.infer_feature(str(c), df[c]))
        for c in columns
        if not pd.api.types.is_object_dtype(df[c]) and not pd.api.types.is_string_dtype(df[c])
    }


def read_dataframe(
    df: pd.DataFrame,
    *,
    label: str | None,
    columns: list | None = None,
    column_types: dict | None = None,
    schema: "schema_lib.FeatureSchema | None" = None,
    task: str = "binary",
    batch_size: int = 1024,
    shuffle: bool = False,
    seed: int | None = None,
    drop_remainder: bool = False,
    prefetch: bool = True,
) -> tf.data.Dataset:
    """A `tf.data.Dataset` of `(features, label)` batches from a pandas DataFrame.

    Each column gets the raw type its feature declares: with `schema`, the
    schema's features; without, the rule `tf_fm.infer_schema` applies
    (`tf_fm.schema.infer_feature`), so `read_dataframe(df)` and
    `infer_schema(df)` always agree. Integer columns with few distinct
    values and booleans are categorical: `tf.string` `(batch,)` (`"3"`),
    like the same column read from a CSV file; other numbers `tf.float32`
    with NaN for missing values; text `tf.string` with `""` for missing
    values; a feature declared `CategoricalFeature(dtype="int64")`
    `tf.int64`. The label is `tf.float32` `(batch,)`. The frame is
    converted once, then batched without a per-row step.

    Bad values raise `ValueError` here, naming the column and the row
    (index label): text in a column declared `"float"`, a missing or
    non-number label, a label not allowed by `task`.

    Args:
        df: `pandas.DataFrame`.
        label: str or None. Label column; None yields features only.
        columns: list of str. Feature columns, in output order. Defaults to
            every column except the label.
        column_types: dict from column name to `"string"`, `"int"` or
            `"float"`, overriding the schema and the rule (e.g.
            `{"user_id": "string"}` for an integer id column with many
            values). A float column made `"string"` keeps pandas' text
            (`"3.0"`).
        schema: `tf_fm.FeatureSchema` or None. The features whose raw types
            the columns get; `columns` defaults to its raw inputs. Defaults
            to None (the rule above).
        task: `"binary"` (labels 0/1, or -1/+1 mapped to 0/1) or
            `"regression"` (any finite number). Defaults to `"binary"`.
        batch_size: int. Rows per batch. Defaults to 1024.
        shuffle: bool. A full random permutation of the rows, new every
            epoch. Defaults to False.
        seed: int or None. Seed of the shuffling. Defaults to None.
        drop_remainder: bool. Drop the last, smaller batch. Defaults to False.
        prefetch: bool. Prefetch batches. Defaults to True.

    Returns:
        `tf.data.Dataset` of `(features, label)` batches, or of `features`
        when `label` is None.
    """
    text.check_options(batch_size=batch_size, on_error="raise", task=task)
    if label is not None and label not in df.columns:
        raise ValueError(f"Label column {label!r} is not in the DataFrame: {list(df.columns)}.")
    if columns is None and schema is not None:
        columns = [f.name for f in schema.features]
    if columns is None:
        columns = [c for c in df.columns if c != label]
    types = {**_column_types(df, [c for c in columns if c in df.columns], schema)}
    types.update(column_types or {})
    unknown = [c for c in [*columns, *types] if c not in df.columns]
    if unknown:
        raise ValueError(f"Unknown columns {unknown}; the columns are {list(df.columns)}.")
    bad_types = {k: v for k, v in types.items() if v not in COLUMN_TYPES}
    if bad_types:
        raise ValueError(f"Column types must be one of {COLUMN_TYPES}. Received: {bad_types}")

    features = {}
    for name in columns:
        series = df[name]
        kind = types.get(name, "string")
        if kind == "float":
            features[str(name)] = tf.constant(_as_float(series, name), tf.float32)
        elif kind == "int":
            features[str(name)] = tf.constant(_as_int(series, name), tf.int64)
        else:
            features[str(name)] = tf.constant(_as_string(series), tf.string)
    if label is not None:
        element = (features, tf.constant(_labels(df[label], label, task), tf.float32))
    else:
        element = features

    dataset = tf.data.Dataset.from_tensors(element)
    if shuffle:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

        @text.graph_function
        def permute(data, pair):
            order = tf.random.experimental.stateless_shuffle(tf.range(len(df)), seed=pair)
            return tf.nest.map_structure(lambda t: tf.gather(t, order), data)

        dataset = tf.data.Dataset.zip((dataset, seeds.take(1))).map(permute)
    dataset = dataset.rebatch(batch_size, drop_remainder=drop_remainder)
    if prefetch:
        dataset = dataset.prefetch(text.AUTOTUNE)
    return dataset
