"""The Bayesian FM (Gibbs sampling): the blocked sampler against a coordinate-wise numpy
reference driven by the same random numbers, the caches' float drift, posterior recovery
on a known FM, the posterior-mean export, and bad input."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_fm import CategoricalFeature, MultiValuedFeature, NumericFeature
from tf_fm.bayesian import REFRESH_EVERY, BayesianFM, Draws, GibbsSampler, Priors
from tf_fm.data.synthetic import make_fm_data
from tf_fm.layers import FieldEmbedding

# === Random numbers recorded by the sampler, replayed into the reference ===


class RecordingDraws(Draws):
    """`Draws` that keeps every number it hands out (and each Gamma shape)."""

    def __init__(self, seed):
        super().__init__(seed)
        self.normals, self.gammas, self.shapes = [], [], []

    def normal(self, size):
        values = super().normal(size)
        self.normals.extend(values.tolist())
        return values

    def gamma(self, shape):
        values = super().gamma(shape)
        self.gammas.extend(np.ravel(values).tolist())
        self.shapes.extend(np.ravel(shape).tolist())
        return values


class Replay:
    """Hands out recorded numbers one scalar at a time, checking each Gamma shape."""

    def __init__(self, recording):
        self.normals = iter(recording.normals)
        self.gammas = iter(zip(recording.gammas, recording.shapes, strict=True))

    def normal(self):
        return next(self.normals)

    def gamma(self, shape):
        value, recorded = next(self.gammas)
        assert shape == pytest.approx(recorded, rel=1e-12), "Gamma shape differs"
        return value


# === A coordinate-wise Gibbs sampler, straight from Rendle 2012, section 4 ===


def dense_design(fields, offsets, total_rows, inputs, n):
    """X (n, rows) with explicit loops: x of every feature in every row."""
    x = np.zeros((n, total_rows))
    for field, offset in zip(fields, offsets, strict=True):
        name = field["name"]
        for i in range(n):
            if field["kind"] == "numeric":
                x[i, offset] = inputs[name][i]
            elif field["kind"] == "categorical":
                x[i, offset + inputs[name][i]] = 1.0
            else:
                ids = [j for j in inputs[name][i] if j >= 0]
                weights = inputs.get(f"{name}_weights", np.ones(inputs[name].shape))[i]
                values = [float(weights[s]) for s, j in enumerate(inputs[name][i]) if j >= 0]
                if field["combiner"] == "mean":
                    values = [v / sum(values) for v in values]
                for j, value in zip(ids, values, strict=True):
                    x[i, offset + j] = value
    return x


def naive_fm(x, w0, w, v):
    """y_i = w0 + sum_l w_l x_il + sum_{l<m} <v_l, v_m> x_il x_im, the double loop."""
    y = w0 + x @ w
    for a, b in itertools.combinations(range(x.shape[1]), 2):
        y = y + (v[a] @ v[b]) * x[:, a] * x[:, b]
    return y


class ReferenceSampler:
    """One coordinate at a time, the prediction recomputed from scratch for each draw."""

    def __init__(self, x, y, k, groups, order, priors, replay):
        self.x, self.y, self.k, self.groups, self.order = x, y, k, groups, order
        self.p, self.replay = priors, replay
        rows = x.shape[1]
        is_param = np.zeros(rows, bool)
        is_param[np.concatenate(groups)] = True
        self.w0, self.w = 0.0, np.zeros(rows)
        self.v = np.zeros((rows, k))
        for row in range(rows):  # init: row-major (rows, k) normals
            for f in range(k):
                z = priors.init_stdev * replay.normal()
                self.v[row, f] = z if is_param[row] else 0.0
        g = len(groups)
        self.alpha = 1.0
        self.mu_w, self.lambda_w = np.zeros(g), np.ones(g)
        self.mu_v, self.lambda_v = np.zeros((k, g)), np.ones((k, g))
        self.group_of = {row: gi for gi, rows_ in enumerate(groups) for row in rows_}

    def residual(self):
        return self.y - naive_fm(self.x, self.w0, self.w, self.v)

    def draw_gaussian(self, h, theta, mu, lam):
        """theta | rest with yhat = g + theta h: the paper's closed form."""
        e = self.residual()
        precision = self.alpha * np.sum(h * h) + lam
        mean = (self.alpha * np.sum((e + theta * h) * h) + lam * mu) / precision
        return mean + self.replay.normal() / np.sqrt(precision)

    def draw_hyper(self, theta, mu, lam):
        p = self.p
        for gi, rows in enumerate(self.groups):
            shape = (p.alpha_0 + len(rows) + 1) / 2
            deviation = sum((theta[r] - mu[gi]) ** 2 for r in rows)
            rate = (p.beta_0 + p.gamma_0 * (mu[gi] - p.mu_0) ** 2 + deviation) / 2
            lam[gi] = self.replay.gamma(shape) / rate
        for gi, rows in enumerate(self.groups):
            scale = p.gamma_0 + len(rows)
            mean = (sum(theta[r] for r in rows) + p.gamma_0 * p.mu_0) / scale
            mu[gi] = mean + self.replay.normal() / np.sqrt(scale * lam[gi])

    def sweep(self):
        self.draw_noise()
        self.draw_parameters()

    def draw_noise(self):
        p, n = self.p, len(self.y)
        e = self.residual()
        rate = (p.beta_0 + np.sum(e**2)) / 2
        self.alpha = self.replay.gamma((p.alpha_0 + n) / 2) / rate

    def draw_parameters(self):
        p, n = self.p, len(self.y)
        self.w0 = self.draw_gaussian(np.ones(n), self.w0, 0.0, p.w0_precision)
        self.draw_hyper(self.w, self.mu_w, self.lambda_w)
        for row in self.order:
            g = self.group_of[row]
            self.w[row] = self.draw_gaussian(
                self.x[:, row], self.w[row], self.mu_w[g], self.lambda_w[g]
            )
        for f in range(self.k):
            self.draw_hyper(self.v[:, f], self.mu_v[f], self.lambda_v[f])
            for row in self.order:
                g = self.group_of[row]
                others = self.x @ self.v[:, f] - self.x[:, row] * self.v[row, f]
                h = self.x[:, row] * others
                self.v[row, f] = self.draw_gaussian(
                    h, self.v[row, f], self.mu_v[f, g], self.lambda_v[f, g]
                )


