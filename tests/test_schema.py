import json
import math
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import (
    CategoricalFeature,
    FeaturePreprocessor,
    FeatureSchema,
    MultiValuedFeature,
    NumericFeature,
    infer_schema,
)


def make_dataset(columns, label=None, batch_size=4):
    """(features, label) batches, as the readers of tf_fm.data yield them."""
    frame = pd.DataFrame(columns)
    features = {}
    for name, values in frame.items():
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            features[name] = values.to_numpy(dtype=object).astype(str).astype(object)
        elif pd.api.types.is_float_dtype(values):
            features[name] = values.to_numpy(dtype="float32")
        else:
            features[name] = values.to_numpy(dtype="int64")
    if label is None:
        label = np.zeros(len(frame), dtype="float32")
    return tf.data.Dataset.from_tensor_slices((features, label)).batch(batch_size)


def preprocess_all(schema, dataset):
    """Concatenated outputs of the training path (dataset.map)."""
    batches = [x for x, _ in schema.preprocess(dataset).as_numpy_iterator()]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def apply_one(schema, name, values):
    """The preprocessing of one feature applied to `values` (a tf.constant)."""
    return schema.preprocessor()({name: tf.constant(values)})[name].numpy()


# --- Categorical ---


def test_vocabulary_min_count_frequency_order_and_oov():
    users = ["b", "a", "b", "c", "a", "b", "d", ""]  # b:3 a:2 c:1 d:1 "":1
    schema = FeatureSchema([CategoricalFeature("user", min_count=2)])
    schema.adapt(make_dataset({"user": users}, batch_size=3))
    assert schema.vocabulary("user") == ["b", "a"]  # most frequent first
    assert schema.fields() == [
        {"name": "user", "kind": "categorical", "vocabulary_size": 3}
    ]  # 1 OOV + 2 tokens
    ids = apply_one(schema, "user", ["a", "b", "c", "never seen", ""])
    np.testing.assert_array_equal(ids, [2, 1, 0, 0, 0])  # rare and unseen -> OOV id 0
    state = schema.state["user"]
    assert state["num_rows"] == 8 and state["num_missing"] == 1


def test_vocabulary_with_several_oov_buckets_and_missing_as_category():
    values = ["x"] * 3 + ["y"] * 2 + [""] * 2 + ["z"]
    schema = FeatureSchema([CategoricalFeature("c", num_oov_buckets=3, max_tokens=3)])
    schema.adapt(make_dataset({"c": values}))
    # max_tokens keeps the 3 most frequent; ties in token order; "" is a category.
    assert schema.vocabulary("c") == ["x", "", "y"]
    assert schema.field("c")["vocabulary_size"] == 6
    unseen = [f"u{i}" for i in range(40)]
    ids = apply_one(schema, "c", ["x", "", "y", "z", *unseen])
    np.testing.assert_array_equal(ids[:3], [3, 4, 5])
    assert set(ids[3:]) <= {0, 1, 2} and len(set(ids[3:])) > 1  # hashed over the OOV buckets
    # Repeated calls give the same OOV bucket.
    np.testing.assert_array_equal(ids, apply_one(schema, "c", ["x", "", "y", "z", *unseen]))


def test_integer_vocabulary():
    items = np.array([10, 20, 10, 30, 10, 20], dtype="int64")
    schema = FeatureSchema([CategoricalFeature("item", dtype="int64")])
    schema.adapt(make_dataset({"item": items}))
    assert schema.vocabulary("item") == [10, 20, 30]
    ids = apply_one(schema, "item", np.array([30, 10, 20, 99, -1], dtype="int64"))
    np.testing.assert_array_equal(ids, [3, 1, 2, 0, 0])
    # int32 input is accepted (cast), strings are not.
    ids32 = apply_one(schema, "item", np.array([30, 10], dtype="int32"))
    np.testing.assert_array_equal(ids32, [3, 1])
    with pytest.raises(TypeError, match="item"):
        apply_one(schema, "item", ["30"])


