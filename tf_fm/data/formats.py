"""Files by format name: read them again from a `DataSpec`, propose their schema.

A training run keeps how its files are read (`DataSpec`: format, task, label,
delimiter, ...) so that evaluate, predict and export read new files the same
way. `read_files` dispatches to the format's reader; `infer_format_schema`
proposes the format's `FeatureSchema`:

| format | schema |
|---|---|
| `criteo` | I1..I13 `log1p` numeric (missing = 0), C1..C26 vocabularies |
| `avazu` | every column but `id` and `click` a vocabulary |
| `csv` | `tf_fm.schema.infer_feature` per column of a sample |
| `libsvm` | one weighted integer multi-valued feature (`libsvm_feature`) |
| `libffm` | one such feature per field, `field_<f>`, of one shared id space (`libffm_features`) |
| `tfrecord` | `infer_feature` per column of a sample |
"""

import contextlib
import dataclasses
import glob
import gzip
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from tf_fm import schema as schema_lib
from tf_fm.data import text
from tf_fm.data.catalog import FORMATS
from tf_fm.data.delimited import (
    AVAZU_COLUMNS,
    CRITEO_CATEGORICAL,
    CRITEO_NUMERIC,
    read_avazu,
    read_criteo,
    read_csv,
)
from tf_fm.data.libsvm import (
    LibFFMField,
    libffm_features,
    libsvm_feature,
    read_libffm,
    read_libsvm,
    scan_libffm_fields,
    scan_libsvm,
)
from tf_fm.data.tfrecord import check_shards, naming_damaged_shards, read_tfrecords
from tf_fm.errors import UsageError
from tf_fm.features import CategoricalFeature, NumericFeature

SAMPLE_ROWS = 20_000


@dataclasses.dataclass
class DataSpec:
    """How to read a run's files again (kept in the run directory's run.json).

    Args:
        format: str. One of `FORMATS`.
        task: str. `"binary"` or `"regression"`. Defaults to `"binary"`.
        label: str or None. Label column of `csv`. Defaults to None.
        delimiter: str. Cell delimiter of `csv`. Defaults to `","`.
        separator: str or None. Separator of multi-valued `csv` cells.
        column_types: dict or None. `csv`: column -> `"string"` / `"float"`,
            set from the schema.
        max_length: int or None. `libsvm` / `libffm`: entries per row.
        libffm_fields: list or None. `libffm`: `[field, max_length]` per
            field of the files (`LibFFMField`), one feature each; None reads
            a libFFM file as one multi-valued feature (runs made before the
            fields were read).
    """

    format: str
    task: str = "binary"
    label: str | None = None
    delimiter: str = ","
    separator: str | None = None
    column_types: dict | None = None
    max_length: int | None = None
    libffm_fields: list | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise UsageError(f"unknown format {self.format!r}; one of {', '.join(FORMATS)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "DataSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})


def resolve_files(patterns: str | Sequence[str], what: str = "data") -> list[str]:
    """The files of each path or glob, in the order given (a glob's matches sorted).

    Raises:
        UsageError: a pattern matches no file, or names a directory.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    files = []
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            if os.path.isdir(pattern):
                raise UsageError(f"{what}: {pattern} is a directory; give files or a glob")
            raise UsageError(f"{what}: no such file: {pattern}")
        files.extend(matches)
    return files


def first_line(path: str) -> str:
    """The first line of a (possibly gzipped) text file, undecodable bytes replaced."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.readline().rstrip("\r\n")


def _criteo_has_label(files):
    cells = first_line(files[0]).split("\t")
    if len(cells) in (39, 40):
        return len(cells) == 40
    raise UsageError(
        f"{files[0]}:1: {len(cells)} TAB separated cells; Criteo rows have 40 "
        "(label, I1..I13, C1..C26) or 39 (no label)"
    )


def _csv_label(spec, files, need_label):
    columns = list(pd.read_csv(files[0], sep=spec.delimiter, nrows=0).columns)
    if spec.label in columns:
        return spec.label
    if need_label:
        raise UsageError(f"{files[0]}: no column '{spec.label}' (the label)")
    return None


