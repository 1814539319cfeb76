"""Optimizers whose cost follows the embedding rows a batch uses, not the table size.

The gradient of a table lookup is a `tf.IndexedSlices` (rows + their ids).
Stock Keras optimizers do `keras.ops` arithmetic on it, which turns it into a
dense tensor the size of the whole table, and Adam also decays the moments of
every row: a step costs O(table rows). The optimizers here take the sparse
path for every IndexedSlices gradient (duplicate ids of a batch summed first,
then only the touched rows of the parameter and its slots gathered, updated
and written back) and the dense update of the matching Keras optimizer for
every other gradient (DNN kernels, biases).

* `LazyAdam`: Adam whose moments move only for rows present in the batch.
  Rows absent from a batch keep their moments and their value (the "lazy"
  approximation of TensorFlow Addons' LazyAdam and PyTorch's SparseAdam).
  When every row is touched at every step it equals dense Adam.
* `SparseAdagrad`: exact. Adagrad is separable per row and a row with zero
  gradient does not change, so updating only the touched rows is the dense
  update.
* `SparseSGD`: exact plain SGD (no momentum) on touched rows.
* `RowwiseAdagrad`: FBGEMM's / TorchRec's `EXACT_ROWWISE_ADAGRAD` on the
  tables (one accumulator per row: rows x 1 floats of slot memory instead of
  LazyAdam's rows x 2 x columns) and `LazyAdam`'s Adam on everything else.

Embedding tables are the variables tagged by `tf_fm.tables.mark_embedding_table`
(`FieldEmbedding` tags its `table`), not variables of a given name. A table
gets `LazyAdam`'s fused moments slot (below) or `RowwiseAdagrad`'s row
accumulator and is kept out of
`weight_decay` (which would touch every row; regularize tables with
`FieldEmbedding`'s per-example `embeddings_l2`). A variable that is not
tagged, a plain `keras.layers.Embedding`'s `embeddings` for instance, still
takes the sparse path for its IndexedSlices gradients, with the ordinary
per-variable slots of its own shape, and gets weight decay like any other
variable. Gradient clipping (`clipnorm`, `global_clipnorm`) densifies sparse
gradients and is better left off for large tables.

These update the TensorFlow variables with scatter operations: TensorFlow
backend only, and not for XLA (`jit_compile=False`, the default on CPU).

Cost per touched row (see benchmarks/README.md): the row work is random
memory access, so the number of passes over the big arrays is what counts.
`LazyAdam` keeps m and v of a table side by side in one slot variable
`(rows, 2 * columns)` (one gather and one scatter for both moments), and
every parameter row is written with a plain row copy (`scatter_update`, a
memcpy per row), not `scatter_sub` (a read-modify-write per element, about
twice as slow on CPU): safe because the ids are deduplicated first.
"""

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from tf_fm.layers._tf_ops import local_variable
from tf_fm.tables import is_embedding_table

# What `learning_rate` accepts, as in keras.optimizers.Optimizer.
LearningRate = float | keras.optimizers.schedules.LearningRateSchedule | Callable[[], float]


def _dedupe(gradient):
    """Sum the rows of an IndexedSlices per distinct id: (unique ids, summed rows).

    The sum is a sparse (unique x occurrences) matrix times the rows: on CPU
    this is several times faster than `tf.math.unsorted_segment_sum` (measured
    6 ms vs 45 ms for 160k rows of 16 floats).
    """
    ids, positions = tf.unique(tf.cast(gradient.indices, tf.int32))
    values = gradient.values
    n = tf.shape(positions, out_type=tf.int64)[0]
    selector = tf.sparse.SparseTensor(
        indices=tf.stack([tf.cast(positions, tf.int64), tf.range(n)], axis=1),
        values=tf.ones([n], dtype=values.dtype),
        dense_shape=tf.stack([tf.shape(ids, out_type=tf.int64)[0], n]),
    )
    flat = tf.reshape(values, [n, -1])
    summed = tf.sparse.sparse_dense_matmul(selector, flat)
    return ids, tf.reshape(summed, tf.concat([tf.shape(ids), tf.shape(values)[1:]], axis=0))


