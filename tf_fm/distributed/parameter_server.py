"""Training with parameter servers: embedding tables sharded by rows over P servers.

`fit(...)` (the signature of `tf_fm.distributed.loop.fit`) trains a package
model under `tf.distribute.experimental.ParameterServerStrategy` with a
`ClusterCoordinator`: this process (the `chief`) runs the loop and
schedules steps; the `worker` tasks (`python -m tf_fm.distributed.server`)
run them; the `ps` tasks hold the variables.

What lives where, and what travels per step:

* The fused `FieldEmbedding` table is a `ShardedVariable`: `TablePartitioner`
  splits its rows over the P servers (and shards nothing else). A lookup
  gathers each shard's rows on the server holding it (`tf.gather` on a
  sharded table is routed to `tf.nn.embedding_lookup`), so only the rows of
  the batch travel to the worker.
* The table's gradient comes back per shard as `tf.IndexedSlices` and the
  update runs on that shard's server (`tf.device(shard.device)`): LazyAdam's
  row rule (`sparse_adam_rows`), with each shard's first and second moments
  in one `(shard rows, 2 * columns)` slot placed with the shard. Per step
  and touched row: the row to the worker, its gradient back, nothing else.
* The DNN, biases and every other variable also live on the servers (round
  robin), updated there by the model's compiled optimizer. Workers of a
  parameter-server cluster hold no state, which is what lets the coordinator
  re-run a lost worker's step on another one; mirrored copies would need a
  synchronous all-reduce between workers, which this strategy does not have.
* The chief reads the input (the run's own pipeline, in the run's order) and
  sends each batch with its step: every batch is trained on once per epoch,
  also when a worker dies and its step is re-run elsewhere. Steps run
  asynchronously (each worker applies its own gradients, Hogwild style).

Validation runs on the workers too (each batch once); the chief feeds the
predictions to the compiled metrics of the model built outside the strategy,
so `val_auc` / `val_logloss` / `val_rmse` are the ones `model.fit` reports,
and `tf_fm.default_callbacks` (LR decay on plateau, early stopping, best
epoch's weights) and `tf_fm.training.EpochLog` run on them unchanged.

After every epoch the chief writes a `tf.train.Checkpoint` of every variable
(table shards, slots and optimizer state included) and the callbacks' state
beside it (`tf_fm.callback_state`: a resumed run stops where the
uninterrupted one would). A lost worker is
survived inside `fit`; a lost parameter server makes `fit` raise (the
coordinator cannot go on without its variables): restart the server and the
chief with `resuming=True`, and training goes on from the last finished
epoch. At the end the shards are gathered into the model built outside the
strategy, which is what is saved and exported.
"""

import contextlib
import contextvars
import dataclasses
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_fm import callback_state, training
from tf_fm.tables import is_embedding_table

# The shapes of the embedding tables being created (set by `fit` around the
# model's construction): what `TablePartitioner` shards.
_TABLE_SHAPES = contextvars.ContextVar("tf_fm_table_shapes", default=())
_CHECKPOINT_PREFIX = "ckpt"
_routed_types = set()


class TablePartitioner:
    """Splits embedding tables by rows over the parameter servers; nothing else.

    A `variable_partitioner` of `ParameterServerStrategy`. It shards a
    variable whose shape is one of the tables `fit` is building (see
    `sharding_tables`) into `min(num_shards, rows)` row blocks; every other
    variable stays whole (and is placed on a server round robin).

    Args:
        num_shards: int. Shards per table: the number of parameter servers.
    """

    def __init__(self, num_shards: int):
        if num_shards < 1:
            raise ValueError(f"`num_shards` must be positive. Received: num_shards={num_shards}")
        self.num_shards = num_shards

    def __call__(self, shape, dtype, axis=0) -> list[int]:
        shape = tf.TensorShape(shape)
        parts = [1] * shape.rank
        if tuple(shape.as_list()) in _TABLE_SHAPES.get():
            parts[0] = min(self.num_shards, shape[0])
        return parts


