import keras
import numpy as np
import pytest
from layer_testing import run_layer_test

from tf_fm import PredictionHead

LOGITS = np.array([[-3.0], [-0.5], [0.0], [2.0], [40.0]], dtype="float32")


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z.astype("float64")))


@pytest.fixture
def mixed_float16():
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    yield
    keras.mixed_precision.set_dtype_policy(previous)


@pytest.mark.parametrize(
    "task,prediction,derivative",
    [
        ("binary", sigmoid, lambda z: sigmoid(z) * (1 - sigmoid(z))),
        ("regression", lambda z: z, np.ones_like),
    ],
    ids=["binary", "regression"],
)
def test_prediction_of_the_task(task, prediction, derivative):
    layer, _ = run_layer_test(
        PredictionHead,
        {"task": task},
        LOGITS,
        reference=lambda layer, z: prediction(z),
        expected_gradients=lambda layer, z: {"inputs": derivative(z)},
    )
    assert layer.get_config()["task"] == task


@pytest.mark.usefixtures("mixed_float16")
@pytest.mark.parametrize("task", ["binary", "regression"])
def test_float32_output_under_mixed_float16(task):
    logits = LOGITS.astype("float16")
    layer, out = run_layer_test(
        PredictionHead,
        {"task": task},
        logits,
        reference=lambda layer, z: sigmoid(z) if task == "binary" else z,
        rtol=1e-6,
    )
    assert layer.compute_dtype == "float32" and out.dtype == np.float32
    # Inside a mixed model: a float16 logit in, float32 out.
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(1)
    model = keras.Model(inputs, PredictionHead(task)(dense(inputs)))
    assert dense.compute_dtype == "float16" and model.output.dtype == "float32"


def test_invalid_task_names_the_argument():
    with pytest.raises(ValueError, match="`task` must be one of .*Received: task='multiclass'"):
        PredictionHead("multiclass")
