import keras
import numpy as np
from keras import ops


def _field_count(input_shape):
    if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
        input_shape = input_shape[0]
    if len(input_shape) != 3 or input_shape[1] is None:
        raise ValueError(
            "FwFMInteraction expects (batch, fields, k) inputs with a known number of fields. "
            f"Received shape: {input_shape}"
        )
    return input_shape[0], input_shape[1]


@keras.saving.register_keras_serializable(package="tf_fm")
class FwFMInteraction(keras.layers.Layer):
    """The field-weighted pairwise term sum_{f<g} r_fg <e_f, e_g>, in O(F^2 k).

    FwFM gives each pair of fields (f, g) one learned weight r_fg, so the
    model learns how much the interactions between two fields matter
    (Pan et al. 2018). The weights are an F x F matrix
    `pair_weights` of which the upper triangle is used: r_fg for f < g, and
    the diagonal r_ff for the pairs of features inside one field (see
    below); the entries below the diagonal are not used. With every r = 1
    the layer is `FMInteraction`, so the default initializer starts
    training from an FM.

    Called on one tensor `e` of shape `(batch, fields, k)` (each field's
    x_i v_i), the result is sum_{f<g} r_fg <e_f, e_g>: the pairs of fields
    (a multi-valued field enters as its pooled vector).

    Called on `[e, s]` with `s` the per-field sum of x_i^2 v_i^2 (the
    `"squared_embeddings"` output of `FieldEmbedding`), the pairs of
    features inside a field are added with their field's weight,
    r_ff * 0.5 * sum_s (e_fs^2 - s_fs): the paper's sum over all pairs of
    non-zero features i < j of r_{F(i) F(j)} <v_i, v_j> x_i x_j, also for
    multi-valued fields. For fields holding a single id or value both forms
    are identical.

    Per example; computed as sum_{f,s} e_fs (U e)_fs with U the strict
    upper triangle of r, in float32 (float64 under a float64 policy)
    whatever the dtype policy, as in `FMInteraction`.

    Args:
        pair_weights_initializer: initializer of the F x F weights.
            Defaults to `"ones"` (the FM).
        pair_weights_l2: float. L2 penalty `l2 * sum r^2` over the weights
            the layer uses, added once per call. Defaults to 0.

    Input shape:
        `(batch, fields, k)`, or a list of two such tensors `[e, s]`.

    Output shape:
        `(batch, 1)`, float32 (float64 under a float64 policy).

    Example:

    >>> e = np.random.rand(2, 3, 4).astype("float32")
    >>> FwFMInteraction()(e).shape
    TensorShape([2, 1])

    References:
        Pan et al., "Field-weighted Factorization Machines for
        Click-Through Rate Prediction in Display Advertising", WWW 2018.
        Rendle, "Factorization Machines", ICDM 2010.
    """

    def __init__(
        self,
        pair_weights_initializer: str | keras.initializers.Initializer = "ones",
        pair_weights_l2: float = 0.0,
        **kwargs,
    ):
        if pair_weights_l2 < 0:
            raise ValueError(
                f"`pair_weights_l2` must be >= 0. Received: pair_weights_l2={pair_weights_l2}"
            )
        super().__init__(**kwargs)
        self.pair_weights_initializer = keras.initializers.get(pair_weights_initializer)
        self.pair_weights_l2 = float(pair_weights_l2)

    @property
    def input_dtype(self):
        # Accumulate in float32 even under mixed precision policies
        # (float64 stays float64).
        return "float64" if self.compute_dtype == "float64" else "float32"

    def build(self, input_shape):
        _, fields = _field_count(input_shape)
        self.pair_weights = self.add_weight(
            name="pair_weights",
            shape=(fields, fields),
            initializer=self.pair_weights_initializer,
            autocast=False,
        )
        self._strict_upper = np.triu(np.ones((fields, fields)), k=1)

    def call(self, inputs):
        parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(parts) > 2:
            raise ValueError(
                "FwFMInteraction takes a tensor or a list [embeddings, squared_embeddings]. "
                f"Received a list of {len(parts)}."
            )
        e, *squared = [ops.cast(x, self.input_dtype) for x in parts]  # (batch, fields, k)
        r = ops.cast(self.pair_weights, self.input_dtype)  # (fields, fields)
        upper = r * ops.cast(self._strict_upper, self.input_dtype)  # r_fg, f < g
        weighted = ops.einsum("fg,bgk->bfk", upper, e)  # sum_{g > f} r_fg e_g
        pairwise = ops.sum(e * weighted, axis=(1, 2))[:, None]  # (batch, 1)
        used = [upper]
        if squared:  # the pairs inside each field, weighted by r_ff
            diagonal = ops.diagonal(r)  # (fields,)
            within = 0.5 * ops.sum(ops.square(e) - squared[0], axis=2)  # (batch, fields)
            pairwise = pairwise + ops.sum(within * diagonal, axis=1, keepdims=True)
            used.append(diagonal)
        if self.pair_weights_l2:
            self.add_loss(self.pair_weights_l2 * sum(ops.sum(ops.square(w)) for w in used))
        return pairwise

    def compute_output_shape(self, input_shape):
        batch, _ = _field_count(input_shape)
        return (batch, 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "pair_weights_initializer": keras.initializers.serialize(
                    self.pair_weights_initializer
                ),
                "pair_weights_l2": self.pair_weights_l2,
            }
        )
        return config
