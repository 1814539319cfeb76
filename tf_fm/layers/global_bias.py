import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_fm")
class GlobalBias(keras.layers.Layer):
    """Sums its inputs and adds one learned scalar, the FM's global bias w0.

    Args:
        bias_initializer: initializer of w0. Defaults to `"zeros"`.

    Input shape:
        one tensor `(batch, 1)` or a list of them.

    Output shape:
        `(batch, 1)`, float32 under mixed precision policies.

    Example:

    >>> GlobalBias()([np.ones((2, 1)), np.ones((2, 1))]).shape
    TensorShape([2, 1])

    References:
        Rendle, "Factorization Machines", ICDM 2010 (w0 in eq. 1).
    """

    def __init__(self, bias_initializer: str | keras.initializers.Initializer = "zeros", **kwargs):
        super().__init__(**kwargs)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    @property
    def input_dtype(self):
        # The logit is summed in float32 under mixed precision policies.
        return "float64" if self.compute_dtype == "float64" else "float32"

    def build(self, input_shape):
        self.bias = self.add_weight(
            name="bias", shape=(), initializer=self.bias_initializer, autocast=False
        )

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return total + ops.cast(self.bias, self.input_dtype)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"bias_initializer": keras.initializers.serialize(self.bias_initializer)})
        return config
