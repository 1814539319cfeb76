"""Trained FM / DeepFM to TF Serving: a verified, versioned SavedModel.

`export_saved_model(model, "saved_models/deepfm", schema=schema, sample=rows)`
writes the next integer version of a TF Serving model directory:

    saved_models/deepfm/
      3/
        saved_model.pb             the signatures below
        fingerprint.pb
        variables/                 the trained weights
        assets/
        assets.extra/
          tf_serving_warmup_requests   TFRecord of PredictionLog (replayed at load)
          tf_fm.json                   schema, metrics, versions, signatures, verification

The preprocessing of the `FeatureSchema` runs inside the graph
(`schema.serving_model(model)`), so clients send the raw values they logged.
Signatures:

* `serving_default` (Predict API, method `tensorflow/serving/predict`): one
  input per raw feature, named after it, shape `(batch,)`, dtype `tf.string`,
  `tf.int64` or `tf.float32` (the schema's raw dtypes; NaN for a missing
  numeric value). Outputs `(batch,)` float32: `probability` and `logit`
  (binary), or `prediction` (regression).
* `classification` (binary only, Classify API, `tensorflow/serving/classify`):
  input `inputs`, serialized `tf.Example`s; outputs `scores` `(batch, 2)`
  (`[1 - p, p]`) and `classes` `(batch, 2)` (`"0"`, `"1"`).
* `regression` (Regress API, `tensorflow/serving/regress`): input `inputs`,
  serialized `tf.Example`s; output `outputs` `(batch,)` (the probability of a
  binary model, the prediction of a regression model).

In a `tf.Example`, string features are `bytes_list`, int64 features
`int64_list`, numeric features `float_list` (an `int64_list` for a float
feature is an error). A missing numeric feature is NaN (the schema's `default`
applies, or its error), a missing string feature is `""`, a missing int64
feature is an error naming it.

The version is written to a hidden sibling directory (`.tmp-<version>-...`,
which TF Serving ignores: it loads only all-digit names), verified by
`verify` in a fresh process that imports TensorFlow but not tf_fm (through
`tf.saved_model.load` and through the TF1 session loader that TF Serving's
C++ server uses), then renamed into place. On any failure the temporary
directory is removed and nothing is published.
"""

import base64
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tf_fm.schema import FeaturePreprocessor, FeatureSchema

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"
REGRESS_METHOD_NAME = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_SIGNATURE = "classification"
REGRESS_SIGNATURE = "regression"
EXAMPLES_INPUT = "inputs"
CLASS_LABELS = ("0", "1")
ASSETS_EXTRA = "assets.extra"
WARMUP_FILENAME = "tf_serving_warmup_requests"
METADATA_FILENAME = "tf_fm.json"
METADATA_FORMAT = "tf_fm.export"
METADATA_VERSION = 1
# TF Serving refuses to load a model whose warm-up file has more records.
MAX_WARMUP_RECORDS = 1000
VERIFY_BATCH_SIZE = 1000
VERIFY_SINGLE_ROWS = 16

_DTYPES = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}
_VERSION_RE = re.compile(r"[0-9]+")


class ExportError(RuntimeError):
    """An export could not be written or published."""


class VerificationError(ExportError):
    """The exported SavedModel does not serve what the in-memory model computes."""


# === What is served ===


def _dtype_name(dtype):
    name = tf.as_dtype(dtype).name
    if name not in _DTYPES:
        raise TypeError(
            f"Served inputs must be string, int64 or float32. Received dtype {name}; "
            "cast it inside the model."
        )
    return name


