"""The probit Bayesian FM: latent draws against scipy's truncated normal, the blocked
binary chain against the coordinate-wise reference on the same random numbers,
`ProbitAverage` against the average of Phi, and the run (`tf-fm train --model bayesfm`
on a binary task) exported and verified."""

import keras
import numpy as np
import pytest
from layer_testing import run_layer_test
from scipy import special, stats
from test_bayesian import (
    RecordingDraws,
    ReferenceSampler,
    Replay,
    dense_design,
    low_rank_csv,
    naive_fm,
    tiny_problem,
    tiny_reference_design,
)

import tf_fm
from tf_fm.bayesian import BayesianFM, GibbsSampler, Priors, normal_cdf, truncated_normal
from tf_fm.layers import FieldEmbedding, ProbitAverage

# --- The latent draws ---


@pytest.mark.parametrize("mean", [-30.0, -8.0, -1.5, 0.0, 0.7, 4.0, 30.0])
@pytest.mark.parametrize("positive", [True, False])
def test_latent_draws_are_scipys_truncated_normal_by_inversion(mean, positive):
    # u up to 1 - 1e-9: within ~1e-12 of the far end of the mass, float64 has no
    # quantile digits left (z = 0 at mean -8 comes out as -0.008; the mass there is 6e-16).
    u = np.linspace(1e-6, 1.0 - 1e-9, 2001)
    z = truncated_normal(np.full(u.shape, mean), np.full(u.shape, positive), u)
    low, high = (-mean, np.inf) if positive else (-np.inf, -mean)
    law = stats.truncnorm(low, high, loc=mean)
    want = law.isf(u) if positive else law.ppf(u)  # the upper / the lower tail
    assert np.all(z > 0) if positive else np.all(z <= 0)
    finite = np.isfinite(want)
    np.testing.assert_allclose(z[finite], want[finite], rtol=1e-6, atol=1e-9)


def test_latent_draws_have_the_truncated_moments():
    rng = np.random.default_rng(0)
    mean = np.full(200_000, -0.8)
    z = truncated_normal(mean, np.ones(mean.shape, bool), 1.0 - rng.random(mean.shape))
    law = stats.truncnorm(0.8, np.inf, loc=-0.8)
    assert z.mean() == pytest.approx(law.mean(), abs=4 * law.std() / np.sqrt(len(z)))
    assert z.std() == pytest.approx(law.std(), rel=0.01)


# --- The chain against the coordinate-wise reference ---


class RecordingUniforms(RecordingDraws):
    def __init__(self, seed):
        super().__init__(seed)
        self.uniforms = []

    def uniform(self, size):
        values = super().uniform(size)
        self.uniforms.append(values.copy())
        return values


class ProbitReference(ReferenceSampler):
    """The regression reference on the latent z, alpha = 1, z drawn by scipy."""

    def __init__(self, x, labels, *args, uniforms):
        super().__init__(x, np.zeros(len(labels)), *args)
        self.labels, self.uniforms = labels, iter(uniforms)

    def draw_noise(self):
        yhat = naive_fm(self.x, self.w0, self.w, self.v)
        u = next(self.uniforms)
        for i, (mean, label) in enumerate(zip(yhat, self.labels, strict=True)):
            if label:
                self.y[i] = stats.truncnorm(-mean, np.inf, loc=mean).isf(u[i])
            else:
                self.y[i] = stats.truncnorm(-np.inf, -mean, loc=mean).ppf(u[i])
        self.alpha = 1.0


def test_blocked_probit_chain_equals_coordinate_wise_reference():
    features, inputs, y = tiny_problem()
    labels = (y > np.median(y)).astype(float)
    k, priors = 2, Priors(w0_precision=0.5)
    layout = FieldEmbedding(features, embedding_dim=1)
    recording = RecordingUniforms(seed=4)
    sampler = GibbsSampler(layout, inputs, labels, k, priors, recording, task="binary")
    for _ in range(3):
        sampler.sweep()
    assert len(recording.uniforms) == 3  # one latent draw per sweep ...
    assert (priors.alpha_0 + len(y)) / 2 not in recording.shapes  # ... and no alpha draw

    x, groups = tiny_reference_design(layout, inputs, len(y))
    order = [int(r) for block in sampler.blocks for r in block.params]
    reference = ProbitReference(
        x, labels, k, groups, order, priors, Replay(recording), uniforms=recording.uniforms
    )
    for _ in range(3):
        reference.sweep()
    assert next(reference.replay.normals, None) is None
    np.testing.assert_allclose(sampler.y, reference.y, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sampler.w0, reference.w0, rtol=1e-6)
    np.testing.assert_allclose(sampler.w, reference.w, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sampler.v.T, reference.v, rtol=1e-6, atol=1e-8)
    assert sampler.alpha == 1.0
    assert np.all((sampler.y > 0) == (labels > 0))


# --- ProbitAverage ---


