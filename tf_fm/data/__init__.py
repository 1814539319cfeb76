"""Input data for tf_fm models."""

from tf_fm.data.readers import (
    AVAZU_COLUMNS,
    CRITEO_CATEGORICAL,
    CRITEO_COLUMNS,
    CRITEO_NUMERIC,
    LibSVMStats,
    ReadReport,
    infer_column_types,
    libsvm_field,
    read_avazu,
    read_criteo,
    read_csv,
    read_dataframe,
    read_libffm,
    read_libsvm,
    read_tfrecords,
    scan_libsvm,
    write_tfrecords,
)
from tf_fm.data.synthetic import SyntheticData, make_fm_data

__all__ = [
    "SyntheticData",
    "make_fm_data",
    "AVAZU_COLUMNS",
    "CRITEO_CATEGORICAL",
    "CRITEO_COLUMNS",
    "CRITEO_NUMERIC",
    "LibSVMStats",
    "ReadReport",
    "infer_column_types",
    "libsvm_field",
    "read_avazu",
    "read_criteo",
    "read_csv",
    "read_dataframe",
    "read_libffm",
    "read_libsvm",
    "read_tfrecords",
    "scan_libsvm",
    "write_tfrecords",
]