class _Servable:
    """The Keras model to export, its raw input specs and its output functions."""

    def __init__(self, model, schema=None, task=None):
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
        if schema is None:
            model, schema = self._unwrap(model)
        if schema is not None and not isinstance(schema, FeatureSchema):
            raise TypeError(
                f"`schema` must be a FeatureSchema or None. Received: {type(schema).__name__}"
            )
        if schema is not None and not schema.adapted:
            raise ValueError("`schema` is not adapted; call `schema.adapt(dataset)` first.")
        if len(model.outputs) != 1:
            raise ValueError(
                "`model` must have one output (the FM / DeepFM output). "
                f"It has {len(model.outputs)}."
            )
        output = model.outputs[0]
        if tuple(output.shape[1:]) not in ((), (1,)):
            raise ValueError(
                f"`model` must output one value per example, shape (batch, 1) or (batch,). "
                f"Received shape {output.shape}."
            )
        self.task = self._task(model, task)
        self.schema = schema
        self.name = model.name
        self._logit_from_probability = False
        if self.task == "binary":
            outputs = {"probability": output}
            logit = self._logit_layer_output(model, output)
            if logit is None:
                self._logit_from_probability = True
            else:
                outputs["logit"] = logit
        else:
            outputs = {"prediction": output}
        core = keras.Model(model.input, outputs, name=f"{model.name}_outputs")
        if schema is not None:
            self.model = schema.serving_model(core)
            self.input_specs = {f.name: (f.raw_dtype, ()) for f in schema.features}
            self._dict_input = True
        else:
            self.model = core
            self.input_specs = {}
            for tensor in keras.tree.flatten(model.inputs):
                if not tensor.name:
                    raise ValueError("Every model input needs a name (the feature name).")
                self.input_specs[tensor.name] = (_dtype_name(tensor.dtype), tuple(tensor.shape[1:]))
            self._dict_input = isinstance(model.input, dict)
        bad_shapes = [n for n, (_, shape) in self.input_specs.items() if None in shape]
        if bad_shapes:
            raise ValueError(f"Inputs need a fixed shape after the batch axis: {bad_shapes}")
        self.output_names = ["probability", "logit"] if self.task == "binary" else ["prediction"]

    @staticmethod
    def _unwrap(model):
        """A `schema.serving_model(model)` passed without `schema`: use its parts."""
        preprocessors = [la for la in model.layers if isinstance(la, FeaturePreprocessor)]
        inner = [la for la in model.layers if isinstance(la, keras.Model)]
        if len(preprocessors) == 1 and len(inner) == 1:
            return inner[0], preprocessors[0].schema
        return model, None

    @staticmethod
    def _task(model, task):
        if task is not None:
            if task not in ("binary", "regression"):
                raise ValueError(f"`task` must be 'binary' or 'regression'. Received: {task!r}")
            return task
        last = model.layers[-1].name
        if last == "probability":
            return "binary"
        if last == "prediction":
            return "regression"
        raise ValueError(
            f"Cannot tell the task of a model whose last layer is '{last}' (tf_fm models end "
            "in 'probability' or 'prediction'); pass task='binary' or task='regression'."
        )

    @staticmethod
    def _logit_layer_output(model, output):
        try:
            logit = model.get_layer("logit").output
        except (ValueError, AttributeError):  # no such layer, or not one output
            return None
        if not isinstance(logit, keras.KerasTensor) or tuple(logit.shape) != tuple(output.shape):
            return None
        return logit

    # --- Graph functions (traced into the signatures) ---

    def predict(self, inputs):
        """Raw feature dict -> dict of `(batch,)` float32 outputs."""
        inputs = {name: inputs[name] for name in self.input_specs}
        if self._dict_input:
            out = self.model(inputs, training=False)
        else:
            out = self.model([inputs[name] for name in self.input_specs], training=False)
        out = {k: tf.reshape(tf.cast(v, tf.float32), [-1]) for k, v in out.items()}
        if self._logit_from_probability:
            p = out["probability"]
            # log(p / (1 - p)) from the probability: exact up to float32 rounding
            # of p, +-inf only where p rounded to exactly 0 or 1.
            out["logit"] = tf.math.log(p) - tf.math.log1p(-p)
        return {k: out[k] for k in self.output_names}

    def example_spec(self):
        spec = {}
        for name, (dtype, shape) in self.input_specs.items():
            if dtype == "string":
                default = "" if not shape else None
            elif dtype == "float32":
                default = float("nan") if not shape else None
            else:
                default = None  # required: no value is a safe stand-in for an id
            spec[name] = tf.io.FixedLenFeature(list(shape), _DTYPES[dtype], default_value=default)
        return spec

    def parse(self, serialized):
        return tf.io.parse_example(serialized, self.example_spec())

    def classify(self, inputs):
        p = self.predict(self.parse(inputs))["probability"]
        scores = tf.stack([1.0 - p, p], axis=1)
        classes = tf.tile(tf.constant([list(CLASS_LABELS)]), tf.stack([tf.shape(p)[0], 1]))
        return {"scores": scores, "classes": classes}

    def regress(self, inputs):
        out = self.predict(self.parse(inputs))
        return {"outputs": out["probability" if self.task == "binary" else "prediction"]}

    # --- Signatures ---

    @property
    def method_names(self):
        names = {DEFAULT_SIGNATURE: PREDICT_METHOD_NAME, REGRESS_SIGNATURE: REGRESS_METHOD_NAME}
        if self.task == "binary":
            names[CLASSIFY_SIGNATURE] = CLASSIFY_METHOD_NAME
        return names

    def expected_signatures(self):
        """Signature name -> {method_name, inputs, outputs}, as `_describe_signatures` gives."""
        examples = {EXAMPLES_INPUT: {"dtype": "string", "shape": [-1]}}
        outputs = {k: {"dtype": "float32", "shape": [-1]} for k in self.output_names}
        signatures = {
            DEFAULT_SIGNATURE: {
                "method_name": PREDICT_METHOD_NAME,
                "inputs": {
                    n: {"dtype": d, "shape": [-1, *s]} for n, (d, s) in self.input_specs.items()
                },
                "outputs": outputs,
            },
            REGRESS_SIGNATURE: {
                "method_name": REGRESS_METHOD_NAME,
                "inputs": examples,
                "outputs": {"outputs": {"dtype": "float32", "shape": [-1]}},
            },
        }
        if self.task == "binary":
            signatures[CLASSIFY_SIGNATURE] = {
                "method_name": CLASSIFY_METHOD_NAME,
                "inputs": examples,
                "outputs": {
                    "classes": {"dtype": "string", "shape": [-1, 2]},
                    "scores": {"dtype": "float32", "shape": [-1, 2]},
                },
            }
        return signatures

    def write(self, path):
        """Writes the SavedModel (Keras `ExportArchive`, explicit signatures) to `path`."""
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        specs = {
            name: tf.TensorSpec([None, *shape], _DTYPES[dtype], name=name)
            for name, (dtype, shape) in self.input_specs.items()
        }
        examples = [tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)]
        archive.add_endpoint(DEFAULT_SIGNATURE, self.predict, input_signature=[specs])
        if self.task == "binary":
            archive.add_endpoint(CLASSIFY_SIGNATURE, self.classify, input_signature=examples)
        archive.add_endpoint(REGRESS_SIGNATURE, self.regress, input_signature=examples)
        archive.write_out(str(path), verbose=False)

    def outputs_numpy(self, columns):
        """In-memory outputs (the reference for `verify`) of raw `columns`."""
        out = self.predict({n: _to_tensor(columns[n], self.input_specs[n][0]) for n in columns})
        return {k: v.numpy() for k, v in out.items()}

    def synthetic_columns(self, num_rows=8):
        """A stand-in sample when none is given: known tokens, an unseen one, NaN numerics."""
        columns = {}
        rows = range(num_rows)
        for name, (dtype, shape) in self.input_specs.items():
            feature = self.schema[name] if self.schema is not None else None
            values = None
            if feature is not None and getattr(feature, "encoding", None) == "vocabulary":
                vocabulary = self.schema.vocabulary(name)
                unseen = "tf_fm unseen value" if dtype == "string" else -(2**40)
                tokens = [*vocabulary[: num_rows - 1], unseen]
                if feature.kind == "multivalued":
                    tokens = [str(t) for t in tokens]
                    values = [feature.separator.join(tokens[i : i + 2]) for i in rows]
                else:
                    values = [tokens[i % len(tokens)] for i in rows]
            elif feature is not None and feature.kind == "numeric":
                mean = self.schema.state.get(name, {}).get("mean", 0.0)
                values = [float(mean) * (i % 3) for i in rows]
                if feature.default is not None:
                    values[-1] = float("nan")
            elif feature is not None and getattr(feature, "encoding", None) == "integer":
                values = [i % feature.num_ids for i in rows]
            if values is None:
                zero = {"string": "", "int64": 0, "float32": 0.0}[dtype]
                values = [np.full(shape, zero).tolist() if shape else zero for _ in rows]
            columns[name] = values
        return _columns(columns, self.input_specs)