@contextlib.contextmanager
def sharding_tables(shapes: Sequence[Sequence[int]]):
    """Within the block, `TablePartitioner` shards variables of these `(rows, columns)` shapes."""
    token = _TABLE_SHAPES.set(tuple(tuple(int(d) for d in s) for s in shapes))
    try:
        yield
    finally:
        _TABLE_SHAPES.reset(token)


def make_strategy(config: dict | None = None) -> tf.distribute.experimental.ParameterServerStrategy:
    """The `ParameterServerStrategy` of the cluster in `TF_CONFIG` (call it on the chief).

    Args:
        config: the parsed `TF_CONFIG` (`tf_fm.distributed.cluster.read_tf_config`);
            the strategy reads the environment variable itself, `config` only
            gives the number of parameter servers. None reads it.
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    servers = len(config["cluster"]["ps"]) if config else resolver.cluster_spec().num_tasks("ps")
    return tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=TablePartitioner(servers)
    )


def _route_gathers_to_shards(sharded_type):
    """`tf.gather(table, ids)` on a `ShardedVariable` gathers on each shard (no full copy).

    The layers gather rows with `tf.gather` on the table's variable; on a
    `ShardedVariable` TensorFlow would first concatenate every shard (the
    whole table would travel each step). This registers, once per process,
    a dispatch of `tf.gather` on that type to `tf.nn.embedding_lookup`, which
    gathers each shard's rows where they live (same values; gradient per
    shard as IndexedSlices). The ids are made distinct first, on the worker:
    each distinct row travels once per step each way (a batch of 4096 Zipf
    rows repeats its 31k distinct rows 3.4 times over), and the gradient of
    a repeated row is summed before it is sent. Other uses of `tf.gather`
    (another axis, batch_dims) keep the dense behaviour.
    """
    if sharded_type in _routed_types:
        return

    @tf.experimental.dispatch_for_api(tf.gather, {"params": sharded_type})
    def gather_rows(params, indices, validate_indices=None, axis=None, batch_dims=0, name=None):
        if axis in (None, 0) and batch_dims == 0:
            distinct, positions = tf.unique(tf.reshape(indices, [-1]))
            rows = tf.nn.embedding_lookup(params, distinct, name=name)
            shape = tf.concat([tf.shape(indices), tf.shape(rows)[1:]], axis=0)
            return tf.reshape(tf.gather(rows, positions), shape)
        dense = tf.convert_to_tensor(params)
        return tf.gather(dense, indices, axis=axis, batch_dims=batch_dims, name=name)

    _routed_types.add(sharded_type)


def sparse_adam_rows(var, slot, gradient, learning_rate, step, beta_1, beta_2, epsilon):
    """`tf_fm.optimizers.LazyAdam`'s update of a table's touched rows, on one shard.

    The formulas of LazyAdam's row update (the rows of the batch: duplicate
    ids summed, m and v moved, the row moved by
    `lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)`),
    written against one shard and its own fused `(rows, 2 * columns)`
    moments slot, because LazyAdam's slots are per variable and a shard is
    not a Keras variable. `tests/test_parameter_server.py` checks it against
    `LazyAdam` step for step.

    Args:
        var: tf.Variable `(rows, columns)`, the shard.
        slot: tf.Variable `(rows, 2 * columns)`, its m | v.
        gradient: `tf.IndexedSlices` of the shard (local row ids).
        learning_rate, step: scalars (`step` = the optimizer's iterations + 1).
        beta_1, beta_2, epsilon: LazyAdam's hyperparameters.

    Returns:
        The number of distinct rows updated (int32 scalar).
    """
    ids, positions = tf.unique(tf.cast(gradient.indices, tf.int32))
    grad = tf.math.unsorted_segment_sum(gradient.values, positions, tf.size(ids))
    dtype = var.dtype
    grad = tf.cast(grad, dtype)
    columns = var.shape[1]
    step = tf.cast(step, dtype)
    beta_1, beta_2 = tf.cast(beta_1, dtype), tf.cast(beta_2, dtype)
    alpha = tf.cast(learning_rate, dtype) * tf.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    both = tf.gather(slot, ids)  # (n, 2 * columns): m | v
    m, v = both[:, :columns], both[:, columns:]
    dm, dv = (grad - m) * (1 - beta_1), (tf.square(grad) - v) * (1 - beta_2)
    # Added, not written: with several workers two steps may update one row
    # at once, and a write would drop the other's update (a scatter_add is
    # one op under the variable's lock; Hogwild's staleness, no lost steps).
    slot.scatter_add(tf.IndexedSlices(tf.concat([dm, dv], axis=1), ids))
    step = alpha * (m + dm) / (tf.sqrt(v + dv) + epsilon)
    var.scatter_sub(tf.IndexedSlices(step, ids))
    return tf.size(ids)


class _ShardSlots(tf.Module):
    """LazyAdam's fused moments for every shard of every table, each on its shard's server."""

    def __init__(self, strategy, shards):
        super().__init__(name="table_moments")
        self.moments = []
        for shard in shards:
            rows, columns = shard.shape
            with strategy.extended.colocate_vars_with(shard):
                self.moments.append(
                    tf.Variable(tf.zeros([rows, 2 * columns], shard.dtype), trainable=False)
                )


@dataclasses.dataclass
class StepTraffic:
    """Bytes per training step between one worker and the servers, from measured row counts.

    Attributes:
        rows: distinct table rows a step touched (mean over the epoch's steps).
        row_bytes: bytes of one table row (`columns * dtype size`).
        table_bytes: the touched rows to the worker (lookup) and their
            gradients back: `2 * rows * row_bytes` (+ 4-byte ids).
        dense_bytes: every other trainable variable read and its gradient
            sent back: `2 * their bytes`.
        batch_bytes: the batch the chief sends with the step.
    """

    rows: float
    row_bytes: int
    table_bytes: float
    dense_bytes: int
    batch_bytes: float

    @property
    def total(self) -> float:
        """Bytes per step, all three together."""
        return self.table_bytes + self.dense_bytes + self.batch_bytes


def _check_optimizer(optimizer):
    names = ("beta_1", "beta_2", "epsilon")
    if not all(hasattr(optimizer, n) for n in names):
        raise ValueError(
            "parameter-server training updates the tables with LazyAdam's rule: compile the "
            f"model with an Adam-like optimizer (tf_fm.optimizers.LazyAdam). Received: "
            f"{type(optimizer).__name__}"
        )


class ShardedTrainer:
    """Steps of a model whose tables are `ShardedVariable`s, for `ClusterCoordinator`.

    Build it inside `strategy.scope()` on a compiled model created there (with
    `sharding_tables`). Its `train_step` / `eval_step` are the functions the
    coordinator schedules; `checkpoint` holds every variable of the run.

    Args:
        model: the compiled model, built inside `strategy.scope()`.
        strategy: the `ParameterServerStrategy`.
    """

    def __init__(self, model: keras.Model, strategy):
        optimizer = model.optimizer
        _check_optimizer(optimizer)
        self.model, self.strategy, self.optimizer = model, strategy, optimizer
        self.tables = [v for v in model.trainable_variables if is_embedding_table(v)]
        self.dense = [v for v in model.trainable_variables if not is_embedding_table(v)]
        self.shards = [s for t in self.tables for s in _shards_of(t)]
        for table in self.tables:
            if not isinstance(table.value, tf.Variable):
                _route_gathers_to_shards(type(table.value))
        optimizer.build(self.dense)
        self.slots = _ShardSlots(strategy, self.shards)
        self.loss_fn = keras.losses.get(model.loss)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = tf.train.Checkpoint(
            weights=[_tf_variable(v) for v in model.variables],
            optimizer=[_tf_variable(v) for v in optimizer.variables],
            table_moments=self.slots,
            epoch=self.epoch,
        )
        self.train_step = tf.function(self._train_step)
        self.eval_step = tf.function(self._eval_step)

    def _loss(self, labels, predictions):
        labels = tf.reshape(tf.cast(labels, predictions.dtype), tf.shape(predictions))
        loss = tf.reduce_mean(self.loss_fn(labels, predictions))
        return loss + tf.add_n([loss * 0, *self.model.losses])

    def _replica_train_step(self, features, labels):
        with tf.GradientTape() as tape:
            predictions = self.model(features, training=True)
            loss = self._loss(labels, predictions)
        targets = self.shards + [_tf_variable(v) for v in self.dense]
        gradients = tape.gradient(loss, targets)
        step = self.optimizer.iterations + 1  # as LazyAdam counts its steps
        lr = self.optimizer.learning_rate
        touched = [tf.constant(0)]
        for shard, slot, gradient in zip(self.shards, self.slots.moments, gradients, strict=False):
            if gradient is None:
                continue
            if not isinstance(gradient, tf.IndexedSlices):  # a dense gradient: every row
                gradient = tf.IndexedSlices(gradient, tf.range(tf.shape(gradient)[0]))
            with tf.device(shard.device):  # the update runs where the shard lives
                opt = self.optimizer
                touched.append(
                    sparse_adam_rows(
                        shard, slot, gradient, lr, step, opt.beta_1, opt.beta_2, opt.epsilon
                    )
                )
        dense = list(zip(gradients[len(self.shards) :], self.dense, strict=True))
        self.optimizer.apply([g for g, _ in dense], [v for _, v in dense])
        return loss, tf.add_n(touched)

    def _train_step(self, features, labels):
        return self.strategy.run(self._replica_train_step, args=(features, labels))

    def _eval_step(self, features, labels):
        def replica(features, labels):
            predictions = self.model(features, training=False)
            return self._loss(labels, predictions), predictions

        return self.strategy.run(replica, args=(features, labels))

    def traffic(self, rows: float, features: dict) -> StepTraffic:
        """`StepTraffic` of a step that touched `rows` table rows, on a batch like `features`."""
        row_bytes = sum(int(t.shape[1]) * tf.as_dtype(t.dtype).size for t in self.tables[:1])
        dense_bytes = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in self.dense)
        batch_bytes = sum(int(np.prod(x.shape)) * x.dtype.size for x in features.values())
        table_bytes = rows * (2 * row_bytes + 4)
        return StepTraffic(rows, row_bytes, table_bytes, 2 * dense_bytes, float(batch_bytes))


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _shards_of(table):
    value = _tf_variable(table)
    return list(value.variables) if hasattr(value, "variables") else [value]


def _run_epoch(coordinator, step, batches) -> tuple[float, int, float]:
    """Schedules `step` on every batch and waits: mean loss, steps, mean touched rows.

    The loss is the mean over the epoch's examples (each batch's mean loss
    weighted by its size), as `model.fit` reports it: a short last batch
    counts for its rows, not as a whole step.
    """
    scheduled = [(coordinator.schedule(step, args=batch), len(batch[1])) for batch in batches]
    coordinator.join()
    if not scheduled:
        return float("nan"), 0, 0.0
    fetched = np.array([[float(x) for x in r.fetch()] for r, _ in scheduled]).reshape(-1, 2)
    sizes = np.array([n for _, n in scheduled], dtype=float)
    loss = float(np.average(fetched[:, 0], weights=sizes))
    return loss, len(fetched), float(fetched[:, 1].mean())


def _validate(coordinator, trainer, final, batches) -> dict:
    """Validation logs: each batch predicted on a worker, the metrics on the chief."""
    scheduled = [
        (coordinator.schedule(trainer.eval_step, args=batch), batch[1]) for batch in batches
    ]
    coordinator.join()
    final.reset_metrics()
    total, rows = 0.0, 0
    for remote, labels in scheduled:
        loss, predictions = remote.fetch()
        n = len(labels)
        total, rows = total + float(loss) * n, rows + n
        labels = tf.reshape(tf.cast(labels, predictions.dtype), tf.shape(predictions))
        final.compute_metrics(None, labels, tf.convert_to_tensor(predictions))
    results = {k: float(v) for k, v in final.get_metrics_result().items() if k != "loss"}
    logs = {"val_loss": total / max(rows, 1)}
    logs.update({f"val_{k}": v for k, v in results.items()})
    return logs


def _callbacks(task, out, settings, validation, resuming):
    epoch_log = training.EpochLog(pathlib.Path(out) / training.HISTORY_FILE, resume=resuming)
    return epoch_log, [
        epoch_log,
        *training.training_callbacks(task, validation, settings.patience),
    ]


def _restore(trainer, checkpoint_dir, resuming, log) -> int:
    """The epoch to start from: the last checkpoint's when resuming, else 0."""
    latest = tf.train.latest_checkpoint(checkpoint_dir) if resuming else None
    if latest is None:
        if resuming:
            log(f"No checkpoint in {checkpoint_dir}: training from the first epoch.")
        return 0
    trainer.checkpoint.restore(latest).assert_existing_objects_matched()
    epoch = int(trainer.epoch.numpy())
    log(f"Resuming from {latest} (after epoch {epoch}).")
    return epoch


def _build(build_model, strategy) -> tuple[keras.Model, "ShardedTrainer"]:
    """The model built outside the strategy, and the trainer of its sharded twin."""
    final = build_model()
    shapes = [tuple(v.shape) for v in final.variables if is_embedding_table(v)]
    with sharding_tables(shapes), strategy.scope():
        model = build_model()
        # The sharded model starts from `final`'s initial weights: the ones
        # `model.fit` would start from after the same seed (a second build
        # draws other values), so one worker's steps are fit's steps.
        model.set_weights(final.get_weights())
        return final, ShardedTrainer(model, strategy)


@dataclasses.dataclass
class _Epochs:
    """What the epochs of one `fit` share, and one epoch's work."""

    coordinator: tf.distribute.experimental.coordinator.ClusterCoordinator
    trainer: ShardedTrainer
    final: keras.Model
    train_data: tf.data.Dataset
    valid_data: tf.data.Dataset | None
    manager: tf.train.CheckpointManager
    states: callback_state.EpochStates
    callbacks: list
    log: Callable[[str], None]
    epochs: int

    def run(self, epoch: int) -> float:
        """Trains and validates `epoch`, runs the callbacks, saves; the mean touched rows."""
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch)
        began = time.monotonic()
        loss, steps, rows = _run_epoch(self.coordinator, self.trainer.train_step, self.train_data)
        logs = {"loss": loss}
        if self.valid_data is not None:
            logs.update(_validate(self.coordinator, self.trainer, self.final, self.valid_data))
        learning_rate = self.trainer.model.optimizer.learning_rate
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(learning_rate))
        seconds = time.monotonic() - began
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)
        self.save(epoch + 1)
        self.log(
            f"Epoch {epoch + 1}/{self.epochs}: {steps} steps, {seconds:.1f} s, {_format(logs)}"
        )
        return rows

    def save(self, done: int) -> None:
        """Checkpoints after `done` epochs (after the callbacks: it holds the LR they set)."""
        self.trainer.epoch.assign(done)
        self.states.save(self.callbacks, done)
        self.manager.save()
        self.states.prune(done)


