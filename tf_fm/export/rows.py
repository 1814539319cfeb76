"""Client rows -> typed columns: what every request, warm-up record and check is built from.

Rows come as a pandas DataFrame, a dict of columns, a list of row dicts or a
`tf.data.Dataset` of raw feature batches. `raw_columns` turns any of them
into numpy columns of one length; `typed_columns` then gives each input of
a spec (name -> (dtype name, shape after the batch axis)) the column of its
served dtype: `string` (object array; a missing value is `""`), `int64` (no
missing value) or `float32` (NaN for a missing value). `json_columns` is
the JSON form of typed columns, for REST bodies and the verification child.
"""

import base64
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

# What rows may be: DataFrame, dict of columns, list of row dicts, tf.data.Dataset.
Rows = pd.DataFrame | Mapping | Sequence[Mapping] | tf.data.Dataset
# Input name -> (dtype name, shape after the batch axis).
Specs = dict[str, tuple[str, tuple[int, ...]]]

DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}


def dtype_name(dtype) -> str:
    """The served dtype name (`"string"`, `"int64"`, `"float32"`) of `dtype`.

    Raises:
        TypeError: another dtype (TF Serving clients send only these three).
    """
    name = tf.as_dtype(dtype).name
    if name not in DTYPES:
        raise TypeError(
            f"Served inputs must be string, int64 or float32. Received dtype {name}; "
            "cast it inside the model."
        )
    return name


def _is_missing(value):
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return isinstance(value, (float, np.floating)) and math.isnan(value)
    except TypeError:
        return False


def _string_column(name, values):
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if _is_missing(v):
            out[i] = ""
        elif isinstance(v, (str, bytes)):
            out[i] = v
        elif isinstance(v, np.str_):
            out[i] = str(v)
        elif isinstance(v, np.bytes_):
            out[i] = bytes(v)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out[i] = str(int(v))  # as tf.strings.as_string does for int ids
        else:
            raise TypeError(
                f"Feature '{name}' is a string feature; row {i} has {type(v).__name__} {v!r}."
            )
    return out


def _int_column(name, values):
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    out = np.empty(array.shape, dtype=np.int64)
    flat = array.reshape(-1)
    for i, v in enumerate(flat):
        if _is_missing(v):
            raise ValueError(
                f"Feature '{name}' is int64 and has a missing value (row {i}); "
                "an int64 feature has no missing-value marker, send an id."
            )
        if isinstance(v, (str, bytes)) or float(v) != int(v):
            raise TypeError(f"Feature '{name}' is int64; value {v!r} is not an integer.")
        out.reshape(-1)[i] = int(v)
    return out


def _float_column(name, values):
    array = np.asarray(values)
    if array.dtype.kind in "fiub":
        return array.astype(np.float32)
    flat = []
    for v in array.reshape(-1):
        if _is_missing(v):
            flat.append(np.nan)
        elif isinstance(v, (str, bytes)):
            raise TypeError(f"Feature '{name}' is float32; value {v!r} is a string.")
        else:
            flat.append(float(v))
    return np.asarray(flat, dtype=np.float32).reshape(array.shape)


def _typed_column(name, values, dtype, shape=()):
    if dtype == "string":
        if shape:
            raise ValueError(f"Feature '{name}': string inputs must be scalars per row.")
        return _string_column(name, list(values))
    column = _int_column(name, values) if dtype == "int64" else _float_column(name, values)
    if tuple(column.shape[1:]) != tuple(shape):
        raise ValueError(
            f"Feature '{name}' needs shape (batch, {', '.join(map(str, shape))}) "
            f"per request; received {column.shape}."
        )
    return column


def _dataset_columns(dataset, max_rows):
    batches, total = [], 0
    for element in dataset:
        features = element[0] if isinstance(element, (tuple, list)) else element
        batch = {k: np.asarray(v) for k, v in features.items()}
        batches.append(batch)
        total += len(next(iter(batch.values())))
        if max_rows is not None and total >= max_rows:
            break
    if not batches:
        raise ValueError("The sample dataset is empty.")
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _mapping_columns(rows):
    columns = {}
    for k, v in rows.items():
        if isinstance(v, (tf.Tensor, tf.Variable)):
            v = v.numpy()
        elif isinstance(v, pd.Series):
            v = v.to_numpy()
        columns[str(k)] = v if isinstance(v, np.ndarray) else np.asarray(list(v), dtype=object)
    return columns


def _record_columns(rows):
    if not rows:
        raise ValueError("No rows.")
    names = list(dict.fromkeys(k for r in rows for k in r))
    # The extra None keeps numpy from making a 2-D array of list values.
    return {str(k): np.asarray([r.get(k) for r in rows] + [None], dtype=object)[:-1] for k in names}


