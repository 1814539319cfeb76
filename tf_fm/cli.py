"""The `tf-fm` command: demo, train, evaluate, predict, export, verify, inspect.

Every verb prints what it does and ends with exit code 0; a bad path, flag,
format or input line ends it with a one-line `tf-fm <verb>: error: ...` and
exit code 2 (usage) or 1 (the data or the model).

A training run lives in one directory (`--output`, default `runs/<model>`):
`run.json` (how to read the data again), `schema.json`, `model.keras`,
`history.json`, `metrics.json` and, while training, `backup/` (Keras
`BackupAndRestore`): rerunning an interrupted `tf-fm train` with the same
`--output` resumes from the last finished epoch.
"""

import argparse
import contextlib
import dataclasses
import glob
import json
import logging
import os
import pathlib
import sys
import time
import warnings

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

import tf_fm
from tf_fm import export as export_lib
from tf_fm import metrics as metrics_lib
from tf_fm import plots as plots_lib
from tf_fm.schema import (
    CategoricalFeature,
    FeatureSchema,
    NumericFeature,
    infer_schema,
)

FORMATS = {
    "criteo": "raw Criteo DAC: TAB separated, no header, label I1..I13 C1..C26 "
    "(a file without the label column is read for predict)",
    "avazu": "Avazu CSV: id, click, hour, C1, ... (header detected from the first line)",
    "csv": "CSV/TSV with a header line (--label, --delimiter, --separator)",
    "libsvm": "libSVM / libFM lines: label idx:val idx:val ...",
    "libffm": "libFFM lines: label field:idx:val ...",
    "tfrecord": "shards written by tf_fm.data.write_tfrecords (with their .spec.json)",
}
RUN_FILE = "run.json"
SCHEMA_FILE = "schema.json"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
BACKUP_DIR = "backup"


class CommandError(Exception):
    """A user error: printed as one line, exit code 2."""


# === Small helpers ===


def _say(*parts):
    print(*parts, flush=True)


def _write_json(path, value):
    """Writes JSON through a temporary file, so a reader never sees half of it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path, what):
    path = pathlib.Path(path)
    if not path.is_file():
        raise CommandError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CommandError(f"{path} is not valid JSON: {error}") from None


def _resolve_files(patterns, flag):
    """Files matching each path or glob of `flag`, in the order given."""
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            if os.path.isdir(pattern):
                raise CommandError(f"{flag}: {pattern} is a directory; give files or a glob")
            raise CommandError(f"{flag}: no such file: {pattern}")
        files.extend(matches)
    return files


def _first_line(path):
    opener = open
    if str(path).endswith(".gz"):
        import gzip

        opener = gzip.open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.readline().rstrip("\r\n")


def _verbosity():
    """Keras fit verbosity: a progress bar on a terminal, one line per epoch otherwise."""
    return 1 if sys.stdout.isatty() else 2


def _binary(task):
    return task == "binary"


def _score(task, labels, predictions):
    """Exact metrics of predictions (tf_fm.metrics), as plain floats."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if _binary(task):
        result = {"logloss": metrics_lib.log_loss(labels, predictions)}
        if 0 < labels.sum() < len(labels):
            result["auc"] = metrics_lib.roc_auc(labels, predictions)
        else:
            result["auc"] = None  # one class only: AUC undefined
        result["positive_rate"] = float(labels.mean()) if len(labels) else None
    else:
        result = {"rmse": metrics_lib.rmse(labels, predictions)}
    result["rows"] = int(len(labels))
    return result


def _format_scores(scores):
    parts = []
    for key in ("auc", "logloss", "rmse"):
        if key in scores:
            value = scores[key]
            parts.append(f"{key} {'n/a' if value is None else f'{value:.4f}'}")
    parts.append(f"rows {scores['rows']:,}")
    return ", ".join(parts)


# === Reading data ===


@dataclasses.dataclass
class DataSpec:
    """How to read one format again (kept in run.json)."""

    format: str
    task: str = "binary"
    label: str | None = None
    delimiter: str = ","
    separator: str | None = None
    column_types: dict | None = None
    max_length: int | None = None
    vocabulary_size: int | None = None

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config):
        return cls(**config)


def _criteo_has_label(files):
    cells = _first_line(files[0]).split("\t")
    if len(cells) == 40:
        return True
    if len(cells) == 39:
        return False
    raise CommandError(
        f"{files[0]}:1: {len(cells)} TAB separated cells; Criteo rows have 40 "
        "(label, I1..I13, C1..C26) or 39 (no label)"
    )


