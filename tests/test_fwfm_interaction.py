import keras
import numpy as np
import pytest
from layer_testing import run_layer_test

from tf_fm import FMInteraction, FwFMInteraction

RANDOM_WEIGHTS = {"pair_weights_initializer": keras.initializers.RandomUniform(-1.0, 2.0, seed=3)}


def pair_weights(layer):
    return keras.ops.convert_to_numpy(layer.pair_weights).astype(np.float64)


def naive_fwfm(r, e, s=None):
    """sum_{f<g} r_fg <e_f, e_g> (+ r_ff times the pairs inside field f) by the double loop."""
    batch, fields, _ = e.shape
    e = e.astype(np.float64)
    out = np.zeros((batch, 1))
    for b in range(batch):
        for f in range(fields):
            for g in range(f + 1, fields):
                out[b, 0] += r[f, g] * (e[b, f] @ e[b, g])
            if s is not None:
                out[b, 0] += r[f, f] * 0.5 * (e[b, f] @ e[b, f] - s[b, f].sum())
    return out


def fwfm_gradients(layer, inputs):
    """Closed form: dy/de_f = sum_{g != f} r_{min max} e_g (+ r_ff e_f), dy/ds_f = -r_ff / 2,
    dy/dr_fg = <e_f, e_g> (f < g), dy/dr_ff = (|e_f|^2 - sum s_f) / 2 with s."""
    r = pair_weights(layer)
    e, s = inputs if isinstance(inputs, list) else (inputs, None)
    upper = np.triu(r, k=1)
    grad_e = np.einsum("fg,bgk->bfk", upper + upper.T, e)
    grad_r = np.triu(np.einsum("bfk,bgk->fg", e, e), k=1)
    if s is None:
        return {"inputs": grad_e, "pair_weights": grad_r}
    diagonal = np.diagonal(r)
    grad_e = grad_e + diagonal[None, :, None] * e
    grad_s = np.broadcast_to(-0.5 * diagonal[None, :, None], s.shape)
    grad_r[np.diag_indices_from(grad_r)] = 0.5 * ((e**2).sum(axis=2) - s.sum(axis=2)).sum(0)
    return {"inputs": [grad_e, grad_s], "pair_weights": grad_r}


@pytest.mark.parametrize("fields,k", [(2, 1), (5, 4), (12, 8)])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_equals_double_loop(fields, k, dtype, tol):
    rng = np.random.default_rng(fields * 10 + k)
    e = rng.normal(size=(4, fields, k)).astype(dtype)
    layer, got = run_layer_test(
        FwFMInteraction,
        {**RANDOM_WEIGHTS, "dtype": dtype},
        e,
        reference=lambda layer, e: naive_fwfm(pair_weights(layer), e),
        expected_gradients=fwfm_gradients,
        rtol=tol,
        atol=tol * fields,
    )
    assert got.dtype == np.dtype(dtype)
    assert layer.pair_weights.shape == (fields, fields)


def test_pairs_inside_a_field_take_the_field_weight():
    # Field 0 holds two ids (a, b), field 1 one (c): r_00 <a, b> + r_01 <a + b, c>.
    rng = np.random.default_rng(1)
    a, b, c = rng.normal(size=(3, 4))
    e = np.stack([a + b, c])[None]
    s = np.stack([a**2 + b**2, c**2])[None]
    layer, _ = run_layer_test(
        FwFMInteraction,
        {**RANDOM_WEIGHTS, "dtype": "float64"},
        [e, s],
        reference=lambda layer, es: naive_fwfm(pair_weights(layer), *es),
        expected_gradients=fwfm_gradients,
        rtol=1e-12,
        atol=1e-12,
    )
    r = pair_weights(layer)
    got = keras.ops.convert_to_numpy(layer([e, s]))
    np.testing.assert_allclose(got, [[r[0, 0] * (a @ b) + r[0, 1] * ((a + b) @ c)]], rtol=1e-12)


def test_starts_as_the_fm():
    # r = 1: FMInteraction on single-id fields, and on [e, s] also with
    # multi-valued fields (all pairs of ids).
    rng = np.random.default_rng(2)
    e = rng.normal(size=(5, 7, 3)).astype("float32")
    s = (e**2 * rng.uniform(0.2, 1.0, size=e.shape)).astype("float32")
    for inputs in (e, [e, s]):
        fwfm = keras.ops.convert_to_numpy(FwFMInteraction()(inputs))
        fm = keras.ops.convert_to_numpy(FMInteraction()(inputs))
        np.testing.assert_allclose(fwfm, fm, rtol=1e-5, atol=1e-5)


def test_l2_penalty_on_the_weights_in_use():
    e = np.random.default_rng(3).normal(size=(2, 4, 3)).astype("float32")
    layer = FwFMInteraction(pair_weights_l2=0.1, **RANDOM_WEIGHTS)
    layer(e)
    r = pair_weights(layer)
    np.testing.assert_allclose(float(layer.losses[0]), 0.1 * (np.triu(r, 1) ** 2).sum(), rtol=1e-5)
    layer = FwFMInteraction(pair_weights_l2=0.1, **RANDOM_WEIGHTS)
    layer([e, e**2])
    np.testing.assert_allclose(
        float(layer.losses[0]), 0.1 * (np.triu(pair_weights(layer)) ** 2).sum(), rtol=1e-5
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_accumulates_in_float32(policy):
    rng = np.random.default_rng(4)
    e = (40.0 + rng.normal(size=(3, 39, 16))).astype("float32")
    layer = FwFMInteraction(dtype=policy)
    x = keras.ops.cast(e, layer.compute_dtype)
    got = keras.ops.convert_to_numpy(layer(x))
    assert got.dtype == np.float32 and layer.pair_weights.dtype == "float32"
    want = naive_fwfm(np.ones((39, 39)), keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")))
    assert want.max() > 65504
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_invalid_arguments_and_shapes():
    with pytest.raises(ValueError, match="pair_weights_l2"):
        FwFMInteraction(pair_weights_l2=-1.0)
    with pytest.raises(ValueError, match="fields, k"):
        FwFMInteraction().compute_output_shape((2, 3))
    with pytest.raises(ValueError, match="list of 3"):
        FwFMInteraction()([np.ones((1, 2, 2))] * 3)
    assert FwFMInteraction().compute_output_shape([(None, 4, 2), (None, 4, 2)]) == (None, 1)