def test_fixed_vocabulary_needs_no_adapt():
    schema = FeatureSchema([CategoricalFeature("color", vocabulary=["red", "green"])])
    assert schema.adapted
    np.testing.assert_array_equal(apply_one(schema, "color", ["green", "red", "blue"]), [2, 1, 0])


def test_hashing_is_stable_and_known():
    # FarmHash64 (tf.strings.to_hash_bucket_fast): the same bins in every
    # process, on every machine; these constants pin them.
    schema = FeatureSchema(
        [
            CategoricalFeature("site", encoding="hash", num_bins=1000),
            CategoricalFeature("code", encoding="hash", num_bins=1000, dtype="int64"),
            MultiValuedFeature("tags", encoding="hash", num_bins=1000, max_length=3),
        ]
    )
    assert schema.adapted  # nothing to learn
    out = schema.preprocessor()(
        {
            "site": tf.constant(["tf_fm", "Action", ""]),
            "code": tf.constant([7, 7, 7], tf.int64),
            "tags": tf.constant(["tf_fm|Action", "", "Action"]),
        }
    )
    np.testing.assert_array_equal(out["site"].numpy(), [793, 440, 263])
    np.testing.assert_array_equal(out["code"].numpy(), [88, 88, 88])
    np.testing.assert_array_equal(out["tags"].numpy(), [[793, 440, -1], [-1] * 3, [440, -1, -1]])
    assert schema.fields()[0] == {"name": "site", "kind": "categorical", "vocabulary_size": 1000}


def test_integer_ids_error_and_oov():
    ok = np.array([0, 5, 23], dtype="int64")
    bad = np.array([0, 24, -2], dtype="int64")
    strict = FeatureSchema(
        [CategoricalFeature("hour", encoding="integer", dtype="int64", num_ids=24)]
    )
    np.testing.assert_array_equal(apply_one(strict, "hour", ok), ok)
    assert strict.fields() == [{"name": "hour", "kind": "categorical", "vocabulary_size": 24}]
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature `hour`"):
        apply_one(strict, "hour", bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature `hour`"):
        preprocess_all(strict, make_dataset({"hour": bad}))  # also inside tf.data
    with pytest.raises(ValueError, match="hour"):
        strict.adapt(make_dataset({"hour": bad}))

    lenient = FeatureSchema(
        [
            CategoricalFeature(
                "hour", encoding="integer", dtype="int64", num_ids=24, out_of_range="oov"
            )
        ]
    )
    np.testing.assert_array_equal(apply_one(lenient, "hour", bad), [0, 24, 24])
    assert lenient.fields() == [{"name": "hour", "kind": "categorical", "vocabulary_size": 25}]
    lenient.adapt(make_dataset({"hour": bad}))
    assert lenient.state["hour"]["num_out_of_range"] == 2


# --- Numeric ---


def test_standardize_equals_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.5, size=103).astype("float32")
    schema = FeatureSchema([NumericFeature("x", transform="standardize")])
    schema.adapt(make_dataset({"x": x}, batch_size=10))  # stats merged over 11 batches
    np.testing.assert_allclose(schema.state["x"]["mean"], x.astype(np.float64).mean(), rtol=1e-6)
    np.testing.assert_allclose(schema.state["x"]["variance"], x.astype(np.float64).var(), rtol=1e-5)
    got = preprocess_all(schema, make_dataset({"x": x}))["x"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, (x - x.mean()) / x.std(), rtol=1e-5, atol=1e-5)
    assert schema.fields() == [{"name": "x", "kind": "numeric"}]


def test_none_and_log1p_transforms():
    x = np.array([0.0, 1.0, 9.0, -0.5, -3.0, 1e6], dtype="float32")
    schema = FeatureSchema([NumericFeature("a"), NumericFeature("b", transform="log1p")])
    out = preprocess_all(schema, make_dataset({"a": x, "b": x}))
    np.testing.assert_array_equal(out["a"], x)
    # log(1 + max(x, 0)): negatives clipped to 0, never NaN.
    np.testing.assert_allclose(out["b"], np.log1p(np.maximum(x, 0)), rtol=1e-6)
    assert np.isfinite(out["b"]).all()