# === Raw rows: pandas / dict of lists / list of dicts / tf.data -> typed columns ===


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


def _raw_columns(rows, max_rows=None):
    """Any supported rows -> dict of numpy arrays (untyped), all the same length."""
    if isinstance(rows, tf.data.Dataset):
        batches, total = [], 0
        for element in rows:
            features = element[0] if isinstance(element, (tuple, list)) else element
            batch = {k: np.asarray(v) for k, v in features.items()}
            batches.append(batch)
            total += len(next(iter(batch.values())))
            if max_rows is not None and total >= max_rows:
                break
        if not batches:
            raise ValueError("The sample dataset is empty.")
        columns = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    elif isinstance(rows, pd.DataFrame):
        columns = {str(c): rows[c].to_numpy() for c in rows.columns}
    elif isinstance(rows, Mapping):
        columns = {}
        for k, v in rows.items():
            if isinstance(v, (tf.Tensor, tf.Variable)):
                v = v.numpy()
            elif isinstance(v, pd.Series):
                v = v.to_numpy()
            columns[str(k)] = v if isinstance(v, np.ndarray) else np.asarray(list(v), dtype=object)
    elif isinstance(rows, (list, tuple)) and all(isinstance(r, Mapping) for r in rows):
        if not rows:
            raise ValueError("No rows.")
        names = list(dict.fromkeys(k for r in rows for k in r))
        columns = {
            str(k): np.asarray([r.get(k) for r in rows] + [None], dtype=object)[:-1] for k in names
        }
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


def _columns(rows, specs, max_rows=None):
    """Rows -> {name: typed numpy column} with exactly the names of `specs`."""
    columns = _raw_columns(rows, max_rows=max_rows)
    missing = [n for n in specs if n not in columns]
    if missing:
        raise KeyError(
            f"Missing feature(s) {missing}: the signature needs every one of "
            f"{list(specs)}. Received: {sorted(columns)}"
        )
    return {n: _typed_column(n, columns[n], d, s) for n, (d, s) in specs.items()}


def _num_rows(columns):
    return len(next(iter(columns.values())))


def _to_tensor(column, dtype):
    return tf.constant(column, dtype=_DTYPES[dtype])


def _infer_specs(columns):
    """Dtypes from the values when no schema is given: ints, floats, else strings."""
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


def _json_columns(columns, specs, strict_utf8=False):
    return {n: [_json_value(v, specs[n][0], strict_utf8) for v in columns[n]] for n in specs}


# === Signature inspection (saved_model.pb, no loading) ===