def tiny_problem(n=30, seed=3, by_user=False):
    """Five fields, `n` random rows; `by_user`: the rows sorted by user, as files often are."""
    rng = np.random.default_rng(seed)
    features = [
        CategoricalFeature("user", encoding="integer", num_ids=5),
        CategoricalFeature("item", encoding="integer", num_ids=4, out_of_range="oov"),
        NumericFeature("age"),
        NumericFeature("price"),
        MultiValuedFeature(
            "tags", encoding="integer", num_ids=5, max_length=3, weighted=True, combiner="mean"
        ),
    ]
    tags = np.full((n, 3), -1, np.int64)
    for i in range(n):
        chosen = rng.choice(5, size=rng.integers(0, 4), replace=False)
        tags[i, : len(chosen)] = chosen
    inputs = {
        "user": rng.integers(0, 5, n),
        "item": rng.integers(0, 4, n),
        "age": rng.normal(size=n).astype(np.float32),
        "price": rng.normal(size=n).astype(np.float32),
        "tags": tags,
        "tags_weights": rng.uniform(0.5, 2.0, (n, 3)).astype(np.float32),
    }
    y = rng.normal(size=n) + inputs["user"] * 0.5
    if by_user:
        order = np.argsort(inputs["user"], kind="stable")
        inputs, y = {name: value[order] for name, value in inputs.items()}, y[order]
    return features, inputs, y


