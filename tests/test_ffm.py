"""FFM: `FFMInteraction` against the double loop, the `FFM` builder, its table and export."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from layer_testing import run_layer_test
from test_anova_interaction import field_of_rows
from test_models import FIELDS, dense_x, random_inputs, randomize

import tf_fm
from tf_fm import FFMInteraction, LazyAdam, training
from tf_fm.models import describe_model


def block(e, f, g, k):
    """e_{f,g}: block g (k values) of field f's vector, `(batch, k)`."""
    return e[:, f, g * k : (g + 1) * k]


def naive_ffm_fields(e, s=None):
    """sum_{f<g} <e_{f,g}, e_{g,f}> (+ the pairs inside each field) by the double loop."""
    batch, fields, width = e.shape
    k = width // fields
    e = e.astype(np.float64)
    out = np.zeros((batch, 1))
    for b in range(batch):
        for f in range(fields):
            for g in range(f + 1, fields):
                out[b, 0] += block(e, f, g, k)[b] @ block(e, g, f, k)[b]
            if s is not None:
                own = block(e, f, f, k)[b]
                out[b, 0] += 0.5 * (own @ own - block(s, f, f, k)[b].sum())
    return out


def ffm_gradients(layer, inputs):
    """Closed form: dy/de_{f,g} = e_{g,f} (f != g).

    With s also dy/de_{f,f} = e_{f,f} and dy/ds_{f,f} = -1/2.
    """
    e, s = inputs if isinstance(inputs, list) else (inputs, None)
    fields, k = e.shape[1], e.shape[2] // e.shape[1]
    grad_e = np.zeros_like(e, dtype=np.float64)
    grad_s = np.zeros_like(e, dtype=np.float64)
    for f in range(fields):
        for g in range(fields):
            if f != g:
                grad_e[:, f, g * k : (g + 1) * k] = block(e, g, f, k)
            elif s is not None:
                grad_e[:, f, f * k : (f + 1) * k] = block(e, f, f, k)
                grad_s[:, f, f * k : (f + 1) * k] = -0.5
    return {"inputs": grad_e if s is None else [grad_e, grad_s]}


# --- The layer ---


@pytest.mark.parametrize("fields,k", [(2, 1), (5, 4), (9, 3)])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
def test_layer_equals_double_loop(fields, k, dtype, tol):
    rng = np.random.default_rng(fields * 10 + k)
    e = rng.normal(size=(4, fields, fields * k)).astype(dtype)
    _, got = run_layer_test(
        FFMInteraction,
        {"dtype": dtype},
        e,
        reference=lambda layer, e: naive_ffm_fields(e),
        expected_gradients=ffm_gradients,
        rtol=tol,
        atol=tol * fields,
    )
    assert got.dtype == np.dtype(dtype)