def _average_reference(layer, inputs):
    pairwise, linear = (np.asarray(x, np.float64) for x in inputs)
    s = layer.samples
    z = pairwise.reshape(len(pairwise), s, -1).sum(-1) + linear.sum(1) + np.asarray(layer.bias)
    p = stats.norm.cdf(z).mean(axis=1)
    return (np.log(p) - np.log1p(-p))[:, None]


def _average_gradients(layer, inputs):
    """d logit(p) / d z_s = phi(z_s) / S * (1 / p + 1 / (1 - p)), for each input of z_s."""
    pairwise, linear = (np.asarray(x, np.float64) for x in inputs)
    s = layer.samples
    z = pairwise.reshape(len(pairwise), s, -1).sum(-1) + linear.sum(1) + np.asarray(layer.bias)
    p = stats.norm.cdf(z).mean(axis=1, keepdims=True)
    g = stats.norm.pdf(z) / s * (1 / p + 1 / (1 - p))  # (batch, S)
    k = pairwise.shape[1] // s
    grad_pairwise = np.repeat(g, k, axis=1)
    grad_linear = np.repeat(g[:, None, :], linear.shape[1], axis=1)
    return {"inputs": [grad_pairwise, grad_linear], "bias": g.sum(axis=0)}


def test_probit_average_layer_equals_the_average_of_phi():
    rng = np.random.default_rng(2)
    inputs = [
        rng.normal(size=(5, 3 * 2)).astype("float32"),
        rng.normal(size=(5, 4, 3)).astype("float32"),
    ]
    run_layer_test(
        ProbitAverage,
        {"samples": 3, "bias_initializer": "ones"},
        inputs,
        reference=_average_reference,
        expected_gradients=_average_gradients,
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("z", [-40.0, -12.0, -6.5, -5.9, 0.0, 9.0, 35.0])
def test_probit_average_keeps_its_digits_in_the_tails(z):
    layer = ProbitAverage(samples=1, dtype="float64")
    got = layer([np.zeros((1, 1)), np.full((1, 1, 1), z)]).numpy()[0, 0]
    want = special.log_ndtr(z) - special.log_ndtr(-z)
    assert got == pytest.approx(want, rel=2e-5)


def test_probit_average_refuses_shapes_that_do_not_hold_s_samples():
    with pytest.raises(ValueError, match="pairwise must be"):
        ProbitAverage(samples=3)([np.zeros((2, 4)), np.zeros((2, 5, 3))])
    with pytest.raises(ValueError, match="`samples` must be a positive integer"):
        ProbitAverage(samples=0)


# --- The model and the run ---


def test_binary_chain_exports_the_average_of_the_samples_probabilities(tmp_path):
    features, inputs, y = tiny_problem()
    labels = (y > np.median(y)).astype(float)
    bfm = BayesianFM(features, embedding_dim=2, samples=5, burn_in=2, task="binary")
    model = bfm.fit(inputs, labels)
    layout = FieldEmbedding(features, embedding_dim=1)
    x = dense_design(layout.fields, layout.offsets, layout.total_rows, inputs, len(y))
    per_sample = [
        normal_cdf(naive_fm(x, s.w0, s.w.astype(float), s.v.astype(float))) for s in bfm.samples_
    ]
    predicted = model.predict(inputs, verbose=0).reshape(-1)
    np.testing.assert_allclose(predicted, np.mean(per_sample, axis=0), rtol=1e-5, atol=1e-6)
    assert tf_fm.describe_model(model).task == "binary"
    assert set(bfm.history) == {"auc", "logloss"} and len(bfm.history["auc"]) == 7
    model.save(tmp_path / "probit.keras")
    restored = keras.saving.load_model(tmp_path / "probit.keras")
    np.testing.assert_array_equal(restored.predict(inputs, verbose=0).reshape(-1), predicted)


def test_binary_chain_refuses_labels_other_than_0_and_1():
    features, inputs, y = tiny_problem()
    with pytest.raises(ValueError, match="label of row 0 is .*task='binary' needs 0 / 1"):
        BayesianFM(features, task="binary").fit(inputs, y)


def _clicks_csv(path, n, seed):
    """Clicks of a probit: the user x item signal - 0.5 + N(0, 1) > 0."""

    def clicks(signal, rng):
        return (signal - 0.5 + rng.normal(size=n) > 0).astype(float)

    return low_rank_csv(path, n, seed, clicks)


def test_train_binary_bayesfm_exports_verified(tmp_path):
    train = _clicks_csv(tmp_path / "train.csv", 3000, seed=1)
    valid = _clicks_csv(tmp_path / "valid.csv", 600, seed=2)
    run = tf_fm.train(
        train,
        valid=valid,
        format="csv",
        model="bayesfm",
        samples=30,
        burn_in=10,
        embedding_dim=3,
        output=tmp_path / "run",
    )
    assert run.metrics["epochs_run"] == 40 and len(run.history["val_auc"]) == 40
    scores = run.evaluate(valid).scores
    assert run.metrics["valid"]["auc"] == pytest.approx(scores["auc"])
    assert scores["auc"] > 0.75  # the user x item structure was learnt
    version = run.export(tmp_path / "export")  # verified in a TensorFlow-only process
    assert (version / "saved_model.pb").is_file()
