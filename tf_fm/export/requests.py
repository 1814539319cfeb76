"""What clients send: REST bodies, gRPC `PredictRequest`s and the warm-up records (and back).

Each takes raw rows (`rows.Rows`) and a description of the signature's
inputs: a `FeatureSchema` (its `raw_input_specs()`), an exported version
directory (its `serving_default` inputs), a dict name -> dtype, or None
(every column, dtypes inferred from the values). The gRPC protos come from
`tensorflow-serving-api`, imported when first needed.
"""

import json
import os
import pathlib
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from tf_fm.export.common import ASSETS_EXTRA, DEFAULT_SIGNATURE, WARMUP_FILENAME
from tf_fm.export.protos import input_specs_of
from tf_fm.export.rows import (
    DTYPES,
    Rows,
    Specs,
    dtype_name,
    infer_specs,
    json_columns,
    num_rows,
    raw_columns,
    typed_columns,
)
from tf_fm.schema import FeatureSchema

# What fixes a request's inputs: see `to_rest_json`.
InputsSource = FeatureSchema | str | os.PathLike | Mapping | None


def _client_specs(schema, columns, signature):
    if schema is None:
        return infer_specs(columns)
    if isinstance(schema, FeatureSchema):
        return schema.raw_input_specs()
    if isinstance(schema, (str, os.PathLike)):
        return input_specs_of(schema, signature)
    if isinstance(schema, Mapping):
        specs = {}
        for name, spec in schema.items():
            dtype, shape = (spec, ()) if isinstance(spec, str) else (spec[0], tuple(spec[1]))
            specs[name] = (dtype_name(dtype), shape)
        return specs
    raise TypeError(
        "`schema` must be None, a FeatureSchema, an exported version directory or a dict "
        f"name -> dtype. Received: {type(schema).__name__}"
    )


def _request_columns(rows, schema, signature):
    """(typed columns, specs) of the rows for the signature's inputs."""
    columns = raw_columns(rows)
    specs = _client_specs(schema, columns, signature)
    return typed_columns(columns, specs), specs


def _check_finite(columns, specs):
    for name, (dtype, _) in specs.items():
        if dtype == "float32" and not np.isfinite(columns[name]).all():
            bad = int(np.sum(~np.isfinite(columns[name])))
            raise ValueError(
                f"Feature '{name}' has {bad} missing or infinite value(s), which strict "
                "JSON cannot carry; fill them or pass allow_nan=True (TF Serving reads NaN)."
            )


def to_rest_json(
    rows: Rows,
    signature: str = DEFAULT_SIGNATURE,
    columnar: bool = False,
    schema: InputsSource = None,
    allow_nan: bool = True,
) -> str:
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
    columns, specs = _request_columns(rows, schema, signature)
    values = json_columns(columns, specs, strict_utf8=True)
    if not allow_nan:
        _check_finite(columns, specs)
    body = {"signature_name": signature}
    if columnar:
        body["inputs"] = values
    else:
        names = list(values)
        body["instances"] = [{n: values[n][i] for n in names} for i in range(num_rows(columns))]
    return json.dumps(body, allow_nan=allow_nan)


def to_predict_request(
    rows: Rows,
    model_name: str,
    signature: str = DEFAULT_SIGNATURE,
    schema: InputsSource = None,
    version: int | None = None,
):
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

    columns, specs = _request_columns(rows, schema, signature)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, (dtype, _) in specs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(columns[name], dtype=DTYPES[dtype]))
    return request


def _prediction_log_pb2():
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as error:
        raise ImportError(
            "Warm-up records need `tensorflow-serving-api` (pip install 'tf-fm[serving]'); "
            "or pass warmup_rows=0."
        ) from error
    return prediction_log_pb2


def write_warmup(
    path: str | os.PathLike,
    columns: dict[str, np.ndarray],
    specs: Specs,
    model_name: str,
    num_records: int,
) -> None:
    """Writes TF Serving's warm-up file: a TFRecord of `PredictionLog`s, one row each.

    Record i is a Predict request of row `i % len(rows)` of the typed
    `columns`; TF Serving replays them at load and fails the load when one
    fails.

    Raises:
        ImportError: `tensorflow-serving-api` is not installed.
    """
    prediction_log_pb2 = _prediction_log_pb2()
    n = num_rows(columns)
    with tf.io.TFRecordWriter(str(pathlib.Path(path))) as writer:
        for i in range(num_records):
            row = {k: v[i % n : i % n + 1] for k, v in columns.items()}
            request = to_predict_request(row, model_name, schema=specs)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def warmup_rows(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The raw rows of an exported version's warm-up records, one row per record.

    Args:
        path: an exported version directory.

    Returns:
        dict input name -> numpy column (the requests' dtypes), or None when
        the version has no warm-up file (or it is empty).

    Raises:
        ImportError: `tensorflow-serving-api` is not installed.
    """
    file = pathlib.Path(path) / ASSETS_EXTRA / WARMUP_FILENAME
    if not file.is_file():
        return None
    prediction_log_pb2 = _prediction_log_pb2()
    columns = {}
    for record in tf.data.TFRecordDataset(str(file)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for name, proto in log.predict_log.request.inputs.items():
            columns.setdefault(name, []).append(tf.make_ndarray(proto))
    return {k: np.concatenate(v) for k, v in columns.items()} or None
