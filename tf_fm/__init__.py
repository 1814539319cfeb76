"""tf_fm: Factorization Machines and DeepFM for Keras 3 on TensorFlow.

The public names below are imported on first use (PEP 562 module
`__getattr__`), so `import tf_fm` and `tf-fm --help` do not load
TensorFlow; `tf_fm.FM`, `tf_fm.train`, ... load what they need.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "CategoricalFeature": "tf_fm.features",
    "NumericFeature": "tf_fm.features",
    "MultiValuedFeature": "tf_fm.features",
    "CategoricalField": "tf_fm.features",
    "NumericField": "tf_fm.features",
    "MultiValuedField": "tf_fm.features",
    "FeaturePreprocessor": "tf_fm.schema",
    "FeatureSchema": "tf_fm.schema",
    "infer_schema": "tf_fm.schema",
    "FieldEmbedding": "tf_fm.layers",
    "FMInteraction": "tf_fm.layers",
    "AnovaInteraction": "tf_fm.layers",
    "FwFMInteraction": "tf_fm.layers",
    "FFMInteraction": "tf_fm.layers",
    "GlobalBias": "tf_fm.layers",
    "PredictionHead": "tf_fm.layers",
    "ProbitAverage": "tf_fm.layers",
    "FM": "tf_fm.models",
    "DeepFM": "tf_fm.models",
    "HOFM": "tf_fm.models",
    "FwFM": "tf_fm.models",
    "FFM": "tf_fm.models",
    "NFM": "tf_fm.models",
    "compile_model": "tf_fm.models",
    "default_callbacks": "tf_fm.models",
    "describe_model": "tf_fm.models",
    "explain": "tf_fm.explanations",
    "LazyAdam": "tf_fm.optimizers",
    "SparseAdagrad": "tf_fm.optimizers",
    "SparseSGD": "tf_fm.optimizers",
    "Run": "tf_fm.training",
    "train": "tf_fm.training",
    "export_saved_model": "tf_fm.export",
    "to_predict_request": "tf_fm.export",
    "to_rest_json": "tf_fm.export",
}
_SUBMODULES = (
    "bayesian",
    "calibration",
    "callbacks",
    "data",
    "distributed",
    "explanations",
    "export",
    "features",
    "layers",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "plots",
    "schema",
    "tables",
    "training",
    "warm_start",
)

__all__ = ["__version__", *_SUBMODULES, *_EXPORTS]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"tf_fm.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tf_fm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
