"""Training losses that refuse labels the task cannot have.

`compile_model` uses these instead of Keras' `binary_crossentropy` /
`mean_squared_error`: the same values, plus one check per batch on the
labels. A NaN label, or a label other than 0/1 for a binary model, would
otherwise train silently to NaN weights (or to a model of the wrong
problem); here the step fails before any weight changes, with one line
(`tf_fm.errors.readable_message`) such as
`label 5 is not 0 or 1 (task=binary)`. The package's readers check labels
with file:line already; this covers datasets users build themselves.
"""

import keras
import tensorflow as tf


def checked_labels(labels, task: str):
    """`labels` as float32 once they pass the task's check (a failed check stops the step).

    Args:
        labels: tensor of labels.
        task: `"binary"` (each label 0 or 1) or `"regression"` (finite).

    Returns:
        The labels, depending on the check.
    """
    labels = tf.cast(labels, tf.float32)
    flat = tf.reshape(labels, [-1])
    if task == "binary":
        good = tf.equal(flat, 0.0) | tf.equal(flat, 1.0)
        rule = " is not 0 or 1 (task=binary)"
    else:
        good = tf.math.is_finite(flat)
        rule = " is not a finite number (task=regression)"
    # One good value appended, so an empty batch (a worker's empty share of
    # the last global batch) has a first element to name and passes.
    values = tf.concat([flat, tf.zeros([1], flat.dtype)], 0)
    first_bad = tf.gather(values, tf.argmin(tf.concat([tf.cast(good, tf.int32), [1]], 0)))
    message = tf.strings.join(["label ", tf.strings.as_string(first_bad, shortest=True), rule])
    check = tf.debugging.Assert(tf.reduce_all(good), [message], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(labels)


@keras.saving.register_keras_serializable(package="tf_fm")
class CheckedBinaryCrossentropy(keras.losses.BinaryCrossentropy):
    """`keras.losses.BinaryCrossentropy` that stops on a label other than 0 or 1."""

    def __init__(self, name: str = "binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return super().call(checked_labels(y_true, "binary"), y_pred)


@keras.saving.register_keras_serializable(package="tf_fm")
class CheckedMeanSquaredError(keras.losses.MeanSquaredError):
    """`keras.losses.MeanSquaredError` that stops on a NaN or infinite label."""

    def __init__(self, name: str = "mean_squared_error", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return super().call(checked_labels(y_true, "regression"), y_pred)