def _read_saved_model_proto(path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((pathlib.Path(path) / "saved_model.pb").read_bytes())
    return proto


def _describe_tensor_info(info):
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = [int(d.size) for d in info.tensor_shape.dim]
    return {"dtype": tf.as_dtype(info.dtype).name, "shape": shape}


def _describe_signatures(path):
    """Signature name -> {method_name, inputs, outputs} read from `saved_model.pb`."""
    proto = _read_saved_model_proto(path)
    out = {}
    for name, sig in proto.meta_graphs[0].signature_def.items():
        if name.startswith("__"):  # __saved_model_init_op
            continue
        out[name] = {
            "method_name": sig.method_name,
            "inputs": {k: _describe_tensor_info(v) for k, v in sorted(sig.inputs.items())},
            "outputs": {k: _describe_tensor_info(v) for k, v in sorted(sig.outputs.items())},
        }
    return out


def _input_specs_of(path, signature=DEFAULT_SIGNATURE):
    described = _describe_signatures(path)
    if signature not in described:
        raise KeyError(f"No signature '{signature}' in {path}. Signatures: {sorted(described)}")
    specs = {}
    for name, info in described[signature]["inputs"].items():
        shape = info["shape"] or [-1]
        specs[name] = (info["dtype"], tuple(shape[1:]))
    return specs


def _set_method_names(path, method_names):
    """Sets each signature's `method_name` in saved_model.pb (and refreshes the fingerprint).

    `tf.saved_model.save` writes every signature as `tensorflow/serving/predict`;
    TF Serving's Classify / Regress APIs accept only signatures whose method
    name is `tensorflow/serving/classify` / `tensorflow/serving/regress`.
    """
    proto = _read_saved_model_proto(path)
    if len(proto.meta_graphs) != 1:
        raise ExportError(f"Expected one MetaGraph in {path}, found {len(proto.meta_graphs)}.")
    signatures = proto.meta_graphs[0].signature_def
    for name, method in method_names.items():
        if name not in signatures:
            raise ExportError(f"Signature '{name}' was not written. Have: {sorted(signatures)}")
        signatures[name].method_name = method
    pb = pathlib.Path(path) / "saved_model.pb"
    scratch = pb.with_name("saved_model.pb.tmp")
    scratch.write_bytes(proto.SerializeToString(deterministic=True))
    os.replace(scratch, pb)
    _refresh_fingerprint(path)


def _refresh_fingerprint(path):
    """fingerprint.pb hashes saved_model.pb: recompute it after the edit, else drop it.

    The fingerprint only identifies the model (loaders log it, none validate it).
    There is no public API to write one: this uses TensorFlow's own writer when
    it is there and removes the stale file otherwise.
    """
    fingerprint = pathlib.Path(path) / "fingerprint.pb"
    if not fingerprint.exists():
        return
    fingerprint.unlink()
    try:
        from tensorflow.python.saved_model import fingerprinting_utils

        fingerprinting_utils.write_fingerprint(str(path))
    except Exception:  # noqa: BLE001 - a missing fingerprint is valid, a stale one is not
        fingerprint.unlink(missing_ok=True)


# === Clients ===


def _client_specs(schema, columns, signature):
    if schema is None:
        return _infer_specs(columns)
    if isinstance(schema, FeatureSchema):
        return {f.name: (f.raw_dtype, ()) for f in schema.features}
    if isinstance(schema, (str, os.PathLike)):
        return _input_specs_of(schema, signature)
    if isinstance(schema, Mapping):
        specs = {}
        for name, spec in schema.items():
            dtype, shape = (spec, ()) if isinstance(spec, str) else (spec[0], tuple(spec[1]))
            specs[name] = (_dtype_name(dtype), shape)
        return specs
    raise TypeError(
        "`schema` must be None, a FeatureSchema, an exported version directory or a dict "
        f"name -> dtype. Received: {type(schema).__name__}"
    )


def to_rest_json(rows, signature=DEFAULT_SIGNATURE, columnar=False, schema=None, allow_nan=True):
    """The JSON body of a TF Serving REST `:predict` request.

    Row form: `{"signature_name": ..., "instances": [{feature: value}, ...]}`;
    columnar form: `{"signature_name": ..., "inputs": {feature: [values]}}`.
    POST it to `http://host:8501/v1/models/<name>:predict`.

    Missing values: a missing (None / NaN) numeric value is written as the
    `NaN` token. That is not standard JSON, but TF Serving's REST API accepts
    `NaN` / `Infinity` for float tensors (its "JSON conformance" rule), and
    NaN is what the schema's `default` (or its error) applies to, as in
    training. Pass `allow_nan=False` to reject such rows instead (for JSON
    stacks that cannot send the token). A missing string value is sent as
    `""`; a missing int64 value is an error. Strings that are not UTF-8 are
    sent as `{"b64": ...}`.

    Args:
        rows: pandas DataFrame, dict of columns, list of row dicts, or
            `tf.data.Dataset` of raw feature batches.
        signature: str. Signature name. Defaults to `"serving_default"`.
        columnar: bool. Columnar (`inputs`) instead of row (`instances`)
            form. Defaults to False.
        schema: what fixes the inputs and their dtypes: a `FeatureSchema`, an
            exported version directory (its `serving_default` inputs), a dict
            name -> dtype, or None (every column, dtypes inferred). Columns
            not in it (a label) are left out; a missing one is an error.
        allow_nan: bool. Write missing numeric values as `NaN`. Defaults to
            True.

    Returns:
        The request body, a JSON string.
    """
    columns = _raw_columns(rows)
    specs = _client_specs(schema, columns, signature)
    columns = _columns(columns, specs)
    values = _json_columns(columns, specs, strict_utf8=True)
    if not allow_nan:
        for name, (dtype, _) in specs.items():
            if dtype == "float32" and not np.isfinite(columns[name]).all():
                bad = int(np.sum(~np.isfinite(columns[name])))
                raise ValueError(
                    f"Feature '{name}' has {bad} missing or infinite value(s), which strict "
                    "JSON cannot carry; fill them or pass allow_nan=True (TF Serving reads NaN)."
                )
    body = {"signature_name": signature}
    if columnar:
        body["inputs"] = values
    else:
        names = list(values)
        body["instances"] = [{n: values[n][i] for n in names} for i in range(_num_rows(columns))]
    return json.dumps(body, allow_nan=allow_nan)


def to_predict_request(rows, model_name, signature=DEFAULT_SIGNATURE, schema=None, version=None):
    """A gRPC `tensorflow_serving.apis.predict_pb2.PredictRequest` for the rows.

    One `TensorProto` per input, `(batch,)`, of the input's dtype (string,
    int64, float32; NaN for a missing numeric value). Send it with
    `prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)`.

    Args:
        rows: as in `to_rest_json`.
        model_name: str. The served model's name (`MODEL_NAME`).
        signature: str. Defaults to `"serving_default"`.
        schema: as in `to_rest_json`.
        version: int or None. A specific model version. Defaults to None (the
            latest).

    Returns:
        A `PredictRequest`.
    """
    from tensorflow_serving.apis import predict_pb2

    columns = _raw_columns(rows)
    specs = _client_specs(schema, columns, signature)
    columns = _columns(columns, specs)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, (dtype, _) in specs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(columns[name], dtype=_DTYPES[dtype]))
    return request