def test_discretize_fixed_boundaries():
    bounds = [0.0, 1.0, 10.0]
    x = np.array([-5.0, 0.0, 0.5, 1.0, 9.99, 10.0, 1e9], dtype="float32")
    schema = FeatureSchema([NumericFeature("d", transform="discretize", bin_boundaries=bounds)])
    ids = apply_one(schema, "d", x)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, np.digitize(x, bounds))
    np.testing.assert_array_equal(ids, [0, 1, 1, 2, 2, 3, 3])  # bucket i: b[i-1] <= x < b[i]
    assert schema.fields() == [{"name": "d", "kind": "categorical", "vocabulary_size": 4}]


def test_discretize_learns_quantile_boundaries():
    x = np.arange(1000, dtype="float32")
    schema = FeatureSchema([NumericFeature("d", transform="discretize", num_bins=4)])
    schema.adapt(make_dataset({"d": np.random.default_rng(0).permutation(x)}, batch_size=64))
    bounds = schema.bin_boundaries("d")
    assert len(bounds) == 3
    np.testing.assert_allclose(bounds, [250, 500, 750], atol=1000 * 0.02)  # epsilon=0.01 sketch
    ids = preprocess_all(schema, make_dataset({"d": x}))["d"]
    assert np.bincount(ids).tolist() == np.bincount(np.digitize(x, bounds)).tolist()
    assert abs(np.bincount(ids) - 250).max() <= 20
    assert schema.field("d") == {"name": "d", "kind": "categorical", "vocabulary_size": 4}


def test_default_replaces_nan_and_inf_before_the_transform():
    x = np.array([1.0, np.nan, 3.0, np.inf, -np.inf, 5.0], dtype="float32")
    schema = FeatureSchema(
        [
            NumericFeature("plain", default=-1.0),
            NumericFeature("logged", transform="log1p", default=7.0),
            NumericFeature("z", transform="standardize", default=0.0),
        ]
    )
    schema.adapt(make_dataset({"plain": x, "logged": x, "z": x}))
    out = preprocess_all(schema, make_dataset({"plain": x, "logged": x, "z": x}))
    np.testing.assert_array_equal(out["plain"], [1, -1, 3, -1, -1, 5])
    np.testing.assert_allclose(out["logged"], np.log1p([1, 7, 3, 7, 7, 5]), rtol=1e-6)
    # Statistics of the observed values only (a filled-in default is no observation).
    observed = np.array([1, 3, 5], dtype=np.float64)
    filled = np.array([1, 0, 3, 0, 0, 5], dtype=np.float64)
    want = (filled - observed.mean()) / observed.std()
    np.testing.assert_allclose(out["z"], want, rtol=1e-5)
    assert schema.state["z"]["mean"] == pytest.approx(3.0)
    assert schema.state["z"]["num_missing"] == 3


def test_nan_without_default_is_an_error_naming_the_feature():
    x = np.array([1.0, np.nan, 3.0], dtype="float32")
    schema = FeatureSchema([NumericFeature("ok", default=0.0), NumericFeature("price")])
    data = make_dataset({"ok": x, "price": x})
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature `price`.*no `default`"):
        schema.adapt(data)
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature `price`"):
        preprocess_all(schema, data)  # training path
    layer = schema.preprocessor()  # the serving path's layer
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature `price`"):
        layer({"ok": tf.constant([1.0]), "price": tf.constant([np.inf])})
    out = layer({"ok": tf.constant([np.nan]), "price": tf.constant([2.5])})
    np.testing.assert_array_equal(out["price"].numpy(), [2.5])
    np.testing.assert_array_equal(out["ok"].numpy(), [0.0])
    with pytest.raises(KeyError, match="price"):
        layer({"ok": tf.constant([1.0])})


# --- Multi-valued ---


