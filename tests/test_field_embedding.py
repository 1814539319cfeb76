import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_fm import CategoricalField, FieldEmbedding, MultiValuedField, NumericField

FIELDS = [
    CategoricalField("a", 5),
    NumericField("x"),
    CategoricalField("b", 3),
    MultiValuedField("g", 4, 3, weighted=True),
]


def make_layer(fields=FIELDS, **kwargs):
    kwargs.setdefault("embedding_dim", 3)
    kwargs.setdefault("embeddings_l2", 0.0)
    kwargs.setdefault("linear_l2", 0.0)
    layer = FieldEmbedding(fields, **kwargs)
    layer.build()
    rng = np.random.default_rng(0)
    layer.set_table(
        rng.normal(size=(layer.total_rows, layer.embedding_dim)), rng.normal(size=layer.total_rows)
    )
    return layer


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
    layer = make_layer()
    table = layer.get_factors()
    w = layer.get_linear_weights()
    out = run(layer, batch())
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
    fields = [MultiValuedField("g", 4, 3, weighted=True, combiner=combiner)]
    layer = make_layer(fields)
    table = layer.get_factors()
    inputs = {
        "g": np.array([[1, 3, -1]], dtype="int64"),
        "g_weights": np.array([[0.5, 2.0, 9.0]], dtype="float32"),
    }
    denom = 2.5 if combiner == "mean" else np.sqrt(0.25 + 4.0)
    out = run(layer, inputs)
    np.testing.assert_allclose(
        out["embeddings"][0, 0], (0.5 * table[1] + 2.0 * table[3]) / denom, rtol=1e-6
    )


def test_unweighted_multivalued_uses_x_one():
    fields = [MultiValuedField("g", 4, 3)]
    layer = make_layer(fields)
    table = layer.get_factors()
    out = run(layer, {"g": np.array([[2, 0, -1]])})
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
    layer = make_layer(out_of_range="oov")
    # a: rows 0-5 (OOV row 5), x: 6, b: 7-10 (OOV 10), g: 11-15 (OOV 15), padding 16.
    assert layer.offsets == [0, 6, 7, 11] and layer.padding_row == 16
    table = layer.get_factors()
    inputs = batch()
    inputs["a"] = np.array([5, -7])
    inputs["b"] = np.array([1, 99])
    inputs["g"] = np.array([[1, 8, -1], [-1, -1, -1]])
    out = run(layer, inputs)
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
        ({"fields": [CategoricalField("a", 2), NumericField("a")]}, "unique"),
        ({"fields": [MultiValuedField("g", 3, 0)]}, "max_length"),
        ({"fields": [MultiValuedField("g", 3, 2, combiner="max")]}, "combiner"),
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


def test_config_round_trip():
    layer = FieldEmbedding(FIELDS, embedding_dim=7, out_of_range="oov", embeddings_l2=0.5)
    config = layer.get_config()
    clone = FieldEmbedding.from_config(config)
    assert clone.get_config() == config
    assert clone.offsets == layer.offsets
    import json

    json.dumps(config)  # plain JSON types only


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
    fields = [NumericField("x"), NumericField("y")]
    layer = make_layer(fields, embeddings_l2=0.1, linear_l2=0.01)
    table, w = layer.get_factors(), layer.get_linear_weights()
    inputs = {"x": np.array([2.0, 0.0], "float32"), "y": np.array([1.0, -3.0], "float32")}
    out = run(layer, inputs)
    np.testing.assert_allclose(out["embeddings"][:, 0], [2.0 * table[0], 0.0 * table[0]])
    np.testing.assert_allclose(out["embeddings"][:, 1], [table[1], -3.0 * table[1]], rtol=1e-6)
    np.testing.assert_allclose(out["squared_embeddings"], out["embeddings"] ** 2, rtol=1e-6)
    np.testing.assert_allclose(out["linear"][:, 0], [2 * w[0] + w[1], -3 * w[1]], rtol=1e-6)
    # Example 2 has x = 0: its row of x is not "used" and is not penalized.
    want_v = 0.1 * np.mean([(table[0] ** 2).sum() + (table[1] ** 2).sum(), (table[1] ** 2).sum()])
    want_w = 0.01 * np.mean([w[0] ** 2 + w[1] ** 2, w[1] ** 2])
    got = sorted(float(keras.ops.convert_to_numpy(x)) for x in layer.losses)
    np.testing.assert_allclose(got, sorted([want_v, want_w]), rtol=1e-5)
