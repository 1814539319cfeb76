import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_testing import run_layer_test

from tf_fm import FMInteraction


def naive_pairwise(e):
    """sum_{i<j} <e_i, e_j> per example, by the explicit double loop."""
    batch, fields, _ = e.shape
    out = np.zeros((batch, 1), dtype=np.float64)
    for b in range(batch):
        for i in range(fields):
            for j in range(i + 1, fields):
                out[b, 0] += np.dot(e[b, i].astype(np.float64), e[b, j].astype(np.float64))
    return out


def naive_bi_interaction(e):
    """sum_{i<j} e_i * e_j (elementwise), the NFM k-vector, by the double loop."""
    batch, fields, k = e.shape
    out = np.zeros((batch, k), dtype=np.float64)
    for b in range(batch):
        for i in range(fields):
            for j in range(i + 1, fields):
                out[b] += e[b, i].astype(np.float64) * e[b, j].astype(np.float64)
    return out


def field_level_gradient(layer, e):
    # e_i = x_i v_i, so dy/de_if = sum_j e_jf - e_if (dy/dv_if divided by x_i);
    # the same for each factor of the bi-interaction vector.
    return {"inputs": e.sum(axis=1, keepdims=True) - e}


@pytest.mark.parametrize("fields,k", [(2, 1), (3, 4), (10, 8), (39, 16)])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_equals_double_loop(fields, k, dtype, tol):
    rng = np.random.default_rng(fields * 100 + k)
    e = rng.normal(size=(5, fields, k)).astype(dtype)
    _, got = run_layer_test(
        FMInteraction,
        {"dtype": dtype},
        e,
        reference=lambda layer, e: naive_pairwise(e),
        expected_gradients=field_level_gradient,
        rtol=tol,
        atol=tol * fields,
    )
    assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_bi_interaction_vector_equals_double_loop(dtype, tol):
    rng = np.random.default_rng(1)
    e = rng.normal(size=(4, 6, 5)).astype(dtype)
    _, got = run_layer_test(
        FMInteraction,
        {"reduce_sum": False, "dtype": dtype, "name": "bi"},
        e,
        reference=lambda layer, e: naive_bi_interaction(e),
        expected_gradients=field_level_gradient,
        rtol=tol,
        atol=tol * 10,
    )
    assert got.shape == (4, 5)


def test_squared_input_gives_all_pairs_of_ids():
    # Two fields; field 0 holds two ids (x v_a, x v_b), field 1 one id (v_c).
    # All-pairs FM: <a,b> + <a,c> + <b,c>; field-level FM: <a+b, c>.
    rng = np.random.default_rng(2)
    a, b, c = rng.normal(size=(3, 4))
    e = np.stack([a + b, c])[None].astype("float64")
    s = np.stack([a**2 + b**2, c**2])[None].astype("float64")
    run_layer_test(
        FMInteraction,
        {"dtype": "float64"},
        [e, s],
        expected=[[a @ b + a @ c + b @ c]],
        # dy/de_if = sum_j e_jf, dy/ds_if = -1/2
        expected_gradients=lambda layer, es: {
            "inputs": [np.broadcast_to(e.sum(axis=1), e.shape), np.full(s.shape, -0.5)]
        },
        rtol=1e-12,
    )
    field_level = keras.ops.convert_to_numpy(FMInteraction(dtype="float64")(e))
    np.testing.assert_allclose(field_level, [[(a + b) @ c]], rtol=1e-12)


def test_gradient_of_the_factors_equals_closed_form():
    # libFM rows of 6 ids in 3 fields of 2 (multi-valued fields), real x:
    # dy/dv_if = x_i sum_j v_jf x_j - v_if x_i^2, per example.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 6))  # (batch, ids)
    v = tf.Variable(rng.normal(size=(6, 3)))  # (ids, k)
    with tf.GradientTape() as tape:
        terms = tf.reshape(x[..., None] * v, (4, 3, 2, 3))  # (batch, fields, ids, k)
        e, s = tf.reduce_sum(terms, 2), tf.reduce_sum(terms**2, 2)
        y = FMInteraction(dtype="float64")([e, s])[:, 0]
    got = tape.jacobian(y, v)  # (batch, ids, k)
    want = x[:, :, None] * (x @ v.numpy())[:, None, :] - v.numpy()[None] * (x**2)[:, :, None]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_batch_independence():
    # Bit-identical row 0 whatever the other rows hold (run_layer_test also
    # checks each example alone against the batch).
    rng = np.random.default_rng(3)
    e = rng.normal(size=(8, 5, 3)).astype("float32")
    layer = FMInteraction()
    before = keras.ops.convert_to_numpy(layer(e))
    changed = e.copy()
    changed[1:] = rng.normal(size=changed[1:].shape) * 10
    after = keras.ops.convert_to_numpy(layer(changed))
    np.testing.assert_array_equal(before[0], after[0])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_accumulates_in_float32(policy):
    # 39 fields of magnitude ~40, k = 16: the FM term (~6e5) overflows float16
    # (max 65504) and keeps only 3 digits in bfloat16.
    rng = np.random.default_rng(4)
    e = (40.0 + rng.normal(size=(3, 39, 16))).astype("float32")
    layer = FMInteraction(dtype=policy)
    x = keras.ops.cast(e, layer.compute_dtype)  # what the layer gets in a mixed model
    got = keras.ops.convert_to_numpy(layer(x))
    assert got.dtype == np.float32
    want = naive_pairwise(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")))
    assert want.max() > 65504
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_wrong_rank_and_list_length():
    with pytest.raises(ValueError, match="fields, k"):
        FMInteraction().compute_output_shape((2, 3))
    with pytest.raises(ValueError, match="list of 3"):
        FMInteraction()([np.ones((1, 2, 2))] * 3)
    with pytest.raises(ValueError, match="reduce_sum"):
        FMInteraction(reduce_sum="yes")


@pytest.mark.parametrize(
    "wrong,match",
    [
        ({"reference": lambda layer, e: naive_pairwise(e) + 1e-3}, "outputs vs expected"),
        ({"expected_gradients": lambda layer, e: {"inputs": e}}, "gradient of inputs"),
    ],
    ids=["reference", "gradients"],
)
def test_run_layer_test_fails_when_the_layer_is_wrong(wrong, match):
    e = np.random.default_rng(6).normal(size=(2, 3, 4)).astype("float32")
    with pytest.raises(AssertionError, match=match):
        run_layer_test(FMInteraction, {}, e, **wrong)