def test_multivalued_split_pad_truncate():
    genres = ["Action|Comedy", "Comedy", "", "Drama|Action|Comedy|Horror", "Comedy|Drama"]
    schema = FeatureSchema([MultiValuedFeature("genres", max_length=3, combiner="mean")])
    schema.adapt(make_dataset({"genres": genres}, batch_size=2))
    # Comedy:4 Action:2 Drama:2 Horror:1 -> ids 1..4 after the OOV id 0.
    assert schema.vocabulary("genres") == ["Comedy", "Action", "Drama", "Horror"]
    assert schema.fields() == [
        {
            "name": "genres",
            "kind": "multivalued",
            "vocabulary_size": 5,
            "max_length": 3,
            "weighted": False,
            "combiner": "mean",
        }
    ]
    ids = apply_one(schema, "genres", [*genres, "Western|Comedy", "||Drama|"])
    np.testing.assert_array_equal(
        ids,
        [
            [2, 1, -1],
            [1, -1, -1],
            [-1, -1, -1],  # empty row: no ids
            [3, 2, 1],  # truncated to its first 3 tokens
            [1, 3, -1],
            [0, 1, -1],  # unseen token -> OOV
            [3, -1, -1],  # empty tokens dropped
        ],
    )
    state = schema.state["genres"]
    assert state["num_truncated_rows"] == 1 and state["max_observed_length"] == 4
    assert state["num_missing"] == 1


def test_multivalued_learns_max_length_and_separator():
    schema = FeatureSchema([MultiValuedFeature("t", separator=", ")])
    schema.adapt(make_dataset({"t": ["a, b", "a", "a, b, c"]}))
    assert schema.max_length("t") == 3
    np.testing.assert_array_equal(apply_one(schema, "t", ["c, a, b, a"]), [[3, 1, 2]])


# --- adapt ---


def test_adapt_reads_the_dataset_once_and_streams():
    passes = []

    def rows():
        passes.append(1)
        rng = np.random.default_rng(0)
        for i in range(500):
            yield (
                {
                    "u": f"u{i % 7}".encode(),
                    "x": np.float32(rng.normal()),
                    "g": b"a|b" if i % 2 else b"c",
                    "d": np.float32(i),
                },
                np.float32(i % 2),
            )

    signature = (
        {
            "u": tf.TensorSpec((), tf.string),
            "x": tf.TensorSpec((), tf.float32),
            "g": tf.TensorSpec((), tf.string),
            "d": tf.TensorSpec((), tf.float32),
        },
        tf.TensorSpec((), tf.float32),
    )
    dataset = tf.data.Dataset.from_generator(rows, output_signature=signature).batch(32)
    schema = FeatureSchema(
        [
            CategoricalFeature("u"),
            NumericFeature("x", transform="standardize"),
            MultiValuedFeature("g"),
            NumericFeature("d", transform="discretize", num_bins=5),
        ]
    )
    schema.adapt(dataset)
    assert len(passes) == 1  # every vocabulary and statistic from one pass
    assert len(schema.vocabulary("u")) == 7 and schema.vocabulary("g") == ["a", "b", "c"]
    assert schema.state["x"]["num_rows"] == 500 and len(schema.bin_boundaries("d")) == 4
    assert schema.max_length("g") == 2
    # `steps` stops early (for repeated datasets).
    schema.adapt(dataset.repeat(), steps=3)
    assert schema.state["u"]["num_rows"] == 96


def test_adapt_errors():
    schema = FeatureSchema([CategoricalFeature("user", min_count=5)])
    with pytest.raises(ValueError, match="user.*empty"):
        schema.adapt(make_dataset({"user": ["a", "b"]}))
    with pytest.raises(KeyError, match="user"):
        schema.adapt(make_dataset({"item": ["a", "b"]}))
    with pytest.raises(ValueError, match="not adapted|adapt"):
        schema.fields()
    with pytest.raises(ValueError, match="adapt"):
        schema.preprocessor()


