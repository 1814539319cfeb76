import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import CategoricalFeature, MultiValuedFeature, NumericFeature

FIELDS = [
    CategoricalFeature("a", encoding="integer", num_ids=6),
    NumericFeature("x"),
    NumericFeature("y"),
    MultiValuedFeature("g", encoding="integer", num_ids=5, max_length=3, weighted=True),
    CategoricalFeature("b", encoding="integer", num_ids=4),
]


def random_inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    g = np.stack([rng.permutation(5)[:3] for _ in range(n)])  # distinct ids per row
    g[rng.random((n, 3)) < 0.3] = -1  # some padding
    return {
        "a": rng.integers(0, 6, size=n),
        "x": rng.normal(size=n).astype("float32"),
        "y": rng.normal(size=n).astype("float32"),
        "g": g,
        "g_weights": rng.uniform(0.1, 2.0, size=(n, 3)).astype("float32"),
        "b": rng.integers(0, 4, size=n),
    }


def randomize(model, seed=1):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(scale=0.5, size=v.shape).astype(v.dtype))


def dense_x(layer, inputs, i):
    """The FM's input vector x (one entry per table row) of example i."""
    x = np.zeros(layer.total_rows)
    for field, offset in zip(layer.fields, layer.offsets, strict=True):
        name = field["name"]
        if field["kind"] == "categorical":
            x[offset + inputs[name][i]] += 1.0
        elif field["kind"] == "numeric":
            x[offset] += inputs[name][i]
        else:
            for idx, w in zip(inputs[name][i], inputs[name + "_weights"][i], strict=True):
                if idx >= 0:
                    x[offset + idx] += w
    return x


def naive_fm(w0, w, V, x):
    """w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j by the double loop."""
    y = w0 + float(w @ x)
    nz = np.flatnonzero(x)
    for a in range(len(nz)):
        for b in range(a + 1, len(nz)):
            i, j = nz[a], nz[b]
            y += float(V[i] @ V[j]) * x[i] * x[j]
    return y


def fm_params(model):
    layer = model.get_layer("field_embedding")
    return (
        layer,
        float(model.get_layer("logit").bias.numpy()),
        layer.get_linear_weights().astype(np.float64),
        layer.get_factors().astype(np.float64),
    )


def test_fm_equals_naive_reference_per_example():
    model = tf_fm.FM(FIELDS, embedding_dim=4, task="regression")
    randomize(model)
    inputs = random_inputs(16)
    got = model.predict(inputs, verbose=0)[:, 0]
    layer, w0, w, V = fm_params(model)
    for i in range(16):
        want = naive_fm(w0, w, V, dense_x(layer, inputs, i))
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)


def test_binary_fm_is_sigmoid_of_the_fm():
    model = tf_fm.FM(FIELDS, embedding_dim=3)
    randomize(model)
    inputs = random_inputs(8)
    got = model.predict(inputs, verbose=0)[:, 0]
    layer, w0, w, V = fm_params(model)
    want = [1 / (1 + np.exp(-naive_fm(w0, w, V, dense_x(layer, inputs, i)))) for i in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gradients_equal_closed_form():
    # Regression FM: the output is y itself; x is real-valued (numeric fields,
    # weighted multi-valued ids). dy/dw0 = 1, dy/dw_i = x_i,
    # dy/dv_if = x_i sum_j v_jf x_j - v_if x_i^2.
    model = tf_fm.FM(FIELDS, embedding_dim=4, task="regression", embeddings_l2=0, linear_l2=0)
    randomize(model, seed=3)
    inputs = random_inputs(5, seed=4)
    layer, _, _, V = fm_params(model)
    bias = model.get_layer("logit").bias
    for i in range(5):
        one = {k: v[i : i + 1] for k, v in inputs.items()}
        with tf.GradientTape() as tape:
            y = model(one)[0, 0]
        g_w0, g_table = tape.gradient(y, [bias, layer.table])
        g_table = tf.convert_to_tensor(g_table).numpy()
        g_v, g_w = g_table[:, :-1], g_table[:, -1]
        x = dense_x(layer, inputs, i)
        np.testing.assert_allclose(float(g_w0), 1.0)
        np.testing.assert_allclose(g_w, x, atol=1e-6)
        want_v = x[:, None] * (x @ V)[None, :] - V * (x**2)[:, None]
        np.testing.assert_allclose(g_v, want_v, atol=1e-5)


def test_batch_independence():
    model = tf_fm.DeepFM(FIELDS, embedding_dim=3, dnn_units=(8, 8), dnn_batch_norm=True)
    inputs = random_inputs(10)
    before = model.predict(inputs, verbose=0)
    other = random_inputs(10, seed=9)
    mixed = {k: np.concatenate([inputs[k][:1], other[k][1:]]) for k in inputs}
    after = model.predict(mixed, verbose=0)
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)