def raw_columns(rows: Rows, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Any supported rows -> dict of numpy columns (untyped), all of one length.

    Args:
        rows: pandas DataFrame, dict of columns, list of row dicts, or
            `tf.data.Dataset` of raw feature batches (or `(features, label)`
            batches: the label is left out).
        max_rows: int or None. Keep the first `max_rows` rows (a dataset is
            read only that far). Defaults to None (all).

    Returns:
        dict column name -> numpy array.

    Raises:
        TypeError: `rows` is none of the supported kinds.
        ValueError: no rows, or columns of different lengths.
    """
    if isinstance(rows, tf.data.Dataset):
        columns = _dataset_columns(rows, max_rows)
    elif isinstance(rows, pd.DataFrame):
        columns = {str(c): rows[c].to_numpy() for c in rows.columns}
    elif isinstance(rows, Mapping):
        columns = _mapping_columns(rows)
    elif isinstance(rows, (list, tuple)) and all(isinstance(r, Mapping) for r in rows):
        columns = _record_columns(rows)
    else:
        raise TypeError(
            "Rows must be a pandas DataFrame, a dict of columns, a list of row dicts or a "
            f"tf.data.Dataset. Received: {type(rows).__name__}"
        )
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Columns have different lengths: {lengths}")
    if max_rows is not None:
        columns = {k: v[:max_rows] for k, v in columns.items()}
    return columns


def typed_columns(rows: Rows, specs: Specs, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Rows -> {name: column of the spec's dtype and shape}, exactly the names of `specs`.

    Columns not in `specs` (a label) are left out.

    Raises:
        KeyError: a name of `specs` has no column.
        TypeError, ValueError: a value does not fit its dtype or shape.
    """
    columns = raw_columns(rows, max_rows=max_rows)
    missing = [n for n in specs if n not in columns]
    if missing:
        raise KeyError(
            f"Missing feature(s) {missing}: the signature needs every one of "
            f"{list(specs)}. Received: {sorted(columns)}"
        )
    return {n: _typed_column(n, columns[n], d, s) for n, (d, s) in specs.items()}


def num_rows(columns: Mapping[str, np.ndarray]) -> int:
    """The length of the (equally long) columns."""
    return len(next(iter(columns.values())))


def to_tensor(column: np.ndarray, dtype: str) -> tf.Tensor:
    """A typed column as a tensor of the served dtype `dtype`."""
    return tf.constant(column, dtype=DTYPES[dtype])


def infer_specs(columns: Mapping[str, np.ndarray]) -> Specs:
    """Specs from the values when no schema is given: ints, floats, else strings."""
    specs = {}
    for name, values in columns.items():
        array = np.asarray(values)
        kind = array.dtype.kind
        if kind == "O":  # Python objects (list of row dicts): look at the values
            present = [v for v in array.reshape(-1) if not _is_missing(v)]
            if present and all(isinstance(v, (int, np.integer)) for v in present):
                kind = "f" if len(present) < array.size else "i"
            elif present and all(
                isinstance(v, (int, float, np.integer, np.floating)) for v in present
            ):
                kind = "f"
        if kind in "iub":
            specs[name] = ("int64", tuple(array.shape[1:]))
        elif kind == "f":
            specs[name] = ("float32", tuple(array.shape[1:]))
        else:
            specs[name] = ("string", ())
    return specs


def _json_value(value, dtype, strict_utf8):
    if dtype == "string":
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                if strict_utf8:  # TF Serving REST: binary strings go as {"b64": ...}
                    return {"b64": base64.b64encode(value).decode("ascii")}
                return value.decode("utf-8", "surrogateescape")
        return str(value)
    if dtype == "int64":
        return value.tolist() if isinstance(value, np.ndarray) else int(value)
    if isinstance(value, np.ndarray):
        return value.astype(np.float64).tolist()
    return float(value)


def json_columns(
    columns: Mapping[str, np.ndarray], specs: Specs, strict_utf8: bool = False
) -> dict[str, list]:
    """Typed columns as JSON lists (NaN stays a float NaN).

    Args:
        columns: typed columns (`typed_columns`).
        specs: the names and dtypes to write.
        strict_utf8: bool. Strings that are not UTF-8 become `{"b64": ...}`
            (TF Serving's REST form) instead of surrogate-escaped text (what
            the verification child decodes back to the same bytes).
            Defaults to False.
    """
    return {n: [_json_value(v, specs[n][0], strict_utf8) for v in columns[n]] for n in specs}