def test_declaration_errors_name_the_argument():
    with pytest.raises(ValueError, match="encoding"):
        CategoricalFeature("a", encoding="onehot")
    with pytest.raises(ValueError, match="num_bins"):
        CategoricalFeature("a", encoding="hash")
    with pytest.raises(ValueError, match="num_ids"):
        CategoricalFeature("a", encoding="integer", dtype="int64")
    with pytest.raises(ValueError, match="num_oov_buckets"):
        CategoricalFeature("a", num_oov_buckets=0)
    with pytest.raises(ValueError, match="transform"):
        NumericFeature("x", transform="sqrt")
    with pytest.raises(ValueError, match="bin_boundaries"):
        NumericFeature("x", transform="discretize")
    with pytest.raises(ValueError, match="bin_boundaries"):
        NumericFeature("x", transform="discretize", bin_boundaries=[2.0, 1.0])
    with pytest.raises(ValueError, match="default"):
        NumericFeature("x", default=float("nan"))
    with pytest.raises(ValueError, match="max_length"):
        MultiValuedFeature("g", max_length=0)
    with pytest.raises(ValueError, match="unique"):
        FeatureSchema([NumericFeature("x"), CategoricalFeature("x")])


# --- Serialization, the two paths, serving ---

RAW = {
    "user": ["u1", "u2", "u1", "u3", "u2", "u1", "u4", ""],
    "item": np.array([10, 11, 12, 10, 11, 10, 13, 12], dtype="int64"),
    "site": ["s1", "s2", "s3", "s1", "s2", "s3", "s1", "s2"],
    "price": np.array([1.0, 2.5, np.nan, 4.0, 5.5, 0.5, 7.0, 8.0], dtype="float32"),
    "clicks": np.array([0.0, 3.0, 10.0, 1.0, 2.0, 50.0, 0.0, 4.0], dtype="float32"),
    "genres": ["A|B", "B", "", "A|B|C|D", "C", "A", "B|C", "E"],
}
LABEL = np.array([0, 1, 0, 1, 1, 0, 1, 0], dtype="float32")
# Unseen user / item / site, a missing price, an unseen and a too-long genre list.
NEW_ROWS = {
    "user": np.array(["u1", "new user", ""], dtype=object),
    "item": np.array([13, 999, 10], dtype="int64"),
    "site": np.array(["s2", "new site", "s1"], dtype=object),
    "price": np.array([np.nan, 3.0, 1e3], dtype="float32"),
    "clicks": np.array([1.0, -2.0, 1e5], dtype="float32"),
    "genres": np.array(["Z|A", "A|B|C|D|E", ""], dtype=object),
}


def full_schema():
    schema = FeatureSchema(
        [
            CategoricalFeature("user"),
            CategoricalFeature("item", dtype="int64"),
            CategoricalFeature("site", encoding="hash", num_bins=50),
            NumericFeature("price", transform="standardize", default=0.0),
            NumericFeature("clicks", transform="discretize", bin_boundaries=[1.0, 5.0, 20.0]),
            MultiValuedFeature("genres", max_length=3),
        ],
        label="clicked",
    )
    return schema.adapt(make_dataset(RAW, LABEL, batch_size=3))


def as_tensors(rows):
    return {k: tf.constant(v) for k, v in rows.items()}


def test_json_round_trip_restores_without_adapting(tmp_path):
    schema = full_schema()
    text = schema.to_json()
    json.loads(text)  # plain JSON
    restored = FeatureSchema.from_json(text)
    assert restored == schema and restored.fields() == schema.fields()
    assert restored.state["price"]["mean"] == schema.state["price"]["mean"]
    new = as_tensors(NEW_ROWS)
    want = schema.preprocessor()(new)
    got = restored.preprocessor()(new)
    for name in want:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())
    path = tmp_path / "schema.json"
    schema.save(path)
    assert FeatureSchema.load(path) == schema
    # The preprocessor's config carries the schema too.
    layer = FeaturePreprocessor.from_config(schema.preprocessor().get_config())
    np.testing.assert_array_equal(layer(new)["genres"].numpy(), want["genres"].numpy())


def random_model(schema, builder=tf_fm.FM, **kwargs):
    """A model on `schema.fields()` with random weights (distinct predictions per row)."""
    model = builder(schema.fields(), embedding_dim=4, **kwargs)
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(scale=0.5, size=w.shape) for w in model.get_weights()])
    return model


