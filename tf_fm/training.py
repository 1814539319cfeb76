"""A training run as an API: files in, a resumable run directory out.

`train(...)` does what `tf-fm train` does: it reads the files of a format
(`tf_fm.data.formats`), infers or takes the `FeatureSchema`, adapts it in one
pass, builds and compiles FM or DeepFM, fits with the BARS loop
(`tf_fm.default_callbacks`: LR decay, early stopping, best weights) when
validation files are given, and writes the run directory:

    runs/deepfm/
      run.json        how the files are read, the model and the settings
      schema.json     the adapted FeatureSchema
      model.keras     the trained model (best epoch)
      history.json    per-epoch logs, one entry per finished epoch
      metrics.json    validation metrics, epochs run, time
      backup/         AtomicBackupAndRestore state while training
      .lock           held by the training process (one writer per directory)

Calling `train` again with the same `output` after an interruption resumes
from the last finished epoch; calling it again after it finished, with the
same data and settings, returns the finished run (so a rerun of an
interrupted `tf-fm train --export` goes on with the export, and
`Run.export` finds a version it already published). A malformed line in a
validation file stops the run before training starts. `Run.load(path)` opens a finished run:
`run.model()`, `run.schema`, `run.history`, `run.metrics`,
`run.evaluate(files)`, `run.predict(files)`, `run.export(dir)`.

Example:

>>> run = tf_fm.train("train.csv", format="csv", label="click",
...                   valid="valid.csv", output="runs/deepfm")
>>> run.metrics["valid"]["auc"]
>>> run.export("saved_models/deepfm")  # verified SavedModel for TF Serving
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np

from tf_fm import bayesian as bayesian_lib
from tf_fm import calibration as calibration_lib
from tf_fm import export as export_lib
from tf_fm import metrics as metrics_lib
from tf_fm import models as models_lib
from tf_fm import plots as plots_lib
from tf_fm import warm_start as warm_start_lib
from tf_fm.callbacks import AtomicBackupAndRestore
from tf_fm.data import formats
from tf_fm.data.text import ReadReport
from tf_fm.errors import UsageError
from tf_fm.schema import FeatureSchema

RUN_FILE = "run.json"
SCHEMA_FILE = "schema.json"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
BACKUP_DIR = "backup"
# What the `tf_fm.distributed` loops commit in BACKUP_DIR after each epoch: the
# mirrored loop's arrays and the parameter-server loop's `tf.train.Checkpoint` state.
DISTRIBUTED_CHECKPOINTS = ("checkpoint.npz", "checkpoint")
LOCK_FILE = ".lock"
MODELS = ("fm", "deepfm", "hofm", "fwfm", "ffm", "nfm", "bayesfm")
# Most epochs of a run with validation files: the BARS protocol's cap; early
# stopping (`default_callbacks`) ends the run long before on real data.
EPOCHS_WITH_VALIDATION = 100

Log = Callable[[str], None]
# Rows read (from the start of the training files) for the base rate w0 starts at.
BASE_RATE_ROWS = 1 << 20
INITIAL_BIASES = ("mean", "zero")  # TrainSettings.initial_bias


def _say(text: str) -> None:
    print(text, flush=True)


def progress_verbosity() -> int:
    """Keras `fit` verbosity: a progress bar on a terminal, one line per epoch otherwise."""
    return 1 if sys.stdout.isatty() else 2


def write_json(path: str | os.PathLike, value) -> None:
    """Writes JSON through a temporary file, so a reader never sees half of it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike, what: str):
    """A JSON file's value; a missing or invalid file is a `UsageError` naming it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path} is not a valid {what} (JSON): {error}") from None


def save_model(model: keras.Model, path: str | os.PathLike) -> None:
    """`model.save` to a temporary name in the same directory, then renamed into place."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