def read_files(
    spec: DataSpec,
    files: Sequence[str],
    *,
    batch_size: int = 1024,
    shuffle_buffer: int | None = None,
    seed: int | None = None,
    on_error: str = "raise",
    report: text.ReadReport | None = None,
    need_label: bool = True,
) -> tf.data.Dataset:
    """Raw `(features, label)` batches of `files` (features only where there is no label).

    Args:
        spec: `DataSpec`, how to read the format.
        files: list of paths.
        batch_size, shuffle_buffer, seed, on_error, report: as the readers
            take them (`deterministic` order when not shuffling).
        need_label: bool. Whether a file without its label column is an
            error (training, evaluation) or read as features (predict).

    Returns:
        The reader's `tf.data.Dataset`.
    """
    common = {
        "batch_size": batch_size,
        "shuffle_buffer": shuffle_buffer,
        "seed": seed,
        "deterministic": shuffle_buffer is None,
    }
    lines = {**common, "on_error": on_error, "report": report, "task": spec.task}
    if spec.format == "criteo":
        with_label = _criteo_has_label(files)
        if need_label and not with_label:
            raise UsageError(f"{files[0]} has no label column (39 cells a line)")
        return read_criteo(files, with_label=with_label, **lines)
    if spec.format == "avazu":
        header = first_line(files[0]).split(",")[0] == "id"
        return read_avazu(files, header=header, **lines)
    if spec.format == "csv":
        label = _csv_label(spec, files, need_label)
        return read_csv(
            files,
            label=label,
            delimiter=spec.delimiter,
            column_types=spec.column_types,
            **lines,
        )
    if spec.format == "libsvm":
        return read_libsvm(files, max_length=spec.max_length, **lines)
    if spec.format == "libffm":
        return read_libffm(
            files,
            max_length=spec.max_length,
            with_fields=False,
            fields=spec.libffm_fields,
            **lines,
        )
    check_shards(files)  # a cut-short shard: its name, not TensorFlow's bare offset
    return read_tfrecords(files, **common)


def naming_files(spec: DataSpec, files: Sequence[str]):
    """Context in which a read of `files` fails naming the file, not only an offset.

    The text readers name `path:line` themselves; for `tfrecord` a damaged
    record's `DataLossError` is turned into `<shard>: corrupted record at
    byte N` (`tfrecord.naming_damaged_shards`).
    """
    if spec.format == "tfrecord":
        return naming_damaged_shards(files)
    return contextlib.nullcontext()


def fit_spec_to_schema(spec: DataSpec, schema: "schema_lib.FeatureSchema") -> None:
    """Sets what the reader of `spec` takes from the schema (libSVM row length, csv types).

    A `libffm` schema of `libffm_features` (features `field_<f>`) gives
    `spec.libffm_fields`; one of the single feature `"features"` (runs
    made before) reads each row as that feature.
    """
    legacy = [f.name for f in schema.features] == ["features"]
    if spec.format == "libffm" and not legacy:
        spec.libffm_fields = [list(f) for f in libffm_layout(schema)]
        spec.max_length = sum(length for _, length in spec.libffm_fields)
    elif spec.format in ("libsvm", "libffm") and spec.max_length is None:
        spec.max_length = schema.features[0].max_length
    if spec.format == "csv" and spec.column_types is None:
        spec.column_types = csv_column_types(schema)


def libffm_layout(schema: "schema_lib.FeatureSchema") -> list[LibFFMField]:
    """The libFFM fields a schema of `libffm_features` reads (its features `field_<f>`).

    Raises:
        UsageError: a feature is not a `field_<f>` feature of integer ids.
    """
    layout = []
    for feature in schema.features:
        number = feature.name.removeprefix("field_")
        if not number.isdigit() or getattr(feature, "encoding", None) != "integer":
            raise UsageError(
                f"a libffm schema has one feature 'field_<f>' of integer ids per libFFM field "
                f"(tf_fm.data.libffm_features); '{feature.name}' is not one"
            )
        layout.append(LibFFMField(int(number), schema.max_length(feature.name)))
    return layout


# === Schema per format ===


def _tune(feature, values, min_count):
    """An inferred feature as a run trains it: the run's `min_count`, numeric defaults.

    A numeric feature always gets a default (the sample's finite mean, 0
    without one): a file much larger than the sample may have missing values
    the sample had not.
    """
    if getattr(feature, "encoding", None) == "vocabulary":
        return dataclasses.replace(feature, min_count=min_count)
    if feature.kind == "numeric" and feature.default is None:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
        finite = numbers[np.isfinite(numbers)]
        return dataclasses.replace(feature, default=float(finite.mean()) if len(finite) else 0.0)
    return feature


def _frame_schema(frame, label, separator, min_count, categorical, numeric, notes=None):
    """`infer_schema` on a sample, `categorical` / `numeric` forcing a column's kind."""
    missing = sorted((set(categorical) | set(numeric)) - set(frame.columns))
    if missing:
        raise UsageError(f"--categorical/--numeric: no such column {missing}")
    frame = frame.copy()
    for name in categorical:
        frame[name] = frame[name].astype("string")
    for name in numeric:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    schema = schema_lib.infer_schema(frame, label=label, separator=separator, notes=notes)
    features = [_tune(f, frame[f.name], min_count) for f in schema.features]
    return schema_lib.FeatureSchema(features, label=label)


