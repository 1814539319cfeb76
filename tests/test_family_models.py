"""The FM family beyond FM and DeepFM: HOFM, FwFM and NFM builders."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_anova_interaction import field_of_rows, naive_anova_features
from test_models import FIELDS, dense_x, fm_params, naive_fm, random_inputs, randomize

import tf_fm
from tf_fm import CategoricalFeature, FeatureSchema, MultiValuedFeature, NumericFeature
from tf_fm.models import describe_model

BUILDERS = {
    "hofm3": (tf_fm.HOFM, {"order": 3}),
    "hofm4_shared": (tf_fm.HOFM, {"order": 4, "shared_embeddings": True}),
    "fwfm": (tf_fm.FwFM, {}),
    "nfm": (tf_fm.NFM, {"dnn_units": (8,)}),
}


def copy_fm_weights(model, fm):
    """Give `model` the table and w0 of the FM `fm`."""
    model.get_layer("field_embedding").table.assign(fm.get_layer("field_embedding").table)
    model.get_layer("logit").bias.assign(fm.get_layer("logit").bias)


def random_fm(seed=1):
    fm = tf_fm.FM(FIELDS, embedding_dim=3, task="regression")
    randomize(fm, seed=seed)
    return fm


def predictions(model, inputs):
    return model.predict(inputs, verbose=0)[:, 0]


# --- HOFM ---


@pytest.mark.parametrize("order,shared", [(3, False), (4, False), (4, True)])
def test_hofm_equals_naive_per_example(order, shared):
    model = tf_fm.HOFM(
        FIELDS, order=order, embedding_dim=3, shared_embeddings=shared, task="regression"
    )
    randomize(model)
    inputs = random_inputs(12)
    got = predictions(model, inputs)
    layer, w0, w, V = fm_params(model)
    field_of = field_of_rows(layer)
    factors = {
        m: V if shared else model.get_layer(f"field_embedding_{m}").get_factors().astype("float64")
        for m in range(3, order + 1)
    }
    for i in range(12):
        x = dense_x(layer, inputs, i)
        higher = sum(naive_anova_features(P, x, field_of, m) for m, P in factors.items())
        np.testing.assert_allclose(got[i], naive_fm(w0, w, V, x) + higher, rtol=1e-4, atol=1e-4)
    assert len(describe_model(model).tables) == (1 if shared else order - 1)


def test_hofm_of_order_2_is_the_fm():
    fm = random_fm()
    hofm = tf_fm.HOFM(FIELDS, order=2, embedding_dim=3, task="regression")
    copy_fm_weights(hofm, fm)
    inputs = random_inputs(16)
    np.testing.assert_allclose(predictions(hofm, inputs), predictions(fm, inputs), rtol=1e-6)


def test_hofm_invalid_order():
    for order in (1, 6, True, 3.0):
        with pytest.raises(ValueError, match="order"):
            tf_fm.HOFM(FIELDS, order=order)


# --- FwFM ---


def test_fwfm_starts_as_the_fm():
    fm = random_fm()
    fwfm = tf_fm.FwFM(FIELDS, embedding_dim=3, task="regression")
    copy_fm_weights(fwfm, fm)
    inputs = random_inputs(16)  # with a weighted multi-valued field
    np.testing.assert_allclose(predictions(fwfm, inputs), predictions(fm, inputs), rtol=1e-5)


def test_fwfm_equals_naive_per_example():
    model = tf_fm.FwFM(FIELDS, embedding_dim=3, task="regression")
    randomize(model)
    r = model.get_layer("fwfm_interaction").pair_weights.numpy().astype("float64")
    inputs = random_inputs(12)
    got = predictions(model, inputs)
    layer, w0, w, V = fm_params(model)
    field_of = field_of_rows(layer)
    for i in range(12):
        x = dense_x(layer, inputs, i)
        want = w0 + w @ x
        for a, b in itertools.combinations(np.flatnonzero(x), 2):
            f, g = sorted((field_of[a], field_of[b]))
            want += r[f, g] * (V[a] @ V[b]) * x[a] * x[b]
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)


# --- NFM ---


def test_nfm_without_hidden_layers_and_h_1_is_the_fm():
    fm = random_fm()
    nfm = tf_fm.NFM(
        FIELDS,
        embedding_dim=3,
        dnn_units=(),
        dnn_batch_norm=False,
        bi_dropout=0.0,
        task="regression",
    )
    copy_fm_weights(nfm, fm)
    nfm.get_layer("dnn_logit").kernel.assign(np.ones((3, 1)))
    inputs = random_inputs(16)
    np.testing.assert_allclose(predictions(nfm, inputs), predictions(fm, inputs), rtol=1e-5)


def test_nfm_bi_interaction_is_over_all_pairs_of_features():
    model = tf_fm.NFM(FIELDS, embedding_dim=3)
    randomize(model)
    bi = keras.Model(model.inputs, model.get_layer("bi_interaction").output)
    inputs = random_inputs(8)
    got = bi.predict(inputs, verbose=0)
    layer, _, _, V = fm_params(model)
    for i in range(8):
        x = dense_x(layer, inputs, i)
        want = sum(
            x[a] * x[b] * V[a] * V[b] for a, b in itertools.combinations(np.flatnonzero(x), 2)
        )
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)


def test_nfm_defaults_are_the_peers_and_the_authors_code_is_one_call_away():
    model = tf_fm.NFM(FIELDS)  # DeepCTR / FuxiCTR: no dropout, no batch normalization
    names = [layer.name for layer in model.layers]
    assert not [n for n in names if "dropout" in n or "batch_norm" in n], names
    assert model.get_layer("dnn_dense_0").units == 64
    assert not model.get_layer("dnn_logit").use_bias  # w0 is the model's bias
    authors = tf_fm.NFM(FIELDS, dnn_dropout=0.2, bi_dropout=0.5, dnn_batch_norm=True)
    assert authors.get_layer("bi_dropout").rate == 0.5
    assert authors.get_layer("dnn_dropout_0").rate == 0.2
    assert isinstance(authors.get_layer("bi_batch_norm"), keras.layers.BatchNormalization)
    for kwargs, match in [
        ({"bi_dropout": 1.0}, "bi_dropout"),
        ({"dnn_dropout": -0.1}, "dnn_dropout"),
        ({"dnn_units": (8, 0)}, "dnn_units"),
    ]:
        with pytest.raises(ValueError, match=match):
            tf_fm.NFM(FIELDS, **kwargs)


# --- All three: training, saving, task, mixed precision, export ---


@pytest.mark.parametrize("key", BUILDERS)
def test_trains_and_reloads_without_custom_objects(key, tmp_path):
    builder, kwargs = BUILDERS[key]
    model = tf_fm.compile_model(builder(FIELDS, embedding_dim=3, **kwargs), learning_rate=0.01)
    info = describe_model(model)
    assert info.task == "binary" and info.logit is model.layers[-1].input
    inputs = random_inputs(128)
    labels = (np.random.default_rng(0).random(128) < 0.3).astype("float32")
    before = [t.numpy().copy() for t in info.tables]
    history = model.fit(inputs, labels, epochs=1, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(np.any(t.numpy() != b) for t, b in zip(info.tables, before, strict=True))
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")  # no custom_objects
    assert isinstance(restored.optimizer, tf_fm.LazyAdam)
    assert describe_model(restored).task == "binary"
    assert len(describe_model(restored).tables) == len(info.tables)
    np.testing.assert_array_equal(
        model.predict(inputs, verbose=0), restored.predict(inputs, verbose=0)
    )


@pytest.mark.parametrize("key", BUILDERS)
def test_regression_task_and_named_inputs(key):
    builder, kwargs = BUILDERS[key]
    model = builder(FIELDS, embedding_dim=3, task="regression", **kwargs)
    assert describe_model(model).task == "regression"
    assert model.layers[-1].name == "prediction"
    assert sorted(model.input.keys()) == ["a", "b", "g", "g_weights", "x", "y"]
    with pytest.raises(ValueError, match="task"):
        builder(FIELDS, task="ranking", **kwargs)


@pytest.mark.parametrize("key", BUILDERS)
def test_mixed_float16_computes_what_float32_does(key):
    builder, kwargs = BUILDERS[key]
    model = builder(FIELDS, embedding_dim=4, **kwargs)
    randomize(model)
    inputs = random_inputs(16)
    want = keras.ops.convert_to_numpy(model(inputs))
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = builder(FIELDS, embedding_dim=4, **kwargs)
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(model.get_weights())
    got = keras.ops.convert_to_numpy(mixed(inputs))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=2e-3)


def test_mixed_float16_hofm_trains():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tf_fm.HOFM(FIELDS, order=3, embedding_dim=4)
        model.compile(optimizer="adam", loss="binary_crossentropy")
        labels = (np.random.default_rng(0).random(64) < 0.3).astype("float32")
        history = model.fit(random_inputs(64), labels, epochs=2, batch_size=32, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        assert model.get_layer("field_embedding_3").table.dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.slow  # about 25 s: the export verifies in a TensorFlow-only child process
def test_hofm_on_a_schema_exports_and_serves(tmp_path):
    pytest.importorskip("tensorflow_serving.apis.prediction_log_pb2")
    raw = {
        "city": np.array(["oslo", "rome", "oslo", "lima", "", "rome", "kyiv", "oslo"], object),
        "age": np.array([31.0, 45.0, np.nan, 22.0, 60.0, 38.0, 27.0, 50.0], dtype="float32"),
        "topics": np.array(["a|b", "c", "", "a|c", "b", "a|b|c", "d", "c|a"], dtype=object),
        "device": np.array(["ios", "web", "web", "android", "ios", "", "web", "ios"], object),
    }
    schema = FeatureSchema(
        [
            CategoricalFeature("city"),
            NumericFeature("age", transform="standardize", default=0.0),
            MultiValuedFeature("topics", max_length=3),
            CategoricalFeature("device"),
        ]
    ).adapt(tf.data.Dataset.from_tensor_slices(raw).batch(4))
    model = tf_fm.HOFM(schema, order=3, embedding_dim=4)
    randomize(model)
    path = tf_fm.export_saved_model(model, tmp_path / "hofm", schema=schema, sample=raw)
    loaded = tf.saved_model.load(str(path))
    served = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in raw.items()})
    want = schema.serving_model(model).predict(raw, verbose=0).reshape(-1)
    np.testing.assert_allclose(served["probability"].numpy(), want, atol=1e-6)
    assert np.unique(np.round(want, 4)).size > 4  # not a constant model