class EpochLog(keras.callbacks.Callback):
    """Writes the per-epoch logs to a JSON file after every epoch, across resumes.

    Keras' `History` starts empty in every `fit`, so it does not survive a
    resume. On a resumed run (`AtomicBackupAndRestore`) the epochs logged before
    the interruption are kept up to the epoch training restarts from, so the
    file always holds one entry per finished epoch of the whole run.

    Args:
        path: str or path-like. The JSON file.
        resume: bool. Keep the file's earlier epochs (a resumed run).
            Defaults to True.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = True):
        super().__init__()
        self.path = pathlib.Path(path)
        self.history = {}
        if resume and self.path.is_file():
            self.history = json.loads(self.path.read_text(encoding="utf-8"))
        self._started = False

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:  # the first epoch of this fit: drop anything later
            self.history = {k: v[:epoch] for k, v in self.history.items()}
            self._started = True

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        write_json(self.path, self.history)


def training_callbacks(
    task: str, validation: bool, patience: int, backup_dir: str | os.PathLike | None = None
) -> list[keras.callbacks.Callback]:
    """`tf_fm.default_callbacks` with validation data; only the backup without."""
    if validation:
        return models_lib.default_callbacks(task, patience=patience, backup_dir=backup_dir)
    if backup_dir is None:
        return []
    return [AtomicBackupAndRestore(backup_dir)]


@dataclasses.dataclass
class ModelOptions:
    """The model of a run (`tf_fm.models` builders) and its main arguments.

    Args:
        model: `"fm"`, `"deepfm"`, `"hofm"`, `"fwfm"`, `"ffm"`, `"nfm"` or
            `"bayesfm"` (`tf_fm.bayesian.BayesianFM`: an FM sampled by MCMC,
            regression or probit, one process). Defaults to `"deepfm"`.
        embedding_dim: int. Factor size k. Defaults to 10.
        dnn_units: sequence of int or None. Hidden layers of DeepFM / NFM;
            None takes the builder's default (DeepFM 400-400-400, NFM 64).
        dropout: float or None. DNN dropout of DeepFM / NFM; None takes the
            builder's default (DeepFM 0.5, NFM 0).
        batch_norm: bool or None. DNN batch normalization; None takes the
            builder's default (off for both).
        l2: float. L2 on the embedding and first-order rows each example
            uses. Defaults to 1e-5.
        learning_rate: float. Initial LazyAdam learning rate. Defaults to 1e-3.
        order: int. HOFM: the highest interaction order. Defaults to 3.
        optimizer: str. The embedding tables' rule (`compile_model`'s
            `embedding_optimizer`): `"lazy_adam"` or `"rowwise_adagrad"`.
            Defaults to `"lazy_adam"`.
        samples, burn_in: int. `bayesfm`: the sweeps kept (averaged) and the
            sweeps discarded first. Default to 100 and 20 (libFM's
            `-iter 120` with the first 20 left out).
    """

    model: str = "deepfm"
    embedding_dim: int = 10
    dnn_units: Sequence[int] | None = None
    dropout: float | None = None
    batch_norm: bool | None = None
    l2: float = 1e-5
    learning_rate: float = 1e-3
    order: int = 3
    optimizer: str = "lazy_adam"
    samples: int = bayesian_lib.DEFAULT_SAMPLES
    burn_in: int = bayesian_lib.DEFAULT_BURN_IN

    def __post_init__(self):
        if self.model not in MODELS:
            raise UsageError(f"model must be one of {MODELS}. Received: {self.model!r}")
        if self.optimizer not in models_lib.EMBEDDING_OPTIMIZERS:
            raise UsageError(
                f"optimizer must be one of {sorted(models_lib.EMBEDDING_OPTIMIZERS)}. "
                f"Received: {self.optimizer!r}"
            )
        if self.dnn_units is not None:
            self.dnn_units = [int(u) for u in self.dnn_units]
        if self.samples < 1 or self.burn_in < 0:
            raise UsageError(
                f"samples must be >= 1 and burn_in >= 0. Received: {self.samples}, {self.burn_in}"
            )

    def _dnn_args(self):
        given = {
            "dnn_units": self.dnn_units,
            "dnn_dropout": self.dropout,
            "dnn_batch_norm": self.batch_norm,
        }
        return {k: v for k, v in given.items() if v is not None}

    def build(self, schema: FeatureSchema, task: str) -> keras.Model:
        """The compiled model on `schema`'s fields (not `bayesfm`: it is sampled, not fit)."""
        if self.model == "bayesfm":
            raise UsageError("bayesfm is sampled (tf_fm.bayesian.BayesianFM), not compiled")
        common = {
            "embedding_dim": self.embedding_dim,
            "task": task,
            "embeddings_l2": self.l2,
            "linear_l2": self.l2,
        }
        builders = {
            "fm": lambda: models_lib.FM(schema, **common),
            "deepfm": lambda: models_lib.DeepFM(schema, **self._dnn_args(), **common),
            "hofm": lambda: models_lib.HOFM(schema, order=self.order, **common),
            "fwfm": lambda: models_lib.FwFM(schema, **common),
            "ffm": lambda: models_lib.FFM(schema, **common),
            "nfm": lambda: models_lib.NFM(schema, **self._dnn_args(), **common),
        }
        model = builders[self.model]()
        return models_lib.compile_model(
            model, learning_rate=self.learning_rate, embedding_optimizer=self.optimizer
        )


@dataclasses.dataclass
class TrainSettings:
    """How a run trains.

    Args:
        epochs: int or None. Most epochs. None: 100 with validation files
            (early stopping decides, as in the BARS protocol), 10 without.
            Defaults to None.
        batch_size: int. Rows per step. Defaults to 1024.
        patience: int. Epochs without validation gain before stopping.
            Defaults to 2.
        seed: int. Seed of weights and shuffling. Defaults to 0.
        shuffle_buffer: int. Rows shuffled together. Defaults to 100000.
        on_error: str. A malformed line: `"raise"` (file:line) or `"skip"`
            (counted). Defaults to `"raise"`.
        calibration: str. `"none"`, `"platt"` or `"isotonic"`: fitted on the
            validation files after training and carried in the saved model's
            `PredictionHead` (`tf_fm.calibration`). Defaults to `"none"`.
        negative_downsampling: float or None. The rate in (0, 1] at which
            the training files kept their negatives (the user downsampled
            them); training sees them as they are, the saved model and its
            export output q = p / (p + (1 - p) / w). Validation files are
            taken to be from the full distribution. Defaults to None.
        initial_bias: str or None. Where the global bias w0 starts: `"mean"`,
            the training labels' mean (`tf_fm.models.start_at_base_rate`:
            logit of the click rate for a binary model), or `"zero"`. None:
            `"mean"` for regression, `"zero"` for binary. Measured
            (`tf_fm.train` defaults otherwise): MovieLens ratings, test RMSE
            0.890 in 85 epochs from zero, 0.856 in 18 from the mean; binary
            at common click rates it is no gain (criteo_tiny DeepFM test
            AUC 0.7323 from zero, 0.7272 from the mean; MovieLens >= 4 0.786
            either way); at rare clicks it is (iPinYou sample, 0.5%: test
            log loss 0.069 from zero, 0.020 from the mean; base rate 0.017).
            Defaults to None.
    """

    epochs: int | None = None
    batch_size: int = 1024
    patience: int = 2
    seed: int = 0
    shuffle_buffer: int = 100_000
    on_error: str = "raise"
    calibration: str = "none"
    negative_downsampling: float | None = None
    initial_bias: str | None = None

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience", "shuffle_buffer"):
            value = getattr(self, name)
            if name == "epochs" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer. Received: {value!r}")
        if self.on_error not in ("raise", "skip"):
            raise UsageError(f"on_error must be 'raise' or 'skip'. Received: {self.on_error!r}")
        if self.calibration not in calibration_lib.METHODS:
            raise UsageError(
                f"calibration must be one of {calibration_lib.METHODS}. "
                f"Received: {self.calibration!r}"
            )
        if self.initial_bias not in (None, *INITIAL_BIASES):
            raise UsageError(
                f"initial_bias must be one of {INITIAL_BIASES} or None. "
                f"Received: {self.initial_bias!r}"
            )
        rate = self.negative_downsampling
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0
        ):
            raise UsageError(
                f"negative_downsampling (the rate negatives were kept at) must be in (0, 1]. "
                f"Received: {rate!r}"
            )