def test_deepfm_shares_one_table_between_fm_and_dnn():
    model = tf_fm.DeepFM(FIELDS, embedding_dim=3, dnn_units=(8,), dnn_dropout=0.0)
    randomize(model)
    tables = [w for w in model.weights if w.path.startswith("field_embedding/")]
    assert len(tables) == 1
    table = tables[0]
    parts = keras.Model(
        model.inputs,
        [model.get_layer("fm_interaction").output, model.get_layer("dnn_logit").output],
    )
    inputs = random_inputs(4)
    grads = []
    for k in range(2):
        with tf.GradientTape() as tape:
            out = parts(inputs)[k]
            loss = tf.reduce_sum(out)
        grads.append(tf.convert_to_tensor(tape.gradient(loss, table)).numpy()[:, :-1])
    fm_grad, dnn_grad = grads
    assert np.abs(fm_grad).sum() > 0 and np.abs(dnn_grad).sum() > 0
    # Both parts reach the same rows of the same variable.
    assert set(np.flatnonzero(np.abs(fm_grad).sum(1))) == set(
        np.flatnonzero(np.abs(dnn_grad).sum(1))
    )


@pytest.mark.parametrize("builder", [tf_fm.FM, tf_fm.DeepFM])
def test_named_inputs_and_output(builder):
    model = builder(FIELDS, embedding_dim=3)
    assert sorted(model.input.keys()) == ["a", "b", "g", "g_weights", "x", "y"]
    assert model.output.name.startswith("probability") or model.layers[-1].name == "probability"
    regression = builder(FIELDS, embedding_dim=3, task="regression")
    assert regression.layers[-1].name == "prediction"
    with pytest.raises(ValueError, match="task"):
        builder(FIELDS, task="multiclass")