def tiny_reference_design(layout, inputs, n):
    """The reference's own design and groups of `tiny_problem`.

    One group per field, the two numeric fields (age, price) together.
    """
    fields, offsets = layout.fields, layout.offsets
    x = dense_design(fields, offsets, layout.total_rows, inputs, n)
    sizes = [1 if f["kind"] == "numeric" else f["vocabulary_size"] for f in fields]
    rows = [list(range(o, o + s)) for o, s in zip(offsets, sizes, strict=True)]
    return x, [rows[0], rows[1], rows[2] + rows[3], rows[4]]


def block_kind(block):
    """How the sampler sums a block's rows: (several ids, a subset of rows, by runs)."""
    return len(block.params) > 1, block.data_rows is not None, block.segments.runs is not None


# `tiny_problem` arguments -> kinds of blocks the problem has: between them every
# way the sampler sums the rows of a block (`block_kind`).
REFERENCE_PROBLEMS = {
    (30, 3, False): {(True, False, False), (False, False, False), (False, True, False)},
    (20, 1, True): {(True, False, True), (True, True, True)},
    (12, 5, True): {(True, True, False)},
}


@pytest.mark.parametrize("problem", list(REFERENCE_PROBLEMS))
def test_blocked_chain_equals_coordinate_wise_reference(problem):
    features, inputs, y = tiny_problem(*problem)
    k, priors = 3, Priors(w0_precision=0.5, gamma_0=2.0, mu_0=0.1)
    layout = FieldEmbedding(features, embedding_dim=1)
    recording = RecordingDraws(seed=11)
    sampler = GibbsSampler(layout, inputs, y, k, priors, recording)
    assert {block_kind(b) for b in sampler.blocks} >= REFERENCE_PROBLEMS[problem]

    x, groups = tiny_reference_design(layout, inputs, len(y))
    fields = layout.fields
    # item (out_of_range="oov") has an OOV row 4 that no row uses: drawn from its prior.
    order = [int(r) for block in sampler.blocks for r in block.params]
    assert sorted(order) == sorted(r for rows in groups for r in rows)  # each param once
    for block in sampler.blocks:  # no two parameters of a block in one row
        assert np.all((x[:, block.params] != 0).sum(axis=1) <= 1)
    assert len(sampler.blocks) > len(fields)  # the multi-valued field was split

    for _ in range(3):
        sampler.sweep()
    reference = ReferenceSampler(x, y, k, groups, order, priors, Replay(recording))
    for _ in range(3):
        reference.sweep()
    assert next(reference.replay.normals, None) is None  # every number used, in order
    np.testing.assert_allclose(sampler.w0, reference.w0, rtol=1e-9)
    np.testing.assert_allclose(sampler.alpha, reference.alpha, rtol=1e-9)
    np.testing.assert_allclose(sampler.w, reference.w, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sampler.v.T, reference.v, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sampler.mu_w, reference.mu_w, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sampler.lambda_w, reference.lambda_w, rtol=1e-8)
    np.testing.assert_allclose(sampler.mu_v, reference.mu_v, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sampler.lambda_v, reference.lambda_v, rtol=1e-8)
    np.testing.assert_allclose(sampler.e, reference.residual(), rtol=1e-8, atol=1e-10)


def test_caches_drift_by_rounding_only_between_refreshes():
    """e and q follow each draw and are recomputed every REFRESH_EVERY sweeps: just
    before each recomputation they are within float rounding of it."""
    features, inputs, y = tiny_problem()
    layout = FieldEmbedding(features, embedding_dim=1)
    sampler = GibbsSampler(layout, inputs, y, 3, Priors(), Draws(seed=2))
    recompute, drifts = sampler.refresh, []

    def refresh():
        e, q = sampler.e.copy(), sampler.q.copy()
        recompute()
        drifts.append(max(np.abs(e - sampler.e).max(), np.abs(q - sampler.q).max()))

    sampler.refresh = refresh
    for _ in range(5 * REFRESH_EVERY):
        sampler.sweep()
    assert len(drifts) == 5
    assert max(drifts) < 1e-12


