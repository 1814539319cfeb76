"""Warm start (`tf_fm.warm_start`): extended vocabularies, moved rows, carried optimizer state."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import training
from tf_fm import warm_start as ws
from tf_fm.errors import UsageError


def _frame(n, items, seed):
    """Clicks on `items` (ids as text) by 30 users, with a price."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "user": rng.integers(0, 30, n).astype(str),
            "item": rng.choice(items, n),
            "tags": [
                "|".join(rng.choice(["a", "b", "c", "d"], rng.integers(1, 3), replace=False))
                for _ in range(n)
            ],
            "price": rng.normal(10, 3, n),
        }
    )
    logit = -0.5 + 0.8 * (frame["item"].str[-1].astype(int) % 3 - 1) + 0.1 * (frame["price"] - 10)
    frame["click"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


OLD_ITEMS = [f"i{k}" for k in range(20)]
NEW_ITEMS = OLD_ITEMS[5:] + [f"n{k}" for k in range(10)]  # 15 old items, 10 new ones


def _schema():
    return tf_fm.FeatureSchema(
        [
            tf_fm.CategoricalFeature("user"),
            tf_fm.CategoricalFeature("item"),
            tf_fm.MultiValuedFeature("tags", separator="|"),
            tf_fm.NumericFeature("price"),
        ],
        label="click",
    )


def _raw(frame, schema, batch=256):
    return tf_fm.data.read_dataframe(frame, label="click", schema=schema, batch_size=batch)


@pytest.fixture(scope="module")
def trained():
    """A DeepFM trained two epochs on the old items, its schema, and the new data."""
    old_frame, new_frame = _frame(3000, OLD_ITEMS, 0), _frame(3000, NEW_ITEMS, 1)
    schema = _schema()
    schema.adapt(_raw(old_frame, schema))
    keras.utils.set_random_seed(0)
    model = training.ModelOptions(model="deepfm", embedding_dim=4, dnn_units=[8]).build(
        schema, "binary"
    )
    model.fit(schema.preprocess(_raw(old_frame, schema)), epochs=2, verbose=0)
    return schema, model, old_frame, new_frame


def test_extend_schema_keeps_old_ids_and_appends_new_ones(trained):
    schema, _, _, new_frame = trained
    extended, added = ws.extend_schema(schema, _raw(new_frame, schema))
    old_items = schema.vocabulary("item")
    items = extended.vocabulary("item")
    assert items[: len(old_items)] == old_items  # old tokens keep their ids
    assert sorted(items[len(old_items) :]) == sorted(f"n{k}" for k in range(10))
    assert added == {"user": 0, "item": 10, "tags": 0}
    # Everything else learned stays: an old row preprocesses to the same model input.
    assert extended.state["price"] == schema.state["price"]
    assert extended.max_length("tags") == schema.max_length("tags")


def test_extend_schema_respects_min_count_and_max_tokens(trained):
    schema, _, _, _ = trained
    capped = tf_fm.FeatureSchema(
        [tf_fm.CategoricalFeature("item", max_tokens=22, min_count=3)], label="click"
    )
    old = pd.DataFrame({"item": OLD_ITEMS * 3, "click": 0})
    capped.adapt(_raw(old, capped))
    new = pd.DataFrame({"item": ["n1"] * 5 + ["n2"] * 4 + ["n3"] * 3 + ["rare"] * 2, "click": 0})
    extended, added = ws.extend_schema(capped, _raw(new, capped))
    # "rare" is under min_count; the cap of 22 leaves room for the 2 most frequent.
    assert extended.vocabulary("item") == capped.vocabulary("item") + ["n1", "n2"]
    assert added == {"item": 2}


def _rebuild(schema, model, extended):
    keras.utils.set_random_seed(1)
    new = training.ModelOptions(model="deepfm", embedding_dim=4, dnn_units=[8]).build(
        extended, "binary"
    )
    ws.transfer(model, new)
    return new


def test_transfer_keeps_old_rows_predictions_and_optimizer_state(trained):
    schema, model, old_frame, new_frame = trained
    extended, _ = ws.extend_schema(schema, _raw(new_frame, schema))
    new = _rebuild(schema, model, extended)

    old_layer, new_layer = model.get_layer("field_embedding"), new.get_layer("field_embedding")
    source, target = ws._row_map(old_layer, new_layer)
    old_table = keras.ops.convert_to_numpy(old_layer.table)
    new_table = keras.ops.convert_to_numpy(new_layer.table)
    np.testing.assert_array_equal(new_table[target], old_table[source])
    assert len(source) == old_layer.total_rows  # every old row has its place
    assert new_layer.total_rows == old_layer.total_rows + 10

    # An old row's prediction is the old model's, through the extended schema.
    rows = old_frame.head(500)
    before = model.predict(schema.preprocess(_raw(rows, schema)), verbose=0)
    after = new.predict(extended.preprocess(_raw(rows, extended)), verbose=0)
    np.testing.assert_allclose(after, before, atol=1e-6)

    # Optimizer state: old rows' slots carried, the new ids' rows start at zero, same step.
    assert int(new.optimizer.iterations) == int(model.optimizer.iterations) > 0
    new_rows = np.setdiff1d(np.arange(new_layer.total_rows), target)
    carried = 0
    for old_v, new_v in zip(model.optimizer.variables, new.optimizer.variables, strict=True):
        old_v, new_v = np.asarray(old_v), np.asarray(new_v)
        if old_v.ndim and old_v.shape[0] == old_layer.total_rows:
            np.testing.assert_array_equal(new_v[target], old_v[source])
            assert not new_v[new_rows].any()
            carried += 1
    assert carried >= 1
    lr = float(keras.ops.convert_to_numpy(new.optimizer.learning_rate))
    assert lr == pytest.approx(1e-3)


def test_transfer_refuses_a_smaller_or_different_model(trained):
    schema, model, _, _ = trained
    other = training.ModelOptions(model="fm", embedding_dim=4).build(schema, "binary")
    with pytest.raises(ValueError, match="not built by the same builder"):
        ws.transfer(model, other)


def _write(frame, path):
    frame.to_csv(path, index=False)
    return str(path)


def _train(data, out, **kwargs):
    args = {
        "format": "csv",
        "label": "click",
        "separator": "|",
        "categorical": ["user", "item"],
        "epochs": 2,
        "batch_size": 256,
        "log": lambda line: None,
        "verbose": 0,
    }
    return tf_fm.train(data, output=out, **{**args, **kwargs})


def test_train_warm_start_goes_on_from_a_run(tmp_path):
    old_file = _write(_frame(3000, OLD_ITEMS, 0), tmp_path / "old.csv")
    new_file = _write(_frame(3000, NEW_ITEMS, 1), tmp_path / "new.csv")
    first = _train(old_file, tmp_path / "first", model="fm", embedding_dim=4)
    lines = []
    second = _train(
        new_file, tmp_path / "second", warm_start=first.path, learning_rate=5e-4, log=lines.append
    )
    assert any("item:" in line and "(10 new)" in line for line in lines), lines
    config = json.loads((second.path / training.RUN_FILE).read_text())
    assert config["model_options"]["model"] == "fm"
    assert config["model_options"]["embedding_dim"] == 4
    assert config["model_options"]["learning_rate"] == 5e-4
    assert config["request"]["warm_start"] == str(first.path.resolve())
    assert second.schema.vocabulary("item")[:20] == first.schema.vocabulary("item")
    assert second.evaluate(new_file).scores["auc"] > 0.6

    with pytest.raises(UsageError, match="trained with embedding_dim=4, not 8"):
        _train(new_file, tmp_path / "x", warm_start=first.path, embedding_dim=8)
    with pytest.raises(UsageError, match="another output"):
        _train(new_file, first.path, warm_start=first.path)
    with pytest.raises(UsageError, match="own schema"):
        _train(new_file, tmp_path / "y", warm_start=first.path, schema=first.schema)


@pytest.mark.slow
def test_cli_warm_start_exports_verified(tmp_path):
    from tf_fm import cli

    old_file = _write(_frame(3000, OLD_ITEMS, 0), tmp_path / "old.csv")
    new_file = _write(_frame(3000, NEW_ITEMS, 1), tmp_path / "new.csv")
    common = ["--format", "csv", "--label", "click", "--separator", "|", "--epochs", "2"]
    common += ["--categorical", "user", "item"]
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        cli.main(["train", "--data", old_file, "--output", str(first), "--model", "fm", *common])
        == 0
    )
    code = cli.main(
        ["train", "--data", new_file, "--output", str(second), "--warm-start", str(first), *common]
        + ["--export", str(tmp_path / "export")]
    )
    assert code == 0
    [version] = (tmp_path / "export").iterdir()
    report = tf_fm.export.read_metadata(version)["verification"]
    assert training.worst_difference(report) < 1e-5
    loaded = tf.saved_model.load(str(version))
    assert "serving_default" in loaded.signatures
