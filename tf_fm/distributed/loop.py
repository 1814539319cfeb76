"""The training loop under `tf.distribute`: what `model.fit` does, for a strategy fit cannot take.

Synchronous data parallel (`MultiWorkerMirroredStrategy`, or any strategy
with mirrored variables, the default one included): every step runs
`strategy.run` on one batch per replica; each replica takes the gradient
of its rows' loss divided by the rows of the global batch (plus its share
of the regularization) with a `GradientTape`, and the model's compiled Keras
optimizer all-reduces (sums) the gradients and applies them. An embedding
table's gradient is a `tf.IndexedSlices`; the all-reduce of one gathers the
rows and ids of every replica (it stays sparse), and the sparse optimizers
(`tf_fm.optimizers`) update the touched rows.

After every epoch: validation metrics computed by every worker on its shard
of the validation data, their states (AUC's confusion counts, sums and
counts) summed over the workers, so every worker sees the metric of the
whole validation set; then the very callbacks `tf_fm.train` gives `fit`
(`tf_fm.training.EpochLog` and `tf_fm.default_callbacks`:
`ReduceLROnPlateau`, `BestEpochStopping`), which every worker runs on the
same numbers and so decides the same; then a checkpoint (model and optimizer
variables, the epoch, the callbacks' state: `tf_fm.callback_state`) written
by the chief. A run started again with `resuming` goes on from the epoch
after the last checkpoint, as `tf_fm.callbacks.AtomicBackupAndRestore` does
for `fit`, and stops where the uninterrupted run would.
"""

import contextlib
import pathlib
import time
import zipfile
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_fm import callback_state, training
from tf_fm.errors import UsageError
from tf_fm.optimizers import sum_duplicate_rows

CHECKPOINT_FILE = training.DISTRIBUTED_CHECKPOINTS[0]
SUM = tf.distribute.ReduceOp.SUM

DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]
Read = Callable[[list, int, bool], tf.data.Dataset]


def parameter_server_module():
    """`tf_fm.distributed.parameter_server`, or a clear error where it is missing."""
    try:
        from tf_fm.distributed import parameter_server
    except ImportError as error:
        raise UsageError(
            "training with parameter servers needs tf_fm.distributed.parameter_server, "
            f"which cannot be imported here: {error}"
        ) from None
    return parameter_server


