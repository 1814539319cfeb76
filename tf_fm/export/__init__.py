"""Trained FM / DeepFM to TF Serving: a verified, versioned SavedModel.

`export_saved_model(model, "saved_models/deepfm", schema=schema, sample=rows)`
writes the next integer version of a TF Serving model directory:

    saved_models/deepfm/
      3/
        saved_model.pb             the signatures below
        variables/                 the trained weights
        assets/
        assets.extra/
          tf_serving_warmup_requests   TFRecord of PredictionLog (replayed at load)
          tf_fm.json                   schema, metrics, versions, signatures, verification

(No `fingerprint.pb`: it would hash the `saved_model.pb` written before the
method names were set; loaders treat it as optional, see `protos`.)

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

Modules, lowest first: `common` (names, limits, errors), `rows` (client rows
-> typed columns), `protos` (`saved_model.pb` read and edited), `servable`
(the graph and its signatures), `requests` (REST / gRPC requests, warm-up
records), `metadata` (`tf_fm.json`), `verification` (`verify`, launching
`verify_child`, the TensorFlow-only process), `publish` (versions,
`export_saved_model`).
"""

from tf_fm.export.common import (
    ASSETS_EXTRA,
    CLASS_LABELS,
    CLASSIFY_METHOD_NAME,
    CLASSIFY_SIGNATURE,
    DEFAULT_SIGNATURE,
    EXAMPLES_INPUT,
    MAX_WARMUP_RECORDS,
    METADATA_FILENAME,
    METADATA_FORMAT,
    METADATA_VERSION,
    PREDICT_METHOD_NAME,
    REGRESS_METHOD_NAME,
    REGRESS_SIGNATURE,
    VERIFY_BATCH_SIZE,
    VERIFY_SINGLE_ROWS,
    WARMUP_FILENAME,
    ExportError,
    VerificationError,
)
from tf_fm.export.metadata import read_metadata
from tf_fm.export.protos import describe_signatures
from tf_fm.export.publish import export_saved_model, list_versions
from tf_fm.export.requests import to_predict_request, to_rest_json, warmup_rows
from tf_fm.export.rows import raw_columns
from tf_fm.export.verification import verify

__all__ = [
    "ASSETS_EXTRA",
    "CLASS_LABELS",
    "CLASSIFY_METHOD_NAME",
    "CLASSIFY_SIGNATURE",
    "DEFAULT_SIGNATURE",
    "EXAMPLES_INPUT",
    "MAX_WARMUP_RECORDS",
    "METADATA_FILENAME",
    "METADATA_FORMAT",
    "METADATA_VERSION",
    "PREDICT_METHOD_NAME",
    "REGRESS_METHOD_NAME",
    "REGRESS_SIGNATURE",
    "VERIFY_BATCH_SIZE",
    "VERIFY_SINGLE_ROWS",
    "WARMUP_FILENAME",
    "ExportError",
    "VerificationError",
    "describe_signatures",
    "export_saved_model",
    "list_versions",
    "raw_columns",
    "read_metadata",
    "to_predict_request",
    "to_rest_json",
    "verify",
    "warmup_rows",
]
