import keras
import numpy as np
from keras import ops


def _fields_and_factors(input_shape):
    """(batch, fields, k) of a `(batch, fields, fields * k)` input shape (or of `[e, s]`)."""
    if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
        input_shape = input_shape[0]
    if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
        raise ValueError(
            "FFMInteraction expects (batch, fields, fields * k) inputs with known sizes. "
            f"Received shape: {input_shape}"
        )
    batch, fields, width = input_shape
    if width % fields:
        raise ValueError(
            "FFMInteraction: the last axis must hold one k-vector per field "
            f"(fields * k), but {width} is not a multiple of fields = {fields}. "
            f"Received shape: {input_shape}"
        )
    return batch, fields, width // fields


@keras.saving.register_keras_serializable(package="tf_fm")
class FFMInteraction(keras.layers.Layer):
    """The field-aware pairwise term sum_{i<j} <v_{i,F(j)}, v_{j,F(i)}> x_i x_j, in O(F^2 k).

    In a field-aware FM (Juan et al. 2016) each feature i has one k-vector
    per field g, v_{i,g}, used when i interacts with a feature of field g.
    The layer reads them from one `FieldEmbedding` of width `F * k`: the
    table row of feature i is `[v_{i,1}, ..., v_{i,F}]` (plus its
    first-order weight), so an FFM's table holds F times the factors of an
    FM's (and so do the optimizer's slots). The field's own block v_{i,F(i)}
    is used only by the pairs of features inside one multi-valued field.

    Called on one tensor `e` of shape `(batch, F, F * k)`, with
    e_{f,g} = sum_{i in f} x_i v_{i,g} (block g of field f's
    `"embeddings"`), the result is the sum over pairs of fields

        sum_{f<g} <e_{f,g}, e_{g,f}>

    which is the FFM over features when every field has one non-zero x
    (categorical and numeric fields). Called on `[e, s]` with `s` the
    `"squared_embeddings"` output of `FieldEmbedding` (per field
    sum_{i in f} x_i^2 v_{i,g}^2), the pairs inside each field are added,
    0.5 * sum_k (e_{f,f}^2 - s_{f,f}): the result is then the paper's
    sum over all pairs of non-zero features of a row, also inside a
    multi-valued field (a libFFM row with several features in one field),
    exactly: since e_{f,g} sums over the ids of field f, and a pair (i, j)
    across fields f, g enters as x_i x_j <v_{i,g}, v_{j,f}>, the pooled
    vectors give the id-level form, not an approximation of it.

    Per example; in float32 (float64 under a float64 policy) whatever the
    dtype policy, as in `FMInteraction`.

    Input shape:
        `(batch, fields, fields * k)`, or a list of two such tensors `[e, s]`.

    Output shape:
        `(batch, 1)`, float32 (float64 under a float64 policy).

    Example:

    >>> e = np.random.rand(2, 3, 3 * 4).astype("float32")
    >>> FFMInteraction()(e).shape
    TensorShape([2, 1])

    References:
        Juan, Zhuang, Chin and Lin, "Field-aware Factorization Machines for
        CTR Prediction", RecSys 2016.
        Rendle, "Factorization Machines", ICDM 2010.
    """

    @property
    def input_dtype(self):
        # Accumulate in float32 even under mixed precision policies
        # (float64 stays float64).
        return "float64" if self.compute_dtype == "float64" else "float32"

    def build(self, input_shape):
        _, fields, _ = _fields_and_factors(input_shape)
        # Weights of <e_fg, e_gf> per (f, g): the pairs of fields f < g, and
        # with `s` also 0.5 on the diagonal (half of the within-field term).
        self._strict_upper = np.triu(np.ones((fields, fields)), k=1)
        self._with_diagonal = self._strict_upper + 0.5 * np.eye(fields)

    def call(self, inputs):
        parts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(parts) > 2:
            raise ValueError(
                "FFMInteraction takes a tensor or a list [embeddings, squared_embeddings]. "
                f"Received a list of {len(parts)}."
            )
        _, fields, k = _fields_and_factors(parts[0].shape)
        e, *squared = [ops.cast(x, self.input_dtype) for x in parts]
        e = ops.reshape(e, (-1, fields, fields, k))  # e[b, f, g] = sum_{i in f} x_i v_{i,g}
        products = ops.sum(e * ops.transpose(e, (0, 2, 1, 3)), axis=-1)  # <e_fg, e_gf>
        if not squared:
            upper = ops.cast(self._strict_upper, self.input_dtype)
            return ops.sum(products * upper, axis=(1, 2))[:, None]
        mask = ops.cast(self._with_diagonal, self.input_dtype)
        pairwise = ops.sum(products * mask, axis=(1, 2))  # (batch,)
        s = ops.reshape(squared[0], (-1, fields, fields, k))
        own = ops.diagonal(s, axis1=1, axis2=2)  # s_{f,f}: (batch, k, fields)
        return (pairwise - 0.5 * ops.sum(own, axis=(1, 2)))[:, None]

    def compute_output_shape(self, input_shape):
        batch, _, _ = _fields_and_factors(input_shape)
        return (batch, 1)
