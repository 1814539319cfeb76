import keras
from keras import ops


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@keras.saving.register_keras_serializable(package="tf_fm")
class AnovaInteraction(keras.layers.Layer):
    """The ANOVA kernels A^m of the field vectors, orders `min_order..order`, in O(order F k).

    For per-field vectors e_1..e_F (each field's sum_i x_i v_i), the ANOVA
    kernel of order m is the sum over all m-subsets of fields of the
    elementwise product of their vectors, summed over the k factors:

        A^m = sum_{f_1 < ... < f_m} sum_s e_{f_1 s} * ... * e_{f_m s}

    `A^2` is the FM's pairwise term, `A^3` the third-order term of a
    higher-order FM, and so on. Enumerating the subsets costs O(F^m k); the
    dynamic programme of Blondel et al. (2016, Algorithm 1) costs O(m F k):
    with a_t(j) the kernel of order t over the first j fields,

        a_0(j) = 1,  a_t(0) = 0 (t > 0),  a_t(j) = a_t(j - 1) + e_j * a_{t-1}(j - 1)

    elementwise over the factors. Each order is computed for all fields at
    once, `a_t = cumsum_j(e_j * a_{t-1}(j - 1))`, so the layer is `order`
    vectorised steps; the kernels of all lower orders come with the
    highest one, which is what `min_order` returns.

    What is computed for multi-valued fields: the kernel treats each field
    vector as one feature. Since e_f = sum_{i in f} x_i v_i, it equals the
    sum over the m-subsets of the row's non-zero features that take *at
    most one feature per field*. For categorical and numeric fields (one
    non-zero x per field) that is exactly the higher-order FM over features;
    for a multi-valued field the subsets with two or more of its ids are
    left out (for order 2, `FMInteraction([e, s])` adds them back).

    Per example (never summed over the batch). The computation runs in
    float32 (float64 under a float64 policy) whatever the dtype policy, as
    in `FMInteraction`: a higher-order term grows like F^m and would
    overflow float16. With fewer than `order` fields the kernel is 0.

    Args:
        order: int. The highest order m, >= 2. Defaults to 3.
        min_order: int or None. The lowest order returned, in
            `[2, order]`; None returns `order` alone. Defaults to None.
        reduce_sum: bool. If True, return the sum of the kernels of orders
            `min_order..order`, `(batch, 1)`; if False, one column per
            order, `(batch, order - min_order + 1)`. Defaults to True.

    Input shape:
        `(batch, fields, k)`.

    Output shape:
        `(batch, 1)`, or `(batch, order - min_order + 1)` if `reduce_sum`
        is False; float32 (float64 under a float64 policy).

    Example:

    >>> e = np.random.rand(2, 5, 4).astype("float32")
    >>> AnovaInteraction(order=3)(e).shape
    TensorShape([2, 1])
    >>> AnovaInteraction(order=4, min_order=2, reduce_sum=False)(e).shape
    TensorShape([2, 3])

    References:
        Blondel, Fujino, Ueda and Ishihata, "Higher-Order Factorization
        Machines", NeurIPS 2016 (the dynamic programme, Algorithm 1).
        Blondel, Ishihata, Fujino and Ueda, "Polynomial Networks and
        Factorization Machines: New Insights and Efficient Training
        Algorithms", ICML 2016 (FMs as ANOVA kernels).
        Rendle, "Factorization Machines", ICDM 2010.
    """

    def __init__(
        self, order: int = 3, min_order: int | None = None, reduce_sum: bool = True, **kwargs
    ):
        if not _is_int(order) or order < 2:
            raise ValueError(f"`order` must be an integer >= 2. Received: order={order!r}")
        if min_order is not None and not (_is_int(min_order) and 2 <= min_order <= order):
            raise ValueError(
                f"`min_order` must be None or an integer in [2, order={order}]. "
                f"Received: min_order={min_order!r}"
            )
        if not isinstance(reduce_sum, bool):
            raise ValueError(f"`reduce_sum` must be a bool. Received: reduce_sum={reduce_sum!r}")
        super().__init__(**kwargs)
        self.order = order
        self.min_order = min_order
        self.reduce_sum = reduce_sum

    @property
    def input_dtype(self):
        # Accumulate in float32 even under mixed precision policies
        # (float64 stays float64).
        return "float64" if self.compute_dtype == "float64" else "float32"

    @property
    def _lowest(self):
        return self.order if self.min_order is None else self.min_order

    def call(self, inputs):
        e = ops.cast(inputs, self.input_dtype)  # (batch, fields, k)
        kernels = []  # A^t for t = lowest..order, each (batch, 1)
        a = ops.cumsum(e, axis=1)  # a_1(j), (batch, fields, k)
        for t in range(2, self.order + 1):
            previous = ops.pad(a[:, :-1], [[0, 0], [1, 0], [0, 0]])  # a_{t-1}(j - 1)
            terms = e * previous  # (batch, fields, k)
            if t >= self._lowest:
                kernels.append(ops.sum(terms, axis=(1, 2))[:, None])
            if t < self.order:
                a = ops.cumsum(terms, axis=1)  # a_t(j)
        kernels = kernels[0] if len(kernels) == 1 else ops.concatenate(kernels, axis=1)
        if self.reduce_sum and self._lowest < self.order:
            kernels = ops.sum(kernels, axis=1, keepdims=True)
        return kernels

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"AnovaInteraction expects (batch, fields, k) inputs. Received shape: {input_shape}"
            )
        columns = 1 if self.reduce_sum else self.order - self._lowest + 1
        return (input_shape[0], columns)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"order": self.order, "min_order": self.min_order, "reduce_sum": self.reduce_sum}
        )
        return config
