"""Input data for tf_fm models: readers (`tf_fm.data.readers`), formats by name, synthetic data.

Names are imported on first use (PEP 562), so `tf_fm.data.catalog` (the
format names `tf-fm --help` lists) loads without TensorFlow.
"""

import importlib

_EXPORTS = {
    "SyntheticData": "tf_fm.data.synthetic",
    "make_fm_data": "tf_fm.data.synthetic",
    "DataSpec": "tf_fm.data.formats",
    "FORMATS": "tf_fm.data.catalog",
    "infer_format_schema": "tf_fm.data.formats",
    "read_files": "tf_fm.data.formats",
}
# Every module of the package: `from tf_fm.data import text` inside one of them
# must import the module, not look the name up in `readers` (a circular import).
_SUBMODULES = (
    "catalog",
    "dataframe",
    "delimited",
    "formats",
    "libsvm",
    "readers",
    "synthetic",
    "text",
    "tfrecord",
)


def _readers():
    return importlib.import_module("tf_fm.data.readers")


def __getattr__(name):
    if name == "__all__":  # the readers' public names (readers.__all__) and the above
        return [*_readers().__all__, *_EXPORTS]
    if name in _SUBMODULES:
        return importlib.import_module(f"tf_fm.data.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _readers().__all__:
        value = getattr(_readers(), name)
    else:
        raise AttributeError(f"module 'tf_fm.data' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__getattr__("__all__")))