def test_layer_adds_the_pairs_inside_a_field():
    # Field 0 holds two features (a, b), field 1 one (c); vectors per field:
    # a0 a1, b0 b1, c0 c1. FFM: <a0, b0> + <a1, c0> + <b1, c0>.
    rng = np.random.default_rng(1)
    a0, a1, b0, b1, c0, c1 = rng.normal(size=(6, 3))
    e = np.stack([np.concatenate([a0 + b0, a1 + b1]), np.concatenate([c0, c1])])[None]
    s = np.stack([np.concatenate([a0**2 + b0**2, a1**2 + b1**2]), np.concatenate([c0, c1]) ** 2])
    inputs = [e, s[None]]
    layer, got = run_layer_test(
        FFMInteraction,
        {"dtype": "float64"},
        inputs,
        reference=lambda layer, es: naive_ffm_fields(*es),
        expected_gradients=ffm_gradients,
        rtol=1e-12,
        atol=1e-12,
    )
    np.testing.assert_allclose(got, [[a0 @ b0 + a1 @ c0 + b1 @ c0]], rtol=1e-12)
    # Without s the field is one pooled feature: the pair (a, b) is left out.
    alone = keras.ops.convert_to_numpy(layer(e))
    np.testing.assert_allclose(alone, [[(a1 + b1) @ c0]], rtol=1e-12)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_accumulates_in_float32(policy):
    rng = np.random.default_rng(4)
    e = (30.0 + rng.normal(size=(3, 12, 12 * 4))).astype("float32")
    layer = FFMInteraction(dtype=policy)
    x = keras.ops.cast(e, layer.compute_dtype)
    got = keras.ops.convert_to_numpy(layer(x))
    assert got.dtype == np.float32
    want = naive_ffm_fields(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")))
    assert want.max() > 65504
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_invalid_shapes_name_what_is_wrong():
    with pytest.raises(ValueError, match="not a multiple of fields = 3"):
        FFMInteraction()(np.ones((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="fields \\* k"):
        FFMInteraction().compute_output_shape((2, 3))
    with pytest.raises(ValueError, match="list of 3"):
        FFMInteraction()([np.ones((1, 2, 2), "float32")] * 3)
    assert FFMInteraction().compute_output_shape([(None, 4, 8), (None, 4, 8)]) == (None, 1)


# --- The model, over features ---


def ffm_params(model, k):
    """The table layer, w0, w `(rows,)` and V `(rows, F, k)`: row i's vector per field."""
    layer = model.get_layer("field_embedding")
    factors = layer.get_factors().astype(np.float64)
    w = layer.get_linear_weights().astype(np.float64)
    w0 = float(model.get_layer("logit").bias.numpy())
    return layer, w0, w, factors.reshape(len(factors), len(layer.fields), k)


def naive_ffm(w0, w, V, field_of, x):
    """w0 + sum_i w_i x_i + sum_{i<j} <v_{i,F(j)}, v_{j,F(i)}> x_i x_j over the non-zero x."""
    y = w0 + float(w @ x)
    nz = np.flatnonzero(x)
    for a in range(len(nz)):
        for b in range(a + 1, len(nz)):
            i, j = nz[a], nz[b]
            y += float(V[i, field_of[j]] @ V[j, field_of[i]]) * x[i] * x[j]
    return y


def test_ffm_equals_the_double_loop_over_features_per_example():
    # FIELDS has categorical, numeric and a weighted multi-valued field.
    model = tf_fm.FFM(FIELDS, embedding_dim=3, task="regression")
    randomize(model)
    inputs = random_inputs(16)
    got = model.predict(inputs, verbose=0)[:, 0]
    layer, w0, w, V = ffm_params(model, 3)
    assert layer.embedding_dim == len(FIELDS) * 3
    field_of = field_of_rows(layer)
    for i in range(16):
        want = naive_ffm(w0, w, V, field_of, dense_x(layer, inputs, i))
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)


def test_table_gradients_are_the_closed_form():
    # dy/dv_{i,g} = x_i sum_{j != i, F(j) = g} v_{j,F(i)} x_j, dy/dw_i = x_i, dy/dw0 = 1.
    model = tf_fm.FFM(FIELDS, embedding_dim=2, task="regression", embeddings_l2=0, linear_l2=0)
    randomize(model)
    inputs = random_inputs(6, seed=3)
    layer, _, _, V = ffm_params(model, 2)
    field_of = field_of_rows(layer)
    logit = keras.Model(model.input, describe_model(model).logit)
    for i in range(6):
        one = {name: value[i : i + 1] for name, value in inputs.items()}
        with tf.GradientTape() as tape:
            y = logit(one)
        got = tf.convert_to_tensor(tape.gradient(y, layer.table.value)).numpy()
        x = dense_x(layer, inputs, i)
        want_v = np.zeros_like(V)
        for a in np.flatnonzero(x):
            for b in np.flatnonzero(x):
                if a != b:
                    want_v[a, field_of[b]] += x[a] * V[b, field_of[a]] * x[b]
        np.testing.assert_allclose(got[:, :-1], want_v.reshape(len(V), -1), atol=1e-5)
        np.testing.assert_allclose(got[:, -1], x, atol=1e-6)


def test_equal_vectors_for_every_field_give_the_fm():
    fm = tf_fm.FM(FIELDS, embedding_dim=3, task="regression")
    randomize(fm)
    ffm = tf_fm.FFM(FIELDS, embedding_dim=3, task="regression")
    fm_table = fm.get_layer("field_embedding")
    v, w = fm_table.get_factors(), fm_table.get_linear_weights()
    ffm.get_layer("field_embedding").set_table(np.tile(v, (1, len(FIELDS))), w)
    ffm.get_layer("logit").bias.assign(fm.get_layer("logit").bias)
    inputs = random_inputs(20)
    np.testing.assert_allclose(
        ffm.predict(inputs, verbose=0), fm.predict(inputs, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_table_is_fields_times_wider_than_the_fm():
    ffm = tf_fm.FFM(FIELDS, embedding_dim=4)
    fm = tf_fm.FM(FIELDS, embedding_dim=4)
    (ffm_table,) = describe_model(ffm).tables
    (fm_table,) = describe_model(fm).tables
    assert ffm_table.shape == (fm_table.shape[0], len(FIELDS) * 4 + 1)


def test_invalid_arguments():
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="embedding_dim"):
            tf_fm.FFM(FIELDS, embedding_dim=bad)
    with pytest.raises(ValueError, match="task"):
        tf_fm.FFM(FIELDS, task="ranking")


def test_lazy_adam_updates_only_the_rows_of_the_batch(tmp_path):
    model = tf_fm.compile_model(tf_fm.FFM(FIELDS, embedding_dim=3), learning_rate=0.05)
    optimizer = model.optimizer
    assert isinstance(optimizer, LazyAdam)
    inputs = random_inputs(64)
    labels = (np.random.default_rng(0).random(64) < 0.4).astype("float32")
    model.train_on_batch(inputs, labels)  # every row of `a` touched once
    table = model.get_layer("field_embedding").table
    offset = model.get_layer("field_embedding").offsets[0]
    before = table.numpy().copy()
    m_before, v_before = (x.numpy().copy() for x in optimizer.moments(table))
    only_a0 = dict(inputs, a=np.zeros_like(inputs["a"]))  # rows 1..5 of `a` absent
    model.train_on_batch(only_a0, labels)
    absent = slice(offset + 1, offset + 6)
    np.testing.assert_array_equal(table.numpy()[absent], before[absent])
    m_after, v_after = (x.numpy() for x in optimizer.moments(table))
    np.testing.assert_array_equal(m_after[absent], m_before[absent])
    np.testing.assert_array_equal(v_after[absent], v_before[absent])
    assert np.all(table.numpy()[offset] != before[offset])  # all F blocks of a used row move
    assert m_after.shape == table.shape
    # The trained model reloads without custom_objects and predicts the same.
    model.save(tmp_path / "ffm.keras")
    restored = keras.saving.load_model(tmp_path / "ffm.keras")
    np.testing.assert_array_equal(
        restored.predict(inputs, verbose=0), model.predict(inputs, verbose=0)
    )


@pytest.mark.slow  # about 30 s: the export verifies in a TensorFlow-only child process
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_train_ffm_run_exports_and_verifies(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["label,city,device,hour,price"]
    for _ in range(600):
        city, device = rng.choice(["paris", "rome", "oslo", "lima"]), rng.choice(["ios", "web"])
        hour = rng.integers(0, 24)
        click = rng.random() < (0.6 if (city, device) == ("rome", "ios") else 0.2)
        lines.append(f"{int(click)},{city},{device},{hour},{rng.uniform(0, 5):.2f}")
    data = tmp_path / "rows.csv"
    data.write_text("\n".join(lines) + "\n")
    run = training.train(
        str(data),
        format="csv",
        output=tmp_path / "run",
        model="ffm",
        min_count=1,
        epochs=2,
        verbose=0,
        log=lambda s: None,
    )
    model = run.model()
    assert model.get_layer("ffm_interaction") is not None
    fields = len(model.get_layer("field_embedding").fields)
    assert model.get_layer("field_embedding").embedding_dim == fields * 10
    path = run.export(tmp_path / "serving", sample=[str(data)], log=lambda s: None)
    assert tf_fm.export.read_metadata(path)["verification"]["rows"] > 0
    loaded = tf.saved_model.load(str(path))
    assert "serving_default" in loaded.signatures


def test_cli_model_choices_are_the_training_models(capsys):
    from tf_fm import cli

    parser = cli.build_parser()
    base = ["train", "--data", "rows.csv", "--format", "csv", "--model"]
    for name in training.MODELS:
        assert parser.parse_args([*base, name]).model == name
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "ffm2"])
    listed = ", ".join(repr(name) for name in training.MODELS)
    assert f"(choose from {listed})" in capsys.readouterr().err  # no choice beyond MODELS