def predict_dataset(model: keras.Model, dataset, with_labels: bool = True):
    """Predictions (and labels) over a dataset, in order, with a progress bar on a terminal.

    Returns:
        `(predictions (n,), labels (n,) or None)`.
    """
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


def export_model(
    model: keras.Model,
    schema: FeatureSchema | None,
    export_dir: str | os.PathLike,
    sample,
    scores: dict | None = None,
    version: int | None = None,
    overwrite: bool = False,
    log: Log = _say,
    source: dict | None = None,
) -> pathlib.Path:
    """Exports a trained model as a verified TF Serving version and says what it wrote.

    Warm-up records are written when `tensorflow-serving-api` is installed.

    Args:
        model: the trained `FM` / `DeepFM`.
        schema: its adapted `FeatureSchema`, or None for a model on ids.
        export_dir: the model base directory; the version goes below it.
        sample: raw rows (a dataset or columns) for warm-up and the checks.
        scores: dict or None. Metrics kept in the export's metadata (as
            `valid_<name>`).
        version: int or None. Version number; None takes the next free one.
        overwrite: bool. Replace `version` if it exists. Defaults to False.
        log: callable printing one line. Defaults to `print`.
        source: dict or None. Where the model comes from (kept in the
            export's metadata). Defaults to None.

    Returns:
        The published version directory.
    """
    warmup = 10
    try:
        import tensorflow_serving.apis  # noqa: F401
    except ImportError:
        warmup = 0
        log(
            "  (tensorflow-serving-api is not installed: no warm-up records; "
            "pip install 'tf-fm[serving]')"
        )
    log(f"Exporting to {export_dir} and verifying in a TensorFlow-only process ...")
    metadata = {f"valid_{k}": v for k, v in (scores or {}).items() if isinstance(v, (int, float))}
    path = export_lib.export_saved_model(
        model,
        export_dir,
        schema=schema,
        sample=sample,
        metrics=metadata or None,
        warmup_rows=warmup,
        version=version,
        overwrite=overwrite and version is not None,
        source=source,
    )
    report = export_lib.read_metadata(path).get("verification", {})
    worst = worst_difference(report)
    log(f"  published {path}: verified on {report.get('rows')} rows, max abs diff {worst:.1e}")
    return path


def worst_difference(report: dict) -> float:
    """The largest difference of a verification report (check name -> max abs diff)."""
    return max(report.get("max_abs_diff", {}).values(), default=0.0)


@dataclasses.dataclass
class Evaluation:
    """Metrics of a run on labelled files, with what they were computed from."""

    scores: dict
    labels: np.ndarray
    predictions: np.ndarray


def _published_version(export_dir, source):
    """The version of `export_dir` exported from `source`, or None."""
    for version in reversed(export_lib.list_versions(export_dir)):
        path = pathlib.Path(export_dir) / str(version)
        try:
            if export_lib.read_metadata(path).get("source") == source:
                return path
        except (FileNotFoundError, ValueError):
            continue
    return None