@pytest.mark.parametrize(
    "builder,kwargs",
    [
        (tf_fm.FM, {}),
        (tf_fm.DeepFM, {"dnn_units": (8, 4), "dnn_batch_norm": True, "dnn_l2": 1e-4}),
        (tf_fm.DeepFM, {"out_of_range": "oov"}),
    ],
)
def test_keras_save_load_without_custom_objects(builder, kwargs, tmp_path):
    model = builder(FIELDS, embedding_dim=3, **kwargs)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    inputs = random_inputs(64)
    labels = (np.random.default_rng(0).random(64) < 0.3).astype("float32")
    model.fit(inputs, labels, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(
        model.predict(inputs, verbose=0), restored.predict(inputs, verbose=0)
    )
    # The functional config round trip builds the same architecture.
    config = model.get_config()
    json.dumps(config)
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(
        model.predict(inputs, verbose=0), clone.predict(inputs, verbose=0), rtol=1e-6
    )


@pytest.mark.parametrize("builder", [tf_fm.FM, tf_fm.DeepFM, tf_fm.NFM, tf_fm.FwFM])
def test_start_at_base_rate_makes_the_first_predictions_the_mean(builder):
    inputs = random_inputs(500)
    binary = builder(FIELDS, embedding_dim=4)
    assert np.mean(binary.predict(inputs, verbose=0)) == pytest.approx(0.5, abs=0.02)
    w0 = tf_fm.models.start_at_base_rate(binary, 0.03, "binary")
    assert w0 == pytest.approx(np.log(0.03 / 0.97))
    assert float(binary.get_layer("logit").bias.numpy()) == pytest.approx(w0)
    assert np.mean(binary.predict(inputs, verbose=0)) == pytest.approx(0.03, abs=0.003)
    regression = builder(FIELDS, embedding_dim=4, task="regression")
    assert tf_fm.models.start_at_base_rate(regression, 3.5, "regression") == 3.5
    assert np.mean(regression.predict(inputs, verbose=0)) == pytest.approx(3.5, abs=0.05)
    # A base rate of 0 or 1 (a file of one class) is clipped, not an infinite bias.
    assert np.isfinite(tf_fm.models.start_at_base_rate(binary, 0.0, "binary"))


def test_deepfm_invalid_dnn_arguments():
    with pytest.raises(ValueError, match="dnn_units"):
        tf_fm.DeepFM(FIELDS, dnn_units=(8, 0))
    with pytest.raises(ValueError, match="dnn_dropout"):
        tf_fm.DeepFM(FIELDS, dnn_dropout=1.0)


def test_global_bias_config_round_trip():
    layer = tf_fm.GlobalBias(bias_initializer="ones", name="w0")
    clone = tf_fm.GlobalBias.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    out = keras.ops.convert_to_numpy(clone([np.ones((2, 1)), np.full((2, 1), 2.0)]))
    np.testing.assert_allclose(out, [[4.0], [4.0]])


def test_mixed_bfloat16_model_trains():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tf_fm.DeepFM(FIELDS, embedding_dim=4, dnn_units=(8,))
        model.compile(optimizer="adam", loss="binary_crossentropy")
        inputs = random_inputs(64)
        labels = (np.random.default_rng(0).random(64) < 0.3).astype("float32")
        history = model.fit(inputs, labels, epochs=2, batch_size=32, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert model.get_layer("field_embedding").table.dtype == "float32"
        assert model.predict(inputs, verbose=0).dtype == np.float32
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("task,metric", [("binary", "auc"), ("regression", "rmse")])
def test_compile_model_defaults(task, metric, tmp_path):
    model = tf_fm.compile_model(tf_fm.DeepFM(FIELDS, embedding_dim=3, dnn_units=(4,), task=task))
    assert isinstance(model.optimizer, tf_fm.LazyAdam)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    losses = tf_fm.losses
    expected = (
        losses.CheckedBinaryCrossentropy if task == "binary" else losses.CheckedMeanSquaredError
    )
    assert isinstance(model.loss, expected)
    inputs = random_inputs(64)
    labels = (np.random.default_rng(0).random(64) < 0.5).astype("float32")
    history = model.fit(inputs, labels, validation_split=0.25, epochs=1, verbose=0)
    assert metric in history.history and "val_" + metric in history.history
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(restored.optimizer, tf_fm.LazyAdam)
    np.testing.assert_array_equal(
        model.predict(inputs, verbose=0), restored.predict(inputs, verbose=0)
    )


def test_default_callbacks_stop_early_and_decay_the_learning_rate(tmp_path):
    """Validation labels unrelated to the features: val AUC stalls, LR drops, fit stops."""
    rng = np.random.default_rng(0)
    fields = [
        CategoricalFeature("a", encoding="integer", num_ids=20),
        CategoricalFeature("b", encoding="integer", num_ids=20),
    ]
    x = {k: rng.integers(0, 20, 2000) for k in ("a", "b")}
    y = (x["a"] < 10).astype("float32")  # learnable on train
    noise = rng.integers(0, 2, 2000).astype("float32")  # validation: coin flips
    model = tf_fm.compile_model(tf_fm.FM(fields), learning_rate=0.05)
    callbacks = tf_fm.default_callbacks(patience=2, backup_dir=tmp_path / "backup")
    assert [type(c).__name__ for c in callbacks] == [
        "WeightedSum",
        "ReduceLROnPlateau",
        "BestEpochStopping",
        "AtomicBackupAndRestore",
    ]
    history = model.fit(
        x, y, validation_data=(x, noise), epochs=30, batch_size=256, callbacks=callbacks, verbose=0
    )
    epochs = len(history.history["loss"])
    assert epochs < 30  # stopped early
    logs = history.history  # the monitor: BARS' validation AUC minus log loss
    monitor = np.asarray(logs["val_auc"]) - np.asarray(logs["val_logloss"])
    np.testing.assert_allclose(logs["val_auc_minus_logloss"], monitor, rtol=1e-6)
    best = int(np.argmax(monitor))
    assert epochs == best + 1 + 2  # patience 2 after the best epoch
    rates = history.history["learning_rate"]
    assert rates[0] == pytest.approx(0.05)
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:], strict=False))
    assert rates[-1] == pytest.approx(rates[best] * 0.1, rel=1e-5)  # x0.1 after epoch best + 1
    # The best epoch's weights are restored: the model scores as it did then.
    val = model.evaluate(x, noise, verbose=0, return_dict=True)
    assert val["auc"] == pytest.approx(history.history["val_auc"][best], abs=1e-6)