def test_chain_is_reproducible_and_dataset_input_matches_arrays():
    features, inputs, y = tiny_problem()
    a = BayesianFM(features, embedding_dim=2, samples=3, burn_in=1, seed=5)
    model_a = a.fit(inputs, y)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, y)).batch(7)
    b = BayesianFM(features, embedding_dim=2, samples=3, burn_in=1, seed=5)
    model_b = b.fit(dataset)
    assert a.history == b.history
    np.testing.assert_array_equal(
        model_a.predict(inputs, verbose=0), model_b.predict(inputs, verbose=0)
    )


def sample_prediction(x, sample):
    return naive_fm(x, sample.w0, sample.w.astype(np.float64), sample.v.astype(np.float64))


def test_exported_fm_is_the_average_of_the_samples(tmp_path):
    features, inputs, y = tiny_problem()
    bfm = BayesianFM(features, embedding_dim=3, samples=6, burn_in=2)
    model = bfm.fit(inputs, y)
    layout = FieldEmbedding(features, embedding_dim=1)
    x = dense_design(layout.fields, layout.offsets, layout.total_rows, inputs, len(y))
    average = np.mean([sample_prediction(x, s) for s in bfm.samples_], axis=0)
    assert len(bfm.samples_) == 6 and model.get_layer("field_embedding").embedding_dim == 18
    predicted = model.predict(inputs, verbose=0).reshape(-1)
    np.testing.assert_allclose(predicted, average, rtol=1e-4, atol=1e-5)
    # The history's final training RMSE is that of the same posterior mean.
    assert bfm.history["rmse"][-1] == pytest.approx(np.sqrt(np.mean((y - average) ** 2)), 1e-4)

    model.save(tmp_path / "bayesfm.keras")
    restored = keras.saving.load_model(tmp_path / "bayesfm.keras")  # no custom_objects
    np.testing.assert_array_equal(restored.predict(inputs, verbose=0), predicted[:, None])


def test_posterior_recovers_a_known_fm():
    train, test = make_fm_data(
        n_train=4000, n_test=2000, task="regression", noise=0.5, embedding_dim=4, seed=1
    )
    bfm = BayesianFM(train.fields, embedding_dim=4, samples=40, burn_in=20, seed=0)
    model = bfm.fit(train.features, train.labels, validation_data=(test.features, test.labels))
    rmse = test.evaluate(model.predict(test.features, verbose=0))["rmse"]
    bayes = test.bayes_metrics()["rmse"]  # the noise: 0.5
    baseline = float(np.std(test.labels))  # predicting the mean
    assert rmse < 0.5 * baseline
    assert rmse < 1.15 * bayes
    assert bfm.history["val_rmse"][-1] == pytest.approx(rmse, rel=1e-4)
    alpha = np.mean(bfm.history["alpha"][bfm.burn_in :])  # true precision 1 / 0.5^2 = 4
    assert 3.4 < alpha < 4.6


