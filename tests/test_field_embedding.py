import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_testing import run_layer_test

from tf_fm import FieldEmbedding


def categorical(name, vocabulary_size):
    return {"name": name, "kind": "categorical", "vocabulary_size": vocabulary_size}


def numeric(name):
    return {"name": name, "kind": "numeric"}


def multivalued(name, vocabulary_size, max_length, weighted=False, combiner="sum"):
    return {
        "name": name,
        "kind": "multivalued",
        "vocabulary_size": vocabulary_size,
        "max_length": max_length,
        "weighted": weighted,
        "combiner": combiner,
    }


FIELDS = [
    categorical("a", 5),
    numeric("x"),
    categorical("b", 3),
    multivalued("g", 4, 3, weighted=True),
]

# Seeded normal tables: every layer built with them holds the same values.
KWARGS = {
    "embedding_dim": 3,
    "embeddings_l2": 0.0,
    "linear_l2": 0.0,
    "embeddings_initializer": keras.initializers.RandomNormal(stddev=1.0, seed=0),
    "linear_initializer": keras.initializers.RandomNormal(stddev=1.0, seed=1),
}


def make_layer(fields=FIELDS, **kwargs):
    layer = FieldEmbedding(fields, **{**KWARGS, **kwargs})
    layer.build()
    return layer


def naive_terms(layer, field, offset, inputs, b):
    """The (table row, x) pairs of one field of example b, by the FM's definition."""

    def row(i):
        if layer.out_of_range == "oov" and not 0 <= i < field["vocabulary_size"]:
            i = field["vocabulary_size"]  # the field's OOV row
        return offset + i

    name = field["name"]
    if field["kind"] == "numeric":
        return [(offset, float(inputs[name][b]))]
    if field["kind"] == "categorical":
        return [(row(inputs[name][b]), 1.0)]
    ids = inputs[name][b]
    weights = inputs[f"{name}_weights"][b] if field["weighted"] else np.ones(len(ids))
    pairs = [(row(i), float(w)) for i, w in zip(ids, weights, strict=True) if i != -1]
    norm = {
        "sum": 1.0,
        "mean": sum(w for _, w in pairs),
        "sqrtn": np.sqrt(sum(w**2 for _, w in pairs)),
    }[field["combiner"]]
    return [(r, w / norm) for r, w in pairs]


def naive_outputs(layer, inputs):
    """Per example and field: sum x_i v_i, sum x_i^2 v_i^2; sum x_i w_i, by loops."""
    v, w = layer.get_factors(), layer.get_linear_weights()
    batch = len(inputs[layer.fields[0]["name"]])
    e = np.zeros((batch, len(layer.fields), layer.embedding_dim))
    s, linear = np.zeros_like(e), np.zeros((batch, 1))
    for b in range(batch):
        for f, (field, offset) in enumerate(zip(layer.fields, layer.offsets, strict=True)):
            for r, x in naive_terms(layer, field, offset, inputs, b):
                e[b, f] += x * v[r]
                s[b, f] += (x * v[r]) ** 2
                linear[b, 0] += x * w[r]
    return {"embeddings": e, "squared_embeddings": s, "linear": linear}


def naive_table_gradient(layer, one):
    """d sum(outputs) / d table of one example: x + 2 x^2 v per v row, x per w."""
    v, k = layer.get_factors(), layer.embedding_dim
    grad = np.zeros((layer.total_rows, k + 1))
    for field, offset in zip(layer.fields, layer.offsets, strict=True):
        for r, x in naive_terms(layer, field, offset, one, 0):
            grad[r, :k] += x + 2 * x**2 * v[r]
            grad[r, k] += x
    return {"table": grad}


def check_layer(fields, inputs, **kwargs):
    """run_layer_test against the naive reference and gradient; returns the layer and outputs."""
    return run_layer_test(
        FieldEmbedding,
        {"fields": fields, **KWARGS, **kwargs},
        inputs,
        reference=naive_outputs,
        expected_gradients=naive_table_gradient,
        rtol=1e-5,
        atol=1e-6,
    )


def batch():
    return {
        "a": np.array([0, 4], dtype="int64"),
        "x": np.array([0.5, -2.0], dtype="float32"),
        "b": np.array([2, 1], dtype="int64"),
        "g": np.array([[1, 3, -1], [-1, -1, -1]], dtype="int64"),
        "g_weights": np.array([[0.5, 2.0, 7.0], [1.0, 1.0, 1.0]], dtype="float32"),
    }