def _csv_has_label(files, spec):
    columns = list(pd.read_csv(files[0], sep=spec.delimiter, nrows=0).columns)
    return spec.label in columns


def read_raw(
    spec,
    files,
    *,
    batch_size=1024,
    shuffle_buffer=None,
    seed=None,
    on_error="raise",
    report=None,
    need_label=True,
):
    """A `tf.data.Dataset` of raw `(features, label)` batches (features only without a label)."""
    common = {
        "batch_size": batch_size,
        "shuffle_buffer": shuffle_buffer,
        "seed": seed,
        "deterministic": shuffle_buffer is None,
    }
    text = {**common, "on_error": on_error, "report": report}
    fmt = spec.format
    if fmt == "criteo":
        with_label = _criteo_has_label(files)
        if need_label and not with_label:
            raise CommandError(f"{files[0]} has no label column (39 cells a line)")
        return tf_fm.data.read_criteo(files, with_label=with_label, task=spec.task, **text)
    if fmt == "avazu":
        header = _first_line(files[0]).split(",")[0] == "id"
        return tf_fm.data.read_avazu(files, header=header, task=spec.task, **text)
    if fmt == "csv":
        label = spec.label
        if not _csv_has_label(files, spec):
            if need_label:
                raise CommandError(f"{files[0]}: no column '{spec.label}' (the label)")
            label = None
        return tf_fm.data.read_csv(
            files,
            label=label,
            delimiter=spec.delimiter,
            column_types=spec.column_types,
            task=spec.task,
            **text,
        )
    if fmt == "libsvm":
        return tf_fm.data.read_libsvm(files, max_length=spec.max_length, task=spec.task, **text)
    if fmt == "libffm":
        return tf_fm.data.read_libffm(
            files, max_length=spec.max_length, with_fields=False, task=spec.task, **text
        )
    if fmt == "tfrecord":
        return tf_fm.data.read_tfrecords(files, **common)
    raise CommandError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# === Schema for a format ===


def _with_default(feature, values):
    """A numeric feature whose missing values take the sample mean (0 without one)."""
    if feature.default is not None:
        return feature
    finite = values[np.isfinite(values)] if values is not None else np.array([])
    return dataclasses.replace(feature, default=float(finite.mean()) if len(finite) else 0.0)


def _criteo_schema(min_count):
    return FeatureSchema(
        [
            NumericFeature(c, transform="log1p", default=0.0)
            for c in tf_fm.data.CRITEO_NUMERIC  # I1..I13: counts, heavy tailed
        ]
        + [CategoricalFeature(c, min_count=min_count) for c in tf_fm.data.CRITEO_CATEGORICAL],
        label="label",
    )


def _frame_schema(frame, spec, min_count, categorical, numeric, max_integer_cardinality=1000):
    """`infer_schema` on a sample, with integer ids of few values read as strings."""
    frame = frame.copy()
    for name in frame.columns:
        values = frame[name]
        few = values.nunique() <= max_integer_cardinality
        if name in categorical or (pd.api.types.is_integer_dtype(values) and few):
            frame[name] = values.astype("string")
    overrides = {n: CategoricalFeature(n, min_count=min_count) for n in categorical}
    for name in numeric:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
        overrides[name] = _with_default(NumericFeature(name, transform="standardize"), values)
    missing = sorted((set(categorical) | set(numeric)) - set(frame.columns))
    if missing:
        raise CommandError(f"--categorical/--numeric: no such column {missing}")
    schema = infer_schema(frame, label=spec.label, separator=spec.separator, overrides=overrides)
    features = []
    for feature in schema.features:
        if isinstance(feature, NumericFeature):
            values = pd.to_numeric(frame[feature.name], errors="coerce").to_numpy(np.float64)
            feature = _with_default(feature, values)
        elif feature.encoding == "vocabulary" and feature.name not in overrides:
            feature = dataclasses.replace(feature, min_count=min_count)
        features.append(feature)
    return FeatureSchema(features, label=spec.label)


