import itertools

import keras
import numpy as np
import pytest
from layer_testing import run_layer_test
from test_models import FIELDS, dense_x, random_inputs

from tf_fm import AnovaInteraction, FieldEmbedding, FMInteraction


def elementary(e, m):
    """sum over m-subsets of the rows of e (n, k) of their elementwise product, (k,)."""
    total = np.zeros(e.shape[-1], dtype=np.float64)
    for subset in itertools.combinations(range(len(e)), m):
        total += np.prod(e[list(subset)].astype(np.float64), axis=0)
    return total


def naive_anova(e, orders):
    """A^m per example and order, by enumerating all m-subsets of fields: (batch, orders)."""
    return np.array([[elementary(row, m).sum() for m in orders] for row in e])


def anova_gradient(e, orders):
    """d sum_m A^m / d e_fs: the elementwise kernel of order m - 1 over the other fields."""
    grad = np.zeros(e.shape, dtype=np.float64)
    for b, f in itertools.product(range(e.shape[0]), range(e.shape[1])):
        others = np.delete(e[b], f, axis=0)
        grad[b, f] = sum(elementary(others, m - 1) for m in orders)
    return grad


def field_of_rows(layer):
    """The field index of each row of a FieldEmbedding's table (-1: padding row)."""
    field_of = np.full(layer.total_rows, -1)
    ends = [*layer.offsets[1:], layer.padding_row or layer.total_rows]
    for f, (start, end) in enumerate(zip(layer.offsets, ends, strict=True)):
        field_of[start:end] = f
    return field_of


def naive_anova_features(V, x, field_of, m, one_per_field=True):
    """sum over m-subsets of the non-zero features of prod x_i <v_i1, ..., v_im>.

    With `one_per_field`, only the subsets taking at most one feature from
    each field (what the field-level kernel computes).
    """
    total = 0.0
    for subset in itertools.combinations(np.flatnonzero(x), m):
        subset = list(subset)
        if one_per_field and len(set(field_of[subset])) < m:
            continue
        total += np.prod(x[subset]) * np.prod(V[subset], axis=0).sum()
    return total


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("fields,k", [(4, 3), (7, 5)])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_equals_brute_force_enumeration(order, fields, k, dtype, tol):
    rng = np.random.default_rng(order * 100 + fields)
    e = rng.normal(size=(4, fields, k)).astype(dtype)
    _, got = run_layer_test(
        AnovaInteraction,
        {"order": order, "dtype": dtype},
        e,
        reference=lambda layer, e: naive_anova(e, [order]),
        expected_gradients=lambda layer, e: {"inputs": anova_gradient(e, [order])},
        rtol=tol,
        atol=tol * 10,
    )
    assert got.shape == (4, 1) and got.dtype == np.dtype(dtype)


def test_order_2_equals_fm_interaction():
    e = np.random.default_rng(1).normal(size=(6, 9, 4)).astype("float32")
    anova = keras.ops.convert_to_numpy(AnovaInteraction(order=2)(e))
    fm = keras.ops.convert_to_numpy(FMInteraction()(e))
    np.testing.assert_allclose(anova, fm, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduce_sum", [False, True])
def test_all_orders_in_one_pass(reduce_sum):
    e = np.random.default_rng(2).normal(size=(3, 6, 4))
    orders = [2, 3, 4]
    want = naive_anova(e, orders)
    _, got = run_layer_test(
        AnovaInteraction,
        {"order": 4, "min_order": 2, "reduce_sum": reduce_sum, "dtype": "float64"},
        e,
        expected=want.sum(axis=1, keepdims=True) if reduce_sum else want,
        expected_gradients=lambda layer, e: {"inputs": anova_gradient(e, orders)},
        rtol=1e-12,
        atol=1e-11,
    )
    assert got.shape == ((3, 1) if reduce_sum else (3, 3))


def test_fewer_fields_than_the_order_give_zero():
    e = np.random.default_rng(3).normal(size=(2, 2, 3)).astype("float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(AnovaInteraction(order=3)(e)), 0.0)


def test_field_level_kernel_on_field_embedding_outputs():
    """Kernel over features for one-id fields; for a multi-valued field, one id per field."""
    embedding = FieldEmbedding(
        FIELDS,
        embedding_dim=3,
        embeddings_l2=0.0,
        linear_l2=0.0,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0, seed=0),
    )
    inputs = random_inputs(8, seed=5)
    e = embedding(inputs)["embeddings"]
    V = embedding.get_factors().astype(np.float64)
    field_of = field_of_rows(embedding)
    single = [i for i, f in enumerate(embedding.fields) if f["kind"] != "multivalued"]
    for order in (3, 4):
        got = keras.ops.convert_to_numpy(AnovaInteraction(order=order)(e))[:, 0]
        # One-id fields only (categorical, numeric): the kernel over features.
        alone = keras.ops.take(e, single, axis=1)
        got_single = keras.ops.convert_to_numpy(AnovaInteraction(order=order)(alone))[:, 0]
        for i in range(8):
            x = dense_x(embedding, inputs, i)
            want = naive_anova_features(V, x, field_of, order)
            np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-5)
            x_single = np.where(np.isin(field_of, single), x, 0.0)
            every = naive_anova_features(V, x_single, field_of, order, one_per_field=False)
            np.testing.assert_allclose(got_single[i], every, rtol=1e-4, atol=1e-5)
    # With two ids in the multi-valued field, the kernel over all feature
    # subsets differs: the field-level kernel leaves those with both ids out.
    i = int(np.argmax((inputs["g"] >= 0).sum(axis=1)))
    x = dense_x(embedding, inputs, i)
    every = naive_anova_features(V, x, field_of, 3, one_per_field=False)
    assert abs(every - got[i]) > 1e-3


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_accumulates_in_float32(policy):
    # 39 fields of magnitude ~4, k = 16: A^3 (~1e7) overflows float16.
    rng = np.random.default_rng(4)
    e = (4.0 + rng.normal(size=(2, 39, 16))).astype("float32")
    layer = AnovaInteraction(order=3, dtype=policy)
    x = keras.ops.cast(e, layer.compute_dtype)  # what the layer gets in a mixed model
    got = keras.ops.convert_to_numpy(layer(x))
    assert got.dtype == np.float32
    want = naive_anova(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")), [3])
    assert want.max() > 65504
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_invalid_arguments_and_shapes():
    for kwargs, match in [
        ({"order": 1}, "order"),
        ({"order": True}, "order"),
        ({"order": 3, "min_order": 4}, "min_order"),
        ({"order": 3, "min_order": 1}, "min_order"),
        ({"reduce_sum": "yes"}, "reduce_sum"),
    ]:
        with pytest.raises(ValueError, match=match):
            AnovaInteraction(**kwargs)
    with pytest.raises(ValueError, match="fields, k"):
        AnovaInteraction().compute_output_shape((2, 3))
    shape = AnovaInteraction(order=4, min_order=3, reduce_sum=False).compute_output_shape(
        (None, 5, 2)
    )
    assert shape == (None, 2)