def run(layer, inputs):
    return {k: keras.ops.convert_to_numpy(v) for k, v in layer(inputs).items()}


def test_offsets_layout():
    layer = make_layer()
    # a: rows 0-4, x: row 5, b: rows 6-8, g: rows 9-12, padding row 13.
    assert layer.offsets == [0, 5, 6, 9]
    assert layer.padding_row == 13
    assert layer.table.shape == (14, 3 + 1)  # v (k columns) and w per row
    assert layer.get_factors().shape == (14, 3)
    assert layer.get_linear_weights().shape == (14,)


def test_categorical_and_numeric_rows():
    layer, out = check_layer(FIELDS, batch())
    table = layer.get_factors()
    w = layer.get_linear_weights()
    e = out["embeddings"]
    assert e.shape == (2, 4, 3)
    np.testing.assert_allclose(e[:, 0], table[[0, 4]], rtol=1e-6)  # a: offset 0
    np.testing.assert_allclose(e[:, 1], [0.5 * table[5], -2.0 * table[5]], rtol=1e-6)  # x scales v
    np.testing.assert_allclose(e[:, 2], table[[6 + 2, 6 + 1]], rtol=1e-6)  # b: offset 6
    # squared embeddings equal e**2 for one-id fields
    np.testing.assert_allclose(out["squared_embeddings"][:, :3], e[:, :3] ** 2, rtol=1e-6)
    # linear: w_a + x w_x + w_b + sum_g weight * w_g
    want0 = w[0] + 0.5 * w[5] + w[8] + 0.5 * w[9 + 1] + 2.0 * w[9 + 3]
    want1 = w[4] - 2.0 * w[5] + w[7]
    np.testing.assert_allclose(out["linear"][:, 0], [want0, want1], rtol=1e-5)


def test_multivalued_pooling_and_padding():
    layer = make_layer()
    table = layer.get_factors()
    out = run(layer, batch())
    g0 = 0.5 * table[9 + 1] + 2.0 * table[9 + 3]
    np.testing.assert_allclose(out["embeddings"][0, 3], g0, rtol=1e-6)
    np.testing.assert_allclose(
        out["squared_embeddings"][0, 3],
        (0.5 * table[9 + 1]) ** 2 + (2.0 * table[9 + 3]) ** 2,
        rtol=1e-6,
    )
    # An all-padding row contributes exactly nothing, whatever its weights say.
    np.testing.assert_array_equal(out["embeddings"][1, 3], 0.0)
    np.testing.assert_array_equal(out["squared_embeddings"][1, 3], 0.0)


def test_padding_gets_no_gradient():
    layer = make_layer()
    with tf.GradientTape() as tape:
        out = layer(batch())
        loss = tf.reduce_sum(out["embeddings"]) + tf.reduce_sum(out["linear"])
    g = tape.gradient(loss, layer.table)
    assert isinstance(g, tf.IndexedSlices)  # sparse: only the batch's rows
    dense = tf.convert_to_tensor(g).numpy()
    np.testing.assert_array_equal(dense[layer.padding_row], 0.0)
    np.testing.assert_array_equal(dense[[1, 2, 3]], 0.0)  # unused rows of a
    assert np.abs(dense[[0, 4]]).sum() > 0


@pytest.mark.parametrize("combiner", ["mean", "sqrtn"])
def test_combiners(combiner):
    fields = [multivalued("g", 4, 3, weighted=True, combiner=combiner)]
    inputs = {
        "g": np.array([[1, 3, -1], [-1, -1, -1]], dtype="int64"),
        "g_weights": np.array([[0.5, 2.0, 9.0], [1.0, 1.0, 1.0]], dtype="float32"),
    }
    layer, out = check_layer(fields, inputs)
    table = layer.get_factors()
    denom = 2.5 if combiner == "mean" else np.sqrt(0.25 + 4.0)
    np.testing.assert_allclose(
        out["embeddings"][0, 0], (0.5 * table[1] + 2.0 * table[3]) / denom, rtol=1e-6
    )
    np.testing.assert_array_equal(out["embeddings"][1, 0], 0.0)  # no division by zero


