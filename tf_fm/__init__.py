"""tf_fm: Factorization Machines and DeepFM for Keras 3 on TensorFlow."""

__version__ = "0.1.0"

from tf_fm import _console

if _console.is_console_script():  # the `tf-fm` command: quiet TensorFlow start-up
    _console.quiet_tensorflow_import()

from tf_fm import data, export, features, layers, optimizers, plots
from tf_fm.export import export_saved_model, to_predict_request, to_rest_json
from tf_fm.features import CategoricalField, MultiValuedField, NumericField
from tf_fm.layers import FieldEmbedding, FMInteraction, GlobalBias
from tf_fm.models import FM, DeepFM, compile_model, default_callbacks
from tf_fm.optimizers import LazyAdam, SparseAdagrad, SparseSGD
from tf_fm.schema import (
    CategoricalFeature,
    FeaturePreprocessor,
    FeatureSchema,
    MultiValuedFeature,
    NumericFeature,
    infer_schema,
)

__all__ = [
    "__version__",
    "data",
    "features",
    "layers",
    "optimizers",
    "plots",
    "CategoricalField",
    "MultiValuedField",
    "NumericField",
    "FieldEmbedding",
    "FMInteraction",
    "GlobalBias",
    "FM",
    "DeepFM",
    "compile_model",
    "default_callbacks",
    "LazyAdam",
    "SparseAdagrad",
    "SparseSGD",
    "CategoricalFeature",
    "FeaturePreprocessor",
    "FeatureSchema",
    "MultiValuedFeature",
    "NumericFeature",
    "infer_schema",
    "export",
    "export_saved_model",
    "to_predict_request",
    "to_rest_json",
]
