"""`tf_fm.explain`: exact FM / FwFM / FFM / HOFM terms, DeepFM's and NFM's integrated gradients,
`tf-fm explain`."""

import itertools
import math

import keras
import numpy as np
import pytest

import tf_fm
from tf_fm import cli, plots, training
from tf_fm.explanations import Explanation, explain, integrated_gradients
from tf_fm.models import describe_model

FIELDS = [
    {"name": "user", "kind": "categorical", "vocabulary_size": 7},
    {"name": "age", "kind": "numeric"},
    {"name": "item", "kind": "categorical", "vocabulary_size": 5},
    {
        "name": "tags",
        "kind": "multivalued",
        "vocabulary_size": 6,
        "max_length": 3,
        "weighted": True,
        "combiner": "sum",
    },
]
ROWS = 64


def _inputs(rows=ROWS, seed=0):
    rng = np.random.default_rng(seed)
    tags = rng.integers(0, 6, (rows, 3))
    return {
        "user": rng.integers(0, 7, rows),
        "age": rng.normal(size=rows).astype("float32"),
        "item": rng.integers(0, 5, rows),
        "tags": np.where(rng.random((rows, 3)) < 0.3, -1, tags),  # -1: padding
        "tags_weights": rng.uniform(0.2, 2.0, (rows, 3)).astype("float32"),
    }