def sum_duplicate_rows(gradient: tf.IndexedSlices) -> tf.IndexedSlices:
    """The same gradient with one row per distinct id (the rows of a repeated id summed).

    The optimizers of this module do this themselves; a loop that sends
    gradients over the network (`tf_fm.distributed`) calls it first, so
    that each distinct row travels once.
    """
    ids, rows = _dedupe(gradient)
    return tf.IndexedSlices(rows, tf.cast(ids, gradient.indices.dtype), gradient.dense_shape)


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _local(variable):
    """The TF variable a row update gathers from and scatters to (`local_variable`)."""
    return local_variable(_tf_variable(variable))


def _stand_ins(variable):
    """`variable` and each object Keras may pass to `update_step` in its place.

    The TensorFlow backend passes the tf.Variable behind a keras.Variable,
    and under a distribution strategy one replica's component of it at a time.
    """
    value = _tf_variable(variable)
    strategy = getattr(value, "distribute_strategy", None)  # distributed variables only
    replicas = strategy.experimental_local_results(value) if strategy is not None else ()
    return (variable, value, *replicas)


def _subtract_rows(variable, ids, delta):
    """`variable[ids] -= delta` for distinct `ids`: one gather and one row copy back."""
    rows = tf.gather(variable, ids)
    variable.scatter_update(tf.IndexedSlices(rows - delta, ids))


class _RowScratch:
    """Three resizable `(None, columns)` tf.Variables holding one step's gathered rows.

    A plain object, not a Trackable: these are working memory for the fused
    kernel below, not optimizer state, and are neither saved nor restored.
    """

    def __init__(self, columns, dtype):
        with tf.init_scope():
            empty = tf.zeros([0, columns], dtype=dtype)
            shape = tf.TensorShape([None, columns])
            self.var, self.m, self.v = (
                tf.Variable(empty, shape=shape, trainable=False) for _ in range(3)
            )


class _SparseMixin:
    """Slots by position in the built variable list; IndexedSlices gradients row-wise.

    Subclasses create their slots in `_build_slots` and implement
    `_sparse_update` (touched rows) and `_dense_update` (everything else).
    """

    def build(self, var_list: Sequence[keras.Variable]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._positions = {id(x): i for i, v in enumerate(var_list) for x in _stand_ins(v)}
        self._build_slots(list(var_list))
        tables = [v for v in var_list if is_embedding_table(v)]
        if tables and self.weight_decay is not None:
            self.exclude_from_weight_decay(var_list=tables)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        index = self._position(variable)
        if isinstance(gradient, tf.IndexedSlices):
            ids, rows = _dedupe(gradient)
        elif self._row_wise_always(index):
            ids, rows = tf.range(tf.shape(gradient)[0]), gradient
        else:
            self._dense_update(index, gradient, variable, learning_rate)
            return
        lr = tf.cast(learning_rate, variable.dtype)
        self._sparse_update(index, ids, tf.cast(rows, variable.dtype), _local(variable), lr)

    def _position(self, variable):
        return self._positions[id(variable)]

    def _build_slots(self, var_list):
        pass

    def _row_wise_always(self, index):
        """Whether a dense gradient of this variable also goes to `_sparse_update`."""
        return False

    def _dense_update(self, index, gradient, variable, learning_rate):
        super().update_step(gradient, variable, learning_rate)


class _AdamBase(_SparseMixin, keras.optimizers.Optimizer):
    """`keras.optimizers.Adam`'s update for the variables that are not tables.

    Subclasses set `beta_1` and `beta_2`, return Adam's epsilon from
    `_adam_epsilon`, call `_build_adam_slots` from `_build_slots` and give the
    tables their own rule in `_sparse_update`.
    """

    def _adam_epsilon(self):
        return self.epsilon

    def _build_adam_slots(self, var_list):
        """`momentum` and `velocity` slots of the shape of each non-table variable."""
        dense = [v for v in var_list if not is_embedding_table(v)]
        slots = self.add_optimizer_variables(dense, ["momentum", "velocity"])
        pairs = dict(zip(map(id, dense), zip(*slots, strict=True), strict=True))
        self._moments = [pairs.get(id(v)) for v in var_list]

    def _dense_update(self, index, gradient, variable, learning_rate):
        """`keras.optimizers.Adam.update_step`, op for op."""
        ops = keras.ops
        m, v = self._moments[index]
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        self.assign_sub(
            variable,
            ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self._adam_epsilon())),
        )

    def _adam_scalars(self, dtype):
        """beta_1, beta_2 and their powers at this step, as `dtype` tensors."""
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        return beta_1, beta_2, tf.pow(beta_1, step), tf.pow(beta_2, step)

    def _adam_rows(self, ids, grad, m_rows, v_rows, lr, dtype):
        """Adam on gathered rows: (updated m, updated v, the step to subtract)."""
        beta_1, beta_2, beta_1_power, beta_2_power = self._adam_scalars(dtype)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        m_rows = m_rows + (grad - m_rows) * (1 - beta_1)
        v_rows = v_rows + (tf.square(grad) - v_rows) * (1 - beta_2)
        return m_rows, v_rows, alpha * m_rows / (tf.sqrt(v_rows) + self._adam_epsilon())

    def _lazy_adam_update(self, index, ids, grad, var, lr):
        """Lazy Adam on the touched rows of a non-table variable, in its own slots."""
        m, v = (_local(s) for s in self._moments[index])
        m_rows, v_rows, step = self._adam_rows(
            ids, grad, tf.gather(m, ids), tf.gather(v, ids), lr, var.dtype
        )
        m.scatter_update(tf.IndexedSlices(m_rows, ids))
        v.scatter_update(tf.IndexedSlices(v_rows, ids))
        _subtract_rows(var, ids, step)

    def _dense_moments(self, index):
        return tuple(keras.ops.convert_to_tensor(s) for s in self._moments[index])