def infer_format_schema(
    spec, files, *, min_count=2, categorical=(), numeric=(), sample_rows=20_000
):
    """The default `FeatureSchema` for a format (not adapted); updates `spec.column_types`."""
    if spec.format == "criteo":
        return _criteo_schema(min_count)
    if spec.format == "avazu":
        header = _first_line(files[0]).split(",")
        names = header if header[0] == "id" else list(tf_fm.data.AVAZU_COLUMNS)
        return FeatureSchema(
            [CategoricalFeature(n, min_count=min_count) for n in names if n not in ("id", "click")],
            label="click",
        )
    if spec.format == "csv":
        frame = pd.read_csv(files[0], sep=spec.delimiter, nrows=sample_rows)
        if spec.label not in frame.columns:
            raise CommandError(
                f"{files[0]}: no column '{spec.label}' (--label); columns: {list(frame.columns)}"
            )
        schema = _frame_schema(frame, spec, min_count, categorical, numeric)
        spec.column_types = {
            f.name: "float" if isinstance(f, NumericFeature) else "string" for f in schema.features
        }
        return schema
    if spec.format == "tfrecord":
        raw = read_raw(spec, files, batch_size=1024)
        columns = export_lib._raw_columns(raw, max_rows=sample_rows)
        frame = {}
        for name, values in columns.items():
            if values.ndim != 1:
                raise CommandError(
                    f"tfrecord column '{name}' has shape {values.shape[1:]} per row; schema "
                    "inference takes one raw value per row: pass --schema"
                )
            frame[name] = (
                [v.decode("utf-8", errors="replace") for v in values]
                if values.dtype == object
                else values
            )
        frame = pd.DataFrame(frame)
        overrides = {
            n: CategoricalFeature(n, dtype="int64", min_count=min_count)
            for n in frame.columns
            if pd.api.types.is_integer_dtype(frame[n]) and n not in numeric
        }
        schema = _frame_schema(  # the label is not among the features read back
            frame.drop(columns=list(overrides)),
            dataclasses.replace(spec, label=None),
            min_count,
            categorical,
            numeric,
        )
        features = {f.name: f for f in [*schema.features, *overrides.values()]}
        return FeatureSchema([features[n] for n in frame.columns if n in features])
    raise CommandError(f"format {spec.format!r} has no schema (its ids are the model's inputs)")


# === Models ===


def _parse_units(text):
    try:
        units = tuple(int(u) for u in text.split(",") if u.strip())
    except ValueError:
        raise CommandError(
            f"--dnn-units: expected comma separated integers, got {text!r}"
        ) from None
    if any(u <= 0 for u in units):
        raise CommandError(f"--dnn-units: units must be positive, got {text!r}")
    return units


def build_model(args, fields, task):
    common = {
        "embedding_dim": args.embedding_dim,
        "task": task,
        "embeddings_l2": args.l2,
        "linear_l2": args.l2,
    }
    if args.model == "fm":
        model = tf_fm.FM(fields, **common)
    else:
        model = tf_fm.DeepFM(
            fields,
            dnn_units=_parse_units(args.dnn_units),
            dnn_dropout=args.dropout,
            dnn_batch_norm=args.batch_norm,
            **common,
        )
    return tf_fm.compile_model(model, learning_rate=args.learning_rate)


def training_callbacks(task, validation, patience, backup_dir=None):
    """`tf_fm.default_callbacks` with validation data; only the backup without."""
    if validation:
        return tf_fm.default_callbacks(task, patience=patience, backup_dir=backup_dir)
    if backup_dir is None:
        return []
    return [keras.callbacks.BackupAndRestore(str(backup_dir))]


class EpochLog(keras.callbacks.Callback):
    """Writes the per-epoch logs to a JSON file after every epoch, across resumes.

    On a resumed run (`BackupAndRestore`), the epochs logged before the
    interruption are kept up to the epoch training restarts from, so the file
    always holds one entry per finished epoch of the whole run.
    """

    def __init__(self, path):
        super().__init__()
        self.path = pathlib.Path(path)
        self.history = {}
        if self.path.is_file():
            self.history = json.loads(self.path.read_text(encoding="utf-8"))
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:  # the first epoch of this fit: drop anything later
            self.history = {k: v[:epoch] for k, v in self.history.items()}
            self._started = True

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        _write_json(self.path, self.history)