def test_unused_ids_keep_their_prior():
    features = [
        CategoricalFeature("user", encoding="integer", num_ids=50),
        CategoricalFeature("item", encoding="integer", num_ids=3),
    ]
    rng = np.random.default_rng(0)
    inputs = {"user": rng.integers(0, 2, 200), "item": rng.integers(0, 3, 200)}
    y = rng.normal(size=200)
    bfm = BayesianFM(features, embedding_dim=2, samples=30, burn_in=5)
    bfm.fit(inputs, y)
    # Users 2..49 are in no row: each sample draws them from N(mu, 1/lambda) of the field.
    sampler = bfm.sampler
    unused = sampler.w[2:50]
    assert np.std(unused) > 0.05  # drawn, not fixed
    assert abs(np.mean(unused) - sampler.mu_w[0]) < 4 / np.sqrt(48 * sampler.lambda_w[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x, y: x.update(user=x["user"] + 10), "field 'user' has id 10 in row 0"),
        (lambda x, y: x["tags"].__setitem__((4, slice(0, 2)), 2), "'tags' row 4 repeats an id"),
        (lambda x, y: x.update(age=np.full(30, np.nan, np.float32)), "'age' row 0 is not finite"),
        (lambda x, y: y.__setitem__(3, np.inf), "label of row 3 is not finite"),
        (lambda x, y: x.pop("price"), "missing input for field 'price'"),
    ],
)
def test_bad_input_is_a_clear_error(change, message):
    features, inputs, y = tiny_problem()
    change(inputs, y)
    with pytest.raises((ValueError, KeyError), match=message):
        BayesianFM(features, samples=1, burn_in=0).fit(inputs, y)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 0}, "`samples` must be an integer >= 1"),
        ({"burn_in": -1}, "`burn_in` must be an integer >= 0"),
        ({"embedding_dim": 2.5}, "`embedding_dim` must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    features, _, _ = tiny_problem()
    with pytest.raises(ValueError, match=message):
        BayesianFM(features, **kwargs)


def test_priors_are_validated():
    with pytest.raises(ValueError, match="`beta_0` must be > 0"):
        Priors(beta_0=0.0)


def low_rank_csv(path, n, seed, label):
    """Rows of users and items with a known low-rank structure, as a CSV.

    `label(signal, rng)` turns the rows' user x item signal into their labels.
    """
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 40, n), rng.integers(0, 60, n)
    u, v = np.random.default_rng(0).normal(size=(2, 60, 3))
    labels = label((u[users] * v[items]).sum(1), rng)
    lines = ["label,user,item"] + [
        f"{y:.3f},u{a},i{b}" for y, a, b in zip(labels, users, items, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _rating_csv(path, n, seed):
    """Ratings: 3 + the signal + noise of sd 0.3."""
    return low_rank_csv(path, n, seed, lambda signal, rng: 3 + signal + rng.normal(0, 0.3, n))


def test_train_bayesfm_is_the_chain_on_the_runs_schema(tmp_path):
    """`tf_fm.train(model="bayesfm")` = `BayesianFM` on the run's schema, same seed, same rows."""
    import tf_fm
    from tf_fm.data import formats

    train = _rating_csv(tmp_path / "train.csv", 3000, seed=1)
    valid = _rating_csv(tmp_path / "valid.csv", 200, seed=2)
    options = dict(format="csv", task="regression", model="bayesfm", samples=30, burn_in=10)
    run = tf_fm.train(train, valid=valid, output=tmp_path / "run", embedding_dim=3, **options)
    assert run.metrics["epochs_run"] == 40 and "best_epoch" not in run.metrics
    assert len(run.history["val_rmse"]) == 40
    assert run.metrics["valid"]["rmse"] == pytest.approx(run.evaluate(valid).scores["rmse"])

    raw = formats.read_files(run.spec, [train], batch_size=1024)
    chain = BayesianFM(run.schema, embedding_dim=3, samples=30, burn_in=10, seed=0)
    model = chain.fit(run.schema.preprocess(raw))
    valid_inputs = run.schema.preprocess(formats.read_files(run.spec, [valid]))
    expected = model.predict(valid_inputs, verbose=0)
    np.testing.assert_allclose(run.predict(valid), expected.reshape(-1), rtol=1e-5, atol=1e-5)
    assert run.evaluate(valid).scores["rmse"] < 0.6  # the structure was learnt (noise sd 0.3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "regression", "--samples", "0"], "samples must be >= 1"),
    ],
)
def test_cli_bayesfm_refuses_what_it_cannot_do(tmp_path, capsys, args, message):
    from tf_fm import cli

    data = _rating_csv(tmp_path / "t.csv", 50, seed=0)
    base = ["train", "--data", data, "--format", "csv", "--model", "bayesfm"]
    assert cli.main([*base, *args, "--output", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