def sharded_dataset_fn(
    read: Read,
    files: list,
    *,
    global_batch: int,
    shuffle: bool,
    seed: int,
    shuffle_buffer: int,
    mode: str = "auto",
) -> DatasetFn:
    """The dataset function of `files` for `strategy.distribute_datasets_from_function`.

    With one input pipeline (one worker), `read(files, global_batch,
    shuffle)`. With W pipelines, pipeline i gets a `1/W` share of every
    global batch of `global_batch` rows (which must be divisible by W):

    * by files (`mode="files"`, or `"auto"` with at least W files): files i,
      i + W, ... read as `read` reads them, in batches of `global_batch / W`;
    * by data (`mode="data"`, or `"auto"` with fewer files than W): every
      pipeline reads all files in the same order (`read(files, global_batch,
      False)`: no parallel reordering), shuffles the batches with the same
      `seed` (a buffer of `shuffle_buffer` rows), and keeps its slice of
      each (`global_batch / W` rows; the last, partial batch is split as
      evenly): step t of all workers together is global batch t.

    Args:
        read: `(paths, batch_size, shuffle) -> tf.data.Dataset` of
            `(features, label)` batches.
        files: list of paths.
        global_batch: int. Rows per step over all workers.
        shuffle: bool. Whether to shuffle (training data).
        seed: int. Shuffle seed (data sharding).
        shuffle_buffer: int. Rows shuffled together (data sharding).
        mode: `"auto"`, `"files"` or `"data"`. Defaults to `"auto"`.

    Returns:
        A function of a `tf.distribute.InputContext`.
    """
    if mode not in ("auto", "files", "data"):
        raise ValueError(f"`mode` must be 'auto', 'files' or 'data'. Received: {mode!r}")

    def dataset_fn(context):
        count, index = context.num_input_pipelines, context.input_pipeline_id
        by_data = mode == "data" or (mode == "auto" and len(files) < count)
        if count == 1 and not by_data:
            return read(list(files), global_batch, shuffle)
        if global_batch % count:
            raise UsageError(
                f"batch_size {global_batch} must be divisible by the number of workers {count}"
            )
        width = global_batch // count
        if not by_data:
            return read(list(files)[index::count], width, shuffle)
        data = read(list(files), global_batch, False)
        if shuffle:
            data = data.shuffle(max(1, shuffle_buffer // global_batch), seed=seed)
        return data.map(lambda *element: tf.nest.map_structure(_share(index, count), element))

    return dataset_fn


def _share(index, count):
    """The slice of a batch that is pipeline `index`'s of `count`: equal, also for the last."""

    def share(tensor):
        rows = tf.shape(tensor)[0]
        return tensor[rows * index // count : rows * (index + 1) // count]

    return share


def _per_example_loss(model):
    """The compiled loss as a per-example function `(labels, predictions) -> (rows,)`."""
    loss = keras.losses.get(model.loss)
    if isinstance(loss, keras.losses.Loss):
        return loss.call
    return loss


def _fresh_metrics(model):
    """New, unbuilt copies of the model's compiled metrics (AUC, log loss or RMSE)."""
    config = model.get_compile_config().get("metrics") or []
    return [keras.metrics.deserialize(m) for m in config]


def _local_replicas(strategy):
    """How many replicas of `strategy` run in this process."""
    try:
        return len(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: one
        return 1


class _Steps:
    """The distributed train and evaluation steps of one model, and their metrics."""

    def __init__(self, strategy, model):
        self.strategy, self.model = strategy, model
        self.loss = _per_example_loss(model)
        self.train_metrics = _fresh_metrics(model)
        self.valid_metrics = _fresh_metrics(model)
        # One worker's contribution to a sum over workers, once per worker.
        self.local_replicas = _local_replicas(strategy)
        self.train_step = tf.function(self._train_step, reduce_retracing=True)
        self.eval_step = tf.function(self._eval_step, reduce_retracing=True)
        self.all_sum = tf.function(self._all_sum, reduce_retracing=True)

    def _losses(self, labels, predictions, total):
        """This replica's share of the global batch loss: data term and regularization."""
        labels = tf.reshape(tf.cast(labels, predictions.dtype), tf.shape(predictions))
        per_example = self.loss(labels, predictions)  # (rows,)
        rows = tf.cast(tf.shape(per_example)[0], per_example.dtype)
        total = tf.maximum(total, 1.0)
        loss = tf.reduce_sum(per_example) / total
        if self.model.losses:
            loss += tf.add_n(self.model.losses) * (rows / total)
        return loss, labels, rows

    def _replica_train(self, features, labels):
        context = tf.distribute.get_replica_context()
        rows = tf.cast(tf.shape(tf.nest.flatten(labels)[0])[0], tf.float32)
        total = context.all_reduce(SUM, rows)
        model = self.model
        with tf.GradientTape() as tape:
            predictions = model(features, training=True)
            loss, labels, _ = self._losses(labels, predictions, total)
        gradients = tape.gradient(loss, model.trainable_variables)
        if self.strategy.num_replicas_in_sync > 1:  # the optimizer sums them itself
            gradients = [
                sum_duplicate_rows(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients
            ]  # a table's distinct rows, not its ids, go into the all-reduce
        model.optimizer.apply(gradients, model.trainable_variables)
        return loss, rows, labels, predictions

    def _train_step(self, features, labels):
        loss, rows, labels, predictions = self.strategy.run(
            self._replica_train, args=(features, labels)
        )
        self._update(self.train_metrics, labels, predictions)
        return self.strategy.reduce(SUM, loss, None), self.strategy.reduce(SUM, rows, None)

    def _replica_eval(self, features, labels):
        predictions = self.model(features, training=False)
        rows = tf.cast(tf.shape(predictions)[0], tf.float32)
        loss, labels, _ = self._losses(labels, predictions, rows)
        return loss * rows, rows, labels, predictions

    def _eval_step(self, features, labels):
        loss, rows, labels, predictions = self.strategy.run(
            self._replica_eval, args=(features, labels)
        )
        self._update(self.valid_metrics, labels, predictions)
        local = self.strategy.experimental_local_results
        return tf.add_n(local(loss)), tf.add_n(local(rows))

    def _update(self, metrics, labels, predictions):
        local = self.strategy.experimental_local_results
        for y, p in zip(local(labels), local(predictions), strict=True):
            for metric in metrics:
                metric.update_state(y, p)

    def _all_sum(self, values):
        def replica(*parts):
            context = tf.distribute.get_replica_context()
            return [context.all_reduce(SUM, p / self.local_replicas) for p in parts]

        results = self.strategy.run(replica, args=tuple(values))
        return [self.strategy.experimental_local_results(r)[0] for r in results]

    def results(self, metrics, prefix=""):
        """The metrics of every worker's rows: their states summed over the workers."""
        variables = [v for m in metrics for v in m.variables]
        if variables:
            summed = self.all_sum([tf.convert_to_tensor(v) for v in variables])
            for variable, value in zip(variables, summed, strict=True):
                variable.assign(value)
        scores = {f"{prefix}{m.name}": float(m.result()) for m in metrics}
        for metric in metrics:
            metric.reset_state()
        return scores


def _epoch(steps, dataset, step, metrics, prefix):
    """One pass over a distributed dataset: the mean loss and the metrics of all workers.

    The loss is the mean over the pass's examples, as `model.fit` reports it
    (a short last batch weighs its rows, not a whole step).
    """
    loss_sum, rows, batches = 0.0, 0.0, 0
    iterator = iter(dataset)
    while True:
        element = iterator.get_next_as_optional()  # every worker ends at the same step
        if not element.has_value():
            break
        loss, count = step(*element.get_value())
        # Training: the global batch's mean loss and rows, the same everywhere;
        # evaluation: this worker's loss sum and rows.
        loss_sum += float(loss) if prefix else float(loss) * float(count)
        rows, batches = rows + float(count), batches + 1
    if prefix:  # evaluation: summed over all the workers
        loss_sum, rows = steps.all_sum([tf.constant(loss_sum), tf.constant(rows)])
    mean = float(loss_sum) / max(float(rows), 1.0)
    return {f"{prefix}loss": mean, **steps.results(metrics, prefix)}, batches


class _Checkpoint:
    """Model and optimizer variables and the next epoch in one `.npz`, the callbacks' state beside.

    The chief writes both; every worker reads them (the checkpoint directory
    is on storage they all see).
    """

    def __init__(self, directory, chief):
        self.path = pathlib.Path(directory) / CHECKPOINT_FILE
        self.chief = chief
        self.callbacks = callback_state.EpochStates(directory)

    def _variables(self, model):
        return [*model.variables, *model.optimizer.variables]

    def save(self, model, epoch, callbacks):
        if not self.chief:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.callbacks.save(callbacks, epoch)
        tmp = self.path.with_name(f".{self.path.stem}.tmp.npz")
        # np.savez's format, one variable in memory at a time (a table and
        # its slots at once would double the chief's memory while it saves).
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            _write_array(archive, "epoch", np.asarray(epoch))
            for i, variable in enumerate(self._variables(model)):
                _write_array(archive, f"v{i}", np.asarray(variable))
        tmp.replace(self.path)
        self.callbacks.prune(epoch)

    def restore(self, model):
        """The epoch to start from: the saved one, or 0 without a checkpoint."""
        if not self.path.is_file():
            return 0
        variables = self._variables(model)
        with np.load(self.path) as saved:
            if len(saved.files) != len(variables) + 1:
                raise UsageError(
                    f"{self.path} holds {len(saved.files) - 1} variables, the model "
                    f"{len(variables)}: it is the checkpoint of another model"
                )
            for i, variable in enumerate(variables):
                variable.assign(saved[f"v{i}"])
            return int(saved["epoch"])


# MultiWorkerMirroredStrategy broadcasts every variable's initial value from
# the chief in one gRPC message, which cannot exceed 2 GiB: a larger variable
# fails on the other workers ("Tensor Size Mismatch: RecvBufResponse returned
# 0 bytes", then the chief's "tasks have crashed").
MAX_BROADCAST_BYTES = 2**31 - 1


@contextlib.contextmanager
def broadcast_limit(limit: int = MAX_BROADCAST_BYTES):
    """Refuses, with a UsageError naming it, a variable too large for the initial broadcast."""

    def check(name, value):
        size = int(np.prod(value.shape)) * tf.as_dtype(value.dtype).size
        if size > limit:
            raise UsageError(
                f"variable {name!r} of shape {tuple(value.shape)} is {size / 2**30:.2f} GiB: "
                "synchronous workers start from the chief's values, sent in one message of "
                f"at most {limit / 2**30:.0f} GiB. Train this table on parameter servers "
                "(--cluster local:W,P), or with --optimizer rowwise_adagrad (one float of "
                "slot per row)"
            )
        return value

    def creator(next_creator, **kwargs):
        value, name = kwargs.get("initial_value"), kwargs.get("name")
        if callable(value):  # Keras' lazy initializer: checked when the value is made
            kwargs["initial_value"] = lambda: check(name, tf.convert_to_tensor(value()))
        elif value is not None:
            check(name, tf.convert_to_tensor(value))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        yield


def _write_array(archive, name, array):
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _unsharded_copy(build_model, model):
    """A model built outside any strategy with `model`'s weights and optimizer state."""
    copy = build_model()
    copy.set_weights(model.get_weights())
    copy.optimizer.build(copy.trainable_variables)
    for target, value in zip(copy.optimizer.variables, model.optimizer.variables, strict=True):
        target.assign(np.asarray(value))
    return copy


def fit(
    build_model: Callable[[], keras.Model],
    train_dataset_fn: DatasetFn,
    valid_dataset_fn: DatasetFn | None,
    *,
    strategy: tf.distribute.Strategy,
    settings: "training.TrainSettings",
    out: str | pathlib.Path,
    checkpoint_dir: str | pathlib.Path,
    resuming: bool,
    task: str,
    log: Callable[[str], None] = print,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[keras.Model | None, dict]:
    """Trains under `strategy` with `fit`'s epochs, validation and callbacks semantics.

    Args:
        build_model: `() -> compiled keras.Model`; called inside
            `strategy.scope()` and once more outside it for the result.
        train_dataset_fn: `InputContext -> tf.data.Dataset` of `(features,
            label)` batches of this input pipeline (`sharded_dataset_fn`).
        valid_dataset_fn: the same for validation data, or None (no early
            stopping, no learning-rate decay: `settings.epochs` epochs).
        strategy: a `tf.distribute.Strategy`; a `ParameterServerStrategy`
            goes to `tf_fm.distributed.parameter_server.fit`.
        settings: `tf_fm.training.TrainSettings`; `batch_size` is global.
        out: the directory this process writes `history.json` to.
        checkpoint_dir: the run's checkpoint directory (the chief writes it).
        resuming: bool. Start from the checkpoint in `checkpoint_dir`.
        task: `"binary"` or `"regression"`.
        log: callable printing one line (the chief's epoch lines).
        callbacks: more Keras callbacks, run on every worker before the
            run's own (`fit`'s `callbacks`); their `on_epoch_end` sees the
            epoch's logs before the checkpoint is written. Defaults to none.

    Returns:
        `(model, history)`: on the chief, a model built outside any strategy
        with the trained weights (the best epoch's, with validation data);
        None on the other workers (a copy of the tables there would double
        their memory for nothing); and the whole run's per-epoch history.
    """
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return parameter_server_module().fit(
            build_model,
            train_dataset_fn,
            valid_dataset_fn,
            strategy=strategy,
            settings=settings,
            out=out,
            checkpoint_dir=checkpoint_dir,
            resuming=resuming,
            task=task,
            log=log,
            callbacks=callbacks,
        )
    collective = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    with strategy.scope(), broadcast_limit() if collective else contextlib.nullcontext():
        model = build_model()
        model.optimizer.build(model.trainable_variables)
    chief = strategy.extended.should_checkpoint
    checkpoint = _Checkpoint(checkpoint_dir, chief)
    start = checkpoint.restore(model) if resuming else 0
    if start:
        log(f"Resuming from {checkpoint.path} (epoch {start}).")
    history = _train(
        model,
        checkpoint,
        start,
        strategy,
        train_dataset_fn,
        valid_dataset_fn,
        settings,
        out,
        resuming,
        task,
        log if chief else lambda _: None,
        callbacks,
    )
    return (_unsharded_copy(build_model, model) if chief else None), history


def _train(
    model, checkpoint, start, strategy, train_fn, valid_fn, settings, out, resuming, task, log,
    extra,
):  # fmt: skip
    """The epochs: train, validate, callbacks, checkpoint; returns the run's history."""
    train_data = strategy.distribute_datasets_from_function(train_fn)
    valid_data = strategy.distribute_datasets_from_function(valid_fn) if valid_fn else None
    steps = _Steps(strategy, model)
    epoch_log = training.EpochLog(pathlib.Path(out) / training.HISTORY_FILE, resume=resuming)
    own = [
        *extra,
        epoch_log,
        *training.training_callbacks(task, valid_fn is not None, settings.patience),
    ]
    callbacks = keras.callbacks.CallbackList(own, model=model)
    model.stop_training = False
    callbacks.on_train_begin()
    if start:
        checkpoint.callbacks.load(own, start)
    for epoch in range(start, settings.epochs):
        began = time.monotonic()
        callbacks.on_epoch_begin(epoch)
        logs, batches = _epoch(steps, train_data, steps.train_step, steps.train_metrics, "")
        if valid_data is not None:
            logs.update(_epoch(steps, valid_data, steps.eval_step, steps.valid_metrics, "val_")[0])
        seconds = time.monotonic() - began
        log(
            f"Epoch {epoch + 1}/{settings.epochs}: {batches} steps, {seconds:.1f} s - "
            + " - ".join(f"{k} {v:.4f}" for k, v in logs.items())
        )
        callbacks.on_epoch_end(epoch, logs)
        checkpoint.save(model, epoch + 1, own)
        if model.stop_training:
            break
    callbacks.on_train_end()
    return epoch_log.history