def csv_column_types(schema: schema_lib.FeatureSchema) -> dict[str, str]:
    """How `read_csv` types each feature's column: `"float"` for numeric, `"string"` else.

    Raises:
        UsageError: a categorical or multi-valued feature declared with an
            integer dtype: csv cells are read as text, so it must be declared
            `dtype="string"` (the default of a vocabulary), naming the feature.
    """
    for feature in schema.features:
        if feature.kind != "numeric" and feature.raw_dtype != "string":
            raise UsageError(
                f"Feature '{feature.name}' is declared dtype={feature.raw_dtype!r}, but csv cells "
                "are read as text: declare it with dtype='string' (encoding='vocabulary' or "
                "'hash') to read it from csv"
            )
    return {f.name: "float" if f.kind == "numeric" else "string" for f in schema.features}


def _csv_schema(spec, files, min_count, categorical, numeric, notes):
    try:
        frame = pd.read_csv(files[0], sep=spec.delimiter, nrows=SAMPLE_ROWS)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UsageError(f"{files[0]}: {str(error).strip()}") from None
    if spec.label not in frame.columns:
        raise UsageError(
            f"{files[0]}: no column '{spec.label}' (--label); columns: {list(frame.columns)}"
        )
    schema = _frame_schema(
        frame, spec.label, spec.separator, min_count, categorical, numeric, notes
    )
    spec.column_types = csv_column_types(schema)
    return schema


def _tfrecord_frame(spec, files):
    columns = {}
    for features, _ in read_files(spec, files, batch_size=1024).take(SAMPLE_ROWS // 1024 + 1):
        for name, values in features.items():
            columns.setdefault(name, []).append(values.numpy())
    frame = {}
    for name, parts in columns.items():
        values = np.concatenate(parts)
        if values.ndim != 1:
            raise UsageError(
                f"tfrecord column '{name}' has shape {values.shape[1:]} per row; schema "
                "inference takes one raw value per row: pass --schema"
            )
        if values.dtype == object:
            values = [v.decode("utf-8", errors="replace") for v in values]
        frame[name] = values
    return pd.DataFrame(frame)


def _tfrecord_schema(spec, files, min_count, categorical, numeric, notes):
    frame = _tfrecord_frame(spec, files)
    # int64 columns stay int64 ids (the shards' type), unless forced numeric.
    ints = [n for n in frame.columns if pd.api.types.is_integer_dtype(frame[n])]
    ints = [n for n in ints if n not in numeric]
    rest = _frame_schema(
        frame.drop(columns=ints), None, None, min_count, categorical, numeric, notes
    )
    declared = {f.name: f for f in rest.features}
    declared.update({n: CategoricalFeature(n, dtype="int64", min_count=min_count) for n in ints})
    return schema_lib.FeatureSchema([declared[n] for n in frame.columns])


def infer_format_schema(
    spec: DataSpec,
    files: Sequence[str],
    *,
    min_count: int = 2,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    notes: list | None = None,
) -> schema_lib.FeatureSchema:
    """The default `FeatureSchema` of a format (not adapted).

    For `csv` it also sets `spec.column_types` (how `read_csv` types each
    column); for `libsvm` `spec.max_length` (one scan of the files); for
    `libffm` one feature per field of the files, sharing one id space
    (`libffm_features`), and `spec.libffm_fields` (two scans).

    Args:
        spec: `DataSpec` of the files.
        files: list of paths; `csv` and `tfrecord` infer from the first
            `SAMPLE_ROWS` rows, `libsvm` / `libffm` scan them all.
        min_count: int. Fewest occurrences of a vocabulary value. Defaults
            to 2.
        categorical, numeric: columns (`csv`, `tfrecord`) forced to that kind.
        notes: list or None. Receives the inference's one-line decisions
            about integer columns (`tf_fm.schema.infer_feature`).

    Returns:
        A `FeatureSchema`.
    """
    if spec.format == "criteo":
        return schema_lib.FeatureSchema(
            [NumericFeature(c, transform="log1p", default=0.0) for c in CRITEO_NUMERIC]
            + [CategoricalFeature(c, min_count=min_count) for c in CRITEO_CATEGORICAL],
            label="label",
        )
    if spec.format == "avazu":
        header = first_line(files[0]).split(",")
        names = header if header[0] == "id" else list(AVAZU_COLUMNS)
        return schema_lib.FeatureSchema(
            [CategoricalFeature(n, min_count=min_count) for n in names if n not in ("id", "click")],
            label="click",
        )
    if spec.format == "libffm":
        stats = scan_libsvm(files, ffm=True)
        fields = scan_libffm_fields(files, num_fields=stats.max_field + 1)
        if not fields:
            raise UsageError(f"no libFFM entry (field:idx:val) found in {', '.join(files)}")
        schema = schema_lib.FeatureSchema(libffm_features(fields, stats.max_index + 1))
        fit_spec_to_schema(spec, schema)
        return schema
    if spec.format == "libsvm":
        feature = libsvm_feature(files)
        spec.max_length = feature.max_length
        return schema_lib.FeatureSchema([feature])
    if spec.format == "csv":
        return _csv_schema(spec, files, min_count, categorical, numeric, notes)
    return _tfrecord_schema(spec, files, min_count, categorical, numeric, notes)
