import keras
import numpy as np
import pytest
from layer_testing import run_layer_test

from tf_fm import GlobalBias


def with_bias(layer, inputs):
    """sum of the inputs + w0, the layer's own w0."""
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return sum(inputs) + keras.ops.convert_to_numpy(layer.bias)


def unit_gradients(layer, one):
    # dy/dw0 = 1 and dy/d(each input) = 1, per example.
    return {"bias": 1.0, "inputs": keras.tree.map_structure(np.ones_like, one)}


@pytest.mark.parametrize("count", [1, 3])
def test_sums_the_inputs_and_adds_w0(count):
    rng = np.random.default_rng(count)
    inputs = [rng.normal(size=(4, 1)).astype("float32") for _ in range(count)]
    run_layer_test(
        GlobalBias,
        {"bias_initializer": keras.initializers.Constant(0.25), "name": "w0"},
        inputs[0] if count == 1 else inputs,
        reference=with_bias,
        expected_gradients=unit_gradients,
    )


def test_float32_logit_under_mixed_precision():
    layer = GlobalBias(bias_initializer="ones", dtype="mixed_float16")
    logit = layer([np.full((2, 1), 60000.0, "float16"), np.full((2, 1), 6000.0, "float16")])
    assert logit.dtype == "float32"  # 66001 overflows float16
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logit), [[66001.0], [66001.0]])