def test_unweighted_multivalued_uses_x_one():
    layer, out = check_layer([multivalued("g", 4, 3)], {"g": np.array([[2, 0, -1]])})
    table = layer.get_factors()
    np.testing.assert_allclose(out["embeddings"][0, 0], table[2] + table[0], rtol=1e-6)
    assert layer.input_names == ["g"]


@pytest.mark.parametrize(
    "field,value",
    [("a", 5), ("a", -1), ("b", 3), ("g", 4), ("g", -2)],
)
def test_out_of_range_error_names_the_field(field, value):
    layer = make_layer()
    inputs = batch()
    if field == "g":
        inputs["g"] = np.array([[1, value, -1], [-1, -1, -1]])
    else:
        inputs[field] = np.array([0, value])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"field `{field}`"):
        layer(inputs)

    @tf.function
    def in_graph(x):
        return layer(x)["embeddings"]

    with pytest.raises(tf.errors.InvalidArgumentError, match=f"field `{field}`"):
        in_graph(inputs)


def test_out_of_range_maps_to_oov_row():
    inputs = batch()
    inputs["a"] = np.array([5, -7])
    inputs["b"] = np.array([1, 99])
    inputs["g"] = np.array([[1, 8, -1], [-1, -1, -1]])
    layer, out = check_layer(FIELDS, inputs, out_of_range="oov", embeddings_l2=0.5)
    # a: rows 0-5 (OOV row 5), x: 6, b: 7-10 (OOV 10), g: 11-15 (OOV 15), padding 16.
    assert layer.offsets == [0, 6, 7, 11] and layer.padding_row == 16
    table = layer.get_factors()
    np.testing.assert_allclose(out["embeddings"][:, 0], table[[5, 5]], rtol=1e-6)
    np.testing.assert_allclose(out["embeddings"][:, 2], table[[7 + 1, 10]], rtol=1e-6)
    np.testing.assert_allclose(
        out["embeddings"][0, 3], 0.5 * table[11 + 1] + 2.0 * table[15], rtol=1e-6
    )
    # OOV rows are distinct from every in-vocabulary row (never a silent zero vector).
    assert np.all(np.abs(out["embeddings"][:, 0]) > 0)


def test_regularization_is_per_example_on_used_rows():
    layer = make_layer(embeddings_l2=0.1, linear_l2=0.01)
    table = layer.get_factors()
    w = layer.get_linear_weights()
    layer(batch())
    rows = [[0, 5, 8, 10, 12], [4, 5, 7]]  # rows with non-zero x per example
    want_v = np.mean([sum((table[r] ** 2).sum() for r in rs) for rs in rows]) * 0.1
    want_w = np.mean([sum(w[r] ** 2 for r in rs) for rs in rows]) * 0.01
    got = sorted(float(keras.ops.convert_to_numpy(x)) for x in layer.losses)
    np.testing.assert_allclose(got, sorted([want_v, want_w]), rtol=1e-5)


