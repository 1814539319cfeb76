"""libFFM fields: one feature per field over one shared id space (`table=`), read and trained.

The reader splits each row by field (`read_libffm(fields=...)`), the features
share one block of table rows (`FieldEmbedding` fields with one `table`), and
a field-aware model sees the files' fields: FFM against the double loop over
the entries, FM equal to the FM on one feature of all entries.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import FieldEmbedding, cli, explain, training, warm_start
from tf_fm.bayesian import BayesianFM
from tf_fm.data import formats

NUM_IDS = 30
NUM_FIELDS = 4


def _rows(n, seed, fields=NUM_FIELDS, most=3):
    """Random libFFM rows: `(label, [(field, idx, val), ...])`, fields in any order."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        entries = [
            (f, int(rng.integers(NUM_IDS)), round(float(rng.uniform(0.1, 2.0)), 4))
            for f in range(fields)
            for _ in range(int(rng.integers(0, most + 1)))
        ]
        order = rng.permutation(len(entries))
        rows.append((int(rng.integers(2)), [entries[i] for i in order]))
    return rows


def _write(path, rows):
    lines = [" ".join([str(y), *(f"{f}:{i}:{v}" for f, i, v in entries)]) for y, entries in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _layout():
    return [tf_fm.data.LibFFMField(f, 3) for f in range(NUM_FIELDS)]


def _inputs(rows):
    """The reader's split of `rows`, built by hand: per field, its entries in line order."""
    out = {}
    for f in range(NUM_FIELDS):
        ids = np.full((len(rows), 3), -1, np.int64)
        weights = np.zeros((len(rows), 3), np.float32)
        for r, (_, entries) in enumerate(rows):
            mine = [(i, v) for g, i, v in entries if g == f]
            for p, (i, v) in enumerate(mine):
                ids[r, p], weights[r, p] = i, v
        out[f"field_{f}"], out[f"field_{f}_weights"] = ids, weights
    return out


# --- Reading ---


def test_scan_finds_each_fields_most_entries(tmp_path):
    rows = _rows(40, seed=0) + [(1, [(2, 5, 1.0)] * 5), (0, [(6, 1, 1.0)])]
    fields = tf_fm.data.scan_libffm_fields(_write(tmp_path / "t.ffm", rows))
    # Fields 4 and 5 have no entry: left out; field 2 has 5 entries in a row.
    assert fields == [(0, 3), (1, 3), (2, 5), (3, 3), (6, 1)]
    assert fields[2].name == "field_2"


def test_reader_splits_each_row_by_field_in_line_order(tmp_path):
    rows = _rows(100, seed=1)
    path = _write(tmp_path / "t.ffm", rows)
    dataset = tf_fm.data.read_libffm(path, fields=_layout(), with_fields=False, batch_size=32)
    got = {k: np.concatenate([x[k].numpy() for x, _ in dataset]) for k in _inputs(rows)}
    labels = np.concatenate([y.numpy() for _, y in dataset])
    for key, want in _inputs(rows).items():
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    np.testing.assert_array_equal(labels, [y for y, _ in rows])


@pytest.mark.parametrize(
    "line,reason",
    [
        ("1 0:3:1 9:4:1", "an entry of a field the training files do not have (0, 1, 2, 3)"),
        ("1 1:3:1 1:4:1 0:1:1 1:5:1 1:6:1", "field 1 has 4 entries, more than the 3 of"),
    ],
)
def test_a_row_that_does_not_fit_the_fields_is_a_malformed_line(tmp_path, line, reason):
    rows = _rows(20, seed=2)
    path = tmp_path / "t.ffm"
    _write(path, rows)
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        for _ in tf_fm.data.read_libffm(str(path), fields=_layout(), batch_size=8):
            pass
    assert f"{path}:21: {reason}" in str(error.value)

    report = tf_fm.data.ReadReport()
    dataset = tf_fm.data.read_libffm(
        str(path), fields=_layout(), batch_size=8, on_error="skip", report=report
    )
    assert sum(int(y.shape[0]) for _, y in dataset) == 20
    assert report.skipped == 1


# --- The shared table ---


def _shared_fields(k_fields=NUM_FIELDS):
    return tf_fm.data.libffm_features(_layout()[:k_fields], NUM_IDS)


def test_fields_of_one_table_share_its_rows():
    fields = [tf_fm.features.model_field(f) for f in _shared_fields()]
    own = {"name": "user", "kind": "categorical", "vocabulary_size": 7}
    layer = FieldEmbedding([fields[0], own, *fields[1:]], embedding_dim=2)
    assert layer.offsets == [0, NUM_IDS, 0, 0, 0]
    assert layer.total_rows == NUM_IDS + 7 + 1  # one block, the user's, the padding row
    layer.build()
    table = np.arange(layer.total_rows * 3, dtype="float32").reshape(-1, 3)
    layer.set_table(table[:, :2], table[:, 2])
    inputs = {f"field_{f}": np.array([[5, -1, -1]]) for f in range(NUM_FIELDS)}
    inputs.update({f"field_{f}_weights": np.ones((1, 3), "float32") for f in range(NUM_FIELDS)})
    out = layer({**inputs, "user": np.array([3])})["embeddings"].numpy()[0]
    for slot in (0, 2, 3, 4):  # id 5 is row 5 in every field of the table
        np.testing.assert_array_equal(out[slot], table[5, :2])
    np.testing.assert_array_equal(out[1], table[NUM_IDS + 3, :2])


def test_a_shared_table_needs_as_many_ids_and_integer_ids():
    a = {"name": "a", "kind": "categorical", "vocabulary_size": 5, "table": "t"}
    b = {"name": "b", "kind": "categorical", "vocabulary_size": 6, "table": "t"}
    with pytest.raises(ValueError, match="'a' and 'b' share table 't' but have 5 and 6 ids"):
        FieldEmbedding([a, b])
    with pytest.raises(ValueError, match="needs encoding='integer'"):
        tf_fm.CategoricalFeature("c", table="t")
    with pytest.raises(ValueError, match="`table` is the non-empty name"):
        FieldEmbedding([{"name": "x", "kind": "numeric", "table": "t"}])


def _model(builder, fields, **kwargs):
    model = builder(fields, task="regression", **kwargs)
    for layer in model.layers:  # non-zero weights everywhere, the same draws per seed
        for i, w in enumerate(layer.weights):
            rng = np.random.default_rng(i + 7)
            w.assign(rng.normal(scale=0.3, size=w.shape).astype("float32"))
    return model


def test_fm_on_fields_equals_the_fm_on_one_feature_of_all_entries(tmp_path):
    rows = _rows(64, seed=3)
    fielded = _model(tf_fm.FM, _shared_fields(), embedding_dim=3)
    one = tf_fm.data.libsvm_feature(vocabulary_size=NUM_IDS, max_length=12)
    flat = _model(tf_fm.FM, [one], embedding_dim=3)
    table = fielded.get_layer("field_embedding").table
    assert tuple(table.shape) == tuple(flat.get_layer("field_embedding").table.shape)
    flat.get_layer("field_embedding").table.assign(table)
    flat.get_layer("logit").set_weights(fielded.get_layer("logit").get_weights())
    ids = np.full((64, 12), -1, np.int64)
    weights = np.zeros((64, 12), np.float32)
    for r, (_, entries) in enumerate(rows):
        for p, (_, i, v) in enumerate(entries):
            ids[r, p], weights[r, p] = i, v
    got = fielded.predict(_inputs(rows), verbose=0)
    want = flat.predict({"features": ids, "features_weights": weights}, verbose=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _naive_ffm(model, rows, k):
    """w0 + sum_i w_i x_i + sum_{i<j} <v_{i,f(j)}, v_{j,f(i)}> x_i x_j over each row's entries."""
    layer = model.get_layer("field_embedding")
    v = layer.get_factors().astype(np.float64).reshape(-1, NUM_FIELDS, k)
    w = layer.get_linear_weights().astype(np.float64)
    w0 = float(np.asarray(model.get_layer("logit").get_weights()[0]).ravel()[0])
    out = []
    for _, entries in rows:
        entries = [(f, i, float(np.float32(x))) for f, i, x in entries]
        y = w0 + sum(w[i] * x for _, i, x in entries)
        for a in range(len(entries)):
            for b in range(a + 1, len(entries)):
                (f, i, x), (g, j, z) = entries[a], entries[b]
                y += v[i, g] @ v[j, f] * x * z
        out.append(y)
    return np.array(out)[:, None]


def test_ffm_on_fields_equals_the_double_loop_over_the_entries():
    rows = _rows(48, seed=4)
    model = _model(tf_fm.FFM, _shared_fields(), embedding_dim=2)
    table = model.get_layer("field_embedding").table
    assert tuple(table.shape) == (NUM_IDS + 1, NUM_FIELDS * 2 + 1)  # not one block per field
    got = model.predict(_inputs(rows), verbose=0)
    np.testing.assert_allclose(got, _naive_ffm(model, rows, 2), rtol=1e-4, atol=1e-4)


def test_gradients_of_a_shared_row_sum_over_its_fields():
    """d loss / d table of the fielded FM is the flat FM's: a row's uses in all fields add up."""
    rows = _rows(16, seed=5)
    fielded = _model(tf_fm.FM, _shared_fields(), embedding_dim=3)
    flat = _model(
        tf_fm.FM,
        [tf_fm.data.libsvm_feature(vocabulary_size=NUM_IDS, max_length=12)],
        embedding_dim=3,
    )
    flat.get_layer("field_embedding").table.assign(fielded.get_layer("field_embedding").table)
    ids = np.full((16, 12), -1, np.int64)
    weights = np.zeros((16, 12), np.float32)
    for r, (_, entries) in enumerate(rows):
        for p, (_, i, v) in enumerate(entries):
            ids[r, p], weights[r, p] = i, v

    def gradient(model, inputs):
        table = model.get_layer("field_embedding").table
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(model(inputs) ** 2)
        g = tape.gradient(y, table)
        return tf.convert_to_tensor(g).numpy()

    got = gradient(fielded, _inputs(rows))
    want = gradient(flat, {"features": ids, "features_weights": weights})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_shared_table_model_round_trips_through_keras_files(tmp_path):
    rows = _rows(16, seed=6)
    model = _model(tf_fm.FFM, _shared_fields(), embedding_dim=2)
    config = model.get_layer("field_embedding").get_config()
    assert all(f["table"] == "features" for f in config["fields"])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(
        loaded.predict(_inputs(rows), verbose=0), model.predict(_inputs(rows), verbose=0)
    )


def test_explain_splits_a_fielded_ffm_exactly():
    rows = _rows(16, seed=7)
    model = _model(tf_fm.FFM, _shared_fields(), embedding_dim=2)
    explanation = explain(model, _inputs(rows))
    np.testing.assert_allclose(explanation.total(), _naive_ffm(model, rows, 2)[:, 0], atol=1e-4)
    # First-order terms per field: sum of w_i x_i over the field's own entries.
    w = model.get_layer("field_embedding").get_linear_weights()
    want = np.zeros((16, NUM_FIELDS))
    for r, (_, entries) in enumerate(rows):
        for f, i, x in entries:
            want[r, f] += w[i] * np.float32(x)
    np.testing.assert_allclose(explanation.first_order, want, atol=1e-5)


def test_transfer_maps_a_shared_block_once():
    fields = _shared_fields()
    old = _model(tf_fm.FFM, fields, embedding_dim=2)
    new = tf_fm.FFM(fields, task="regression", embedding_dim=2)
    source, target = warm_start._row_map(
        old.get_layer("field_embedding"), new.get_layer("field_embedding")
    )
    assert sorted(source.tolist()) == list(range(NUM_IDS + 1))  # the block and the padding row


def test_bayesian_fm_refuses_shared_tables():
    with pytest.raises(ValueError, match="share a table"):
        BayesianFM(_shared_fields())


# --- The run: tf-fm train --format libffm ---


def _ffm_data(path, n, seed):
    """Labels of an FFM-like rule: a field-0 id and a field-1 id agree in parity."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b, c = (int(x) for x in rng.integers(NUM_IDS, size=3))
        y = int((a % 2 == b % 2) if rng.random() < 0.9 else rng.integers(2))
        rows.append((y, [(0, a, 1.0), (1, b, 1.0), (2, c, 1.0)]))
    return _write(path, rows)


def test_cli_trains_ffm_on_the_files_fields_and_exports_verified(tmp_path, capsys):
    data = _ffm_data(tmp_path / "train.ffm", 3000, seed=0)
    valid = _ffm_data(tmp_path / "valid.ffm", 600, seed=1)
    out = tmp_path / "run"
    options = ["--epochs", "8", "--batch-size", "128", "--learning-rate", "0.01"]
    code = cli.main(
        ["train", "--data", data, "--valid", valid, "--format", "libffm", "--model", "ffm"]
        + [*options, "--output", str(out), "--export", str(tmp_path / "x")]
    )
    assert code == 0, capsys.readouterr().err
    schema = json.loads((out / "schema.json").read_text())
    assert [f["name"] for f in schema["features"]] == ["field_0", "field_1", "field_2"]
    run = training.Run(out)
    assert tuple(run.model().get_layer("field_embedding").table.shape)[0] == NUM_IDS + 1
    assert run.spec.libffm_fields == [[0, 1], [1, 1], [2, 1]]
    assert "verified on" in capsys.readouterr().out
    metrics = run.evaluate([valid])
    assert metrics.scores["auc"] > 0.6  # the parity rule needs the field pair (0, 1)


def test_a_libffm_run_of_one_feature_still_reads_as_one(tmp_path):
    """Runs made before the fields were read: their schema is the one feature "features"."""
    path = _write(tmp_path / "t.ffm", _rows(10, seed=8))
    schema = tf_fm.FeatureSchema(
        [tf_fm.data.libsvm_feature(vocabulary_size=NUM_IDS, max_length=12)]
    )
    spec = formats.DataSpec("libffm")
    formats.fit_spec_to_schema(spec, schema)
    assert spec.libffm_fields is None and spec.max_length == 12
    x, _ = next(iter(formats.read_files(spec, [path], batch_size=10)))
    assert sorted(x) == ["features", "features_weights"]
