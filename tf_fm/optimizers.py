"""Optimizers whose cost follows the embedding rows a batch uses, not the table size.

The gradient of a table lookup is a `tf.IndexedSlices` (rows + their ids).
Stock Keras optimizers do `keras.ops` arithmetic on it, which turns it into a
dense tensor the size of the whole table, and Adam also decays the moments of
every row: a step costs O(table rows). The optimizers here take the sparse
path for such gradients (duplicate ids of a batch summed first, then only the
touched rows of the parameter and its slots gathered, updated and scattered
back) and the wrapped Keras optimizer's own dense update for every other
variable (DNN kernels, biases).

* `LazyAdam`: Adam whose moments move only for rows present in the batch.
  Rows absent from a batch keep their moments and their value (the "lazy"
  approximation of TensorFlow Addons' LazyAdam and PyTorch's SparseAdam).
  When every row is touched at every step it equals dense Adam.
* `SparseAdagrad`: exact. Adagrad is separable per row and a row with zero
  gradient does not change, so updating only the touched rows is the dense
  update.
* `SparseSGD`: exact plain SGD (no momentum) on touched rows.

`weight_decay` is not applied to the embedding tables (that would touch every
row); regularize them with `FieldEmbedding`'s per-example `embeddings_l2`.
Gradient clipping (`clipnorm`, `global_clipnorm`) densifies sparse gradients
and is better left off for large tables.

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

import keras
import tensorflow as tf

# Table variables (FieldEmbedding's `table`, keras.layers.Embedding's
# `embeddings`): kept out of weight decay, which would touch every row.
TABLE_NAMES = ("table", "embeddings")


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


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def _is_table(variable):
    return variable.name in TABLE_NAMES and len(variable.shape) == 2


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
    """Routes IndexedSlices gradients to `_sparse_update`, the rest to Keras."""

    def build(self, var_list):
        super().build(var_list)
        tables = [v for v in var_list if v.name in TABLE_NAMES]
        if tables and self.weight_decay is not None:
            self.exclude_from_weight_decay(var_list=tables)

    def update_step(self, gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):
            ids, rows = _dedupe(gradient)
            lr = tf.cast(learning_rate, variable.dtype)
            self._sparse_update(ids, tf.cast(rows, variable.dtype), variable, lr)
        else:
            super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="tf_fm")
class LazyAdam(_SparseMixin, keras.optimizers.Adam):
    """Adam that updates only the embedding rows present in the batch.

    Dense variables follow `keras.optimizers.Adam` exactly; table rows follow
    the same formulas restricted to the rows of the batch (moments of absent
    rows are left alone). Same arguments as `keras.optimizers.Adam`; `amsgrad`
    is not supported.

    For a table variable (named `table` or `embeddings`, 2-D) the first and
    second moments live in one slot variable of shape `(rows, 2 * columns)`,
    m in the first half of each row and v in the second (the same memory as
    two table-sized slots, one random access per row instead of two); use
    `moments(variable)` to read them. Every other variable has Keras' own
    `momentum` and `velocity` slots.

    Example:

    >>> model.compile(optimizer=tf_fm.optimizers.LazyAdam(1e-3), loss="binary_crossentropy")
    """

    def __init__(self, *args, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("LazyAdam does not support `amsgrad=True`.")
        super().__init__(*args, **kwargs)

    def build(self, var_list):
        if self.built:
            return
        # Adam.build would give every variable two slots of its own shape;
        # tables get one fused slot instead (see the class docstring).
        keras.optimizers.Optimizer.build(self, var_list)
        tables = [v for v in var_list if _is_table(v)]
        dense = [v for v in var_list if not _is_table(v)]
        momentums, velocities = self.add_optimizer_variables(dense, ["momentum", "velocity"])
        by_key = {
            self._var_key(v): (m, u) for v, m, u in zip(dense, momentums, velocities, strict=True)
        }
        self._momentums, self._velocities, self._table_moments = [], [], []
        self._row_scratch = []
        # The fused kernel needs scratch variables next to the table: single
        # device (no distribution strategy) and float32 only.
        fused_kernel = not tf.distribute.has_strategy()
        for variable in var_list:
            if _is_table(variable) and fused_kernel and variable.dtype == "float32":
                self._row_scratch.append(_RowScratch(variable.shape[1], variable.dtype))
            else:
                self._row_scratch.append(None)
            if _is_table(variable):
                rows, columns = variable.shape
                # Placed with the table, as Keras places its own slots.
                strategy = tf.distribute.get_strategy()
                with strategy.extended.colocate_vars_with(_tf_variable(variable)):
                    moments = self.add_variable(
                        shape=(rows, 2 * columns),
                        dtype=variable.dtype,
                        name=f"{variable.path.replace('/', '_')}_moments",
                    )
                self._momentums.append(None)
                self._velocities.append(None)
                self._table_moments.append(moments)
            else:
                m, u = by_key[self._var_key(variable)]
                self._momentums.append(m)
                self._velocities.append(u)
                self._table_moments.append(None)
        if tables and self.weight_decay is not None:
            self.exclude_from_weight_decay(var_list=tables)

    def moments(self, variable):
        """(m, v) of `variable` as tensors of its shape (split from the fused slot of a table)."""
        index = self._get_variable_index(variable)
        fused = self._table_moments[index]
        if fused is None:
            return (
                keras.ops.convert_to_tensor(self._momentums[index]),
                keras.ops.convert_to_tensor(self._velocities[index]),
            )
        columns = variable.shape[1]
        fused = keras.ops.convert_to_tensor(fused)
        return fused[:, :columns], fused[:, columns:]

    def update_step(self, gradient, variable, learning_rate):
        if self._table_moments[self._get_variable_index(variable)] is not None and not (
            isinstance(gradient, tf.IndexedSlices)
        ):
            # A dense gradient for a table (rare: a lookup that densifies):
            # the same update on every row, through the fused slot.
            gradient = tf.IndexedSlices(
                tf.convert_to_tensor(gradient), tf.range(tf.shape(gradient)[0])
            )
        super().update_step(gradient, variable, learning_rate)

    def _sparse_update(self, ids, grad, variable, lr):
        index = self._get_variable_index(variable)
        var = _tf_variable(variable)
        step = tf.cast(self.iterations + 1, var.dtype)
        beta_1 = tf.cast(self.beta_1, var.dtype)
        beta_2 = tf.cast(self.beta_2, var.dtype)
        fused = self._table_moments[index]
        scratch = self._row_scratch[index]

        if fused is None:  # a non-table variable with a sparse gradient: Keras' slots
            m = _tf_variable(self._momentums[index])
            v = _tf_variable(self._velocities[index])
            m_rows, v_rows = tf.gather(m, ids), tf.gather(v, ids)
        else:
            fused = _tf_variable(fused)
            columns = grad.shape[-1]
            both = tf.gather(fused, ids)  # (n, 2 * columns): m | v
            m_rows, v_rows = both[:, :columns], both[:, columns:]

        if scratch is not None:
            # The touched rows of (param, m, v) go into scratch variables and
            # TensorFlow's ResourceApplyAdam updates them in one fused pass
            # (the formulas of keras.optimizers.Adam); the chain of separate
            # element-wise ops below makes about a dozen passes over the rows.
            # Then one row copy back into the slot and the table.
            scratch.m.assign(m_rows)
            scratch.v.assign(v_rows)
            scratch.var.assign(tf.gather(var, ids))
            tf.raw_ops.ResourceApplyAdam(
                var=scratch.var.handle,
                m=scratch.m.handle,
                v=scratch.v.handle,
                beta1_power=tf.pow(beta_1, step),
                beta2_power=tf.pow(beta_2, step),
                lr=lr,
                beta1=beta_1,
                beta2=beta_2,
                epsilon=tf.cast(self.epsilon, var.dtype),
                grad=grad,
            )
            moments = tf.concat([scratch.m.read_value(), scratch.v.read_value()], axis=1)
            fused.scatter_update(tf.IndexedSlices(moments, ids))
            var.scatter_update(tf.IndexedSlices(scratch.var.read_value(), ids))
            return

        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        m_rows = m_rows + (grad - m_rows) * (1 - beta_1)
        v_rows = v_rows + (tf.square(grad) - v_rows) * (1 - beta_2)
        if fused is None:
            m.scatter_update(tf.IndexedSlices(m_rows, ids))
            v.scatter_update(tf.IndexedSlices(v_rows, ids))
        else:
            fused.scatter_update(tf.IndexedSlices(tf.concat([m_rows, v_rows], axis=1), ids))
        _subtract_rows(var, ids, alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon))


@keras.saving.register_keras_serializable(package="tf_fm")
class SparseAdagrad(_SparseMixin, keras.optimizers.Adagrad):
    """Adagrad on touched rows only; exactly equal to `keras.optimizers.Adagrad`.

    Same arguments as `keras.optimizers.Adagrad`.
    """

    def _sparse_update(self, ids, grad, variable, lr):
        accumulator = _tf_variable(self._accumulators[self._get_variable_index(variable)])
        var = _tf_variable(variable)
        acc_rows = tf.gather(accumulator, ids) + tf.square(grad)
        accumulator.scatter_update(tf.IndexedSlices(acc_rows, ids))
        _subtract_rows(var, ids, lr * grad / tf.sqrt(acc_rows + self.epsilon))


@keras.saving.register_keras_serializable(package="tf_fm")
class SparseSGD(_SparseMixin, keras.optimizers.SGD):
    """SGD on touched rows only (exact for `momentum=0`, the only mode supported)."""

    def __init__(self, *args, **kwargs):
        if kwargs.get("momentum") or kwargs.get("nesterov"):
            raise ValueError("SparseSGD supports plain SGD only (momentum=0).")
        super().__init__(*args, **kwargs)

    def _sparse_update(self, ids, grad, variable, lr):
        _subtract_rows(_tf_variable(variable), ids, lr * grad)