def test_output_shapes_and_batch_of_one():
    layer = make_layer()
    inputs = {k: v[:1] for k, v in batch().items()}
    out = run(layer, inputs)
    shapes = layer.compute_output_shape({k: (None,) + v.shape[1:] for k, v in inputs.items()})
    assert shapes["embeddings"] == (None, 4, 3)
    assert out["embeddings"].shape == (1, 4, 3)
    assert out["linear"].shape == (1, 1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"fields": []}, "at least one field"),
        ({"fields": [{"name": "a", "kind": "text"}]}, "kind"),
        (
            {"fields": [{"name": "a", "kind": "categorical", "vocabulary_size": 0}]},
            "vocabulary_size",
        ),
        ({"fields": [categorical("a", 2), numeric("a")]}, "unique"),
        ({"fields": [multivalued("g", 3, 0)]}, "max_length"),
        ({"fields": [multivalued("g", 3, 2, combiner="max")]}, "combiner"),
        ({"fields": FIELDS, "embedding_dim": 0}, "embedding_dim"),
        ({"fields": FIELDS, "out_of_range": "zero"}, "out_of_range"),
        ({"fields": FIELDS, "embeddings_l2": -1.0}, "embeddings_l2"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FieldEmbedding(**kwargs)


def test_missing_input_names_the_field():
    layer = make_layer()
    inputs = batch()
    del inputs["b"]
    with pytest.raises(KeyError, match="'b'"):
        layer(inputs)


def test_mixed_precision_outputs():
    layer = make_layer(dtype="mixed_bfloat16")
    out = layer(batch())
    assert out["embeddings"].dtype == tf.bfloat16
    assert layer.table.dtype == "float32"
    # The numeric value is not rounded to bfloat16 before it scales v (x is float32).
    ref = make_layer()
    np.testing.assert_allclose(
        tf.cast(out["embeddings"], tf.float32).numpy(),
        run(ref, batch())["embeddings"],
        rtol=1e-2,
    )


def test_table_gradient_matches_a_dense_reference():
    # The layer's sparse gradient (id rows gathered per example, numeric rows
    # gathered once and broadcast) against the FM formula on a dense tensor.
    layer = make_layer()
    k = layer.embedding_dim
    inputs = batch()
    rng = np.random.default_rng(1)
    r_e = tf.constant(rng.normal(size=(2, 4, k)), "float32")
    r_s = tf.constant(rng.normal(size=(2, 4, k)), "float32")
    r_l = tf.constant(rng.normal(size=(2, 1)), "float32")

    def objective(out):
        return (
            tf.reduce_sum(out["embeddings"] * r_e)
            + tf.reduce_sum(out["squared_embeddings"] * r_s)
            + tf.reduce_sum(out["linear"] * r_l)
        )

    with tf.GradientTape() as tape:
        loss = objective(layer(inputs))
    got = tape.gradient(loss, layer.table)
    assert isinstance(got, tf.IndexedSlices)

    dense = tf.constant(layer.table.numpy())
    g = inputs["g"]
    g_x = np.where(g == -1, 0.0, inputs["g_weights"]).astype("float32")
    g_rows = np.where(g == -1, layer.padding_row, 9 + g)
    with tf.GradientTape() as tape:
        tape.watch(dense)
        v, w = dense[:, :k], dense[:, k]
        x = inputs["x"]
        fields = [  # per field: (batch, slots) rows and x
            (inputs["a"][:, None], np.ones((2, 1), "float32")),
            (np.full((2, 1), 5), x[:, None]),
            (6 + inputs["b"][:, None], np.ones((2, 1), "float32")),
            (g_rows, g_x),
        ]
        e = tf.stack([tf.reduce_sum(tf.gather(v, r) * xs[..., None], 1) for r, xs in fields], 1)
        sq = tf.stack(
            [tf.reduce_sum(tf.square(tf.gather(v, r) * xs[..., None]), 1) for r, xs in fields], 1
        )
        lin = sum(tf.reduce_sum(tf.gather(w, r) * xs, 1, keepdims=True) for r, xs in fields)
        want = tape.gradient(
            objective({"embeddings": e, "squared_embeddings": sq, "linear": lin}), dense
        )
    np.testing.assert_allclose(
        tf.convert_to_tensor(got).numpy(), want.numpy(), rtol=1e-5, atol=1e-6
    )


def test_numeric_only_fields_and_zero_x_out_of_the_penalty():
    inputs = {"x": np.array([2.0, 0.0], "float32"), "y": np.array([1.0, -3.0], "float32")}
    fields = [numeric("x"), numeric("y")]
    layer, out = check_layer(fields, inputs, embeddings_l2=0.1, linear_l2=0.01)
    table, w = layer.get_factors(), layer.get_linear_weights()
    np.testing.assert_allclose(out["embeddings"][:, 0], [2.0 * table[0], 0.0 * table[0]])
    np.testing.assert_allclose(out["embeddings"][:, 1], [table[1], -3.0 * table[1]], rtol=1e-6)
    np.testing.assert_allclose(out["squared_embeddings"], out["embeddings"] ** 2, rtol=1e-6)
    np.testing.assert_allclose(out["linear"][:, 0], [2 * w[0] + w[1], -3 * w[1]], rtol=1e-6)
    # Example 2 has x = 0: its row of x is not "used" and is not penalized.
    layer(inputs)  # the losses of the whole batch (check_layer called it on one example last)
    want_v = 0.1 * np.mean([(table[0] ** 2).sum() + (table[1] ** 2).sum(), (table[1] ** 2).sum()])
    want_w = 0.01 * np.mean([w[0] ** 2 + w[1] ** 2, w[1] ** 2])
    got = sorted(float(keras.ops.convert_to_numpy(x)) for x in layer.losses)
    np.testing.assert_allclose(got, sorted([want_v, want_w]), rtol=1e-5)
