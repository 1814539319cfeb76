"""tf_fm.training (the run API `tf-fm train` stands on) and the DataFrame path with ids."""

import keras
import numpy as np
import pandas as pd
import pytest

import tf_fm
from tf_fm import training
from tf_fm.errors import UsageError


def _frame(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age_bucket": rng.integers(0, 8, n),  # integer ids: categorical
            "city": rng.choice(["x", "y", "z"], n),
            "price": rng.normal(10, 3, n),
        }
    )
    logit = -1.0 + 0.6 * (frame["age_bucket"] - 3.5) + (frame["city"] == "x")
    frame["click"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def test_integer_column_dataframe_trains_and_serves():
    """infer_schema and read_dataframe agree on an integer column (one rule for both).

    The README's DataFrame block (tests/test_readme.py) exports the same path.
    """
    frame = _frame()
    schema = tf_fm.infer_schema(frame, label="click")
    assert schema["age_bucket"] == tf_fm.CategoricalFeature("age_bucket")
    raw = tf_fm.data.read_dataframe(frame, label="click", schema=schema, batch_size=256)
    schema.adapt(raw)
    model = tf_fm.compile_model(tf_fm.FM(schema), learning_rate=0.05)
    history = model.fit(schema.preprocess(raw), epochs=3, verbose=0)
    assert history.history["auc"][-1] > 0.6
    served = schema.serving_model(model)
    rows = tf_fm.data.read_dataframe(frame.head(8), label=None, schema=schema, batch_size=8)
    np.testing.assert_allclose(
        served.predict(rows, verbose=0)[:, 0],
        model.predict(schema.preprocess(rows), verbose=0)[:, 0],
        rtol=1e-6,
    )


@pytest.mark.parametrize("builder", [tf_fm.FM, tf_fm.DeepFM])
def test_builders_take_a_schema(builder):
    frame = _frame(200)
    schema = tf_fm.infer_schema(frame, label="click")
    with pytest.raises(ValueError, match="not adapted"):
        builder(schema)
    schema.adapt(tf_fm.data.read_dataframe(frame, label="click", schema=schema))
    model = builder(schema)
    assert [t.name for t in model.inputs] == ["age_bucket", "city", "price"]
    assert tf_fm.describe_model(model).task == "binary"


def _csv_files(tmp_path):
    frame = _frame(1500)
    frame.iloc[:1200].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[1200:].to_csv(tmp_path / "valid.csv", index=False)
    return tmp_path / "train.csv", tmp_path / "valid.csv"


def test_train_writes_a_run_that_loads(tmp_path):
    train_file, valid_file = _csv_files(tmp_path)
    lines = []
    run = training.train(
        str(train_file),
        format="csv",
        label="click",
        valid=str(valid_file),
        output=tmp_path / "run",
        model="fm",
        epochs=3,
        batch_size=128,
        learning_rate=0.05,
        log=lines.append,
        verbose=0,
    )
    assert any(line.startswith("Validation: auc") for line in lines)
    for name in ("run.json", "schema.json", "model.keras", "history.json", "metrics.json"):
        assert (run.path / name).is_file()
    loaded = training.Run.load(run.path)
    assert loaded.schema["age_bucket"].kind == "categorical"
    assert len(loaded.history["loss"]) == loaded.metrics["epochs_run"] <= 3
    evaluation = loaded.evaluate(str(valid_file))
    assert evaluation.scores["auc"] == pytest.approx(loaded.metrics["valid"]["auc"], abs=1e-6)
    assert evaluation.scores["auc"] > 0.6
    assert loaded.predict(str(valid_file)).shape == (300,)
    with pytest.raises(UsageError, match="already holds a trained model"):
        training.train(str(train_file), format="csv", label="click", output=run.path)


def test_train_starts_the_global_bias_at_the_training_base_rate(tmp_path, monkeypatch):
    train_file, _ = _csv_files(tmp_path)
    clicks = pd.read_csv(train_file)["click"]
    monkeypatch.setattr(training, "BASE_RATE_ROWS", 8192)  # one batch: every row here
    built = []
    monkeypatch.setattr(
        training.models_lib,
        "start_at_base_rate",
        lambda model, mean, task: built.append((mean, task)) or 0.0,
    )
    lines = []
    for initial_bias, out in ((None, "zero"), ("mean", "mean")):  # binary: zero by default
        training.train(
            str(train_file), format="csv", label="click", output=tmp_path / out, model="fm",
            epochs=1, batch_size=128, log=lines.append, verbose=0, initial_bias=initial_bias,
        )  # fmt: skip
    assert built == [(pytest.approx(clicks.mean()), "binary")]
    assert any(f"mean {clicks.mean():.4g} (first 1,200 rows" in line for line in lines)
    # Regression starts at the mean target by default.
    training.train(
        str(train_file), format="csv", label="price", task="regression", model="fm",
        output=tmp_path / "regression", epochs=1, batch_size=128, log=lines.append, verbose=0,
    )  # fmt: skip
    prices = pd.read_csv(train_file)["price"]
    assert built[1] == (pytest.approx(prices.mean()), "regression")
    with pytest.raises(UsageError, match="initial_bias must be one of"):
        training.TrainSettings(initial_bias="median")


def test_train_rejects_bad_settings_before_reading(tmp_path):
    with pytest.raises(UsageError, match="epochs must be a positive integer"):
        training.train("x.csv", format="csv", epochs=0, output=tmp_path / "r")
    with pytest.raises(UsageError, match="no such file"):
        training.train(str(tmp_path / "missing.csv"), format="csv", output=tmp_path / "r")
    with pytest.raises(UsageError, match="unknown format"):
        training.train(str(tmp_path), format="parquet", output=tmp_path / "r")
    with pytest.raises(UsageError, match="not a tf-fm run directory"):
        training.Run.load(tmp_path)


@pytest.mark.parametrize("model", ["hofm", "fwfm", "nfm"])
def test_train_runs_every_model_of_the_family(tmp_path, model):
    train_file, valid_file = _csv_files(tmp_path)
    run = training.train(
        str(train_file),
        format="csv",
        label="click",
        valid=str(valid_file),
        output=tmp_path / model,
        model=model,
        epochs=2,
        batch_size=256,
        log=lambda line: None,
        verbose=0,
    )
    assert run.config["model"] == model
    assert tf_fm.describe_model(run.model()).task == "binary"
    assert run.predict(str(valid_file)).shape == (300,)


def test_csv_run_with_an_integer_declared_id_names_the_feature(tmp_path):
    # csv cells are text: an id declared dtype="int64" cannot be read from csv.
    path = tmp_path / "train.csv"
    _frame(200).to_csv(path, index=False)
    schema = tf_fm.FeatureSchema(
        [tf_fm.CategoricalFeature("age_bucket", dtype="int64"), tf_fm.NumericFeature("price")],
        label="click",
    )
    with pytest.raises(UsageError, match="Feature 'age_bucket' is declared dtype='int64'"):
        tf_fm.train(str(path), format="csv", schema=schema, output=tmp_path / "run", log=print)


def test_train_with_rowwise_adagrad_tables(tmp_path):
    path = tmp_path / "train.csv"
    _frame(2000).to_csv(path, index=False)
    run = tf_fm.train(
        str(path), format="csv", label="click", valid=str(path), output=tmp_path / "run",
        model="fm", optimizer="rowwise_adagrad", epochs=3, learning_rate=0.01,
        log=lambda line: None, verbose=0,
    )  # fmt: skip
    model = run.model()  # reloads without custom_objects, its optimizer state with it
    assert isinstance(model.optimizer, tf_fm.optimizers.RowwiseAdagrad)
    [table] = tf_fm.models.describe_model(model).tables
    assert tuple(model.optimizer.accumulator(table).shape) == (table.shape[0],)
    assert run.metrics["valid"]["auc"] > 0.6
    assert run.config["model_options"]["optimizer"] == "rowwise_adagrad"


def test_compile_model_embedding_optimizer_choices():
    model = tf_fm.FM([{"name": "a", "kind": "categorical", "vocabulary_size": 4}])
    assert isinstance(
        tf_fm.compile_model(model, embedding_optimizer="rowwise_adagrad").optimizer,
        tf_fm.optimizers.RowwiseAdagrad,
    )
    assert isinstance(tf_fm.compile_model(model).optimizer, tf_fm.optimizers.LazyAdam)
    with pytest.raises(ValueError, match="must be one of"):
        tf_fm.compile_model(model, embedding_optimizer="sgd")
    with pytest.raises(ValueError, match="not both"):
        tf_fm.compile_model(
            model, optimizer=keras.optimizers.Adam(), embedding_optimizer="rowwise_adagrad"
        )
    with pytest.raises(UsageError, match="optimizer must be one of"):
        training.ModelOptions(optimizer="adam")


def test_cli_optimizer_choices_are_the_embedding_optimizers():
    from tf_fm import cli

    parser = cli.build_parser()
    for name in tf_fm.models.EMBEDDING_OPTIMIZERS:
        args = parser.parse_args(["train", "--data", "x", "--format", "csv", "--optimizer", name])
        assert cli._model_options(args)["optimizer"] == name
    args = parser.parse_args(["train", "--data", "x", "--format", "csv"])
    assert "optimizer" not in cli._model_options(args)  # left to the default (or the warm start)
