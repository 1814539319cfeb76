"""One test helper for every layer of tf_fm, in the spirit of keras core's
`run_layer_test` and keras-rs's `run_model_saving_test`."""

import json
import pathlib
import tempfile

import keras
import numpy as np
import tensorflow as tf


def _numpy(structure):
    return keras.tree.map_structure(keras.ops.convert_to_numpy, structure)


def _shapes(structure):
    """Shapes as tuples, from arrays or shapes: a dict of them, or one tuple."""
    if isinstance(structure, dict):
        return {key: _shapes(value) for key, value in structure.items()}
    return tuple(getattr(structure, "shape", structure))


def _example(inputs, i):
    """Row `i` of every input, as a batch of one."""
    return keras.tree.map_structure(lambda x: x[i : i + 1], inputs)


def _batch_size(inputs):
    return len(keras.tree.flatten(inputs)[0])


def _assert_close(got, want, atol, rtol, what):
    got, want = keras.tree.flatten(got), keras.tree.flatten(want)
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=atol, rtol=rtol, err_msg=what)


def _functional_model(layer, inputs):
    def model_input(x, name=None):
        return keras.Input(shape=x.shape[1:], dtype=str(x.dtype), name=name)

    if isinstance(inputs, dict):
        model_inputs = {name: model_input(x, name) for name, x in inputs.items()}
    else:
        model_inputs = keras.tree.map_structure(model_input, inputs)
    return keras.Model(model_inputs, layer(model_inputs))


def _gradients(layer, inputs):
    """Gradients of sum(outputs) with respect to the float inputs and each weight."""
    watched = keras.tree.map_structure(tf.convert_to_tensor, inputs)
    with tf.GradientTape(persistent=True) as tape:
        for x in keras.tree.flatten(watched):
            if x.dtype.is_floating:
                tape.watch(x)
        total = tf.add_n(
            [tf.reduce_sum(tf.cast(y, "float64")) for y in keras.tree.flatten(layer(watched))]
        )
    grads = {
        "inputs": keras.tree.map_structure(
            lambda x: tape.gradient(total, x) if x.dtype.is_floating else None, watched
        )
    }
    for weight in layer.trainable_weights:
        grads[weight.name] = tape.gradient(total, weight.value)
    return keras.tree.map_structure(
        lambda g: None if g is None else tf.convert_to_tensor(g).numpy(), grads
    )


def run_layer_test(
    layer_cls,
    init_kwargs,
    inputs,
    *,
    expected=None,
    reference=None,
    expected_gradients=None,
    atol=1e-6,
    rtol=1e-6,
):
    """Check a layer class on one batch; returns the layer and its outputs.

    1. Config: `from_config(get_config())` gives the same config, in plain JSON types.
    2. Values: the outputs equal `expected`, or `reference(layer, inputs)` (a
       naive numpy reference reading the layer's weights), and each example
       called alone gives its row of the batch (no sum over the batch).
    3. Shapes: the outputs have the shapes of `compute_output_shape`, where the
       layer defines it.
    4. Saving: the layer inside a functional model, saved to `.keras` and
       reloaded by `keras.saving.load_model` without `custom_objects`,
       predicts the same values as before saving.
    5. Gradients, if `expected_gradients` is given: a callable
       `(layer, one_example) -> {target: gradient}`, the closed form of the
       gradient of `sum(outputs)` on one example, where a target is `"inputs"`
       (same structure as the inputs) or a weight's name; checked per example.

    Args:
        layer_cls: the layer class.
        init_kwargs: dict, the constructor arguments.
        inputs: numpy array, list of arrays or dict of arrays; a batch.
        expected: the expected outputs (same structure as the layer's).
        reference: callable `(layer, inputs) -> expected outputs`.
        expected_gradients: callable, see 5.
        atol, rtol: tolerances of the value and gradient comparisons.
    """
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    json.dumps(config)  # plain JSON types only
    assert layer_cls.from_config(config).get_config() == config, "config round trip"

    outputs = _numpy(layer(inputs))
    if reference is not None:
        expected = reference(layer, inputs)
    if expected is not None:
        _assert_close(outputs, expected, atol, rtol, "outputs vs expected")
    for i in range(_batch_size(inputs)):
        alone = _numpy(layer(_example(inputs, i)))
        _assert_close(alone, _example(outputs, i), atol, rtol, f"example {i} alone vs in batch")

    if type(layer).compute_output_shape is not keras.layers.Layer.compute_output_shape:
        input_shape = keras.tree.map_structure(lambda x: x.shape, inputs)
        assert _shapes(layer.compute_output_shape(input_shape)) == _shapes(outputs), "shapes"

    model = _functional_model(layer, inputs)
    predicted = _numpy(model.predict_on_batch(inputs))
    _assert_close(predicted, outputs, atol, rtol, "model.predict_on_batch vs layer call")
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "model.keras"
        model.save(path)
        restored = keras.saving.load_model(path)  # no custom_objects: registered layers
    restored_layer = restored.get_layer(layer.name)
    assert type(restored_layer) is layer_cls and restored_layer.get_config() == config
    keras.tree.map_structure(
        np.testing.assert_array_equal, _numpy(restored.predict_on_batch(inputs)), predicted
    )

    if expected_gradients is not None:
        for i in range(_batch_size(inputs)):
            one = _example(inputs, i)
            got = _gradients(layer, one)
            for target, want in expected_gradients(layer, one).items():
                _assert_close(got[target], want, atol, rtol, f"gradient of {target}, example {i}")
    return layer, outputs