def _save_model(model, path):
    """`model.save` through a temporary name in the same directory, then renamed."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def _predict(model, dataset, with_labels=True):
    """Predictions (and labels) over a dataset, in order, with a progress bar."""
    outputs, labels = [], []
    bar = keras.utils.Progbar(None, unit_name="row", verbose=1 if sys.stdout.isatty() else 0)
    rows = 0
    for element in dataset:
        features, label = element if isinstance(element, tuple) else (element, None)
        outputs.append(np.asarray(model.predict_on_batch(features)).reshape(-1))
        if with_labels and label is not None:
            labels.append(label.numpy().reshape(-1))
        rows += len(outputs[-1])
        bar.update(rows)
    if sys.stdout.isatty():
        print(flush=True)
    predictions = np.concatenate(outputs) if outputs else np.zeros(0, np.float32)
    return predictions, (np.concatenate(labels) if labels else None)


# === Run directories ===


class Run:
    """A training run directory: what `tf-fm train` wrote."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        if not (self.path / RUN_FILE).is_file():
            raise CommandError(
                f"{self.path} is not a tf-fm run directory (no {RUN_FILE}; `tf-fm train "
                "--output DIR` writes one)"
            )
        self.config = _read_json(self.path / RUN_FILE, "run file")
        self.spec = DataSpec.from_dict(self.config["data"])

    @property
    def task(self):
        return self.spec.task

    def schema(self):
        path = self.path / SCHEMA_FILE
        return FeatureSchema.load(path) if path.is_file() else None

    def model(self):
        path = self.path / MODEL_FILE
        if not path.is_file():
            raise CommandError(f"{path} not found: the run has not finished training")
        return keras.saving.load_model(path)

    def raw_model(self):
        """The model on raw features (the schema's preprocessing + the trained model)."""
        model, schema = self.model(), self.schema()
        return schema.serving_model(model) if schema is not None else model


# === Verbs ===


def cmd_train(args):
    out = pathlib.Path(args.output or f"runs/{args.model}")
    files = _resolve_files(args.data, "--data")
    valid_files = _resolve_files(args.valid, "--valid") if args.valid else []
    backup = out / BACKUP_DIR
    resuming = backup.is_dir() and any(backup.iterdir())
    if (out / MODEL_FILE).exists() and not resuming and not args.overwrite:
        raise CommandError(f"{out} already holds a trained model; pass --overwrite or --output")
    if args.schema and args.format in ("libsvm", "libffm"):
        raise CommandError(f"--schema: format {args.format} reads ids directly, no schema")
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    spec = DataSpec(
        format=args.format,
        task=args.task,
        label=args.label,
        delimiter=args.delimiter,
        separator=args.separator,
    )

    # --- Schema (or the libSVM field) ---
    schema = None
    if args.format in ("libsvm", "libffm"):
        _say(f"Scanning {len(files) + len(valid_files)} file(s) for ids and row lengths ...")
        field = tf_fm.data.libsvm_field(files + valid_files, ffm=args.format == "libffm")
        spec.max_length, spec.vocabulary_size = field.max_length, field.vocabulary_size
        fields = [field]
        _say(f"  {field.vocabulary_size:,} ids, at most {field.max_length} per row")
    else:
        if args.schema:
            schema = FeatureSchema.load(args.schema)
            source = args.schema
        elif resuming and (out / SCHEMA_FILE).is_file():
            schema = FeatureSchema.load(out / SCHEMA_FILE)
            source = f"{out / SCHEMA_FILE} (resuming)"
        else:
            schema = infer_format_schema(
                spec,
                files,
                min_count=args.min_count,
                categorical=args.categorical or (),
                numeric=args.numeric or (),
            )
            source = "inferred"
        if spec.format == "csv" and spec.column_types is None:
            spec.column_types = {
                f.name: "float" if isinstance(f, NumericFeature) else "string"
                for f in schema.features
            }
        if not schema.adapted:
            _say("Learning the schema (vocabularies, statistics): one pass over --data ...")
            start = time.monotonic()
            schema.adapt(read_raw(spec, files, batch_size=4096, on_error=args.on_error))
            _say(f"  done in {time.monotonic() - start:.1f} s")
        schema.save(out / SCHEMA_FILE)
        _say(f"Schema ({source}), written to {out / SCHEMA_FILE}:")
        _say(str(schema))
        fields = schema.fields()
    recorded = {k: v for k, v in vars(args).items() if k != "func"}
    recorded["data"] = [os.path.abspath(f) for f in files]
    recorded["valid"] = [os.path.abspath(f) for f in valid_files]
    _write_json(out / RUN_FILE, {"data": spec.to_dict(), "model": args.model, "args": recorded})

    # --- Data ---
    report = tf_fm.data.ReadReport() if args.on_error == "skip" else None

    def pipeline(paths, shuffle):
        raw = read_raw(
            spec,
            paths,
            batch_size=args.batch_size,
            shuffle_buffer=args.shuffle_buffer if shuffle else None,
            seed=args.seed,
            on_error=args.on_error,
            report=report,
        )
        return schema.preprocess(raw) if schema is not None else raw

    train = pipeline(files, shuffle=True)
    valid = pipeline(valid_files, shuffle=False) if valid_files else None

    # --- Fit ---
    model = build_model(args, fields, spec.task)
    if not valid_files:
        _say("No --valid files: no early stopping or learning-rate decay, fixed --epochs.")
    epoch_log = EpochLog(out / HISTORY_FILE)
    if not resuming:
        epoch_log.history = {}
    callbacks = [
        epoch_log,
        *training_callbacks(spec.task, bool(valid_files), args.patience, backup),
    ]
    if resuming:
        _say(f"Resuming from {backup} (the last finished epoch).")
    _say(f"Training {args.model} for at most {args.epochs} epochs ...")
    start = time.monotonic()
    model.fit(
        train,
        validation_data=valid,
        epochs=args.epochs,
        shuffle=False,  # the reader shuffles (files, then windows of rows)
        callbacks=callbacks,
        verbose=_verbosity(),
    )
    seconds = time.monotonic() - start
    _save_model(model, out / MODEL_FILE)
    history = epoch_log.history

    # --- Evaluate, report ---
    result = {"model": args.model, "epochs_run": len(history.get("loss", [])), "seconds": seconds}
    labels = predictions = None
    if valid_files:
        predictions, labels = _predict(model, valid)
        result["valid"] = _score(spec.task, labels, predictions)
        key = "val_auc" if _binary(spec.task) else "val_rmse"
        if history.get(key):
            best = (np.argmax if _binary(spec.task) else np.argmin)(history[key])
            result["best_epoch"] = int(best) + 1
    if report is not None:
        result["skipped_lines"] = report.skipped
        if report.skipped:
            _say(f"Skipped {report.skipped} malformed line(s), e.g. {report.examples[:3]}")
    _write_json(out / METRICS_FILE, result)
    if args.metrics_out:
        _write_json(args.metrics_out, result)
    _say(f"Trained in {seconds:.1f} s ({result['epochs_run']} epochs); model: {out / MODEL_FILE}")
    if "valid" in result:
        _say(f"Validation: {_format_scores(result['valid'])}")
    if args.plots:
        paths = plots_lib.save_plots(
            args.plots, history=history, labels=labels, predictions=predictions, task=spec.task
        )
        _say(f"Plots: {', '.join(str(p) for p in paths.values())}")
    if args.export:
        sample = read_raw(spec, valid_files or files, batch_size=1000, on_error=args.on_error)
        _export(model, schema, args.export, sample, result.get("valid"), spec.task)
    return 0