# === Warm-up and metadata ===


def _write_warmup(path, columns, specs, model_name, num_records):
    """TFRecord of PredictionLog (one Predict request of one row each)."""
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as error:
        raise ImportError(
            "Warm-up records need `tensorflow-serving-api` (pip install 'tf-fm[serving]'); "
            "or pass warmup_rows=0."
        ) from error
    n = _num_rows(columns)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(num_records):
            row = {k: v[i % n : i % n + 1] for k, v in columns.items()}
            request = to_predict_request(row, model_name, schema=specs)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def _package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _clean_json(value):
    """Metrics and the like as plain JSON (numpy scalars -> float, NaN -> None)."""
    if isinstance(value, Mapping):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean_json(v) for v in list(value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return _clean_json(value.numpy())
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _write_json(path, value):
    path = pathlib.Path(path)
    path.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def read_metadata(path):
    """The `assets.extra/tf_fm.json` of an exported version (dict)."""
    file = pathlib.Path(path) / ASSETS_EXTRA / METADATA_FILENAME
    return json.loads(file.read_text(encoding="utf-8"))


# === Verification in a TensorFlow-only process ===

# Runs first in every TensorFlow-only child: tf_fm becomes unimportable (a
# meta-path finder that refuses it, ahead of the editable-install finder, and
# no sys.path entry holding a tf_fm directory).
_CHILD_GUARD = r'''
import os
import sys


class _BlockTfFm:
    """tf_fm cannot be imported here: the SavedModel must run on TensorFlow alone."""

    attempts = []

    def find_spec(self, name, path=None, target=None):
        if name == "tf_fm" or name.startswith("tf_fm."):
            self.attempts.append(name)
            raise ImportError("tf_fm is blocked in the TensorFlow-only verification process")
        return None


sys.meta_path.insert(0, _BlockTfFm())
sys.path = [p for p in sys.path if p and not os.path.isdir(os.path.join(p, "tf_fm"))]
assert "tf_fm" not in sys.modules
'''

_CHILD_CODE = (
    _CHILD_GUARD
    + r"""
import json
import time

_t0 = time.monotonic()
timings = {}


def lap(name):
    timings[name] = round(time.monotonic() - _t0, 3)


with open(sys.argv[1], encoding="utf-8") as f:
    payload = json.load(f)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

lap("import tensorflow")
path = payload["path"]
columns = payload["rows"]
n = len(next(iter(columns.values())))
single = list(range(min(n, payload["single_rows"])))
batch = [i % n for i in range(payload["batch_size"])]
NP = {"string": object, "int64": np.int64, "float32": np.float32}
result = {"rows": n}


def encode(value):
    if isinstance(value, list):
        return [encode(v) for v in value]
    return value.encode("utf-8", "surrogateescape")


def column(name, dtype, index):
    values = [columns[name][i] for i in index]
    if dtype == "string":
        array = np.empty(len(values), dtype=object)
        array[:] = [encode(v) for v in values]
        return array
    array = np.asarray([np.nan if v is None else v for v in values], dtype=NP[dtype])
    return array.reshape([len(values), *shapes_of[name]])


def tolist(outputs):
    out = {}
    for k, v in outputs.items():
        v = np.asarray(v)
        if v.dtype == object:
            v = np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(v)
        out[k] = v.tolist()
    return out


def shapes(outputs):
    return {k: list(np.asarray(v).shape) for k, v in outputs.items()}


def concat(parts):
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]).tolist() for k in parts[0]}


def example(i, dtypes):
    feature = {}
    for name, dtype in dtypes.items():
        value = columns[name][i]
        flat = value if isinstance(value, list) else [value]
        if dtype == "string":
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=encode(flat)))
        elif dtype == "int64":
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=flat))
        else:
            if any(v is None or v != v for v in flat):
                continue  # a missing numeric feature: the Example omits it
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=flat))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


# --- tf.saved_model.load (TF2) ---
loaded = tf.saved_model.load(path)
signatures = loaded.signatures
predict = signatures["serving_default"]
specs = predict.structured_input_signature[1]
dtypes = {k: s.dtype.name for k, s in specs.items()}
shapes_of = {k: [int(d) for d in s.shape[1:]] for k, s in specs.items()}
lap("tf2 load")


def feed2(index):
    return {k: tf.constant(column(k, d, index), dtype=specs[k].dtype) for k, d in dtypes.items()}


result["tf2_single"] = concat([tolist(predict(**feed2([i]))) for i in single])
result["tf2_batch"] = tolist(predict(**feed2(batch)))
examples = np.asarray([example(i, dtypes) for i in batch], dtype=object)
for name in ("classification", "regression"):
    if name in signatures:
        result["tf2_" + name] = tolist(signatures[name](inputs=tf.constant(examples)))
lap("tf2 calls")

# --- TF1 session loader: how TF Serving's C++ server runs the model ---
with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
    meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    defs = meta.signature_def
    lap("tf1 load")

    def run(name, feed):
        sig = defs[name]
        missing = sorted(set(sig.inputs) - set(feed))
        extra_keys = sorted(set(feed) - set(sig.inputs))
        if missing or extra_keys:
            raise ValueError(f"{name}: inputs missing {missing}, unexpected {extra_keys}")
        fetches = {k: v.name for k, v in sig.outputs.items()}
        return session.run(fetches, {sig.inputs[k].name: v for k, v in feed.items()})

    def feed1(index):
        return {k: column(k, d, index) for k, d in dtypes.items()}

    result["tf1_single"] = concat([tolist(run("serving_default", feed1([i]))) for i in single])
    result["tf1_batch"] = tolist(run("serving_default", feed1(batch)))
    result["tf1_empty_shapes"] = shapes(run("serving_default", feed1([])))
    for name in ("classification", "regression"):
        if name in defs:
            out = run(name, {"inputs": examples})
            result["tf1_" + name] = tolist(out)
            result["tf1_" + name + "_shapes"] = shapes(out)
    result["method_names"] = {k: v.method_name for k, v in defs.items()}
    lap("tf1 calls")

    # Warm-up replay, as the server does at load (a failing record fails the load).
    warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    if os.path.exists(warmup):
        from tensorflow_serving.apis import prediction_log_pb2

        replayed = 0
        for record in tf.compat.v1.io.tf_record_iterator(warmup):
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError("warm-up record is not a predict_log")
            request = log.predict_log.request
            name = request.model_spec.signature_name or "serving_default"
            out = run(name, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
            if not all(np.isfinite(np.asarray(v, np.float64)).all() for v in out.values()):
                raise ValueError("warm-up request gave a non-finite output")
            replayed += 1
        result["warmup_replayed"] = replayed
        lap("warmup replay")

blocked = sorted(m for m in sys.modules if m == "tf_fm" or m.startswith("tf_fm."))
assert not blocked and "tf_fm" not in sys.modules, blocked
result["tf_fm_import_attempts"] = _BlockTfFm.attempts
lap("done")
result["timings"] = timings
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(result, f)
"""
)


def _run_without_tf_fm(code, args=(), timeout=900):
    """Runs `code` after `_CHILD_GUARD` in a fresh interpreter that cannot import tf_fm.

    `python -I` (no PYTHONPATH, no user site, no script directory on
    sys.path), in an empty temporary working directory.

    Returns:
        The `subprocess.CompletedProcess` (text stdout / stderr).
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="tf_fm_child_") as cwd:
        return subprocess.run(
            [sys.executable, "-I", "-c", _CHILD_GUARD + code, *map(str, args)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def _run_tensorflow_only(payload, timeout):
    """Runs the verification child on `payload`; returns its result dict."""
    with tempfile.TemporaryDirectory(prefix="tf_fm_verify_") as scratch:
        payload_file = pathlib.Path(scratch) / "payload.json"
        result_file = pathlib.Path(scratch) / "result.json"
        payload_file.write_text(json.dumps(payload), encoding="utf-8")
        body = _CHILD_CODE[len(_CHILD_GUARD) :]
        try:
            done = _run_without_tf_fm(body, (payload_file, result_file), timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise VerificationError(
                f"Verification of {payload['path']} timed out after {timeout} s."
            ) from error
        if done.returncode != 0 or not result_file.exists():
            raise VerificationError(
                f"The SavedModel at {payload['path']} failed in a TensorFlow-only process "
                f"(exit code {done.returncode}). Its stderr ends with:\n{done.stderr[-6000:]}"
            )
        return json.loads(result_file.read_text(encoding="utf-8"))


def _max_abs_diff(got, want):
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    if got.shape != want.shape:
        return math.inf
    if not (np.isfinite(got).all() and np.isfinite(want).all()):
        return math.inf
    return float(np.max(np.abs(got - want))) if got.size else 0.0


def verify(path, sample, expected=None, atol=1e-5, batch_size=VERIFY_BATCH_SIZE, timeout=900):
    """Checks a SavedModel in a fresh process that imports TensorFlow but not tf_fm.

    In that process (`python -I`, a clean working directory, `tf_fm` made
    unimportable and checked absent from `sys.modules` at the end):

    * `tf.saved_model.load`: `serving_default` on the sample rows one at a
      time (batch 1, the first 16 rows) and as one batch of `batch_size`
      rows (the sample repeated); `classification` / `regression` on the same
      rows as serialized `tf.Example`s (NaN numerics left out of the Example);
    * the TF1 session loader (`tf.compat.v1.saved_model.loader.load`, feeding
      and fetching the signatures' tensor names: how TF Serving's C++ server
      runs a model): the same calls, an empty batch, and a replay of
      `assets.extra/tf_serving_warmup_requests` (TF Serving fails the load
      when a warm-up record fails).

    Every output is compared with `expected` (or, without it, with the TF2
    batch result), max abs difference <= `atol`; Classify / Regress outputs
    are checked for the shapes and dtypes TF Serving requires.

    Args:
        path: an exported version directory (`.../<version>`).
        sample: raw rows (DataFrame, dict of columns, list of row dicts,
            `tf.data.Dataset`); at most `batch_size` are used.
        expected: dict output name -> array over the sample rows (or one
            array: the `probability` / `prediction`). Defaults to None.
        atol: float. Defaults to 1e-5.
        batch_size: int. The large batch. Defaults to 1000.
        timeout: seconds for the child process. Defaults to 900.

    Returns:
        A report dict: rows, batch sizes, max abs differences per check,
        signatures, warm-up records replayed, seconds.

    Raises:
        VerificationError: with the failing check, or the child's stderr.
    """
    start = time.monotonic()
    path = pathlib.Path(path).resolve()
    specs = _input_specs_of(path)
    columns = _columns(sample, specs, max_rows=batch_size)
    n = _num_rows(columns)
    if n == 0:
        raise ValueError("`sample` has no rows.")
    payload = {
        "path": str(path),
        "rows": _json_columns(columns, specs),
        "batch_size": int(batch_size),
        "single_rows": VERIFY_SINGLE_ROWS,
    }
    result = _run_tensorflow_only(payload, timeout)
    signatures = _describe_signatures(path)
    main = "probability" if "probability" in result["tf2_batch"] else "prediction"
    if expected is None:
        reference = {k: np.asarray(v)[:n] for k, v in result["tf2_batch"].items()}
    elif isinstance(expected, Mapping):
        reference = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in expected.items()}
    else:
        reference = {main: np.asarray(expected, dtype=np.float64).reshape(-1)}
    for name, values in reference.items():
        if len(values) != n:
            raise ValueError(f"`expected['{name}']` has {len(values)} values for {n} sample rows.")
    tiled = {k: v[np.arange(batch_size) % n] for k, v in reference.items()}
    first = {k: v[: min(n, VERIFY_SINGLE_ROWS)] for k, v in reference.items()}
    diffs, problems = {}, []

    def compare(check, got, want):
        diff = _max_abs_diff(got, want)
        diffs[check] = diff
        if not diff <= atol:
            problems.append(f"{check}: max abs difference {diff:.3g} > atol={atol:g}")

    for loader in ("tf2", "tf1"):
        for name in reference:
            if name not in result[f"{loader}_single"]:
                problems.append(f"{loader}: serving_default has no output '{name}'")
                continue
            compare(
                f"{loader} serving_default batch=1 {name}",
                result[f"{loader}_single"][name],
                first[name],
            )
            compare(
                f"{loader} serving_default batch={batch_size} {name}",
                result[f"{loader}_batch"][name],
                tiled[name],
            )
        if main in tiled:
            if f"{loader}_classification" in result:
                scores = np.asarray(result[f"{loader}_classification"]["scores"])
                compare(f"{loader} classification scores[:, 1]", scores[:, 1], tiled[main])
                compare(f"{loader} classification scores[:, 0]", scores[:, 0], 1.0 - tiled[main])
            if f"{loader}_regression" in result:
                compare(
                    f"{loader} regression outputs",
                    result[f"{loader}_regression"]["outputs"],
                    tiled[main],
                )
    # What TF Serving's Classify / Regress handlers require of the outputs.
    if "tf1_classification_shapes" in result:
        got = result["tf1_classification_shapes"]
        if got.get("scores") != [batch_size, 2] or got.get("classes") != [batch_size, 2]:
            problems.append(f"classification output shapes {got}, want [{batch_size}, 2]")
    if "tf1_regression_shapes" in result:
        got = result["tf1_regression_shapes"].get("outputs")
        if got not in ([batch_size], [batch_size, 1]):
            problems.append(f"regression output shape {got}, want [{batch_size}] or [.., 1]")
    empty = result["tf1_empty_shapes"]
    if any(shape[0] != 0 for shape in empty.values()):
        problems.append(f"an empty batch gave output shapes {empty}")
    for name, sig in signatures.items():
        want = {
            CLASSIFY_SIGNATURE: CLASSIFY_METHOD_NAME,
            REGRESS_SIGNATURE: REGRESS_METHOD_NAME,
        }.get(name, PREDICT_METHOD_NAME)
        if sig["method_name"] != want:
            problems.append(
                f"signature '{name}' has method_name {sig['method_name']!r}, want {want}"
            )
    if result.get("tf_fm_import_attempts"):
        problems.append(f"the SavedModel tried to import {result['tf_fm_import_attempts']}")
    if problems:
        raise VerificationError(f"Verification of {path} failed:\n  " + "\n  ".join(problems))
    return {
        "rows": n,
        "batch_sizes": [1, int(batch_size)],
        "atol": atol,
        "max_abs_diff": diffs,
        "loaders": ["tf.saved_model.load", "tf.compat.v1.saved_model.loader.load"],
        "warmup_records_replayed": result.get("warmup_replayed", 0),
        "signatures": signatures,
        "process": "python -I, TensorFlow only (tf_fm unimportable, absent from sys.modules)",
        "child_timings": result.get("timings", {}),
        "seconds": round(time.monotonic() - start, 2),
    }


# === Versions and publishing ===


def list_versions(export_dir):
    """The published versions (all-digit subdirectories) of `export_dir`, ascending."""
    export_dir = pathlib.Path(export_dir)
    if not export_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in export_dir.iterdir() if p.is_dir() and _VERSION_RE.fullmatch(p.name)
    )


def _resolve_version(export_dir, version):
    if version is None:
        versions = list_versions(export_dir)
        return versions[-1] + 1 if versions else 1
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(f"`version` must be a non-negative integer. Received: {version!r}")
    return int(version)


def _publish(staging, target, overwrite):
    """Renames the verified staging directory to `target` (one rename: atomic)."""
    if target.exists():
        if not overwrite:
            raise FileExistsError(
                f"Version {target.name} already exists at {target}; pass overwrite=True "
                "or let the version default to the next one."
            )
        retired = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
        os.rename(target, retired)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(retired, target)
            raise
        shutil.rmtree(retired, ignore_errors=True)
        return
    try:
        os.rename(staging, target)
    except OSError as error:
        raise FileExistsError(
            f"Could not publish version {target.name}: {target} appeared meanwhile ({error})."
        ) from error


def export_saved_model(
    model,
    export_dir,
    schema=None,
    version=None,
    sample=None,
    metrics=None,
    overwrite=False,
    warmup_rows=10,
    task=None,
    atol=1e-5,
):
    """Exports a trained FM / DeepFM for TF Serving as `export_dir/<version>/`, verified.

    Steps: build the serving graph (the schema's preprocessing + the model),
    write it with explicit signatures to a hidden staging directory beside
    the versions, set the Classify / Regress method names, write
    `assets.extra/` (warm-up requests from `sample`, `tf_fm.json`), run
    `verify` (a TensorFlow-only process compares the served outputs with
    the in-memory model's at batch 1 and 1000, through both loaders), then
    rename the staging directory to the version. On any error the staging
    directory is removed and nothing is published.

    Args:
        model: a trained `tf_fm.FM` / `tf_fm.DeepFM` whose inputs are the
            preprocessed fields of `schema`; with `schema=None`, a model
            whose inputs already are the raw inputs (a `schema.serving_model`
            or a model on ids / values).
        export_dir: the model's base directory (`saved_models/<name>`), the
            one TF Serving's `--model_base_path` points at.
        schema: the adapted `FeatureSchema`, or None. Defaults to None.
        version: int or None. None takes the next version (largest existing
            + 1, starting at 1). Defaults to None.
        sample: raw rows for the warm-up requests and the verification
            (DataFrame, dict of columns, list of row dicts, `tf.data.Dataset`
            of raw batches); at most 1000 rows are used. None makes a few
            rows from the schema (known and unseen tokens, means, NaN).
            Defaults to None; real rows are the better check.
        metrics: dict or None. Validation metrics to record in
            `tf_fm.json` (e.g. `{"val_auc": 0.79}`). Defaults to None.
        overwrite: bool. Replace an existing version. Defaults to False.
        warmup_rows: int. Warm-up records (one row each, at most 1000; 0 for
            none). Defaults to 10.
        task: `"binary"` / `"regression"` or None (from the output layer's
            name). Defaults to None.
        atol: float. Verification tolerance. Defaults to 1e-5.

    Returns:
        `pathlib.Path` of the published version directory.

    Raises:
        FileExistsError: the version exists and `overwrite` is False.
        VerificationError: the exported model does not serve what `model`
            computes (nothing is published).

    Example:

    >>> path = tf_fm.export_saved_model(
    ...     model, "saved_models/deepfm", schema=schema, sample=valid_rows,
    ...     metrics={"val_auc": 0.79})
    """
    servable = _Servable(model, schema, task)
    warmup_rows = int(warmup_rows)
    if not 0 <= warmup_rows <= MAX_WARMUP_RECORDS:
        raise ValueError(
            f"`warmup_rows` must be in [0, {MAX_WARMUP_RECORDS}] (TF Serving fails to load a "
            f"model with more warm-up records). Received: {warmup_rows}"
        )
    export_dir = pathlib.Path(export_dir)
    version = _resolve_version(export_dir, version)
    target = export_dir / str(version)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"Version {version} already exists at {target}; pass overwrite=True or "
            "leave `version` unset for the next one."
        )
    if sample is None:
        columns = servable.synthetic_columns()
    else:
        columns = _columns(sample, servable.input_specs, max_rows=VERIFY_BATCH_SIZE)
    if _num_rows(columns) == 0:
        raise ValueError("`sample` has no rows.")
    expected = servable.outputs_numpy(columns)
    bad = [k for k, v in expected.items() if not np.isfinite(v).all()]
    if bad:
        raise ValueError(f"The in-memory model gives non-finite {bad} on the sample rows.")
    export_dir.mkdir(parents=True, exist_ok=True)
    # A hidden sibling: TF Serving only loads all-digit names, so it never sees it.
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir))
    try:
        servable.write(staging)
        _set_method_names(staging, servable.method_names)
        signatures = _describe_signatures(staging)
        want = servable.expected_signatures()
        if signatures != want:
            raise ExportError(
                f"The written signatures differ from the intended ones.\nWritten: {signatures}\n"
                f"Intended: {want}"
            )
        extra = staging / ASSETS_EXTRA
        extra.mkdir()
        if warmup_rows:
            _write_warmup(
                extra / WARMUP_FILENAME, columns, servable.input_specs, export_dir.name, warmup_rows
            )
        from tf_fm import __version__

        metadata = {
            "format": METADATA_FORMAT,
            "format_version": METADATA_VERSION,
            "model_name": export_dir.name,
            "keras_model": servable.name,
            "version": version,
            "task": servable.task,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "library_versions": {
                "tf_fm": __version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "tensorflow_serving_api": _package_version("tensorflow-serving-api"),
                "python": platform.python_version(),
            },
            "signatures": signatures,
            "example_parsing": {
                "string": "bytes_list; missing -> ''",
                "float32": "float_list; missing -> NaN (the schema's default or its error)",
                "int64": "int64_list; required",
            },
            "logit": (
                "from the model's 'logit' layer"
                if servable.task == "binary" and not servable._logit_from_probability
                else ("log(p) - log1p(-p)" if servable.task == "binary" else None)
            ),
            "metrics": _clean_json(metrics or {}),
            "schema": servable.schema.to_dict() if servable.schema is not None else None,
            "warmup": {
                "file": f"{ASSETS_EXTRA}/{WARMUP_FILENAME}" if warmup_rows else None,
                "records": warmup_rows,
                "rows_per_record": 1,
            },
            "sample_rows": _num_rows(columns),
            "sample_is_synthetic": sample is None,
        }
        _write_json(extra / METADATA_FILENAME, metadata)
        report = verify(staging, columns, expected=expected, atol=atol)
        report.pop("signatures")  # the same as metadata["signatures"]
        metadata["verification"] = report
        _write_json(extra / METADATA_FILENAME, metadata)
        _publish(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
