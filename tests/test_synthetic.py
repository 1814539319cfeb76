import keras
import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

import tf_fm
from tf_fm import metrics
from tf_fm.data import make_fm_data


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.3).astype("float32")
    scores = np.round(rng.random(500), 2)  # many ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), 1e-12)
    assert metrics.log_loss(labels, scores) == pytest.approx(
        sk_log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7)), 1e-9
    )
    assert metrics.rmse([1.0, 2.0], [1.0, 4.0]) == pytest.approx(np.sqrt(2.0))
    with pytest.raises(ValueError, match="positive and one negative"):
        metrics.roc_auc([1, 1], [0.2, 0.3])


def load_truth(model, data):
    """Set an FM's weights to the generator's ground truth."""
    layer = model.get_layer("field_embedding")
    factors = np.zeros((layer.total_rows, layer.embedding_dim), dtype="float32")
    linear = np.zeros(layer.total_rows, dtype="float32")
    for field, offset in zip(layer.fields, layer.offsets, strict=True):
        p = data.info["params"][field["name"]]
        factors[offset : offset + len(p["w"])] = p["v"]
        linear[offset : offset + len(p["w"])] = p["w"]
    layer.set_table(factors, linear)
    model.get_layer("logit").bias.assign(data.info["w0"])


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_truth_is_an_fm_our_model_reproduces(task):
    # The generator's y_true is exactly an FM: our FM with the true weights
    # predicts the true probabilities (or noise-free y) of every row.
    _, test = make_fm_data(n_train=10, n_test=3000, task=task, seed=1)
    model = tf_fm.FM(test.fields, embedding_dim=test.info["embedding_dim"], task=task)
    load_truth(model, test)
    pred = model.predict(test.features, batch_size=1024, verbose=0)[:, 0]
    np.testing.assert_allclose(pred, test.truth, rtol=1e-4, atol=1e-5)
    assert test.evaluate(pred) == pytest.approx(test.bayes_metrics(), rel=1e-4)


def test_synthetic_shapes_and_rates():
    train, test = make_fm_data(n_train=20_000, n_test=100, seed=2, base_rate=0.2)
    assert len(train) == 20_000 and len(test) == 100
    assert abs(train.labels.mean() - 0.2) < 0.02
    tags = train.features["tags"]
    assert tags.shape == (20_000, 3)
    lengths = (tags >= 0).sum(1)
    assert lengths.min() >= 1
    # Padding only at the end; ids distinct within a row.
    for row, n in zip(tags[:200], lengths[:200], strict=True):
        assert np.all(row[n:] == -1) and len(set(row[:n])) == n
    # Zipf: the most frequent id of c0 is far more common than the median one.
    counts = np.bincount(train.features["c0"], minlength=50)
    assert counts.max() > 10 * np.median(counts)
    bayes = test.bayes_metrics()
    assert set(bayes) == {"auc", "logloss"}


def test_fm_fit_reaches_bayes_auc():
    # Learnability: model.fit on a tf.data pipeline gets within 0.01 AUC of the
    # Bayes-optimal AUC on held-out rows of the same ground truth.
    keras.utils.set_random_seed(0)
    train, test = make_fm_data(n_train=100_000, n_test=20_000, seed=0)
    model = tf_fm.FM(train.fields)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(train.dataset(batch_size=512, seed=0), epochs=4, verbose=0)
    got = test.evaluate(model.predict(test.features, batch_size=4096, verbose=0))
    bayes = test.bayes_metrics()
    assert bayes["auc"] - got["auc"] < 0.01, (got, bayes)
    assert got["auc"] <= bayes["auc"] + 0.002  # nothing beats the truth (up to noise)


@pytest.mark.slow
def test_deepfm_fit_reaches_bayes_auc():
    keras.utils.set_random_seed(0)
    train, test = make_fm_data(n_train=100_000, n_test=20_000, seed=0)
    model = tf_fm.DeepFM(train.fields)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    model.fit(train.dataset(batch_size=512, seed=0), epochs=5, verbose=0)
    got = test.evaluate(model.predict(test.features, batch_size=4096, verbose=0))
    assert test.bayes_metrics()["auc"] - got["auc"] < 0.01, got


def test_keras_logloss_metric_matches_numpy():
    rng = np.random.default_rng(5)
    labels = (rng.random(100) < 0.4).astype("float32")
    probs = rng.uniform(0.05, 0.95, size=(100, 1)).astype("float32")
    metric = metrics.LogLoss()
    metric.update_state(labels, probs)  # (batch,) labels, (batch, 1) output
    assert float(metric.result()) == pytest.approx(metrics.log_loss(labels, probs), rel=1e-5)
    clone = metrics.LogLoss.from_config(metric.get_config())
    assert clone.name == "logloss"