def _export(model, schema, export_dir, sample, scores, task, overwrite=False, version=None):
    """Exports and verifies; `sample`: raw rows (a dataset or columns, first 1000 used)."""
    warmup = 10
    try:
        import tensorflow_serving.apis  # noqa: F401
    except ImportError:
        warmup = 0
        _say(
            "  (tensorflow-serving-api is not installed: no warm-up records; "
            "pip install 'tf-fm[serving]')"
        )
    _say(f"Exporting to {export_dir} and verifying in a TensorFlow-only process ...")
    metrics = {f"valid_{k}": v for k, v in (scores or {}).items() if v is not None}
    path = tf_fm.export_saved_model(
        model,
        export_dir,
        schema=schema,
        sample=sample,
        metrics=metrics or None,
        warmup_rows=warmup,
        task=task,
        version=version,
        overwrite=overwrite and version is not None,
    )
    report = export_lib.read_metadata(path).get("verification", {})
    _say(
        f"  published {path}: verified on {report.get('rows')} rows, "
        f"max abs diff {_worst_diff(report):.1e}"
    )
    return path


def _worst_diff(report):
    """The largest difference of a verification report (check name -> max abs diff)."""
    return max(report.get("max_abs_diff", {}).values(), default=0.0)


def cmd_evaluate(args):
    run = Run(args.run)
    files = _resolve_files(args.data, "--data")
    raw_model = run.raw_model()
    dataset = read_raw(run.spec, files, batch_size=args.batch_size)
    predictions, labels = _predict(raw_model, dataset)
    scores = _score(run.task, labels, predictions)
    _say(f"{', '.join(files)}: {_format_scores(scores)}")
    if args.metrics_out:
        _write_json(args.metrics_out, scores)
    if args.plots and _binary(run.task):
        paths = plots_lib.save_plots(
            args.plots, labels=labels, predictions=predictions, task=run.task
        )
        _say(f"Plots: {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_predict(args):
    run = Run(args.run)
    files = _resolve_files(args.data, "--data")
    raw_model = run.raw_model()
    dataset = read_raw(run.spec, files, batch_size=args.batch_size, need_label=False)
    predictions, _ = _predict(raw_model, dataset, with_labels=False)
    column = "probability" if _binary(run.task) else "prediction"
    out = pathlib.Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pd.DataFrame({column: predictions}).to_csv(tmp, index=False, float_format="%.7g")
    os.replace(tmp, out)
    _say(f"Wrote {len(predictions):,} predictions ({column}, one per input row, in order) to {out}")
    return 0


def cmd_export(args):
    run = Run(args.run)
    model, schema = run.model(), run.schema()
    files = _resolve_files(args.sample, "--sample") if args.sample else None
    if files is None:
        config_args = run.config.get("args", {})
        files = config_args.get("valid") or config_args.get("data")
        files = [f for f in files or [] if os.path.isfile(f)]
        if not files:
            raise CommandError("the run's data files are gone; pass --sample FILES")
    sample = read_raw(run.spec, files, batch_size=1000)
    scores = _read_json(run.path / METRICS_FILE, "metrics file").get("valid")
    _export(model, schema, args.export_dir, sample, scores, run.task, args.overwrite, args.version)
    return 0


def _version_dir(path):
    path = pathlib.Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    versions = export_lib.list_versions(path)
    if not versions:
        raise CommandError(f"{path}: no SavedModel (no saved_model.pb, no numbered versions)")
    return path / str(versions[-1])


def _warmup_rows(path):
    """The raw rows of an export's warm-up records (one row per record)."""
    file = path / export_lib.ASSETS_EXTRA / export_lib.WARMUP_FILENAME
    if not file.is_file():
        return None
    from tensorflow_serving.apis import prediction_log_pb2

    columns = {}
    for record in tf.data.TFRecordDataset(str(file)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        for name, proto in log.predict_log.request.inputs.items():
            columns.setdefault(name, []).append(tf.make_ndarray(proto))
    return {k: np.concatenate(v) for k, v in columns.items()} or None


def cmd_verify(args):
    path = _version_dir(args.dir)
    if args.data:
        if not args.format:
            raise CommandError("--data needs --format")
        files = _resolve_files(args.data, "--data")
        spec = DataSpec(format=args.format, label=args.label, delimiter=args.delimiter)
        sample = read_raw(spec, files, batch_size=1000, need_label=False)
    else:
        sample = _warmup_rows(path)
        if sample is None:
            raise CommandError(f"{path} has no warm-up records: pass --data FILES --format F")
    _say(f"Verifying {path} in a TensorFlow-only process ...")
    report = export_lib.verify(path, sample)
    worst = _worst_diff(report)
    _say(
        f"OK: {report.get('rows')} rows, signatures {', '.join(report.get('signatures', []))}; "
        f"max abs diff {worst:.2e}; warm-up records replayed: "
        f"{report.get('warmup_records_replayed', 0)}"
    )
    return 0


def _describe_export(path):
    path = _version_dir(path)
    _say(f"SavedModel {path}")
    versions = export_lib.list_versions(path.parent)
    if versions:
        _say(f"  versions in {path.parent}: {versions}")
    for name, info in export_lib._describe_signatures(path).items():
        _say(f"  signature {name!r} ({info.get('method_name', '')}):")
        for kind in ("inputs", "outputs"):
            for key, tensor in sorted(info.get(kind, {}).items()):
                _say(f"    {kind[:-1]:<6} {key:<24} {tensor['dtype']} {tensor['shape']}")
    try:
        meta = export_lib.read_metadata(path)
    except FileNotFoundError:
        _say("  (no assets.extra/tf_fm.json: not exported by tf_fm)")
        return
    if meta.get("schema"):
        _say("  schema:")
        _say("    " + str(FeatureSchema.from_dict(meta["schema"])).replace("\n", "\n    "))
    if meta.get("metrics"):
        _say(f"  metrics: {json.dumps(meta['metrics'], sort_keys=True)}")
    report = meta.get("verification")
    if report:
        _say(
            f"  verified: {report.get('rows')} rows at batch sizes {report.get('batch_sizes')}, "
            f"loaders {', '.join(report.get('loaders', []))}; max abs diff "
            f"{_worst_diff(report):.1e}; warm-up records replayed "
            f"{report.get('warmup_records_replayed', 0)}"
        )
    versions = meta.get("library_versions")
    if versions:
        _say(f"  exported {meta.get('created', '')} with {json.dumps(versions, sort_keys=True)}")


def _describe_run(run):
    _say(
        f"Run {run.path}: model {run.config.get('model')}, format {run.spec.format}, "
        f"task {run.task}"
    )
    schema = run.schema()
    if schema is not None:
        _say(str(schema))
    for name in (METRICS_FILE,):
        if (run.path / name).is_file():
            _say(f"{name}: {json.dumps(_read_json(run.path / name, name), sort_keys=True)}")


def cmd_inspect(args):
    path = pathlib.Path(args.dir)
    if not path.exists():
        raise CommandError(f"no such directory: {path}")
    if (path / RUN_FILE).is_file():
        _describe_run(Run(path))
    else:
        _describe_export(path)
    return 0


def cmd_demo(args):
    from tf_fm import demo

    return demo.run(args)


# === Command line ===

_EPILOG = "Run `tf-fm <verb> --help` for the flags of a verb."


def _add_data_flags(parser, required=True, formats=True):
    parser.add_argument(
        "--data", nargs="+", required=required, metavar="FILE", help="data files or globs"
    )
    if formats:
        parser.add_argument(
            "--format",
            choices=list(FORMATS),
            required=required,
            help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()),
        )
        parser.add_argument(
            "--label", default="label", help="label column of --format csv (default: label)"
        )
        parser.add_argument(
            "--delimiter",
            default=",",
            help="cell delimiter of --format csv, e.g. ',' or '\\t' (default: ',')",
        )


def _delimiter(text):
    return {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(text, text)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (`tf-fm train: error: ...`), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser():
    parser = _Parser(
        prog="tf-fm",
        description="Factorization Machines and DeepFM (Keras 3, TensorFlow): train, "
        "evaluate, export for TF Serving.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tf-fm {tf_fm.__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="keep TensorFlow's log lines and warnings"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name, func, help_text):
        sub = verbs.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--verbose", action="store_true", help="keep TensorFlow's log lines and warnings"
        )
        sub.set_defaults(func=func)
        return sub

    # --- demo ---
    demo = verb(
        "demo",
        cmd_demo,
        "synthetic data with a known truth: FM and DeepFM vs the Bayes-optimal AUC, "
        "DeepFM exported and verified, plots",
    )
    demo.add_argument(
        "--export-dir",
        default="saved_models/deepfm_demo",
        help="where DeepFM is exported, as <dir>/<version> (default: saved_models/deepfm_demo)",
    )
    demo.add_argument(
        "--plots", default="plots/demo", help="directory for the PNG plots (default: plots/demo)"
    )
    demo.add_argument("--rows", type=int, default=100_000, help="training rows (default: 100000)")
    demo.add_argument("--epochs", type=int, default=8, help="most epochs per model (default: 8)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    # --- train ---
    train = verb(
        "train",
        cmd_train,
        "train FM or DeepFM on your files (schema inferred or given), early stopping on "
        "validation AUC, resumable; optionally plots and a verified export",
    )
    _add_data_flags(train)
    data = train.add_argument_group("data")
    data.add_argument(
        "--valid",
        nargs="+",
        metavar="FILE",
        help="validation files or globs: early stopping, LR decay and the reported metrics "
        "use them (without them: fixed --epochs)",
    )
    data.add_argument(
        "--schema",
        metavar="FILE",
        help="schema.json (tf_fm.FeatureSchema.save) to use instead of inferring one",
    )
    data.add_argument(
        "--task",
        choices=["binary", "regression"],
        default="binary",
        help="binary: labels 0/1 (or -1/+1), probability out, AUC/logloss; regression: real "
        "labels, RMSE (default: binary)",
    )
    data.add_argument(
        "--min-count",
        type=int,
        default=2,
        help="inferred vocabularies: fewest occurrences a value needs for its own id; rarer "
        "values share the OOV id (default: 2)",
    )
    data.add_argument(
        "--separator", help="csv: separator of multi-valued cells, e.g. '|' (default: none)"
    )
    data.add_argument(
        "--categorical", nargs="+", metavar="COL", help="csv: columns to treat as categorical"
    )
    data.add_argument(
        "--numeric", nargs="+", metavar="COL", help="csv: columns to treat as numeric"
    )
    data.add_argument(
        "--shuffle-buffer",
        type=int,
        default=100_000,
        help="rows shuffled together (files in random order, then windows of this many rows) "
        "(default: 100000)",
    )
    data.add_argument(
        "--on-error",
        choices=["raise", "skip"],
        default="raise",
        help="a malformed line: stop with its file:line (raise), or skip it and report the "
        "count (default: raise)",
    )
    model = train.add_argument_group("model")
    model.add_argument(
        "--model",
        choices=["fm", "deepfm"],
        default="deepfm",
        help="fm: Factorization Machine; deepfm: FM + DNN on the same embeddings (default: deepfm)",
    )
    model.add_argument(
        "--embedding-dim", type=int, default=10, help="k, the factor size per feature (default: 10)"
    )
    model.add_argument(
        "--dnn-units",
        default="400,400,400",
        help="DeepFM hidden layer sizes, comma separated (default: 400,400,400)",
    )
    model.add_argument(
        "--dropout",
        type=float,
        default=0.5,
        help="DeepFM dropout rate after each hidden layer (default: 0.5)",
    )
    model.add_argument(
        "--batch-norm", action="store_true", help="batch normalization in the DeepFM DNN"
    )
    model.add_argument(
        "--l2",
        type=float,
        default=1e-5,
        help="L2 on the embedding and first-order rows each example uses (default: 1e-5)",
    )
    fit = train.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=10, help="most epochs (default: 10)")
    fit.add_argument(
        "--batch-size", type=int, default=1024, help="rows per training step (default: 1024)"
    )
    fit.add_argument(
        "--learning-rate",
        type=float,
        default=1e-3,
        help="initial learning rate of tf_fm.LazyAdam; divided by 10 after an epoch without "
        "validation improvement (default: 1e-3)",
    )
    fit.add_argument(
        "--patience",
        type=int,
        default=2,
        help="epochs without validation improvement before stopping; the best epoch's "
        "weights are kept (default: 2)",
    )
    fit.add_argument(
        "--seed", type=int, default=0, help="seed of weights and shuffling (default: 0)"
    )
    outputs = train.add_argument_group("outputs")
    outputs.add_argument(
        "--output",
        metavar="DIR",
        help="run directory: model.keras, schema.json, metrics.json, history.json and the "
        "checkpoints an interrupted run resumes from (default: runs/MODEL)",
    )
    outputs.add_argument(
        "--export", metavar="DIR", help="export a verified TF Serving SavedModel to DIR/<version>"
    )
    outputs.add_argument(
        "--metrics-out", metavar="FILE", help="also write the metrics JSON to FILE"
    )
    outputs.add_argument(
        "--plots", metavar="DIR", help="write training curves, ROC and calibration PNGs to DIR"
    )
    outputs.add_argument(
        "--overwrite", action="store_true", help="replace a finished run in --output"
    )

    # --- evaluate / predict ---
    evaluate = verb("evaluate", cmd_evaluate, "metrics of a trained run on labelled files")
    evaluate.add_argument("run", help="run directory written by `tf-fm train`")
    _add_data_flags(evaluate, formats=False)
    evaluate.add_argument("--batch-size", type=int, default=4096, help="(default: 4096)")
    evaluate.add_argument("--metrics-out", metavar="FILE", help="write the metrics JSON here")
    evaluate.add_argument("--plots", metavar="DIR", help="write ROC and calibration PNGs")
    predict = verb("predict", cmd_predict, "predictions of a trained run, one per input row")
    predict.add_argument("run", help="run directory written by `tf-fm train`")
    _add_data_flags(predict, formats=False)
    predict.add_argument("--output", required=True, help="CSV file to write")
    predict.add_argument("--batch-size", type=int, default=4096, help="(default: 4096)")

    # --- export / verify / inspect ---
    export = verb("export", cmd_export, "export a trained run as a verified SavedModel")
    export.add_argument("run", help="run directory written by `tf-fm train`")
    export.add_argument("export_dir", help="model base directory; the version goes below it")
    export.add_argument("--version", type=int, help="version number (default: next free)")
    export.add_argument("--overwrite", action="store_true", help="replace --version if it exists")
    export.add_argument(
        "--sample", nargs="+", metavar="FILE", help="rows for warm-up and checks (default: --valid)"
    )
    verify = verb("verify", cmd_verify, "check a SavedModel the way TF Serving runs it")
    verify.add_argument("dir", help="export base directory (latest version) or a version directory")
    _add_data_flags(verify, required=False)
    inspect = verb("inspect", cmd_inspect, "signatures, schema and metrics of an export or a run")
    inspect.add_argument("dir", help="export (base or version) directory, or a run directory")
    return parser


@contextlib.contextmanager
def _quiet(verbose):
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("tensorflow").level
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("tensorflow").setLevel(level)


def _first_line_of(error):
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def main(argv=None):
    """Entry point of the `tf-fm` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "delimiter"):
        args.delimiter = _delimiter(args.delimiter)
    prefix = f"tf-fm {args.verb}: error:"
    try:
        with _quiet(args.verbose):
            return args.func(args)
    except CommandError as error:
        print(f"{prefix} {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, export_lib.ExportError) as error:
        print(f"{prefix} {_first_line_of(error)}", file=sys.stderr)
        return 1
    except tf.errors.OpError as error:
        print(f"{prefix} {_first_line_of(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ntf-fm {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tf-fm inspect DIR | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