def _randomized(model, seed=0):
    """`model` with O(1) weights, so that every term is far from 0."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "dnn" not in weight.path:  # Dense kernels keep their Glorot scale
            weight.assign(rng.normal(size=weight.shape).astype(weight.dtype))
    return model


def _logit(model, inputs):
    return keras.Model(model.input, describe_model(model).logit).predict(inputs, verbose=0)[:, 0]


EXACT = {
    "fm": (tf_fm.FM, {}),
    "fwfm": (tf_fm.FwFM, {}),
    "ffm": (tf_fm.FFM, {}),
    "hofm3": (tf_fm.HOFM, {"order": 3}),
    "hofm4_shared": (tf_fm.HOFM, {"order": 4, "shared_embeddings": True}),
}


@pytest.mark.parametrize("key", EXACT)
def test_terms_sum_to_the_logit(key):
    builder, kwargs = EXACT[key]
    model = _randomized(builder(FIELDS, embedding_dim=4, **kwargs))
    inputs = _inputs()
    explanation = explain(model, inputs)
    logit = _logit(model, inputs)
    assert explanation.first_order.shape == (ROWS, 4)
    assert explanation.pairs.shape == (ROWS, 4, 4)
    assert explanation.dnn is None
    np.testing.assert_allclose(explanation.logit, logit, rtol=1e-6, atol=1e-6)
    # Per example, to float32 tolerance of terms of size ~10.
    np.testing.assert_allclose(explanation.total(), logit, rtol=1e-5, atol=1e-4)
    assert np.all(np.tril(explanation.pairs, k=-1) == 0)
    # Single-id fields have no within-field pairs; the multi-valued one has.
    diagonal = np.diagonal(explanation.pairs, axis1=1, axis2=2)
    np.testing.assert_allclose(diagonal[:, :3], 0.0, atol=1e-5)
    assert np.abs(diagonal[:, 3]).max() > 1e-2


def test_pair_and_first_order_terms_match_the_table():
    model = _randomized(tf_fm.FM(FIELDS, embedding_dim=4))
    inputs = _inputs()
    explanation = explain(model, inputs)
    embedding = model.get_layer("field_embedding")
    v, w = embedding.get_factors(), embedding.get_linear_weights()
    user, age, item = (embedding.offsets[i] for i in range(3))
    users, items = user + inputs["user"], item + inputs["item"]
    naive = np.sum(v[users] * v[items], axis=1)  # <v_i, v_j> x_i x_j, x = 1
    np.testing.assert_allclose(explanation.pairs[:, 0, 2], naive, rtol=1e-5, atol=1e-6)
    with_age = np.sum(v[users] * v[age], axis=1) * inputs["age"]
    np.testing.assert_allclose(explanation.pairs[:, 0, 1], with_age, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(explanation.first_order[:, 0], w[users], rtol=1e-6)
    np.testing.assert_allclose(explanation.first_order[:, 1], w[age] * inputs["age"], rtol=1e-5)
    assert explanation.bias == pytest.approx(float(model.get_layer("logit").bias.numpy()))


def test_fwfm_pairs_are_weighted_by_their_field_pair():
    model = _randomized(tf_fm.FwFM(FIELDS, embedding_dim=4))
    inputs = _inputs()
    weighted = explain(model, inputs)
    r = model.get_layer("fwfm_interaction").pair_weights.numpy()
    model.get_layer("fwfm_interaction").pair_weights.assign(np.ones_like(r))
    plain = explain(model, inputs)
    np.testing.assert_allclose(weighted.pairs, plain.pairs * np.triu(r), rtol=1e-5, atol=1e-5)


def test_deepfm_integrated_gradients_are_complete():
    model = tf_fm.DeepFM(FIELDS, embedding_dim=4, dnn_units=(32, 16), dnn_dropout=0.5)
    model = _randomized(model)
    inputs = _inputs()
    explanation = explain(model, inputs, steps=64)
    np.testing.assert_allclose(explanation.logit, _logit(model, inputs), rtol=1e-6, atol=1e-6)
    # The FM terms are exact, so the rest of the logit is the DNN's.
    fm = explanation.bias + explanation.first_order.sum(1) + explanation.pairs.sum((1, 2))
    change = explanation.logit - fm - explanation.dnn_baseline  # DNN(e) - DNN(0)
    error = np.abs(explanation.dnn.sum(axis=1) - change).max()
    assert explanation.dnn.shape == (ROWS, 4)
    assert error <= 0.01 * (change.max() - change.min())


def test_integrated_gradients_of_a_linear_function_are_exact():
    e = np.random.default_rng(1).normal(size=(5, 3, 2)).astype("float32")
    a = np.arange(6, dtype="float32").reshape(1, 3, 2)
    inputs = keras.Input((3, 2))
    outputs = keras.ops.sum(inputs * a, axis=(1, 2))[:, None] + 1.0
    attributions, values, baselines = integrated_gradients(keras.Model(inputs, outputs), e, 4)
    np.testing.assert_allclose(attributions, (e * a).sum(axis=2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values - baselines, attributions.sum(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(baselines, 1.0)


def test_ffm_pairs_use_each_fields_vector_for_the_other():
    model = _randomized(tf_fm.FFM(FIELDS, embedding_dim=3))
    inputs = _inputs()
    explanation = explain(model, inputs)
    embedding = model.get_layer("field_embedding")
    v = embedding.get_factors().reshape(embedding.total_rows, 4, 3)  # (rows, F, k)
    user, age, item = (embedding.offsets[i] for i in range(3))
    users, items = user + inputs["user"], item + inputs["item"]
    naive = np.sum(v[users, 2] * v[items, 0], axis=1)  # <v_{user,item}, v_{item,user}>
    np.testing.assert_allclose(explanation.pairs[:, 0, 2], naive, rtol=1e-5, atol=1e-6)
    with_age = np.sum(v[users, 1] * v[age, 0], axis=1) * inputs["age"]
    np.testing.assert_allclose(explanation.pairs[:, 0, 1], with_age, rtol=1e-5, atol=1e-6)


def _field_vectors(model, layer_name, inputs):
    return model.get_layer(layer_name)(inputs)["embeddings"].numpy().astype(np.float64)


@pytest.mark.parametrize("order,shared", [(3, False), (4, False), (4, True)])
def test_hofm_sets_of_fields_are_spread_equally_over_their_pairs(order, shared):
    model = _randomized(tf_fm.HOFM(FIELDS, order=order, embedding_dim=3, shared_embeddings=shared))
    inputs = _inputs(8)
    explanation = explain(model, inputs)
    fm = explain(tf_fm.FM(FIELDS, embedding_dim=3), inputs)  # the pair terms' shape only
    e2 = _field_vectors(model, "field_embedding", inputs)
    want = np.zeros_like(fm.pairs)
    for f, g in itertools.combinations(range(4), 2):
        want[:, f, g] = np.sum(e2[:, f] * e2[:, g], axis=1)
    for m in range(3, order + 1):
        e = e2 if shared else _field_vectors(model, f"field_embedding_{m}", inputs)
        for subset in itertools.combinations(range(4), m):  # brute force over the sets
            term = np.prod(e[:, list(subset)], axis=1).sum(axis=1) / math.comb(m, 2)
            for f, g in itertools.combinations(subset, 2):
                want[:, f, g] += term
    upper = np.triu_indices(4, k=1)
    got = explanation.pairs[:, upper[0], upper[1]]
    np.testing.assert_allclose(got, want[:, upper[0], upper[1]], rtol=1e-5, atol=1e-5)


def test_nfm_integrated_gradients_are_complete():
    model = _randomized(tf_fm.NFM(FIELDS, embedding_dim=4, dnn_units=(16,)))
    for weight in model.weights:  # batch normalization needs a positive variance
        if "moving_variance" in weight.path:
            weight.assign(np.abs(weight.numpy()) + 0.5)
    inputs = _inputs()
    explanation = explain(model, inputs, steps=64)
    np.testing.assert_allclose(explanation.logit, _logit(model, inputs), rtol=1e-6, atol=1e-6)
    assert np.all(explanation.pairs == 0)  # the bi-interaction feeds the DNN only
    change = explanation.logit - explanation.bias - explanation.first_order.sum(1)
    change = change - explanation.dnn_baseline  # DNN(e, s) - DNN(0, 0)
    error = np.abs(explanation.dnn.sum(axis=1) - change).max()
    assert explanation.dnn.shape == (ROWS, 4)
    assert np.ptp(change) > 0.1  # not a constant DNN
    assert error <= 0.01 * (change.max() - change.min())


def test_other_model_shapes_say_what_is_supported():
    embedding = tf_fm.FieldEmbedding(FIELDS, embedding_dim=3)
    inputs = tf_fm.models.model_inputs(FIELDS)
    embedded = embedding(inputs)
    pair = [embedded["embeddings"], embedded["squared_embeddings"]]
    terms = [embedded["linear"], tf_fm.FMInteraction()(pair), tf_fm.FwFMInteraction()(pair)]
    outputs = tf_fm.PredictionHead("binary")(tf_fm.GlobalBias()(terms))
    model = keras.Model(inputs, outputs, name="two_interactions")
    with pytest.raises(NotImplementedError, match="FFM, HOFM, DeepFM and NFM.*2 pairwise"):
        explain(model, _inputs(4))


def test_top_pairs_and_mean_abs_pairs():
    pairs = np.zeros((2, 3, 3))
    pairs[0, 0, 1], pairs[0, 1, 2], pairs[0, 2, 2] = 0.5, -2.0, 1.0
    pairs[1, 0, 1] = -1.5
    explanation = Explanation(
        bias=0.0,
        first_order=np.zeros((2, 3)),
        pairs=pairs,
        dnn=None,
        dnn_baseline=None,
        field_names=["a", "b", "c"],
        logit=pairs.sum((1, 2)),
    )
    assert explanation.top_pairs(0, 2) == [("b", "c", -2.0), ("c", "c", 1.0)]
    assert explanation.top_pairs(1, 1) == [("a", "b", -1.5)]
    np.testing.assert_allclose(explanation.mean_abs_pairs()[0, 1], 1.0)
    figure = plots.plot_pair_contributions(pairs, explanation.field_names)
    assert figure.axes[0].get_images()[0].get_array().shape == (3, 3)
    with pytest.raises(ValueError, match="F = len"):
        plots.plot_pair_contributions(pairs, ["a", "b"])


def test_the_package_attribute_is_the_function():
    import tf_fm.explanations as module

    assert tf_fm.explain(tf_fm.FM(FIELDS[:1], embedding_dim=2), {"user": np.arange(3)}).logit.shape
    assert module.explain is explain


@pytest.fixture(scope="module")
def fm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    lines = ["label,city,device,price"]
    for _ in range(400):
        city, device = rng.choice(["paris", "rome", "oslo"]), rng.choice(["ios", "android"])
        lines.append(f"{int(rng.random() < 0.3)},{city},{device},{rng.uniform(0, 5):.2f}")
    data = root / "rows.csv"
    data.write_text("\n".join(lines) + "\n")
    run = training.train(
        str(data),
        format="csv",
        output=root / "run",
        model="fm",
        min_count=1,
        epochs=1,
        verbose=0,
        log=lambda s: None,
    )
    return run, data


# Keras warns at the end of the first epoch over a dataset of unknown length.
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_explain_verb(fm_run, tmp_path, capsys):
    run, data = fm_run
    png = tmp_path / "pairs.png"
    args = ["explain", str(run.path), "--data", str(data), "--rows", "3", "--top", "2"]
    assert cli.main([*args, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("row ")]
    assert len(rows) == 3
    assert out.count(" x ") == 6  # two pairs per row
    assert png.stat().st_size > 0
    logits = [float(line.split("logit ")[1].split(" =")[0]) for line in rows]
    probabilities = run.predict([str(data)])[:3]
    np.testing.assert_allclose(1 / (1 + np.exp(-np.array(logits))), probabilities, atol=1e-4)
