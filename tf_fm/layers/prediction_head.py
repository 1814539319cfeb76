import keras
from keras import ops

TASKS = ("binary", "regression")


@keras.saving.register_keras_serializable(package="tf_fm")
class PredictionHead(keras.layers.Layer):
    """The model's last layer: the logit in, the task's prediction out.

    It is where an `FM` / `DeepFM` model records its task: `task` is part of
    the layer's config (so it survives `.keras` save/load) and the layer's
    input is the model's logit. `tf_fm.models.describe_model` reads both;
    compilation and export use that, never layer names.

    * `"binary"`: sigmoid(logit), the click probability.
    * `"regression"`: the logit itself.

    The output is float32 whatever the dtype policy, so the loss is computed
    stably.

    Args:
        task: str. `"binary"` or `"regression"`.

    Input shape:
        `(batch, 1)`, the logit.

    Output shape:
        `(batch, 1)`.

    Example:

    >>> PredictionHead("binary")(np.zeros((2, 1))).numpy().ravel()
    array([0.5, 0.5], dtype=float32)
    """

    def __init__(self, task: str = "binary", **kwargs):
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.task = task

    def call(self, inputs):
        logit = ops.cast(inputs, "float32")
        # keras.activations.sigmoid (not ops.sigmoid) keeps the logit on its
        # output, so binary_crossentropy is computed from the logit, stably.
        return keras.activations.sigmoid(logit) if self.task == "binary" else logit

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"task": self.task})
        return config