def test_training_path_and_serving_path_are_identical():
    schema = full_schema()
    model = random_model(schema)
    serving = schema.serving_model(model)
    assert sorted(serving.input.keys()) == sorted(RAW)
    assert serving.input["user"].dtype == "string" and serving.input["price"].dtype == "float32"
    rows = {
        k: np.concatenate([np.asarray(RAW[k], dtype=NEW_ROWS[k].dtype), v])
        for k, v in NEW_ROWS.items()
    }
    n = len(rows["user"])
    # Training path: tf.data map with parallel calls.
    dataset = make_dataset(rows, np.zeros(n, "float32"), batch_size=n)
    train_ids = preprocess_all(schema, dataset)
    # Serving path: the served model's own preprocessing layer, in a compiled
    # functional graph (as in `predict`).
    layer = serving.get_layer("feature_preprocessor")
    inner = keras.Model(serving.input, layer(serving.input))
    serve_ids = inner.predict(rows, batch_size=n, verbose=0)
    for name in schema.names:
        np.testing.assert_array_equal(serve_ids[name], train_ids[name], err_msg=name)
    # Spot checks of the new rows: OOV, default, truncation.
    assert train_ids["user"][-2] == 0 and train_ids["item"][-2] == 0
    np.testing.assert_array_equal(train_ids["genres"][-2], [2, 1, 3])  # A, B, C of 5
    np.testing.assert_array_equal(train_ids["genres"][-1], [-1, -1, -1])
    # Predictions: the model on the tf.data ids == the serving model on raw rows.
    want = model.predict(schema.preprocess(dataset), verbose=0)
    got = serving.predict(rows, batch_size=n, verbose=0)  # dtype=object string arrays
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(np.round(got, 6))) > 1  # the model is not constant


def test_serving_model_keras_round_trip_and_export(tmp_path):
    schema = full_schema()
    model = random_model(schema, tf_fm.DeepFM, dnn_units=(8,))
    serving = schema.serving_model(model)
    new = as_tensors(NEW_ROWS)
    want = serving(new).numpy()

    path = tmp_path / "serving.keras"
    serving.save(path)
    restored = keras.saving.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(restored(new).numpy(), want)
    # predict runs a compiled graph: equal up to float rounding, not bit for bit.
    np.testing.assert_allclose(restored.predict(NEW_ROWS, verbose=0), want, rtol=1e-6, atol=1e-7)

    export_dir = str(tmp_path / "export")
    serving.export(export_dir, verbose=False)
    loaded = tf.saved_model.load(export_dir)
    signature = loaded.signatures["serving_default"]
    _, spec = signature.structured_input_signature
    assert spec["user"].dtype == tf.string and spec["genres"].dtype == tf.string
    assert spec["item"].dtype == tf.int64 and spec["price"].dtype == tf.float32
    np.testing.assert_allclose(loaded.serve(new).numpy(), want, rtol=1e-6)
    (out,) = signature(**new).values()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)
    one = {k: v[:1] for k, v in new.items()}  # another batch size
    np.testing.assert_allclose(loaded.serve(one).numpy(), want[:1], rtol=1e-6)


