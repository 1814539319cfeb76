"""`assets.extra/tf_fm.json`: what an exported version records about itself.

Written beside the model (TF Serving ignores `assets.extra/` apart from its
warm-up file): the schema, metrics, library versions, signatures, how
`tf.Example` features are parsed, the warm-up records and the verification
report. Strict JSON: NaN metrics are written as null.
"""

import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from tf_fm import __version__
from tf_fm.export.common import (
    ASSETS_EXTRA,
    METADATA_FILENAME,
    METADATA_FORMAT,
    METADATA_VERSION,
    WARMUP_FILENAME,
)

EXAMPLE_PARSING = {
    "string": "bytes_list; missing -> ''",
    "float32": "float_list; missing -> NaN (the schema's default or its error)",
    "int64": "int64_list; required",
}


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


def _logit_source(servable):
    if servable.task != "binary":
        return None
    if servable.logit_from_probability:
        return "log(p) - log1p(-p)"
    return "the input of the model's PredictionHead"


def build_metadata(
    servable,
    model_name: str,
    version: int,
    signatures: dict,
    metrics: Mapping | None,
    warmup_rows: int,
    sample_rows: int,
    sample_is_synthetic: bool,
    source: Mapping | None = None,
) -> dict:
    """The `tf_fm.json` of a version, without its `verification` report.

    Args:
        servable: the `servable.Servable` exported.
        model_name: the model's name (its base directory's name).
        version: the version number.
        signatures: what `protos.describe_signatures` read from the export.
        metrics: validation metrics, or None.
        warmup_rows: the number of warm-up records written.
        sample_rows: rows of the verification sample.
        sample_is_synthetic: the sample was made from the schema.
        source: dict or None. Where the model comes from (a run directory
            and its model file's hash), so a rerun can find its export.
    """
    return {
        "format": METADATA_FORMAT,
        "format_version": METADATA_VERSION,
        "model_name": model_name,
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
        "example_parsing": dict(EXAMPLE_PARSING),
        "logit": _logit_source(servable),
        "metrics": _clean_json(metrics or {}),
        "schema": servable.schema.to_dict() if servable.schema is not None else None,
        "warmup": {
            "file": f"{ASSETS_EXTRA}/{WARMUP_FILENAME}" if warmup_rows else None,
            "records": warmup_rows,
            "rows_per_record": 1,
        },
        "sample_rows": sample_rows,
        "sample_is_synthetic": sample_is_synthetic,
        "source": _clean_json(source or {}),
    }


def write_metadata(path: str | os.PathLike, metadata: dict) -> None:
    """Writes `metadata` as `assets.extra/tf_fm.json` of the version directory `path`."""
    file = pathlib.Path(path) / ASSETS_EXTRA / METADATA_FILENAME
    file.write_text(json.dumps(metadata, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def read_metadata(path: str | os.PathLike) -> dict:
    """The `assets.extra/tf_fm.json` of an exported version (dict)."""
    file = pathlib.Path(path) / ASSETS_EXTRA / METADATA_FILENAME
    return json.loads(file.read_text(encoding="utf-8"))
