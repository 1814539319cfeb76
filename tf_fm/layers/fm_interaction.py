import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_fm")
class FMInteraction(keras.layers.Layer):
    """The second-order FM term sum_{i<j} <v_i, v_j> x_i x_j in O(F k).

    Uses Rendle's identity, per example (sums run over fields and factors,
    never over the batch):

        0.5 * sum_f ((sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2)

    Called on one tensor `e` of shape `(batch, fields, k)` holding each
    field's x_i v_i, the subtracted term is `sum_fields e^2`: the result is
    the sum over pairs of *fields* (the DeepFM / DeepCTR "field-level" FM; a
    multi-valued field enters as its pooled vector).

    Called on `[e, s]` with `s` the per-field sum of x_i^2 v_i^2 (the
    `"squared_embeddings"` output of `FieldEmbedding`), the result is the
    sum over all pairs of non-zero x_i of the row, also within a multi-valued
    field: exactly libFM's FM. For fields holding a single id or value both
    forms are identical.

    The computation runs in float32 (float64 under a float64 policy) whatever
    the dtype policy: a `mixed_bfloat16` or `mixed_float16` input is upcast
    first, and the result stays float32, so a large FM term neither loses its
    digits nor overflows float16.

    Args:
        reduce_sum: bool. If True, return the FM term `(batch, 1)`; if False,
            return the k-vector before the last sum, `(batch, k)`
            (the bi-interaction pooling of NFM). Defaults to True.

    Input shape:
        `(batch, fields, k)`, or a list of two such tensors `[e, s]`.

    Output shape:
        `(batch, 1)` if `reduce_sum`, else `(batch, k)`; float32 (float64
        under a float64 policy).

    Example:

    >>> e = np.random.rand(2, 3, 4).astype("float32")
    >>> FMInteraction()(e).shape
    TensorShape([2, 1])

    References:
        Rendle, "Factorization Machines", ICDM 2010.
        He and Chua, "Neural Factorization Machines", SIGIR 2017.
    """

    def __init__(self, reduce_sum: bool = True, **kwargs):
        if not isinstance(reduce_sum, bool):
            raise ValueError(f"`reduce_sum` must be a bool. Received: reduce_sum={reduce_sum!r}")
        super().__init__(**kwargs)
        self.reduce_sum = reduce_sum

    @property
    def input_dtype(self):
        # Accumulate in float32 even under mixed precision policies
        # (float64 stays float64).
        return "float64" if self.compute_dtype == "float64" else "float32"

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != 2:
                raise ValueError(
                    "FMInteraction takes a tensor or a list [embeddings, squared_embeddings]. "
                    f"Received a list of {len(inputs)}."
                )
            embeddings, squared = inputs
            embeddings = ops.cast(embeddings, self.input_dtype)
            sum_of_squares = ops.sum(ops.cast(squared, self.input_dtype), axis=1)  # (batch, k)
        else:
            embeddings = ops.cast(inputs, self.input_dtype)
            sum_of_squares = ops.sum(ops.square(embeddings), axis=1)  # (batch, k)
        square_of_sum = ops.square(ops.sum(embeddings, axis=1))  # (batch, k)
        pooled = 0.5 * (square_of_sum - sum_of_squares)  # (batch, k)
        if self.reduce_sum:
            pooled = ops.sum(pooled, axis=1, keepdims=True)  # (batch, 1)
        return pooled

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]
        if len(input_shape) != 3:
            raise ValueError(
                f"FMInteraction expects (batch, fields, k) inputs. Received shape: {input_shape}"
            )
        return (input_shape[0], 1) if self.reduce_sum else (input_shape[0], input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update({"reduce_sum": self.reduce_sum})
        return config