def test_default_callbacks_regression_and_arguments():
    monitors = [c.monitor for c in tf_fm.default_callbacks("regression")]
    assert monitors == ["val_rmse", "val_rmse"]
    binary = [getattr(c, "monitor", None) for c in tf_fm.default_callbacks()]
    assert binary == [None, "val_auc_minus_logloss", "val_auc_minus_logloss"]
    with pytest.raises(ValueError, match="patience"):
        tf_fm.default_callbacks(patience=0)
    with pytest.raises(ValueError, match="task"):
        tf_fm.default_callbacks("ranking")


class _Scripted(keras.callbacks.Callback):
    """Feeds `BestEpochStopping` a scripted validation metric, epoch by epoch."""

    def __init__(self, values, rates=None):
        super().__init__()
        self.values, self.rates = values, rates

    def on_epoch_end(self, epoch, logs=None):
        logs["val_auc"] = self.values[epoch]
        if self.rates is not None:
            self.model.optimizer.learning_rate.assign(self.rates[epoch])


def _scripted_fit(values, rates=None, patience=2, epochs=None):
    rng = np.random.default_rng(0)
    fields = [CategoricalFeature("a", encoding="integer", num_ids=5)]
    model = tf_fm.compile_model(tf_fm.FM(fields), learning_rate=0.05)
    stopper = tf_fm.models.BestEpochStopping("val_auc", "max", patience)
    x = {"a": rng.integers(0, 5, 64)}
    y = (x["a"] < 2).astype("float32")
    weights = []
    saver = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: weights.append(model.get_weights())
    )
    history = model.fit(
        x,
        y,
        epochs=epochs or len(values),
        batch_size=16,
        verbose=0,
        callbacks=[_Scripted(values, rates), stopper, saver],
    )
    return model, history, weights


def test_best_epoch_stopping_ignores_gains_below_min_delta():
    # Gains of 5e-5 (< MIN_DELTA) after epoch 1: patience runs out at epoch 3.
    values = [0.70, 0.71, 0.71005, 0.7101, 0.75, 0.76]
    model, history, weights = _scripted_fit(values)
    assert len(history.history["loss"]) == 4
    for got, want in zip(model.get_weights(), weights[1], strict=True):  # epoch 2, the best
        np.testing.assert_array_equal(got, want)


def test_best_epoch_stopping_stops_at_the_learning_rate_floor():
    values = [0.70, 0.71, 0.70, 0.69, 0.68]
    rates = [1e-3, 1e-4, 1e-6, 1e-6, 1e-6]
    _, history, _ = _scripted_fit(values, rates, patience=5)
    assert len(history.history["loss"]) == 3  # first epoch without gain at the floor


def test_best_epoch_stopping_restores_the_best_weights_at_the_epochs_cap():
    values = [0.70, 0.75, 0.74]
    model, history, weights = _scripted_fit(values, patience=5)
    assert len(history.history["loss"]) == 3
    for got, want in zip(model.get_weights(), weights[1], strict=True):
        np.testing.assert_array_equal(got, want)


class _ScriptedLogs(keras.callbacks.Callback):
    """Sets scripted validation logs (several keys), epoch by epoch."""

    def __init__(self, logs):
        super().__init__()
        self.logs = logs

    def on_epoch_end(self, epoch, logs=None):
        logs.update({key: values[epoch] for key, values in self.logs.items()})


def test_binary_loop_goes_on_while_log_loss_falls_at_a_flat_auc():
    """The Avazu-sample FM runs: AUC flat while the model still learns the base rate."""
    scripted = {
        "val_auc": [0.5458, 0.5442, 0.5414, 0.5473, 0.5538, 0.5673],
        "val_logloss": [0.6367, 0.5901, 0.5857, 0.5684, 0.5298, 0.4992],
    }
    rng = np.random.default_rng(0)
    fields = [CategoricalFeature("a", encoding="integer", num_ids=5)]
    model = tf_fm.compile_model(tf_fm.FM(fields), learning_rate=0.05)
    x = {"a": rng.integers(0, 5, 64)}
    y = (x["a"] < 2).astype("float32")
    callbacks = [_ScriptedLogs(scripted), *tf_fm.default_callbacks()]
    history = model.fit(x, y, epochs=6, batch_size=16, verbose=0, callbacks=callbacks)
    assert len(history.history["loss"]) == 6  # AUC alone stopped after epoch 3
    assert history.history["learning_rate"][-1] == pytest.approx(0.05)  # never a plateau
