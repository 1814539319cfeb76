"""The few TensorFlow-backend operations the layers use directly.

Everything else in `tf_fm.layers` is written with `keras.ops`. These two
functions exist because the backend-neutral alternatives are wrong for large
embedding tables (see docs: PERFORMANCE_NOTES.md):

* `keras.ops.take(variable, ids)` reads the whole variable as a dense tensor
  before it gathers. After the first sparse update TensorFlow makes every such
  read copy the whole buffer, so a step would cost O(table rows).
  `tf.gather` on the `tf.Variable` itself gathers on the resource and only
  touches the rows asked for; its gradient is a `tf.IndexedSlices`.
* Under a mirrored strategy (`MultiWorkerMirroredStrategy`) the table's
  variable is a `MirroredVariable`, and `tf.gather` on one reads the whole
  variable first: the step's scatter then copies the buffer (the read still
  holds it), 157 ms per step for a 26M x 17 table against 3.9 ms when the
  gather and the scatter use this device's component (`local_variable`).
  The optimizers (`tf_fm.optimizers`) use it for their slots too.
* Keras has no graph-mode assertion; an out-of-range id must stop the step
  with a message naming the field, in `fit`, `predict` and a SavedModel alike.
"""

import tensorflow as tf


def local_variable(variable):
    """The `tf.Variable` this device reads and writes, of a TF variable (not its Keras wrapper).

    A distributed (mirrored) variable with one component on this worker (one
    device per worker, as on CPU) gives that component, through the public
    `Strategy.experimental_local_results`; with several local devices, and
    for any other variable, the variable itself.
    """
    if not tf.distribute.has_strategy() or not isinstance(
        variable, tf.distribute.DistributedValues
    ):
        return variable
    components = tf.distribute.get_strategy().experimental_local_results(variable)
    return components[0] if len(components) == 1 else variable


def resource_gather(variable, ids):
    """Rows `ids` of a Keras variable, gathered on its TF resource.

    Args:
        variable: keras.Variable created with `autocast=False` (so `.value` is
            the `tf.Variable` itself, not a dense cast copy).
        ids: integer tensor of row indices, any shape.

    Returns:
        Tensor of shape `ids.shape + variable.shape[1:]`, in the variable's dtype.
    """
    return tf.gather(local_variable(variable.value), ids)


def check_ids_in_range(ids, low, high, slot_fields):
    """Fail the step, naming the field, if an id is outside its slot's range.

    Args:
        ids: int64 tensor `(batch, slots)`.
        low: list of int, per slot the lowest valid id (-1 where it means padding).
        high: list of int, per slot the vocabulary size (ids must be < it).
        slot_fields: list of str, per slot the field name.

    Returns:
        `ids`, with a control dependency on the check. The check is one
        vectorized comparison; the message is only built on the failure branch.
    """
    low_t = tf.constant(low, dtype=ids.dtype)
    high_t = tf.constant(high, dtype=ids.dtype)
    in_range = (ids >= low_t) & (ids < high_t)

    def ok():
        return tf.constant(True)

    def fail():
        first = tf.where(tf.logical_not(in_range))[0]  # (row, slot) of the first bad id
        row, slot = first[0], first[1]
        size = tf.gather(high_t, slot)
        # No quote characters: graph-mode assertion messages escape them.
        message = tf.strings.join(
            [
                "FieldEmbedding: id out of range in field `",
                tf.gather(tf.constant(slot_fields), slot),
                "` (batch row ",
                tf.strings.as_string(row),
                "): id ",
                tf.strings.as_string(ids[row, slot]),
                ", valid ids are 0..",
                tf.strings.as_string(size - 1),
                " (vocabulary size ",
                tf.strings.as_string(size),
                tf.where(tf.gather(low_t, slot) < 0, "; -1 is padding", ""),
                "). Build the layer with out_of_range=`oov` to map such ids to the "
                "field OOV row instead.",
            ]
        )
        check = tf.debugging.Assert(False, [message])
        with tf.control_dependencies([check]):
            return tf.constant(False)

    passed = tf.cond(tf.reduce_all(in_range), ok, fail)
    with tf.control_dependencies([passed]):
        return tf.identity(ids)
