import math

import keras
from keras import ops

# Below this latent value log Phi comes from its asymptotic series (1 + erf loses
# the digits); above, from erf in float64.
_SERIES_BELOW = -6.0


def _log_normal_cdf(z):
    """log Phi(z), float64, accurate in both tails (relative error < 2e-5 in Phi)."""
    direct = ops.where(z > _SERIES_BELOW, z, _SERIES_BELOW)
    tail = ops.where(z > _SERIES_BELOW, _SERIES_BELOW, z)
    near = ops.log(0.5 * (1.0 + ops.erf(direct / math.sqrt(2.0))))
    inverse = 1.0 / ops.square(tail)
    series = 1.0 + inverse * (-1.0 + inverse * (3.0 + inverse * (-15.0 + inverse * 105.0)))
    far = -0.5 * ops.square(tail) - ops.log(-tail) - 0.5 * math.log(2.0 * math.pi) + ops.log(series)
    return ops.where(z > _SERIES_BELOW, near, far)


@keras.saving.register_keras_serializable(package="tf_fm")
class ProbitAverage(keras.layers.Layer):
    """The logit of (1/S) sum_s Phi(z_s): the posterior predictive of S probit FMs.

    A probit Bayesian FM (`tf_fm.bayesian.BayesianFM(task="binary")`)
    predicts P(y = 1 | x) = (1/S) sum_s Phi(z_s(x)), z_s the FM of sample s.
    The average of probabilities is not one FM, so the samples stay side by
    side: the layer reads the per-factor pairwise terms of all samples
    (`FMInteraction(reduce_sum=False)` on a `FieldEmbedding` whose vector is
    the S samples' k factors concatenated) and the per-sample first-order
    terms (the `"embeddings"` of a `FieldEmbedding` of width S whose column
    s holds sample s's w), adds each sample's bias w0_s, and returns
    log(p / (1 - p)) of the average p, so a `PredictionHead("binary")` after
    it outputs p. Computed in float64, in the log domain (log-sum-exp of
    log Phi(z_s) and log Phi(-z_s)), so p and 1 - p keep their digits down
    to about 1e-300.

    Args:
        samples: int. S, the number of samples.
        bias_initializer: initializer of the `(S,)` biases w0_s. Defaults to
            `"zeros"`.

    Input shape:
        a list `[pairwise, linear]`: `pairwise (batch, S * k)`, sample s in
        columns `s * k .. (s + 1) * k - 1`; `linear (batch, fields, S)`.

    Output shape:
        `(batch, 1)`, float32 (float64 under a float64 policy).

    Example:

    >>> layer = ProbitAverage(samples=2)
    >>> layer([np.zeros((3, 2 * 4)), np.zeros((3, 5, 2))]).shape
    TensorShape([3, 1])

    References:
        Albert and Chib, "Bayesian Analysis of Binary and Polychotomous
        Response Data", JASA 1993. Rendle, "Factorization Machines with
        libFM", ACM TIST 2012 (MCMC classification).
    """

    def __init__(
        self,
        samples: int,
        bias_initializer: str | keras.initializers.Initializer = "zeros",
        **kwargs,
    ):
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"`samples` must be a positive integer. Received: samples={samples!r}")
        super().__init__(**kwargs)
        self.samples = samples
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def _check(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(
                "ProbitAverage takes a list [pairwise (batch, S * k), linear (batch, fields, S)]. "
                f"Received: {input_shape}"
            )
        pairwise, linear = input_shape
        if pairwise[-1] is None or pairwise[-1] % self.samples or linear[-1] != self.samples:
            raise ValueError(
                f"ProbitAverage(samples={self.samples}): pairwise must be (batch, S * k) and "
                f"linear (batch, fields, S). Received: {pairwise} and {linear}"
            )

    def build(self, input_shape):
        self._check(input_shape)
        self.k = input_shape[0][-1] // self.samples
        self.bias = self.add_weight(
            name="bias", shape=(self.samples,), initializer=self.bias_initializer, autocast=False
        )

    def call(self, inputs):
        pairwise, linear = (ops.cast(x, "float64") for x in inputs)
        pairwise = ops.sum(ops.reshape(pairwise, (-1, self.samples, self.k)), axis=-1)
        z = pairwise + ops.sum(linear, axis=1) + ops.cast(self.bias, "float64")  # (batch, S)
        log_s = math.log(self.samples)
        log_p = ops.logsumexp(_log_normal_cdf(z), axis=1) - log_s
        log_q = ops.logsumexp(_log_normal_cdf(-z), axis=1) - log_s
        dtype = "float64" if self.compute_dtype == "float64" else "float32"
        return ops.cast(log_p - log_q, dtype)[:, None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "samples": self.samples,
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
