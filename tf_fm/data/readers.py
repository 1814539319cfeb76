"""Readers: files and DataFrames to `tf.data` batches for tf_fm models.

Every reader returns a `tf.data.Dataset` of `(features, label)` batches:
`features` maps a column name to a `(batch,)` tensor, `tf.string` raw values
for categorical columns (`""` when missing) and `tf.float32` for numeric
columns (NaN when missing; a later schema applies defaults); the label is
`tf.float32` `(batch,)`. libSVM/libFM/libFFM rows already are feature
vectors: they yield one weighted multi-valued feature (ids padded with -1,
`"<name>_weights"` values), see `libsvm_feature`; libFFM rows also one
such feature per field (`read_libffm(fields=...)`, `libffm_features`).

Text readers stream their files (chunked reads, several files at once),
parse whole batches in parallel, and check every line. A malformed line
stops the iteration with an error naming the file and the 1-based line
(`on_error="raise"`), or is skipped and recorded in a `ReadReport`
(`on_error="skip"`).

| reader | input |
|---|---|
| `read_csv` | CSV/TSV, header or given column names, typed columns |
| `read_criteo` | Criteo DAC TSV (`label, I1..I13, C1..C26`) |
| `read_avazu` | Avazu CSV (`id, click, hour, ...`) |
| `read_libsvm`, `read_libffm` | `label idx:val ...`, `label field:idx:val ...` |
| `read_dataframe` | pandas DataFrame |
| `write_tfrecords`, `read_tfrecords` | TFRecord shards of `tf.train.Example` |
"""

from tf_fm.data.dataframe import read_dataframe
from tf_fm.data.delimited import (
    AVAZU_COLUMNS,
    CRITEO_CATEGORICAL,
    CRITEO_COLUMNS,
    CRITEO_NUMERIC,
    infer_column_types,
    read_avazu,
    read_criteo,
    read_csv,
)
from tf_fm.data.libsvm import (
    LibFFMField,
    LibSVMStats,
    libffm_features,
    libsvm_feature,
    libsvm_field,
    read_libffm,
    read_libsvm,
    scan_libffm_fields,
    scan_libsvm,
)
from tf_fm.data.text import ReadReport
from tf_fm.data.tfrecord import read_tfrecords, write_tfrecords

__all__ = [
    "AVAZU_COLUMNS",
    "CRITEO_CATEGORICAL",
    "CRITEO_COLUMNS",
    "CRITEO_NUMERIC",
    "LibFFMField",
    "LibSVMStats",
    "ReadReport",
    "infer_column_types",
    "libffm_features",
    "libsvm_feature",
    "libsvm_field",
    "read_avazu",
    "read_criteo",
    "read_csv",
    "read_dataframe",
    "read_libffm",
    "read_libsvm",
    "read_tfrecords",
    "scan_libffm_fields",
    "scan_libsvm",
    "write_tfrecords",
]