TF_ONLY_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
sys.modules["tf_fm"] = None  # the package cannot be imported: TensorFlow only
rows = json.loads(sys.argv[2])
inputs = {
    k: tf.constant(np.asarray(v, dtype=np.float32 if k in ("price", "clicks") else None))
    for k, v in rows.items()
}
inputs["item"] = tf.cast(inputs["item"], tf.int64)
served = tf.saved_model.load(sys.argv[1]).signatures["serving_default"](**inputs)
print(json.dumps(next(iter(served.values())).numpy().ravel().tolist()))
"""


@pytest.mark.slow
def test_export_runs_in_a_tensorflow_only_process(tmp_path):
    schema = full_schema()
    serving = schema.serving_model(random_model(schema))
    serving.export(str(tmp_path / "export"), verbose=False)
    want = serving(as_tensors(NEW_ROWS)).numpy().ravel()
    rows = {
        k: [None if isinstance(x, float) and math.isnan(x) else x for x in v.tolist()]
        for k, v in NEW_ROWS.items()
    }
    rows["price"] = [float("nan") if x is None else x for x in rows["price"]]
    result = subprocess.run(
        [sys.executable, "-c", TF_ONLY_SCRIPT, str(tmp_path / "export"), json.dumps(rows)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_serving_model_rejects_a_model_reading_other_inputs():
    schema = full_schema()
    model = tf_fm.FM([*schema.fields(), NumericFeature("age")])
    with pytest.raises(ValueError, match="age"):
        schema.serving_model(model)


def test_deepfm_trains_on_preprocessed_data():
    rng = np.random.default_rng(0)
    n = 512
    raw = {
        "user": rng.choice([f"u{i}" for i in range(30)], n).astype(object),
        "price": np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(size=n)).astype("float32"),
        "genres": rng.choice(["A|B", "B", "C|A|D", ""], n).astype(object),
    }
    label = (rng.random(n) < 0.3).astype("float32")
    data = make_dataset(raw, label, batch_size=64)
    schema = FeatureSchema(
        [
            CategoricalFeature("user"),
            NumericFeature("price", transform="log1p", default=0.0),
            MultiValuedFeature("genres", max_length=3),
        ]
    ).adapt(data)
    model = tf_fm.DeepFM(schema.fields(), dnn_units=(16,))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    history = model.fit(schema.preprocess(data), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


# --- Inference and display ---


def test_infer_schema_picks_kinds(tmp_path):
    n = 300
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "city": rng.choice(["paris", "rome"], n),
            "price": np.where(np.arange(n) % 10 == 0, np.nan, rng.normal(10, 2, n)),
            "weekday": rng.integers(0, 7, n),
            "views": rng.integers(0, 10**6, n),
            "tags": rng.choice(["a|b", "b", "c"], n),
            "clicked": rng.integers(0, 2, n),
        }
    )
    schema = infer_schema(frame, label="clicked", separator="|", max_integer_cardinality=50)
    assert schema.names == ["city", "price", "weekday", "views", "tags"]
    assert schema["city"] == CategoricalFeature("city")
    assert schema["price"].transform == "standardize"
    assert schema["price"].default == pytest.approx(frame["price"].mean())
    assert schema["weekday"] == CategoricalFeature("weekday")
    assert schema["views"] == NumericFeature("views", transform="standardize")
    assert schema["tags"] == MultiValuedFeature("tags", separator="|")
    # Without a separator, a delimited column stays categorical; overrides win.
    plain = infer_schema(
        frame,
        label="clicked",
        overrides={"views": CategoricalFeature("views", encoding="hash", num_bins=100)},
        exclude=["city"],
    )
    assert plain["tags"] == CategoricalFeature("tags")
    assert plain["views"].encoding == "hash" and "city" not in plain.names
    # A CSV sample gives the same proposal.
    path = tmp_path / "sample.csv"
    frame.to_csv(path, index=False)
    assert infer_schema(path, label="clicked", separator="|", max_integer_cardinality=50).names == (
        schema.names
    )
    with pytest.raises(ValueError, match="nope"):
        infer_schema(frame, label="nope")


def test_str_shows_a_table():
    schema = full_schema()
    text = str(schema)
    lines = text.splitlines()
    assert lines[0] == "FeatureSchema: 6 features, label 'clicked', adapted on 8 rows"
    assert lines[1].split() == ["feature", "kind", "preprocessing", "raw", "input", "model"] + [
        "input",
        "learned",
    ]
    row = next(line for line in lines if line.startswith("genres"))
    assert "multivalued" in row and "split '|'" in row and "multivalued(6, len 3)" in row
    assert "1 rows truncated" in row
    row = next(line for line in lines if line.startswith("price"))
    assert "standardize, default=0" in row and "1 missing" in row
    assert "not adapted" in str(FeatureSchema([CategoricalFeature("u")]))


# --- Real data ---


def movielens(shared_data):
    root = shared_data / "ml-latest-small"
    if not root.is_dir():
        pytest.skip("ml-latest-small not present")
    ratings = pd.read_csv(root / "ratings.csv")
    movies = pd.read_csv(root / "movies.csv")
    frame = ratings.merge(movies[["movieId", "genres"]], on="movieId", how="left")
    frame["genres"] = frame["genres"].fillna("")
    return frame


def to_dataset(frame, batch_size, schema):
    frame = frame.assign(click=(frame["rating"] >= 4).astype("float32"))
    dataset = tf_fm.data.read_dataframe(frame, label="click", schema=schema, batch_size=batch_size)
    return dataset, frame["click"].to_numpy()


def test_movielens_fm_beats_chance(shared_data):
    frame = movielens(shared_data)
    test_mask = np.random.default_rng(0).random(len(frame)) < 0.2
    schema = infer_schema(
        frame,
        label="rating",
        separator="|",
        exclude=["timestamp"],
        overrides={"movieId": CategoricalFeature("movieId", dtype="int64")},
    )
    assert [type(f).__name__ for f in schema.features] == [
        "CategoricalFeature",
        "CategoricalFeature",
        "MultiValuedFeature",
    ]
    train, _ = to_dataset(frame[~test_mask], 1024, schema)
    test, test_label = to_dataset(frame[test_mask], 4096, schema)
    schema.adapt(train)
    assert schema.field("userId")["vocabulary_size"] == 1 + frame[~test_mask]["userId"].nunique()
    assert schema.max_length("genres") == 10
    model = tf_fm.FM(schema, embedding_dim=8)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    history = model.fit(schema.preprocess(train.shuffle(64, seed=0)), epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][-1])
    scores = schema.serving_model(model).predict(test.map(lambda x, y: x), verbose=0)[:, 0]
    auc = keras.metrics.AUC(num_thresholds=2000)
    auc.update_state(test_label, scores)
    assert float(auc.result()) > 0.6


def test_integer_columns_are_ids_unless_there_is_evidence_of_a_quantity():
    rng = np.random.default_rng(0)
    n = 5000
    frame = pd.DataFrame(
        {
            "item": rng.integers(0, 4082, n),  # 4k distinct ids: still an id
            "user_id": rng.integers(0, 300, n),
            "click_count": rng.integers(0, 20, n),  # the name says a quantity
            "delta": rng.integers(-5, 5, n),  # negative values
            "row": np.arange(n),  # one value per row
            "price": rng.random(n),  # float
        }
    )
    notes = []
    schema = infer_schema(frame, notes=notes)
    kinds = {f.name: f.kind for f in schema.features}
    assert kinds == {
        "item": "categorical",
        "user_id": "categorical",
        "click_count": "numeric",
        "delta": "numeric",
        "row": "numeric",
        "price": "numeric",
    }
    assert any(line.startswith("item: ") and "-> categorical vocabulary" in line for line in notes)
    assert any("click_count" in line and "name says a quantity (count)" in line for line in notes)
    assert any("delta" in line and "negative values" in line for line in notes)
    assert len(notes) == 5  # one line per integer column
    # The old cap is still there for who wants it.
    capped = infer_schema(frame, max_integer_cardinality=1000)
    assert capped["item"].kind == "numeric" and capped["user_id"].kind == "categorical"


def test_adapt_names_a_missing_feature_and_what_is_there():
    schema = FeatureSchema([CategoricalFeature("user"), NumericFeature("age", default=0.0)])
    dataset = make_dataset({"user": np.array(["a", "b"]), "price": np.array([1.0, 2.0])})
    with pytest.raises(KeyError, match=r"no feature \['age'\]. It has: \['price', 'user'\]"):
        schema.adapt(dataset)


def test_csv_literal_nan_and_inf_are_missing_values(tmp_path):
    """`nan` / `inf` cells: the default is the mean of the finite values, as for blanks."""
    path = tmp_path / "years.csv"
    years = [2001, 2003, 2005, 2007] * 5
    rows = ["label,year"] + [f"{i % 2},{y}.0" for i, y in enumerate(years)]
    rows += ["1,nan", "0,inf", "1,", "0,-inf"]
    path.write_text("\n".join(rows) + "\n")
    schema = infer_schema(str(path), label="label")
    assert schema["year"].default == pytest.approx(2004.0)
    raw = tf_fm.data.read_csv(str(path), label="label", column_types={"year": "float"})
    schema.adapt(raw)
    state = schema.state["year"]
    assert state["mean"] == pytest.approx(2004.0) and state["num_missing"] == 4
    assert math.sqrt(state["variance"]) == pytest.approx(np.std(years))
