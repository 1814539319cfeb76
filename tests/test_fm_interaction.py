import keras
import numpy as np
import pytest

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


@pytest.mark.parametrize("fields,k", [(2, 1), (3, 4), (10, 8), (39, 16)])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_equals_double_loop(fields, k, dtype, tol):
    rng = np.random.default_rng(fields * 100 + k)
    e = rng.normal(size=(5, fields, k)).astype(dtype)
    got = keras.ops.convert_to_numpy(FMInteraction(dtype=dtype)(e))
    assert got.dtype == np.dtype(dtype)
    want = naive_pairwise(e)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * fields)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_bi_interaction_vector_equals_double_loop(dtype, tol):
    rng = np.random.default_rng(1)
    e = rng.normal(size=(4, 6, 5)).astype(dtype)
    layer = FMInteraction(reduce_sum=False, dtype=dtype)
    got = keras.ops.convert_to_numpy(layer(e))
    assert got.shape == (4, 5) == layer.compute_output_shape(e.shape)
    np.testing.assert_allclose(got, naive_bi_interaction(e), rtol=tol, atol=tol * 10)


def test_squared_input_gives_all_pairs_of_ids():
    # Two fields; field 0 holds two ids (x v_a, x v_b), field 1 one id (v_c).
    # All-pairs FM: <a,b> + <a,c> + <b,c>; field-level FM: <a+b, c>.
    rng = np.random.default_rng(2)
    a, b, c = rng.normal(size=(3, 4))
    e = np.stack([a + b, c])[None].astype("float64")
    s = np.stack([a**2 + b**2, c**2])[None].astype("float64")
    all_pairs = keras.ops.convert_to_numpy(FMInteraction(dtype="float64")([e, s]))
    field_level = keras.ops.convert_to_numpy(FMInteraction(dtype="float64")(e))
    np.testing.assert_allclose(all_pairs, [[a @ b + a @ c + b @ c]], rtol=1e-12)
    np.testing.assert_allclose(field_level, [[(a + b) @ c]], rtol=1e-12)


def test_batch_independence():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(8, 5, 3)).astype("float32")
    layer = FMInteraction()
    before = keras.ops.convert_to_numpy(layer(e))
    changed = e.copy()
    changed[1:] = rng.normal(size=changed[1:].shape) * 10
    after = keras.ops.convert_to_numpy(layer(changed))
    np.testing.assert_array_equal(before[0], after[0])
    # And a batch of one gives the same row as the batch of eight.
    alone = keras.ops.convert_to_numpy(layer(e[:1]))
    np.testing.assert_allclose(alone[0], before[0], rtol=1e-6)


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


def test_config_round_trip():
    layer = FMInteraction(reduce_sum=False, name="bi")
    clone = FMInteraction.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, FMInteraction) and restored.reduce_sum is False