class Run:
    """A training run directory (what `train` writes).

    Args:
        path: str or path-like. The run directory.

    Raises:
        UsageError: `path` holds no run (no run.json).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        if not (self.path / RUN_FILE).is_file():
            raise UsageError(
                f"{self.path} is not a tf-fm run directory (no {RUN_FILE}; `tf-fm train "
                "--output DIR` writes one)"
            )
        self.config = read_json(self.path / RUN_FILE, "run file")
        self.spec = formats.DataSpec.from_dict(self.config["data"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Run":
        """Opens the run directory at `path`."""
        return cls(path)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def schema(self) -> FeatureSchema:
        """The run's adapted `FeatureSchema`."""
        path = self.path / SCHEMA_FILE
        if not path.is_file():
            raise UsageError(f"{path} not found: the run has not learned its schema")
        try:
            return FeatureSchema.load(path)
        except (ValueError, KeyError, TypeError) as error:
            raise UsageError(f"{path} is not a valid schema file: {error}") from None

    @property
    def history(self) -> dict:
        """Per-epoch logs (`loss`, `val_auc`, ...), one entry per finished epoch."""
        path = self.path / HISTORY_FILE
        return read_json(path, "history file") if path.is_file() else {}

    @property
    def metrics(self) -> dict:
        """What `train` measured: `valid` scores, `epochs_run`, `best_epoch`, `seconds`."""
        return read_json(self.path / METRICS_FILE, "metrics file")

    @property
    def files(self) -> dict:
        """The run's `data` and `valid` files (absolute paths)."""
        settings = self.config.get("settings", {})
        return {"data": settings.get("data", []), "valid": settings.get("valid", [])}

    def model(self) -> keras.Model:
        """The trained model (on model inputs: ids and values)."""
        path = self.path / MODEL_FILE
        if not path.is_file():
            raise UsageError(f"{path} not found: the run has not finished training")
        return keras.saving.load_model(path)

    def raw_model(self) -> keras.Model:
        """The schema's preprocessing + the trained model: raw features in."""
        return self.schema.serving_model(self.model())

    def read(self, files, batch_size: int = 4096, need_label: bool = True, **kwargs):
        """Raw batches of `files` (paths or globs), read as the run read its data."""
        files = formats.resolve_files(files)
        return formats.read_files(
            self.spec, files, batch_size=batch_size, need_label=need_label, **kwargs
        )

    def evaluate(self, files, batch_size: int = 4096) -> Evaluation:
        """Exact metrics (`tf_fm.metrics.score`) of the run's model on labelled `files`."""
        files = formats.resolve_files(files)
        dataset = self.read(files, batch_size=batch_size)
        with formats.naming_files(self.spec, files):
            predictions, labels = predict_dataset(self.raw_model(), dataset)
        return Evaluation(metrics_lib.score(self.task, labels, predictions), labels, predictions)

    def predict(self, files, batch_size: int = 4096) -> np.ndarray:
        """Predictions, one per row of `files` in order (a label column is not needed)."""
        files = formats.resolve_files(files)
        dataset = self.read(files, batch_size=batch_size, need_label=False)
        with formats.naming_files(self.spec, files):
            return predict_dataset(self.raw_model(), dataset, with_labels=False)[0]

    def export(
        self,
        export_dir: str | os.PathLike,
        sample=None,
        version: int | None = None,
        overwrite: bool = False,
        log: Log = _say,
    ) -> pathlib.Path:
        """Exports the run's model as a verified TF Serving version (see `export_model`).

        Args:
            export_dir: model base directory; the version goes below it.
            sample: files (paths or globs) of rows for warm-up and checks.
                Defaults to the run's validation files, else its data files.
            version, overwrite, log: as in `export_model`.
        """
        source = self._source()
        if version is None:
            published = _published_version(export_dir, source)
            if published is not None:
                log(f"{published} already holds this run's model (same model file): kept.")
                return published
        if sample is None:
            sample = [f for f in self.files["valid"] or self.files["data"] if os.path.isfile(f)]
            if not sample:
                raise UsageError("the run's data files are gone; pass sample FILES")
        rows = self.read(sample, batch_size=1000, on_error=self._on_error)
        scores = self.metrics.get("valid")
        return export_model(
            self.model(), self.schema, export_dir, rows, scores, version, overwrite, log, source
        )

    def _source(self) -> dict:
        """The run and its model file's SHA-256: what an export of this run records."""
        digest = hashlib.sha256((self.path / MODEL_FILE).read_bytes()).hexdigest()
        return {"run": str(self.path.resolve()), "model_sha256": digest}

    @property
    def _on_error(self) -> str:
        return self.config.get("settings", {}).get("on_error", "raise")


# === train ===


