"""Calibration: ECE and the reliability curve, Platt and isotonic fits, the head that carries
them, and the negative-downsampling correction, end to end to an export."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import calibration as cal
from tf_fm import metrics
from tf_fm.data.synthetic import make_fm_data

# === ECE and the reliability curve ===

# Hand-computed: 10 equal-width bins; bin 1 = [0.1, 0.2) holds 0.12, 0.15;
# bin 3 holds 0.35; bin 7 holds 0.72, 0.75; bin 9 = [0.9, 1.0] holds 0.92, 1.0, 0.95.
LABELS = np.array([0, 1, 0, 1, 1, 0, 1, 1])
PROBS = np.array([0.12, 0.15, 0.35, 0.72, 0.75, 0.92, 1.0, 0.95])
# bin: (mean prediction, observed rate, count)
HAND_BINS = {
    1: (0.135, 0.5, 2),
    3: (0.35, 0.0, 1),
    7: (0.735, 1.0, 2),
    9: (2.87 / 3, 2 / 3, 3),
}
# ECE = (2 * 0.365 + 1 * 0.35 + 2 * 0.265 + 3 * |2/3 - 2.87/3|) / 8 = 2.48 / 8
HAND_ECE = 0.31


def test_reliability_curve_and_ece_hand_computed():
    curve = metrics.reliability_curve(LABELS, PROBS)
    assert [round(b["lower"], 6) for b in curve] == [0.1, 0.3, 0.7, 0.9]
    for b, (mean_p, rate, count) in zip(curve, HAND_BINS.values(), strict=True):
        assert b["mean_prediction"] == pytest.approx(mean_p)
        assert b["observed_rate"] == pytest.approx(rate)
        assert b["count"] == count
        assert b["upper"] == pytest.approx(b["lower"] + 0.1)
    assert metrics.expected_calibration_error(LABELS, PROBS) == pytest.approx(HAND_ECE)
    assert metrics.expected_calibration_error(LABELS, PROBS, bins=1) == pytest.approx(
        abs(LABELS.mean() - PROBS.mean())
    )


def test_equal_mass_ece_hand_computed():
    # 4 quantile bins of 8 distinct predictions: 2 rows each.
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 0.8, 0.95])
    y = np.array([0, 0, 1, 0, 1, 0, 1, 1])
    curve = metrics.reliability_curve(y, p, bins=4, strategy="quantile")
    assert [b["count"] for b in curve] == [2, 2, 2, 2]
    gaps = [abs(0.0 - 0.075), abs(0.5 - 0.25), abs(0.5 - 0.55), abs(1.0 - 0.875)]
    want = sum(gaps) / 4
    got = metrics.expected_calibration_error(y, p, bins=4, strategy="quantile")
    assert got == pytest.approx(want)


def test_ece_matches_a_per_row_loop():
    rng = np.random.default_rng(3)
    p = rng.random(500) ** 2
    y = (rng.random(500) < p).astype(float)
    bins = {}
    for pi, yi in zip(p, y, strict=True):
        bins.setdefault(min(int(pi * 10), 9), []).append((pi, yi))
    want = sum(
        len(rows) * abs(np.mean([r[1] for r in rows]) - np.mean([r[0] for r in rows]))
        for rows in bins.values()
    ) / len(p)
    assert metrics.expected_calibration_error(y, p) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_is_the_calibration_plots_bins(strategy):
    from tf_fm import plots

    rng = np.random.default_rng(7)
    p = np.round(rng.random(300) ** 3, 3)
    y = (rng.random(300) < p).astype(float)
    curve = metrics.reliability_curve(y, p, bins=10, strategy=strategy)
    mean_p, observed, counts = plots.calibration_bins(y, p, 10, strategy)
    np.testing.assert_allclose([b["mean_prediction"] for b in curve], mean_p)
    np.testing.assert_allclose([b["observed_rate"] for b in curve], observed)
    np.testing.assert_array_equal([b["count"] for b in curve], counts)


def test_score_reports_calibration_for_binary_only():
    scores = metrics.score("binary", LABELS, PROBS)
    assert scores["ece"] == pytest.approx(HAND_ECE)
    assert scores["mean_prediction"] == pytest.approx(PROBS.mean())
    assert scores["ece_equal_mass"] == pytest.approx(
        metrics.expected_calibration_error(LABELS, PROBS, strategy="quantile")
    )
    assert scores["reliability"] == metrics.reliability_curve(LABELS, PROBS)
    json.dumps(scores)
    assert "ece" in metrics.format_scores(scores)
    assert "ece" not in metrics.score("regression", LABELS, PROBS)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"probabilities": [0.1, 1.2]}, "probabilities must lie in"),
        ({"probabilities": [0.1, np.nan]}, "probabilities must lie in"),
        ({"labels": [0, 2]}, "labels must lie in"),
        ({"labels": [0, 1, 1]}, "differ in length"),
        ({"bins": 0}, "`bins` must be a positive integer"),
        ({"strategy": "kmeans"}, "`strategy` must be one of"),
    ],
)
def test_reliability_bad_input(kwargs, match):
    args = {"labels": [0, 1], "probabilities": [0.2, 0.8], **kwargs}
    with pytest.raises(ValueError, match=match):
        metrics.reliability_curve(**args)


# === Pool adjacent violators and isotonic ===


def naive_isotonic(values, weights):
    """The min-max formula: fit_i = max_{j <= i} min_{k >= i} weighted mean of values[j..k]."""
    n = len(values)

    def mean(j, k):
        w = weights[j : k + 1]
        return np.sum(values[j : k + 1] * w) / np.sum(w)

    return np.array(
        [max(min(mean(j, k) for k in range(i, n)) for j in range(i + 1)) for i in range(n)]
    )


@pytest.mark.parametrize("seed", range(6))
def test_pool_adjacent_violators_matches_the_min_max_formula(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 25))
    values = rng.normal(size=n) + np.linspace(0, 1, n)
    weights = rng.integers(1, 5, size=n).astype(float)
    got = cal.pool_adjacent_violators(values, weights)
    np.testing.assert_allclose(got, naive_isotonic(values, weights), atol=1e-12)
    assert np.all(np.diff(got) >= 0)


def test_pool_adjacent_violators_hand_example():
    # 1, 3, 2: 3 and 2 pooled to 2.5.
    np.testing.assert_allclose(cal.pool_adjacent_violators([1, 3, 2]), [1, 2.5, 2.5])
    # 1, 4, 0 with weights 1, 1, 4: 4 and 0 pool to 4 / 5 < 1, so all three pool to 5 / 6.
    np.testing.assert_allclose(cal.pool_adjacent_violators([1.0, 4.0, 0.0], [1, 1, 4]), [5 / 6] * 3)


def test_isotonic_knots_and_interpolation():
    # Ties pooled first: 0.2 appears twice (labels 1, 0) -> mean 0.5.
    p = np.array([0.1, 0.2, 0.2, 0.4, 0.6, 0.8])
    y = np.array([0, 1, 0, 0, 1, 1])
    fit = cal.fit_isotonic(p, y)
    # Unique x: 0.1, 0.2, 0.4, 0.6, 0.8 with means 0, 0.5, 0, 1, 1 (weights 1, 2, 1, 1, 1):
    # PAV pools 0.5 (w 2) and 0 (w 1) -> 1/3; steps {0.1} -> 0, {0.2, 0.2, 0.4} -> 1/3,
    # {0.6, 0.8} -> 1. Knots at the steps' mean probabilities: 0.1, 0.8 / 3, 0.7.
    assert fit["x"] == pytest.approx([0.1, 0.8 / 3, 0.7])
    assert fit["y"] == pytest.approx([0.0, 1 / 3, 1.0])
    q = np.array([0.05, 0.1 + (0.8 / 3 - 0.1) / 2, 0.8 / 3, 0.5, 0.9])
    got = cal.apply_calibration(fit, np.log(q / (1 - q)))
    # Below the first knot: 0; halfway to the second: 1/6; on it: 1/3;
    # 0.5 is (0.5 - 0.8/3) / (0.7 - 0.8/3) of the way to 1; above the last: 1.
    t = (0.5 - 0.8 / 3) / (0.7 - 0.8 / 3)
    np.testing.assert_allclose(got, [0.0, 1 / 6, 1 / 3, 1 / 3 + t * 2 / 3, 1.0], atol=1e-12)


def test_isotonic_steps_match_scikit_learn():
    isotonic = pytest.importorskip("sklearn.isotonic")
    rng = np.random.default_rng(0)
    p = np.round(rng.random(400), 2)  # ties on purpose
    y = (rng.random(400) < p**1.5).astype(float)
    fit = cal.fit_isotonic(p, y)
    steps = isotonic.IsotonicRegression().fit(p, y).predict(np.unique(p))
    # The same step values, one knot per step at its count-weighted mean probability.
    np.testing.assert_allclose(fit["y"], np.unique(steps), atol=1e-12)
    for x, value in zip(fit["x"], fit["y"], strict=True):
        members = np.isclose(isotonic.IsotonicRegression().fit(p, y).predict(p), value)
        assert x == pytest.approx(p[members].mean(), abs=1e-12)


def test_isotonic_has_no_steep_ramps_at_the_fitted_points():
    # Validation probabilities fall on or near the knots: a 1e-7 change in the
    # logit (float rounding between two runtimes) moves the output by < 1e-5.
    rng = np.random.default_rng(1)
    p = rng.random(6000)
    y = (rng.random(6000) < p).astype(float)
    fit = cal.fit_isotonic(p, y)
    z = np.log(p / (1 - p))
    moved = np.abs(cal.apply_calibration(fit, z + 1e-7) - cal.apply_calibration(fit, z))
    assert moved.max() < 1e-5


# === Platt ===


def smoothed_targets(y):
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    return np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))


def test_platt_closed_form_on_two_logit_values():
    # With two distinct logits the MLE fits each group's mean (smoothed) target exactly:
    # sigmoid(a z_k + b) = r_k, so a = (logit r_2 - logit r_1) / (z_2 - z_1).
    z = np.r_[np.full(40, -1.0), np.full(60, 2.0)]
    y = np.r_[np.ones(10), np.zeros(30), np.ones(45), np.zeros(15)]
    t = smoothed_targets(y)
    r1, r2 = t[:40].mean(), t[40:].mean()
    logit = lambda r: math.log(r / (1 - r))  # noqa: E731
    a = (logit(r2) - logit(r1)) / 3.0
    b = logit(r1) + a
    fit = cal.fit_platt(z, y)
    assert fit["a"] == pytest.approx(a, rel=1e-8) and fit["b"] == pytest.approx(b, abs=1e-8)


def test_platt_solves_the_likelihood_equations():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 3000)
    y = (rng.random(3000) < cal.sigmoid(0.5 * z - 1.0)).astype(float)
    fit = cal.fit_platt(z, y)
    residual = cal.sigmoid(fit["a"] * z + fit["b"]) - smoothed_targets(y)
    # Gradient of the (convex) log-likelihood: zero at the optimum.
    assert abs(residual.sum()) < 1e-6 and abs((residual * z).sum()) < 1e-6
    assert fit["a"] == pytest.approx(0.5, abs=0.1) and fit["b"] == pytest.approx(-1.0, abs=0.15)


def test_platt_stays_finite_on_separable_data():
    fit = cal.fit_platt([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    assert math.isfinite(fit["a"]) and fit["a"] > 0


def test_fit_calibration_bad_input():
    with pytest.raises(ValueError, match="`method` must be one of"):
        cal.fit_calibration("beta", [0.0], [1])
    with pytest.raises(ValueError, match="no rows"):
        cal.fit_platt([], [])
    with pytest.raises(ValueError, match="0/1 labels"):
        cal.fit_platt([0.1, 0.2], [0, 3])
    with pytest.raises(ValueError, match="non-finite"):
        cal.fit_isotonic([0.1, np.nan], [0, 1])


# === The head carries it ===


def toy_model(seed=0):
    fields = [
        tf_fm.CategoricalFeature(name, encoding="integer", num_ids=n)
        for name, n in (("a", 7), ("b", 5))
    ]
    model = tf_fm.FM(fields, embedding_dim=3)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.7, size=w.shape) for w in model.get_weights()])
    rng = np.random.default_rng(seed + 1)
    features = {"a": rng.integers(0, 7, 300), "b": rng.integers(0, 5, 300)}
    return model, features


def logits_of(model, features):
    logit_model = keras.Model(model.inputs, tf_fm.describe_model(model).logit)
    return logit_model.predict_on_batch(features).reshape(-1)


def fitted(method, features, model, w=None):
    z = logits_of(model, features)
    y = (np.random.default_rng(5).random(len(z)) < cal.sigmoid(1.7 * z + 0.4)).astype(float)
    return cal.fit_calibration(method, z, y, w)


@pytest.mark.parametrize("method", ["none", "platt", "isotonic"])
@pytest.mark.parametrize("w", [None, 0.1])
def test_calibrated_model_is_the_calibration_of_its_logit(method, w, tmp_path):
    model, features = toy_model()
    before = model.predict_on_batch(features).reshape(-1)
    z = logits_of(model, features)
    np.testing.assert_allclose(before, cal.sigmoid(z), rtol=1e-6)
    calibration = fitted(method, features, model, w)
    cal.set_calibration(model, calibration, w)
    after = model.predict_on_batch(features).reshape(-1)
    np.testing.assert_allclose(after, cal.apply_calibration(calibration, z, w), atol=2e-6)
    np.testing.assert_allclose(logits_of(model, features), z)  # the logit is untouched
    head = model.layers[-1].get_config()
    assert head["calibration"] == calibration and head["negative_downsampling"] == w
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(restored.predict_on_batch(features).reshape(-1), after)
    cal.set_calibration(model)  # removed again: exactly the uncalibrated model
    np.testing.assert_array_equal(model.predict_on_batch(features).reshape(-1), before)


def test_downsampling_correction_formula():
    p = np.array([0.01, 0.2, 0.5, 0.9])
    q = cal.sigmoid(cal.correct_downsampling(np.log(p / (1 - p)), 0.1))
    np.testing.assert_allclose(q, p / (p + (1 - p) / 0.1), rtol=1e-12)


HEAD_LOGITS = np.array([[-6.0], [-1.5], [-0.2], [0.3], [2.0], [9.0]], dtype="float32")


@pytest.mark.parametrize("w", [None, 0.25])
def test_head_platt_values_and_gradients(w):
    a, b = 1.3, -0.2
    shift = 0.0 if w is None else math.log(w)

    def reference(layer, z):
        return cal.sigmoid(a * (z + shift) + b)

    def gradient(layer, z):
        s = reference(layer, z)
        return {"inputs": a * s * (1 - s)}

    layer, _ = run_head({"method": "platt", "a": a, "b": b}, w, reference, gradient)
    assert layer.get_config()["calibration"] == {"method": "platt", "a": a, "b": b}


def test_head_isotonic_values_and_gradients():
    knots = {"method": "isotonic", "x": [0.1, 0.4, 0.5, 0.9], "y": [0.05, 0.2, 0.2, 0.7]}

    def reference(layer, z):
        return np.interp(cal.sigmoid(z), knots["x"], knots["y"])

    def gradient(layer, z):
        s = cal.sigmoid(z)
        slope = np.select(
            [(s > 0.1) & (s < 0.4), (s > 0.5) & (s < 0.9)], [0.15 / 0.3, 0.5 / 0.4], 0.0
        )
        return {"inputs": slope * s * (1 - s)}

    run_head(knots, None, reference, gradient)
    one = {"method": "isotonic", "x": [0.3], "y": [0.12]}
    run_head(one, None, lambda layer, z: np.full_like(z, 0.12), None)


def run_head(calibration, w, reference, gradient):
    from layer_testing import run_layer_test

    kwargs = {"task": "binary", "calibration": calibration, "negative_downsampling": w}
    return run_layer_test(
        tf_fm.PredictionHead,
        kwargs,
        HEAD_LOGITS,
        reference=reference,
        expected_gradients=gradient,
        atol=1e-6,
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"negative_downsampling": 0.0}, r"must be in \(0, 1\]"),
        ({"negative_downsampling": 1.5}, r"must be in \(0, 1\]"),
        ({"negative_downsampling": 0.5, "task": "regression"}, "task='binary' only"),
        ({"calibration": {"method": "beta"}}, "`method` one of"),
        ({"calibration": {"method": "platt", "a": 1.0}}, "`a`|`b`"),
        ({"calibration": {"method": "platt", "a": "x", "b": 0}}, "finite numbers"),
        ({"calibration": {"method": "isotonic", "x": [0.2, 0.1], "y": [0, 1]}}, "increasing"),
        ({"calibration": {"method": "isotonic", "x": [0.1, 0.2], "y": [1, 0]}}, "non-decreasing"),
        ({"calibration": {"method": "isotonic", "x": [0.1], "y": [0, 1]}}, "1 `x` knots but 2"),
        ({"calibration": {"method": "isotonic", "x": [0.1, 2], "y": [0, 1]}}, r"in \[0, 1\]"),
    ],
)
def test_head_rejects_bad_calibration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tf_fm.PredictionHead(**{"task": "binary", **kwargs})


def test_set_calibration_needs_a_tf_fm_model():
    inputs = keras.Input((2,))
    with pytest.raises(ValueError, match="does not end in a tf_fm PredictionHead"):
        cal.set_calibration(keras.Model(inputs, keras.layers.Dense(1)(inputs)), None, 0.5)


def test_calibrate_fits_on_a_dataset():
    model, features = toy_model()
    z = logits_of(model, features)
    y = (np.random.default_rng(2).random(len(z)) < cal.sigmoid(0.6 * z - 0.3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((features, y)).batch(64)
    got = cal.calibrate(model, dataset, "platt")
    assert got == cal.fit_platt(z, y)
    # Refit: reads the raw logits, not the calibrated output.
    refit = cal.calibrate(model, dataset, "platt", 0.5)
    want = cal.fit_platt(z + math.log(0.5), y)
    assert refit["a"] == pytest.approx(want["a"]) and refit["b"] == pytest.approx(want["b"])


# === Negative downsampling, trained ===


def downsample(data, rate, seed):
    keep = (data.labels == 1) | (np.random.default_rng(seed).random(len(data)) < rate)
    features = {k: v[keep] for k, v in data.features.items()}
    return features, data.labels[keep]


def test_downsampled_training_with_the_correction_matches_the_base_rate():
    """FM on negatives kept at w = 0.1: its corrected mean prediction is the full base rate.

    Tolerance: 4 sigma of two independent noises, both from the data: the
    test set's label mean, var r(1 - r) / n_test, and the base rate the
    model learns from the downsampled rows (its intercept's logit has
    var ~ 1 / n_pos + 1 / n_kept_negatives; times (r(1 - r))^2 in
    probability). About 0.011 here; the uncorrected mean is ~0.5.
    """
    w = 0.1
    train, test = make_fm_data(
        n_train=60_000, n_test=20_000, base_rate=0.1, multivalued_size=0, seed=4
    )
    features, labels = downsample(train, w, seed=1)
    keras.utils.set_random_seed(0)
    model = tf_fm.compile_model(tf_fm.FM(train.fields, embedding_dim=4), learning_rate=0.02)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(50_000, seed=0)
    model.fit(dataset.batch(256), epochs=4, verbose=0)
    uncorrected = model.predict(test.features, batch_size=4096, verbose=0).reshape(-1)
    cal.set_calibration(model, None, w)
    corrected = model.predict(test.features, batch_size=4096, verbose=0).reshape(-1)

    r = test.labels.mean()
    n_pos, n_neg = labels.sum(), len(labels) - labels.sum()
    sigma = math.sqrt(r * (1 - r) / len(test) + (r * (1 - r)) ** 2 * (1 / n_pos + 1 / n_neg))
    assert abs(corrected.mean() - r) < 4 * sigma, (corrected.mean(), r, sigma)
    assert abs(uncorrected.mean() - r) > 20 * sigma  # the test can fail without the correction
    # Each prediction is the closed form of its uncorrected one.
    np.testing.assert_allclose(
        corrected, uncorrected / (uncorrected + (1 - uncorrected) / w), rtol=2e-5
    )


# === train, Run.evaluate and the export ===


def write_csv(data, path, features=None, labels=None):
    import pandas as pd

    features = data.features if features is None else features
    labels = data.labels if labels is None else labels
    frame = pd.DataFrame({k: np.asarray(v) for k, v in features.items()})
    frame["label"] = labels.astype(int)
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_train_calibrates_and_the_export_serves_it(tmp_path, method):
    w = 0.2
    train, test = make_fm_data(
        n_train=20_000, n_test=6_000, base_rate=0.1, multivalued_size=0, seed=2
    )
    features, labels = downsample(train, w, seed=3)
    train_file = write_csv(train, tmp_path / "train.csv", features, labels)
    valid_file = write_csv(test, tmp_path / "valid.csv")
    categorical = [f.name for f in train.fields if isinstance(f, tf_fm.CategoricalFeature)]
    run = tf_fm.train(
        train_file,
        format="csv",
        valid=valid_file,
        output=tmp_path / "run",
        model="fm",
        categorical=categorical,
        embedding_dim=4,
        learning_rate=0.02,
        epochs=3,
        batch_size=256,
        calibration=method,
        negative_downsampling=w,
        log=lambda line: None,
        verbose=0,
    )
    head = run.model().layers[-1].get_config()
    assert head["calibration"]["method"] == method and head["negative_downsampling"] == w
    evaluation = run.evaluate(valid_file)
    valid = run.metrics["valid"]
    assert evaluation.scores["ece"] == pytest.approx(valid["ece"], abs=1e-6)
    assert valid["mean_prediction"] == pytest.approx(test.labels.mean(), abs=0.01)
    assert valid["ece"] < 0.02 < run.metrics["calibration"]["uncalibrated"]["ece"]

    path = run.export(tmp_path / "export", log=lambda line: None)
    report = tf_fm.export.read_metadata(path)["verification"]
    assert max(report["max_abs_diff"].values()) < 1e-5
    loaded = tf.saved_model.load(str(path))
    raw = run.read(valid_file, batch_size=64)
    batch, _ = next(iter(raw))
    served = loaded.signatures["serving_default"](**batch)["probability"].numpy()
    np.testing.assert_allclose(served, evaluation.predictions[:64], atol=1e-6)


def test_train_rejects_bad_calibration_settings(tmp_path):
    from tf_fm.errors import UsageError

    cases = [
        ({"calibration": "beta"}, "calibration must be one of"),
        ({"negative_downsampling": 0.0}, r"negative_downsampling .*must be in \(0, 1\]"),
        ({"calibration": "platt"}, "needs validation files"),
        ({"negative_downsampling": 0.5, "task": "regression"}, "binary"),
    ]
    for kwargs, match in cases:
        with pytest.raises(UsageError, match=match):
            tf_fm.train("x.csv", format="csv", output=tmp_path / "r", **kwargs)