@keras.saving.register_keras_serializable(package="tf_fm")
class LazyAdam(_AdamBase):
    """Adam that updates only the embedding rows present in the batch.

    Dense gradients get the update of `keras.optimizers.Adam`; IndexedSlices
    gradients the same formulas restricted to the rows of the batch (moments
    of absent rows are left alone).

    For an embedding table (a 2-D variable tagged by
    `tf_fm.tables.mark_embedding_table`) the first and second moments live in
    one slot variable of shape `(rows, 2 * columns)`, m in the first half of
    each row and v in the second (the same memory as two table-sized slots,
    one random access per row instead of two); use `moments(variable)` to read
    them. Every other variable has its own `momentum` and `velocity` slots.

    Args:
        learning_rate: float, `keras.optimizers.schedules.LearningRateSchedule`
            or a callable without arguments. Defaults to 0.001.
        beta_1: float. Decay rate of the first moment. Defaults to 0.9.
        beta_2: float. Decay rate of the second moment. Defaults to 0.999.
        epsilon: float. Added to sqrt(v) in the denominator. Defaults to 1e-7.
        amsgrad: bool. Not supported; must be False. Defaults to False.
        **kwargs: the arguments of `keras.optimizers.Optimizer`
            (`weight_decay`, `clipnorm`, `use_ema`, `name`, ...).

    Example:

    >>> model.compile(optimizer=tf_fm.optimizers.LazyAdam(1e-3), loss="binary_crossentropy")
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kwargs: Any,
    ) -> None:
        if amsgrad:
            raise ValueError("LazyAdam does not support `amsgrad=True`.")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.amsgrad = amsgrad

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon, amsgrad=self.amsgrad
        )
        return config

    def moments(self, variable: keras.Variable) -> tuple[Any, Any]:
        """(m, v) of `variable` as tensors of its shape (split from the fused slot of a table)."""
        index = self._position(variable)
        fused = self._fused_moments[index]
        if fused is None:
            return self._dense_moments(index)
        columns = variable.shape[1]
        fused = keras.ops.convert_to_tensor(fused)
        return fused[:, :columns], fused[:, columns:]

    def _build_slots(self, var_list):
        # Creation order is the order optimizer states are saved in: momentum
        # and velocity of each non-table variable, then each table's fused
        # slot. Changing it would make saved states fail to load.
        self._build_adam_slots(var_list)
        self._fused_moments = [
            self._fused_slot(v) if is_embedding_table(v) else None for v in var_list
        ]
        # The fused kernel needs scratch variables next to the table: single
        # device (no distribution strategy) and float32 only.
        fused_kernel = not tf.distribute.has_strategy()
        self._row_scratch = [
            _RowScratch(v.shape[1], v.dtype)
            if is_embedding_table(v) and fused_kernel and v.dtype == "float32"
            else None
            for v in var_list
        ]

    def _fused_slot(self, table):
        rows, columns = table.shape
        return _table_slot(self, table, (rows, 2 * columns), "moments")

    def _row_wise_always(self, index):
        # A dense gradient for a table (rare: a lookup that densifies): the
        # same update on every row, through the fused slot.
        return self._fused_moments[index] is not None

    def _sparse_update(self, index, ids, grad, var, lr):
        fused = self._fused_moments[index]
        if fused is None:  # a non-table variable with a sparse gradient: its own slots
            self._lazy_adam_update(index, ids, grad, var, lr)
            return
        fused = _local(fused)
        columns = var.shape[-1]  # static (a gradient all-reduced across replicas may not be)
        both = tf.gather(fused, ids)  # (n, 2 * columns): m | v
        m_rows, v_rows = both[:, :columns], both[:, columns:]

        scratch = self._row_scratch[index]
        if scratch is not None:
            var_rows, m_rows, v_rows = self._apply_adam_kernel(
                scratch, tf.gather(var, ids), m_rows, v_rows, grad, lr
            )
            fused.scatter_update(tf.IndexedSlices(tf.concat([m_rows, v_rows], axis=1), ids))
            var.scatter_update(tf.IndexedSlices(var_rows, ids))
            return

        m_rows, v_rows, step = self._adam_rows(ids, grad, m_rows, v_rows, lr, var.dtype)
        fused.scatter_update(tf.IndexedSlices(tf.concat([m_rows, v_rows], axis=1), ids))
        _subtract_rows(var, ids, step)

    def _apply_adam_kernel(self, scratch, var_rows, m_rows, v_rows, grad, lr):
        """Updated (param, m, v) rows from TensorFlow's fused `ResourceApplyAdam`.

        The touched rows of (param, m, v) go into scratch variables and the
        kernel updates them in one pass (the formulas of
        keras.optimizers.Adam); the chain of separate element-wise ops of the
        other path makes about a dozen passes over the rows.
        """
        scratch.var.assign(var_rows)
        scratch.m.assign(m_rows)
        scratch.v.assign(v_rows)
        beta_1, beta_2, beta_1_power, beta_2_power = self._adam_scalars(var_rows.dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=scratch.var.handle,
            m=scratch.m.handle,
            v=scratch.v.handle,
            beta1_power=beta_1_power,
            beta2_power=beta_2_power,
            lr=lr,
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, var_rows.dtype),
            grad=grad,
        )
        return scratch.var.read_value(), scratch.m.read_value(), scratch.v.read_value()


def _table_slot(optimizer, table, shape, suffix, initializer="zeros"):
    """An optimizer variable of `shape` for `table`, placed with the table as Keras places slots."""
    strategy = tf.distribute.get_strategy()
    with strategy.extended.colocate_vars_with(_tf_variable(table)):
        return optimizer.add_variable(
            shape=shape,
            initializer=initializer,
            dtype=table.dtype,
            name=f"{table.path.replace('/', '_')}_{suffix}",
        )


WEIGHT_DECAY_MODES = ("l2", "decoupled")


@keras.saving.register_keras_serializable(package="tf_fm")
class RowwiseAdagrad(_AdamBase):
    """Row-wise Adagrad on the embedding tables (FBGEMM's `EXACT_ROWWISE_ADAGRAD`), Adam elsewhere.

    The optimizer TorchRec's table-batched embeddings use by default. Each
    table row r has one accumulator `a_r` (slot memory rows x 1 instead of
    LazyAdam's rows x 2 x columns). For the rows a batch touches, with `g`
    the row's gradient summed over the batch's occurrences of its id and
    `d` the row width:

        g' = g + embedding_weight_decay * w      ("l2" mode; g' = g otherwise)
        a_r <- a_r + mean_j(g'_j ** 2)           (mean over the row's d values)
        w <- w - learning_rate * g' / (sqrt(a_r) + epsilon)

    and in "decoupled" mode `w <- (1 - learning_rate * embedding_weight_decay)
    * w - learning_rate * g / (sqrt(a_r) + epsilon)`. Rows a batch does not
    touch and their accumulators do not change. Every variable that is not
    a table (DNN kernels, biases, numeric fields' rows) gets
    `keras.optimizers.Adam`'s update at `learning_rate` with `beta_1`,
    `beta_2`, `adam_epsilon` (an untagged variable with a sparse gradient
    gets `LazyAdam`'s lazy Adam); the tables' learning rate is
    `learning_rate * embedding_learning_rate_multiplier`, written
    `learning_rate` in the formulas above, so that a schedule or
    `ReduceLROnPlateau` moves both.

    Keras' `weight_decay` applies to the non-table variables only (it would
    touch every row of a table); `embedding_weight_decay` is the tables'.

    Args:
        learning_rate: float, `keras.optimizers.schedules.LearningRateSchedule`
            or a callable without arguments. Adam's learning rate for the
            non-table variables. Defaults to 0.001.
        epsilon: float >= 0. Added to sqrt(a_r). Defaults to 1e-8 (FBGEMM's).
        initial_accumulator_value: float >= 0. Starting value of every `a_r`.
            Defaults to 0.0 (FBGEMM's).
        embedding_weight_decay: float >= 0. Weight decay of the touched table
            rows. Defaults to 0.0.
        embedding_weight_decay_mode: `"l2"` (added to the gradient, as
            FBGEMM's `WeightDecayMode.L2`) or `"decoupled"`
            (`WeightDecayMode.DECOUPLE`). Defaults to `"l2"`.
        embedding_learning_rate_multiplier: float > 0. The tables' learning
            rate over `learning_rate`. Defaults to 10.0 (0.01 at the default
            `learning_rate`, FBGEMM's default).
        beta_1: float. Adam's first-moment decay. Defaults to 0.9.
        beta_2: float. Adam's second-moment decay. Defaults to 0.999.
        adam_epsilon: float. Adam's epsilon. Defaults to 1e-7.
        **kwargs: the arguments of `keras.optimizers.Optimizer`.

    Example:

    >>> model.compile(optimizer=tf_fm.optimizers.RowwiseAdagrad(1e-3), loss="binary_crossentropy")

    References:
        Duchi et al., 2011, Adaptive Subgradient Methods for Online Learning.
        FBGEMM `fbgemm_gpu` `EmbOptimType.EXACT_ROWWISE_ADAGRAD`.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        epsilon: float = 1e-8,
        initial_accumulator_value: float = 0.0,
        embedding_weight_decay: float = 0.0,
        embedding_weight_decay_mode: str = "l2",
        embedding_learning_rate_multiplier: float = 10.0,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        adam_epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        for name, value in (
            ("epsilon", epsilon),
            ("initial_accumulator_value", initial_accumulator_value),
            ("embedding_weight_decay", embedding_weight_decay),
        ):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {name}={value}")
        if embedding_weight_decay_mode not in WEIGHT_DECAY_MODES:
            raise ValueError(
                f"`embedding_weight_decay_mode` must be one of {WEIGHT_DECAY_MODES}. "
                f"Received: embedding_weight_decay_mode={embedding_weight_decay_mode!r}"
            )
        if embedding_learning_rate_multiplier <= 0:
            raise ValueError(
                "`embedding_learning_rate_multiplier` must be positive. Received: "
                f"embedding_learning_rate_multiplier={embedding_learning_rate_multiplier}"
            )
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.epsilon = epsilon
        self.initial_accumulator_value = initial_accumulator_value
        self.embedding_weight_decay = embedding_weight_decay
        self.embedding_weight_decay_mode = embedding_weight_decay_mode
        self.embedding_learning_rate_multiplier = embedding_learning_rate_multiplier
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.adam_epsilon = adam_epsilon

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            epsilon=self.epsilon,
            initial_accumulator_value=self.initial_accumulator_value,
            embedding_weight_decay=self.embedding_weight_decay,
            embedding_weight_decay_mode=self.embedding_weight_decay_mode,
            embedding_learning_rate_multiplier=self.embedding_learning_rate_multiplier,
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            adam_epsilon=self.adam_epsilon,
        )
        return config

    def accumulator(self, table: keras.Variable) -> Any:
        """The `(rows,)` row accumulators of an embedding table, as a tensor."""
        slot = self._accumulators[self._position(table)]
        if slot is None:
            raise ValueError(f"{table.path} is not an embedding table of this optimizer.")
        return keras.ops.convert_to_tensor(slot)

    def moments(self, variable: keras.Variable) -> tuple[Any, Any]:
        """Adam's (m, v) of a non-table variable, as tensors of its shape."""
        return self._dense_moments(self._position(variable))

    def _adam_epsilon(self):
        return self.adam_epsilon

    def _build_slots(self, var_list):
        # Creation (= saving) order: Adam's slots of each non-table variable,
        # then each table's accumulator.
        self._build_adam_slots(var_list)
        initializer = keras.initializers.Constant(self.initial_accumulator_value)
        self._accumulators = [
            _table_slot(self, v, (v.shape[0],), "accumulator", initializer)
            if is_embedding_table(v)
            else None
            for v in var_list
        ]

    def _row_wise_always(self, index):
        # A dense gradient for a table: every row through the row-wise rule
        # (a zero row gradient leaves its row and accumulator unchanged).
        return self._accumulators[index] is not None

    def _sparse_update(self, index, ids, grad, var, lr):
        accumulator = self._accumulators[index]
        if accumulator is None:  # a non-table variable with a sparse gradient: lazy Adam
            self._lazy_adam_update(index, ids, grad, var, lr)
            return
        lr = lr * tf.cast(self.embedding_learning_rate_multiplier, var.dtype)
        accumulator = _local(accumulator)
        rows = tf.gather(var, ids)  # (n, columns)
        decay = tf.cast(self.embedding_weight_decay, var.dtype)
        l2 = self.embedding_weight_decay_mode == "l2"
        if l2 and self.embedding_weight_decay:
            grad = grad + decay * rows
        acc_rows = tf.gather(accumulator, ids) + tf.reduce_mean(tf.square(grad), axis=1)
        accumulator.scatter_update(tf.IndexedSlices(acc_rows, ids))
        multiplier = lr / (tf.sqrt(acc_rows) + tf.cast(self.epsilon, var.dtype))  # (n,)
        if not l2 and self.embedding_weight_decay:
            rows = rows * (1 - lr * decay)
        var.scatter_update(tf.IndexedSlices(rows - multiplier[:, None] * grad, ids))


@keras.saving.register_keras_serializable(package="tf_fm")
class SparseAdagrad(_SparseMixin, keras.optimizers.Optimizer):
    """Adagrad on touched rows only; exactly equal to `keras.optimizers.Adagrad`.

    Every variable has one `accumulator` slot of its shape, as in Keras.

    Args:
        learning_rate: float, `keras.optimizers.schedules.LearningRateSchedule`
            or a callable without arguments. Defaults to 0.001.
        initial_accumulator_value: float >= 0. Starting value of the
            accumulators. Defaults to 0.1.
        epsilon: float. Added to the accumulator under the square root.
            Defaults to 1e-7.
        **kwargs: the arguments of `keras.optimizers.Optimizer`.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            initial_accumulator_value=self.initial_accumulator_value, epsilon=self.epsilon
        )
        return config

    def _build_slots(self, var_list):
        initializer = keras.initializers.Constant(self.initial_accumulator_value)
        self._accumulator_slots = self.add_optimizer_variables(
            var_list, "accumulator", initializer=initializer
        )

    def _dense_update(self, index, gradient, variable, learning_rate):
        """`keras.optimizers.Adagrad.update_step`, op for op."""
        ops = keras.ops
        accumulator = self._accumulator_slots[index]
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        self.assign_add(accumulator, ops.square(gradient))
        self.assign_sub(
            variable,
            ops.divide(ops.multiply(lr, gradient), ops.sqrt(ops.add(accumulator, self.epsilon))),
        )

    def _sparse_update(self, index, ids, grad, var, lr):
        accumulator = _local(self._accumulator_slots[index])
        acc_rows = tf.gather(accumulator, ids) + tf.square(grad)
        accumulator.scatter_update(tf.IndexedSlices(acc_rows, ids))
        _subtract_rows(var, ids, lr * grad / tf.sqrt(acc_rows + self.epsilon))


@keras.saving.register_keras_serializable(package="tf_fm")
class SparseSGD(_SparseMixin, keras.optimizers.SGD):
    """SGD on touched rows only (exact for `momentum=0`, the only mode supported).

    Same arguments as `keras.optimizers.SGD`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("momentum") or kwargs.get("nesterov"):
            raise ValueError("SparseSGD supports plain SGD only (momentum=0).")
        super().__init__(*args, **kwargs)

    def _sparse_update(self, index, ids, grad, var, lr):
        _subtract_rows(var, ids, lr * grad)
