"""pandas DataFrame reader, with the same output as the file readers."""

import numpy as np
import pandas as pd
import tensorflow as tf

from tf_fm.data import text

COLUMN_TYPES = ("string", "float")


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


def read_dataframe(
    df,
    *,
    label,
    columns=None,
    column_types=None,
    task="binary",
    batch_size=1024,
    shuffle=False,
    seed=None,
    drop_remainder=False,
    prefetch=True,
):
    """A `tf.data.Dataset` of `(features, label)` batches from a pandas DataFrame.

    Same output as `tf_fm.data.read_csv`: numeric columns (and booleans) as
    `tf.float32` `(batch,)` with NaN for missing values, every other column
    (object, string, category) as `tf.string` `(batch,)` with `""` for
    missing values; the label `tf.float32` `(batch,)`. The frame is
    converted once, then batched without a per-row step.

    Bad values raise `ValueError` here, naming the column and the row
    (index label): text in a column declared `"float"`, a missing or
    non-number label, a label not allowed by `task`.

    Args:
        df: `pandas.DataFrame`.
        label: str or None. Label column; None yields features only.
        columns: list of str. Feature columns, in output order. Defaults to
            every column except the label.
        column_types: dict from column name to `"string"` or `"float"`,
            overriding the dtype rule (e.g. `{"user_id": "string"}` for an
            integer id column). A float column made `"string"` keeps
            pandas' text (`"3.0"`).
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
    if columns is None:
        columns = [c for c in df.columns if c != label]
    types = dict(column_types or {})
    unknown = [c for c in [*columns, *types] if c not in df.columns]
    if unknown:
        raise ValueError(f"Unknown columns {unknown}; the columns are {list(df.columns)}.")
    bad_types = {k: v for k, v in types.items() if v not in COLUMN_TYPES}
    if bad_types:
        raise ValueError(f"Column types must be one of {COLUMN_TYPES}. Received: {bad_types}")

    features = {}
    for name in columns:
        series = df[name]
        kind = types.get(name)
        if kind is None:
            numeric = pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series)
            kind = "float" if numeric else "string"
        if kind == "float":
            features[str(name)] = tf.constant(_as_float(series, name), tf.float32)
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