class RunLock:
    """One writer per run directory: an exclusive lock on `<run>/.lock` while training.

    A second `train` on the same directory (another process, or the same
    command started twice) fails at once with a `UsageError` naming the
    process that holds it; the lock goes with its process, also when that
    process is killed. POSIX `flock`; where it is missing (Windows) no lock
    is taken.

    Args:
        path: the run directory (created if missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self._handle = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UsageError(
                f"{self.path} is in use by another training (pid {holder}); wait for it to "
                "finish or choose another output directory"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the lock
            self._handle = None


def has_backup(directory: str | os.PathLike) -> bool:
    """Whether `directory` (a run's `BACKUP_DIR`) holds a finished epoch's state to resume from.

    That of `fit` (`AtomicBackupAndRestore`) or of the `tf_fm.distributed`
    loops (`DISTRIBUTED_CHECKPOINTS`).
    """
    directory = pathlib.Path(directory)
    if AtomicBackupAndRestore.has_state(directory):
        return True
    return any((directory / name).is_file() for name in DISTRIBUTED_CHECKPOINTS)


def _open_output(out, overwrite, create=True):
    """Whether `out` holds an interrupted run to resume; refuses to clobber a finished one."""
    resuming = has_backup(out / BACKUP_DIR)
    if (out / MODEL_FILE).exists() and not resuming and not overwrite:
        raise UsageError(f"{out} already holds a trained model; pass overwrite (--overwrite)")
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return resuming


def _given_schema(schema):
    if isinstance(schema, FeatureSchema):
        return schema, "given"
    try:
        return FeatureSchema.load(schema), str(schema)
    except FileNotFoundError:
        raise UsageError(f"schema file not found: {schema}") from None
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise UsageError(f"{schema} is not a valid schema file: {error}") from None


def _warm_start_run(warm_start, schema, task):
    """The finished run `train(warm_start=...)` goes on from, checked against the call."""
    if warm_start is None:
        return None
    if schema is not None:
        raise UsageError("warm_start goes on with the run's own schema: do not pass schema")
    warm = Run(warm_start)  # on a cluster, every task reads it (on storage they all see)
    if not (warm.path / MODEL_FILE).is_file():
        raise UsageError(f"warm_start: {warm.path} has not finished training (no {MODEL_FILE})")
    if warm.task != task:
        raise UsageError(f"warm_start: {warm.path} is a task={warm.task!r} run, not {task!r}")
    return warm


def _warm_schema(warm, spec, files, on_error, log):
    """The warm-start run's schema, its vocabularies extended by the ids of `files`."""
    schema = warm.schema
    formats.fit_spec_to_schema(spec, schema)
    log(f"Warm start from {warm.path}: extending its vocabularies on the new data ...")
    raw = formats.read_files(spec, files, batch_size=4096, on_error=on_error)
    extended, added = warm_start_lib.extend_schema(schema, raw)
    for name, count in added.items():
        log(f"  {name}: {len(extended.vocabulary(name)):,} tokens ({count:,} new)")
    return extended


def _run_schema(spec, files, valid_files, schema, out, resuming, inference, on_error, log):
    """The run's schema: given, the interrupted run's, or inferred; adapted and saved."""
    if schema is not None:
        schema, source = _given_schema(schema)
    elif resuming and (out / SCHEMA_FILE).is_file():
        schema, source = FeatureSchema.load(out / SCHEMA_FILE), f"{out / SCHEMA_FILE} (resuming)"
    else:
        if spec.format in ("libsvm", "libffm"):
            log(f"Scanning {len(files) + len(valid_files)} file(s) for ids and row lengths ...")
            files = files + valid_files  # every id must have a row
        notes = []
        schema = formats.infer_format_schema(spec, files, notes=notes, **inference)
        source = "inferred"
        if notes:
            log("Schema inference, integer columns (override with categorical= / numeric=):")
        for line in notes:  # what each integer column became, and why
            log(f"  {line}")
    formats.fit_spec_to_schema(spec, schema)
    if not schema.adapted:
        log("Learning the schema (vocabularies, statistics): one pass over the data ...")
        start = time.monotonic()
        schema.adapt(formats.read_files(spec, files, batch_size=4096, on_error=on_error))
        log(f"  done in {time.monotonic() - start:.1f} s")
    schema.save(out / SCHEMA_FILE)
    log(f"Schema ({source}), written to {out / SCHEMA_FILE}:")
    log(str(schema))
    return schema


def _fit(job, model, train_data, valid_data):
    """`model.fit` with the run's callbacks; returns the whole run's per-epoch history."""
    out, settings = job.out, job.settings
    if valid_data is None:
        job.log("No validation files: no early stopping or learning-rate decay, fixed epochs.")
    epoch_log = EpochLog(out / HISTORY_FILE, resume=job.resuming)
    callbacks = [
        epoch_log,
        *training_callbacks(job.task, valid_data is not None, settings.patience, out / BACKUP_DIR),
    ]
    if job.resuming:
        job.log(f"Resuming from {out / BACKUP_DIR} (the last finished epoch).")
    model.fit(
        train_data,
        validation_data=valid_data,
        epochs=settings.epochs,
        shuffle=False,  # the reader shuffles (files, then windows of rows)
        callbacks=callbacks,
        verbose=progress_verbosity() if job.verbose is None else job.verbose,
    )
    return epoch_log.history


def _fit_distributed(job, pipeline, build):
    """`tf_fm.distributed.loop.fit` of `build`'s model on the run's readers, sharded."""
    from tf_fm.distributed import loop

    strategy, checkpoint_dir = job.distribution
    settings = job.settings

    def dataset_fn(paths, shuffle):
        return loop.sharded_dataset_fn(
            lambda part, batch, mixed: pipeline(part, mixed, batch_size=batch),
            paths,
            global_batch=settings.batch_size,
            shuffle=shuffle,
            seed=settings.seed,
            shuffle_buffer=settings.shuffle_buffer,
        )

    return loop.fit(
        build,
        dataset_fn(job.files, True),
        dataset_fn(job.valid_files, False) if job.valid_files else None,
        strategy=strategy,
        settings=settings,
        out=job.out,
        checkpoint_dir=checkpoint_dir,
        resuming=job.resuming,
        task=job.task,
        log=job.log,
    )


def _results(model, valid_data, history, task, report, seconds):
    # Entries per key: epochs of `fit`, sweeps of `bayesfm` (whose "best" is its average).
    result = {"epochs_run": len(next(iter(history.values()), [])), "seconds": seconds}
    labels = predictions = None
    if valid_data is not None:
        predictions, labels = predict_dataset(model, valid_data)
        result["valid"] = metrics_lib.score(task, labels, predictions)
        best = _best_epoch(history, task)
        if best is not None:
            result["best_epoch"] = best
    if report is not None:
        result["skipped_lines"] = report.skipped
    return result, labels, predictions


def _best_epoch(history, task):
    """The epoch (from 1) `tf_fm.default_callbacks` ended on, or None (no validation, `bayesfm`)."""
    if "loss" not in history:
        return None
    if task == "binary":
        terms = models_lib.BINARY_MONITOR_TERMS
        if not all(history.get(key) for key in terms):
            return None
        return int(np.argmax(models_lib.weighted_sum(history, terms))) + 1
    return int(np.argmin(history["val_rmse"])) + 1 if history.get("val_rmse") else None


def train(
    data: str | Sequence[str],
    *,
    format: str,
    valid: str | Sequence[str] | None = None,
    output: str | os.PathLike | None = None,
    schema: FeatureSchema | str | None = None,
    task: str = "binary",
    label: str = "label",
    delimiter: str = ",",
    separator: str | None = None,
    min_count: int = 2,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    model: str | ModelOptions | None = None,
    settings: TrainSettings | None = None,
    overwrite: bool = False,
    plots: str | os.PathLike | None = None,
    log: Log = _say,
    verbose: int | None = None,
    cluster: str | None = None,
    warm_start: str | os.PathLike | None = None,
    **options,
) -> Run | None:
    """Trains FM or DeepFM on files and writes (or resumes) a run directory.

    Args:
        data: training files: a path, a glob, or a list of them.
        format: str. One of `tf_fm.data.formats.FORMATS` (`"criteo"`,
            `"avazu"`, `"csv"`, `"libsvm"`, `"libffm"`, `"tfrecord"`).
        valid: validation files, or None. With them: early stopping, LR decay
            on plateau, the best epoch's weights, and validation metrics.
        output: run directory. Defaults to `runs/<model>`.
        schema: a `FeatureSchema` (adapted or not) or a schema.json path;
            None infers the format's (`infer_format_schema`).
        task: `"binary"` or `"regression"`. Defaults to `"binary"`.
        label, delimiter, separator: `csv`: label column, cell delimiter,
            multi-valued cell separator.
        min_count, categorical, numeric: schema inference (see
            `tf_fm.data.formats.infer_format_schema`).
        model: `"fm"`, `"deepfm"`, `"hofm"`, `"fwfm"`, `"ffm"`, `"nfm"` or a
            `ModelOptions`. Defaults to None: `"deepfm"`, or the `warm_start`
            run's model and options.
        settings: `TrainSettings` or None (defaults, updated by `options`).
        overwrite: bool. Replace a finished run in `output`. Defaults to False.
        plots: directory for training curves, ROC and calibration PNGs.
        log: callable printing one line. Defaults to `print`.
        verbose: Keras `fit` verbosity; None picks one for the terminal.
        cluster: None (this process trains alone) or `"tf_config"`: this
            process is one task of the cluster in `TF_CONFIG`, trained with
            `tf_fm.distributed` (`batch_size` is the global batch). Only the
            chief writes `output` (on storage every task sees); the other
            workers work in a scratch directory and return None. Start a
            local cluster with `tf-fm train --cluster local:W` (or
            `tf_fm.distributed.launch.launch_local`).
        warm_start: a finished run directory, or None. Go on from its model
            on the new `data` (`tf_fm.warm_start`): its schema with the
            vocabularies extended by the new ids, its weights and optimizer
            state for the old ids, fresh rows for the new ones; the model and
            its architecture options are the run's (`l2`, `learning_rate` and
            the training settings may change). `output` must be another
            directory. On a cluster every task reads the run, and the
            weights alone go on (the distributed loops start their
            optimizer state fresh).
        **options: fields of `ModelOptions` (`embedding_dim`, `dnn_units`,
            `dropout`, `batch_norm`, `l2`, `learning_rate`, `order`) and of
            `TrainSettings` (`epochs`, `batch_size`, `patience`, `seed`,
            `shuffle_buffer`, `on_error`).

    Returns:
        The `Run`; None on a task of a cluster that is not the chief.
    """
    warm = _warm_start_run(warm_start, schema, task)
    model_options, settings = _options(model, settings, options, warm)
    _check_calibration(settings, task, valid)
    _check_bayesian(model_options, task, cluster, warm)
    strategy, chief = _distribution(cluster)
    if settings.epochs is None:
        settings = dataclasses.replace(settings, epochs=EPOCHS_WITH_VALIDATION if valid else 10)
    spec = formats.DataSpec(format, task, label, delimiter, separator)
    out = pathlib.Path(output or f"runs/{model_options.model}")
    if warm is not None and out.resolve() == warm.path.resolve():
        raise UsageError(f"warm_start: write the continued run to another output than {out}")
    files = formats.resolve_files(data, "data")
    valid_files = formats.resolve_files(valid, "valid") if valid else []
    inference = {"min_count": min_count, "categorical": categorical, "numeric": numeric}
    request = _request(spec, files, valid_files, schema, inference, model_options, settings)
    if warm is not None:
        request["warm_start"] = str(warm.path.resolve())
    work = out if chief else pathlib.Path(tempfile.mkdtemp(prefix="tf_fm_worker_"))
    with RunLock(work), formats.naming_files(spec, [*files, *valid_files]):
        if _finished(out, request, overwrite):
            log(f"{out} already holds this run, trained with the same data and settings.")
            return Run(out) if chief else None
        resuming = _open_output(out, overwrite, create=chief)
        keras.utils.set_random_seed(settings.seed)
        if warm is not None and not (resuming and (work / SCHEMA_FILE).is_file()):
            schema = _warm_schema(warm, spec, files, settings.on_error, log)
        schema = _run_schema(
            spec, files, valid_files, schema, work, resuming, inference, settings.on_error, log
        )
        write_json(work / RUN_FILE, _run_config(spec, model_options, settings, request))
        _train_and_report(
            _Job(
                work, spec, schema, files, valid_files, model_options, settings, resuming,
                log, verbose,
                distribution=(strategy, out / BACKUP_DIR) if strategy is not None else None,
                warm_model=warm.model if warm is not None and not resuming else None,
            ),
            plots,
        )  # fmt: skip
    if not chief:
        shutil.rmtree(work, ignore_errors=True)
        return None
    return Run(out)


def _distribution(cluster):
    """`(strategy, chief)` of `train`'s `cluster`: `(None, True)` for one process."""
    if cluster is None:
        return None, True
    from tf_fm.distributed import cluster as cluster_lib

    if cluster_lib.parse_cluster(cluster).kind != "tf_config":
        raise UsageError(
            f"train(cluster=...) takes 'tf_config' (this process is a task of TF_CONFIG's "
            f"cluster); start a local cluster with `tf-fm train --cluster {cluster}`"
        )
    config = cluster_lib.read_tf_config()
    return cluster_lib.make_strategy(config), cluster_lib.is_chief(config)


def _request(spec, files, valid_files, schema, inference, model_options, settings):
    """What a `train` call asks for, as JSON: an identical call finds its finished run."""
    if isinstance(schema, FeatureSchema):
        schema = schema.to_dict()
    elif schema is not None:
        schema = os.path.abspath(schema)
    request = {
        "data": spec.to_dict(),
        "files": _absolute(files),
        "valid": _absolute(valid_files),
        "schema": schema,
        "inference": inference,
        "model_options": dataclasses.asdict(model_options),
        "settings": dataclasses.asdict(settings),
    }
    return json.loads(json.dumps(request))


def _run_config(spec, model_options, settings, request):
    recorded = {**dataclasses.asdict(settings), "data": request["files"]}
    recorded["valid"] = request["valid"]
    config = {"data": spec.to_dict(), "model": model_options.model, "settings": recorded}
    config.update(model_options=dataclasses.asdict(model_options), request=request)
    return config


def _finished(out, request, overwrite):
    """Whether `out` holds a finished run of exactly this request (a rerun: nothing to do)."""
    if overwrite or not (out / MODEL_FILE).is_file() or not (out / METRICS_FILE).is_file():
        return False
    if not (out / RUN_FILE).is_file():
        return False
    return read_json(out / RUN_FILE, "run file").get("request") == request


def _check_validation_files(spec, valid_files, on_error, log):
    """Reads the validation files once, so a malformed line stops the run before training."""
    if not valid_files or on_error == "skip":
        return
    log(f"Checking {len(valid_files)} validation file(s) ...")
    for _ in formats.read_files(spec, valid_files, batch_size=4096, on_error=on_error):
        pass


@dataclasses.dataclass(frozen=True)
class _Job:
    """What training one run takes, once its schema is settled.

    `out` is where the run is written (a worker off the chief: its scratch
    directory); `distribution` None, or `(strategy, checkpoint_dir)` for
    `tf_fm.distributed.loop.fit`; `warm_model` None, or `() -> trained model`
    to start from (`tf_fm.warm_start.transfer`).
    """

    out: pathlib.Path
    spec: formats.DataSpec
    schema: FeatureSchema
    files: list
    valid_files: list
    model_options: ModelOptions
    settings: TrainSettings
    resuming: bool
    log: Log
    verbose: int | None
    distribution: tuple | None = None
    warm_model: Callable[[], keras.Model] | None = None

    @property
    def task(self) -> str:
        return self.spec.task

    def pipeline(self, paths, shuffle, batch_size=None, report=None):
        """The preprocessed batches of `paths`, read as the run's settings say."""
        settings = self.settings
        raw = formats.read_files(
            self.spec,
            paths,
            batch_size=batch_size or settings.batch_size,
            shuffle_buffer=settings.shuffle_buffer if shuffle else None,
            seed=settings.seed,
            on_error=settings.on_error,
            report=report,
        )
        return self.schema.preprocess(raw)


def _train_and_report(job, plots):
    """Fits, saves the model, writes metrics.json (and plots): the run after its schema."""
    settings, log, out = job.settings, job.log, job.out
    _check_validation_files(job.spec, job.valid_files, settings.on_error, log)
    report = ReadReport() if settings.on_error == "skip" else None

    def pipeline(paths, shuffle, batch_size=None):
        return job.pipeline(paths, shuffle, batch_size, report)

    valid_data = pipeline(job.valid_files, shuffle=False) if job.valid_files else None
    start = time.monotonic()
    trained = _trained_model(job, pipeline, valid_data)
    if trained is None:
        return  # a worker that is not the chief: the chief writes the run
    keras_model, history = trained
    seconds = time.monotonic() - start
    calibration = _calibrate(keras_model, valid_data, settings, log)
    save_model(keras_model, out / MODEL_FILE)
    shutil.rmtree(out / BACKUP_DIR, ignore_errors=True)
    result, labels, predictions = _results(
        keras_model, valid_data, history, job.task, report, seconds
    )
    result["model"] = job.model_options.model
    if calibration is not None:
        result["calibration"] = calibration
    write_json(out / METRICS_FILE, result)
    _log_results(result, out, report, log)
    if plots:
        paths = plots_lib.save_plots(
            plots, history=history, labels=labels, predictions=predictions, task=job.task
        )
        log(f"Plots: {', '.join(str(p) for p in paths.values())}")


def _trained_model(job, pipeline, valid_data):
    """`(model, history)`: sampled (`bayesfm`), fit, or fit under `distribution`; None off chief."""
    options, log = job.model_options, job.log
    if options.model == "bayesfm":
        log(
            f"Sampling bayesfm: {options.burn_in} burn-in and {options.samples} "
            "kept sweeps (a chain from scratch on every run) ..."
        )
        train_data = pipeline(job.files, shuffle=False)  # read once, in order
        return _sample_bayesian(job, train_data, valid_data)
    log(f"Training {options.model} for at most {job.settings.epochs} epochs ...")
    build = _initial_model(job)
    if job.distribution is None:
        keras_model = build()
        del build  # and with it a warm start's old model, not needed while training
        history = _fit(job, keras_model, pipeline(job.files, shuffle=True), valid_data)
        return keras_model, history
    keras_model, history = _fit_distributed(job, pipeline, build)
    if not job.distribution[0].extended.should_checkpoint:
        return None
    return keras_model, history


def _initial_model(job):
    """`() -> compiled model` as training starts it: warm, or w0 as `initial_bias` says.

    A resumed run's weights come from its backup, so it reads nothing here.
    """
    options, task = job.model_options, job.task
    if job.warm_model is not None:
        # Loaded here, outside the strategy's scope (it is read, not trained).
        old, one_process = job.warm_model(), job.distribution is None

        def warm():
            model = options.build(job.schema, task)
            warm_start_lib.transfer(old, model, optimizer=one_process)
            return model

        return warm
    initial_bias = job.settings.initial_bias or ("mean" if task == "regression" else "zero")
    if job.resuming or initial_bias == "zero":
        return lambda: options.build(job.schema, task)
    mean, rows = _label_mean(job)
    job.log(
        f"Global bias w0 starts at the training labels' mean {mean:.4g} "
        f"(first {rows:,} rows; models.start_at_base_rate)."
    )

    def at_base_rate():
        model = options.build(job.schema, task)
        models_lib.start_at_base_rate(model, mean, task)
        return model

    return at_base_rate


def _label_mean(job) -> tuple[float, int]:
    """The (weighted) mean label of the first `BASE_RATE_ROWS` training rows, and their count."""
    batch = 8192
    total = weights = 0.0
    rows = 0
    for element in job.pipeline(job.files, shuffle=False, batch_size=batch).take(
        -(-BASE_RATE_ROWS // batch)
    ):
        label = np.asarray(element[1], np.float64).reshape(-1)
        weight = np.asarray(element[2], np.float64).reshape(-1) if len(element) > 2 else 1.0
        total += float(np.sum(label * weight))
        weights += float(np.sum(np.broadcast_to(weight, label.shape)))
        rows += len(label)
    return (total / weights if weights > 0 else 0.0), rows


def _check_bayesian(model_options, task, cluster, warm):
    """`bayesfm` samples an FM (regression or probit) in one process, from scratch."""
    del task  # both tasks are sampled
    if model_options.model != "bayesfm":
        return
    for wrong, why in (
        (cluster is not None, "one process (no cluster)"),
        (warm is not None, "a chain from scratch (no warm_start)"),
    ):
        if wrong:
            raise UsageError(f"model bayesfm: {why}")


def _sample_bayesian(job, train_data, valid_data):
    """Runs `BayesianFM`'s chain; its posterior-mean FM and per-sweep history (history.json)."""
    options = job.model_options
    sampler = bayesian_lib.BayesianFM(
        job.schema,
        embedding_dim=options.embedding_dim,
        samples=options.samples,
        burn_in=options.burn_in,
        seed=job.settings.seed,
        task=job.task,
    )
    model = sampler.fit(train_data, validation_data=valid_data, log=job.log)
    history = {k: [float(v) for v in values] for k, values in sampler.history.items()}
    write_json(job.out / HISTORY_FILE, history)
    return model, history


def _check_calibration(settings, task, valid):
    """A run's calibration settings against its task and validation files."""
    wanted = settings.calibration != "none" or settings.negative_downsampling is not None
    if wanted and task != "binary":
        raise UsageError(
            f"calibration and negative_downsampling apply to task='binary' only. "
            f"Received: task={task!r}"
        )
    if settings.calibration != "none" and not valid:
        raise UsageError(
            f"calibration={settings.calibration!r} needs validation files (valid=, --valid) "
            "to be fitted on"
        )


def _calibrate(model, valid_data, settings, log):
    """Fits the run's calibration on the validation data and sets it in the model's head.

    Returns what metrics.json records (None without calibration or
    correction): the method, the rate, the fitted calibration and the
    validation scores of the model as trained (before both).
    """
    method, rate = settings.calibration, settings.negative_downsampling
    if method == "none" and rate is None:
        return None
    info = {"method": method, "negative_downsampling": rate, "fitted": None}
    if valid_data is not None:
        logits, labels = calibration_lib.model_logits(model, valid_data)
        before = metrics_lib.score("binary", labels, calibration_lib.sigmoid(logits))
        keys = ("logloss", "ece", "ece_equal_mass", "mean_prediction", "positive_rate")
        info["uncalibrated"] = {k: before[k] for k in keys}
        info["fitted"] = calibration_lib.fit_calibration(method, logits, labels, rate)
    calibration_lib.set_calibration(model, info["fitted"], rate)
    log(
        f"Calibration: {method}"
        + (f", negatives kept at rate {rate} corrected" if rate is not None else "")
        + (f", fitted on {len(labels):,} validation rows" if method != "none" else "")
    )
    return info


def _absolute(files):
    return [os.path.abspath(f) for f in files]


# What a warm start may change of the run it goes on from: the rest is the architecture.
WARM_START_MAY_CHANGE = ("l2", "learning_rate")


def _options(model, settings, options, warm=None):
    """`ModelOptions` and `TrainSettings` from `train`'s arguments (and a warm-start run's)."""
    model_fields = {f.name for f in dataclasses.fields(ModelOptions)}
    settings_fields = {f.name for f in dataclasses.fields(TrainSettings)}
    unknown = sorted(set(options) - model_fields - settings_fields)
    if unknown:
        raise TypeError(f"train() got unexpected keyword arguments {unknown}")
    model_args = {k: v for k, v in options.items() if k in model_fields}
    base = ModelOptions(**warm.config["model_options"]) if warm is not None else None
    if isinstance(model, ModelOptions):
        model_options = dataclasses.replace(model, **model_args)
    elif model is None and base is not None:
        model_options = dataclasses.replace(base, **model_args)
    else:
        model_options = ModelOptions(model=model or "deepfm", **model_args)
    if base is not None:
        _check_architecture(model_options, base, warm.path)
    settings_args = {k: v for k, v in options.items() if k in settings_fields}
    settings = dataclasses.replace(settings or TrainSettings(), **settings_args)
    return model_options, settings


def _check_architecture(model_options, base, path):
    """A warm start keeps the architecture of the run it goes on from."""
    given, trained = dataclasses.asdict(model_options), dataclasses.asdict(base)
    for name, value in trained.items():
        same = given[name] == value or (
            isinstance(value, (list, tuple)) and list(given[name] or ()) == list(value)
        )
        if name not in WARM_START_MAY_CHANGE and not same:
            raise UsageError(
                f"warm_start: {path} was trained with {name}={value!r}, not {given[name]!r}; "
                "a warm start keeps the architecture (leave it out)"
            )


def _log_results(result, out, report, log):
    unit = "sweeps" if result.get("model") == "bayesfm" else "epochs"
    log(
        f"Trained in {result['seconds']:.1f} s ({result['epochs_run']} {unit}); model: "
        f"{out / MODEL_FILE}"
    )
    if "valid" in result:
        log(f"Validation: {metrics_lib.format_scores(result['valid'])}")
    if report is not None and report.skipped:
        log(f"Skipped {report.skipped} malformed line(s), e.g. {report.examples[:3]}")
