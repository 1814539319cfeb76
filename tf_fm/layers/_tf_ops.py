"""The few TensorFlow-backend operations the layers use directly.

Everything else in `tf_fm.layers` is written with `keras.ops`. These two
functions exist because the backend-neutral alternatives are wrong for large
embedding tables (see docs: PERFORMANCE_NOTES.md):

* `keras.ops.take(variable, ids)` reads the whole variable as a dense tensor
  before it gathers. After the first sparse update TensorFlow makes every such
  read copy the whole buffer, so a step would cost O(table rows).
  `tf.gather` on the `tf.Variable` itself gathers on the resource and only
  touches the rows asked for; its gradient is a `tf.IndexedSlices`.
* Keras has no graph-mode assertion; an out-of-range id must stop the step
  with a message naming the field, in `fit`, `predict` and a SavedModel alike.
"""

import tensorflow as tf


def resource_gather(variable, ids):
    """Rows `ids` of a Keras variable, gathered on its TF resource.

    Args:
        variable: keras.Variable created with `autocast=False` (so `.value` is
            the `tf.Variable` itself, not a dense cast copy).
        ids: integer tensor of row indices, any shape.

    Returns:
        Tensor of shape `ids.shape + variable.shape[1:]`, in the variable's dtype.
    """
    return tf.gather(variable.value, ids)


def assert_ids_in_range(ids, size, field_name, allow_padding=False):
    """Raise `InvalidArgumentError` naming `field_name` if an id is outside [0, size).

    With `allow_padding`, the id -1 (padding of a multi-valued field) is allowed.
    Returns `ids` with a control dependency on the check.
    """
    low = -1 if allow_padding else 0
    ids = tf.convert_to_tensor(ids)
    in_range = (ids >= low) & (ids < size)
    first_bad = tf.boolean_mask(ids, tf.logical_not(in_range))[:3]
    # No quote characters: graph-mode assertion messages escape them.
    message = (
        f"FieldEmbedding: id out of range in field `{field_name}`: valid ids are "
        f"0..{size - 1} (vocabulary size {size})"
        + (", -1 is padding" if allow_padding else "")
        + "; build with out_of_range=`oov` to map such ids to the field OOV row "
        "instead. First bad ids:"
    )
    check = tf.debugging.Assert(tf.reduce_all(in_range), [message, first_bad], summarize=3)
    with tf.control_dependencies([check]):
        return tf.identity(ids)