def fit(
    build_model: Callable[[], keras.Model],
    train_dataset_fn: Callable,
    valid_dataset_fn: Callable | None,
    *,
    strategy,
    settings,
    out: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    resuming: bool,
    task: str,
    log: Callable[[str], None] = print,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[keras.Model, dict]:
    """Trains under `ParameterServerStrategy` with sharded tables; the model and its history.

    The arguments are those of `tf_fm.distributed.loop.fit`. The datasets are
    read here on the chief (with a one-pipeline `tf.distribute.InputContext`):
    an epoch is one pass over `train_dataset_fn`'s batches, each sent to a
    free worker with its step.

    Args:
        build_model: returns the compiled model; called once outside the
            strategy (the returned model) and once inside its scope.
        train_dataset_fn: `input_context -> tf.data.Dataset` of
            `(features, label)` batches.
        valid_dataset_fn: the same for validation, or None.
        strategy: from `make_strategy`.
        settings: `tf_fm.training.TrainSettings` (`epochs`, `patience`).
        out: where `history.json` is written.
        checkpoint_dir: where the per-epoch checkpoints go (and are restored
            from when `resuming`).
        resuming: restore the last checkpoint and go on after its epoch.
        task: `"binary"` or `"regression"`.
        log: prints one line.
        callbacks: more Keras callbacks, run before the run's own.

    Returns:
        `(model, history)`: the model built outside the strategy with the
        trained weights (the best epoch's with validation data), and the
        whole run's per-epoch logs.
    """
    if not isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        raise ValueError(
            f"`strategy` must be a ParameterServerStrategy. Received: {type(strategy).__name__}"
        )
    final, trainer = _build(build_model, strategy)
    model = trainer.model
    context = tf.distribute.InputContext()
    valid_data = valid_dataset_fn(context) if valid_dataset_fn is not None else None
    checkpoint_dir = pathlib.Path(checkpoint_dir)
    start = _restore(trainer, str(checkpoint_dir), resuming, log)
    epoch_log, own = _callbacks(task, out, settings, valid_data is not None, start > 0)
    epochs = _Epochs(
        tf.distribute.experimental.coordinator.ClusterCoordinator(strategy),
        trainer,
        final,
        train_dataset_fn(context),
        valid_data,
        tf.train.CheckpointManager(
            trainer.checkpoint,
            str(checkpoint_dir),
            max_to_keep=2,
            checkpoint_name=_CHECKPOINT_PREFIX,
        ),
        callback_state.EpochStates(checkpoint_dir),
        [*callbacks, *own],
        log,
        settings.epochs,
    )
    for callback in epochs.callbacks:
        callback.set_model(model)
    model.stop_training = False
    for callback in epochs.callbacks:
        callback.on_train_begin()
    if start:
        epochs.states.load(epochs.callbacks, start)
    for epoch in range(start, settings.epochs):
        rows = epochs.run(epoch)
        if epoch == start:
            log(_describe_traffic(trainer.traffic(rows, next(iter(epochs.train_data))[0])))
        if model.stop_training:
            break
    for callback in epochs.callbacks:
        callback.on_train_end()
    gather_weights(model, final)
    return final, epoch_log.history


def gather_weights(sharded: keras.Model, target: keras.Model) -> None:
    """Copies every variable of `sharded` (tables gathered from their shards) into `target`."""
    if len(sharded.variables) != len(target.variables):
        raise ValueError(
            f"gather_weights: the models differ ({len(sharded.variables)} vs "
            f"{len(target.variables)} variables)"
        )
    for source, dest in zip(sharded.variables, target.variables, strict=True):
        value = tf.convert_to_tensor(_tf_variable(source))  # a ShardedVariable: its shards joined
        if tuple(value.shape) != tuple(dest.shape):
            raise ValueError(
                f"gather_weights: {source.path} has shape {tuple(value.shape)}, "
                f"{dest.path} {tuple(dest.shape)}"
            )
        dest.assign(value.numpy())


def _describe_traffic(traffic):
    return (
        f"  per step and worker: {traffic.rows:.0f} table rows touched x {traffic.row_bytes} B; "
        f"table {traffic.table_bytes / 1e3:.1f} kB, dense {traffic.dense_bytes / 1e3:.1f} kB, "
        f"batch {traffic.batch_bytes / 1e3:.1f} kB"
    )


def _format(logs):
    return ", ".join(f"{k} {v:.4f}" for k, v in logs.items())
