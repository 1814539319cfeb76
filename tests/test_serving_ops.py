"""FeaturePreprocessor's stacked ops against the per-feature Keras layers, and tf.Example clients.

The reference is the per-feature preprocessing `FeaturePreprocessor` had
before it stacked its columns: one `StringLookup` / `IntegerLookup` /
`Hashing` / `Normalization` / `Discretization` layer per feature, copied here
as it was. The stacked layer must give the same ids and values, bit for
bit, in every path (eager, `tf.data`, a compiled Keras model, a SavedModel).
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import (
    CategoricalFeature,
    FeaturePreprocessor,
    FeatureSchema,
    MultiValuedFeature,
    NumericFeature,
)
from tf_fm.export.servable import Servable

# === The reference: the per-feature implementation, as it was ===


def _flat(x):
    return tf.reshape(x, [-1])


def _prepare_categorical(feature, x):
    x = _flat(tf.convert_to_tensor(x))
    if feature.dtype == "string":
        return x if x.dtype == tf.string else tf.strings.as_string(x)
    return tf.cast(x, tf.int64)


def _prepare_numeric(feature, x):
    x = tf.cast(_flat(tf.convert_to_tensor(x)), tf.float32)
    finite = tf.math.is_finite(x)
    if feature.default is None:
        x = tf.debugging.assert_all_finite(x, f"feature `{feature.name}` no `default`")
    else:
        x = tf.where(finite, x, tf.constant(feature.default, tf.float32))
    if feature.transform == "log1p":
        x = tf.math.log1p(tf.maximum(x, 0.0))
    return x


class ReferencePreprocessor:
    """One Keras preprocessing layer per feature: the ids and values to reproduce."""

    def __init__(self, schema):
        self.schema = schema
        self.layers = {f.name: self._make_layer(f) for f in schema.features}

    def _make_layer(self, feature):
        state = self.schema.state.get(feature.name, {})
        if feature.kind in ("categorical", "multivalued"):
            if feature.encoding == "hash":
                return keras.layers.Hashing(feature.num_bins)
            if feature.encoding == "integer":
                return None
            vocabulary = self.schema.vocabulary(feature.name)
            if feature.dtype == "string":
                return keras.layers.StringLookup(
                    vocabulary=vocabulary,
                    num_oov_indices=feature.num_oov_buckets,
                    mask_token=None,
                    oov_token="[UNK]",
                )
            return keras.layers.IntegerLookup(
                vocabulary=np.asarray(vocabulary, dtype="int64"),
                num_oov_indices=feature.num_oov_buckets,
                mask_token=None,
                oov_token=-1,
                vocabulary_dtype="int64",
            )
        if feature.transform == "standardize":
            variance = state["variance"] if state["variance"] > 0 else 1.0
            layer = keras.layers.Normalization(
                axis=None, mean=state["mean"], variance=variance, dtype="float32"
            )
            layer.build((None,))
            return layer
        if feature.transform == "discretize":
            return keras.layers.Discretization(
                bin_boundaries=self.schema.bin_boundaries(feature.name)
            )
        return None

    def _apply(self, feature, x):
        layer = self.layers[feature.name]
        if feature.kind == "categorical":
            x = _prepare_categorical(feature, x)
            if feature.encoding == "integer":
                outside = tf.logical_or(x < 0, x >= feature.num_ids)
                if feature.out_of_range == "oov":
                    return tf.where(outside, tf.constant(feature.num_ids, tf.int64), x)
                return x  # valid ids only in the equality tests
            return tf.cast(layer(x), tf.int64)
        if feature.kind == "numeric":
            x = _prepare_numeric(feature, x)
            if feature.transform == "discretize":
                return tf.cast(layer(x), tf.int64)
            if feature.transform == "standardize":
                x = layer(x)
            return tf.cast(x, tf.float32)
        if feature.encoding == "integer":
            return tf.reshape(tf.cast(x, tf.int64), [-1, feature.max_length])
        tokens = tf.strings.split(_flat(tf.convert_to_tensor(x)), sep=feature.separator)
        tokens = tf.ragged.boolean_mask(tokens, tf.not_equal(tokens, ""))
        ids = tokens.with_flat_values(tf.cast(layer(tokens.flat_values), tf.int64))
        length = self.schema.max_length(feature.name)
        return ids.to_tensor(default_value=-1, shape=[None, length])

    def __call__(self, inputs):
        outputs = {}
        for feature in self.schema.features:
            outputs[feature.name] = self._apply(feature, inputs[feature.name])
            if getattr(feature, "weighted", False):
                name = f"{feature.name}_weights"
                shape = [-1, feature.max_length]
                outputs[name] = tf.reshape(tf.cast(inputs[name], tf.float32), shape)
        return outputs


# === A schema with every kind of feature, and rows with unseen and missing values ===

BIG_PRIMES = (2**61 - 1, 2**31 - 1)  # their lcm exceeds 2**62: two hash ops


def every_kind_schema():
    return FeatureSchema(
        [
            CategoricalFeature("v1", min_count=2),
            CategoricalFeature("v3", num_oov_buckets=3),
            CategoricalFeature("fixed", vocabulary=["[UNK]", "red", "green"]),  # [UNK] dropped
            CategoricalFeature("item", dtype="int64"),
            CategoricalFeature("item3", dtype="int64", num_oov_buckets=3),
            CategoricalFeature("site", encoding="hash", num_bins=50),
            CategoricalFeature("code", encoding="hash", num_bins=7, dtype="int64"),
            CategoricalFeature("big", encoding="hash", num_bins=BIG_PRIMES[0]),
            CategoricalFeature("big2", encoding="hash", num_bins=BIG_PRIMES[1]),
            CategoricalFeature("hour", encoding="integer", num_ids=24),
            CategoricalFeature("slot", encoding="integer", num_ids=10, out_of_range="oov"),
            NumericFeature("plain"),
            NumericFeature("price", transform="standardize", default=0.0),
            NumericFeature("count", transform="log1p", default=1.0),
            NumericFeature("age", transform="discretize", bin_boundaries=[18, 30, 65], default=30),
            NumericFeature("score", transform="discretize", num_bins=4, default=0.0),
            NumericFeature("log2", transform="log1p", default=0.0),
            MultiValuedFeature("genres", max_length=3),
            MultiValuedFeature("tags", encoding="hash", num_bins=13, max_length=2),
            MultiValuedFeature("words", separator=" ", num_oov_buckets=2),
            MultiValuedFeature(
                "libfm", encoding="integer", num_ids=20, max_length=4, weighted=True
            ),
        ]
    )


def every_kind_rows(n, seed, unseen):
    """Raw columns; with `unseen`, values the adapt data never had, missing and extreme ones."""
    rng = np.random.default_rng(seed)
    tokens = [f"t{i}" for i in range(12)] + (["never", "seen", "", "[UNK]"] if unseen else [""])
    pick = lambda values: rng.choice(np.asarray(values, dtype=object), n)  # noqa: E731
    floats = (rng.lognormal(1.0, 2.0, n) * rng.choice([-1, 1], n)).astype("float32")
    missing = np.where(rng.random(n) < 0.2, np.nan, floats).astype("float32")
    if unseen:
        missing[:4] = [np.inf, -np.inf, np.nan, 1e30]
    genre_rows = ["A|B", "B", "", "A|B|C|D", "C||A", "E"] + (["Z|A", "|"] if unseen else [])
    word_rows = ["x y", "y", "x y z w"] + (["q x", "  "] if unseen else [])
    ids = np.where(rng.random((n, 4)) < 0.3, -1, rng.integers(0, 20, (n, 4)))
    return {
        "v1": pick(tokens[:6] + tokens[:3] + tokens[-3:]),
        "v3": pick(tokens + [f"u{i}" for i in range(30 if unseen else 0)]),
        "fixed": pick(["red", "green", "blue", "[UNK]", ""]),
        "item": rng.integers(-3 if unseen else 0, 40 if unseen else 20, n),
        "item3": rng.integers(-50 if unseen else 0, 60 if unseen else 20, n),
        "site": pick(tokens),
        "code": rng.integers(-5, 1000, n),
        "big": pick(tokens),
        "big2": pick(tokens),
        "hour": rng.integers(0, 24, n),
        "slot": rng.integers(-3 if unseen else 0, 14 if unseen else 10, n),
        "plain": floats,
        "price": missing,
        "count": missing,
        "age": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0, 90, n)).astype("float32"),
        "score": missing,
        "log2": floats,
        "genres": pick(genre_rows),
        "tags": pick(genre_rows),
        "words": pick(word_rows),
        "libfm": ids,
        "libfm_weights": rng.uniform(0, 2, (n, 4)).astype("float32"),
    }


@pytest.fixture(scope="module")
def adapted():
    schema = every_kind_schema()
    rows = every_kind_rows(600, seed=0, unseen=False)
    schema.adapt(tf.data.Dataset.from_tensor_slices(rows).batch(128))
    return schema, ReferencePreprocessor(schema)


def assert_same(got, want):
    assert list(got) == list(want)
    for name in want:
        got_value, want_value = np.asarray(got[name]), np.asarray(want[name])
        assert got_value.dtype == want_value.dtype, name
        np.testing.assert_array_equal(got_value, want_value, err_msg=name)


def tensors(rows):
    return {k: tf.constant(v) for k, v in rows.items()}


# === Equality with the reference, every path ===


def test_stacked_preprocessing_equals_the_per_feature_layers(adapted, tmp_path):
    schema, reference = adapted
    rows = every_kind_rows(300, seed=1, unseen=True)
    want = {k: v.numpy() for k, v in reference(tensors(rows)).items()}
    layer = schema.preprocessor()
    assert_same({k: v.numpy() for k, v in layer(tensors(rows)).items()}, want)
    # Every id of every kind occurs, OOV buckets included: the comparison is not vacuous.
    assert set(want["v3"]) >= {0, 1, 2} and set(want["item3"]) >= {0, 1, 2}
    assert set(want["fixed"]) == {0, 1, 2} and 10 in want["slot"] and -1 in want["words"]
    assert want["price"].min() < -0.5 and np.isfinite(want["count"]).all()
    # tf.data (the training path) at several batch sizes, the same graph as the reference's.
    for batch in (1, 7, 64):
        data = tf.data.Dataset.from_tensor_slices(rows).batch(batch)
        new = [b for b in data.map(layer).as_numpy_iterator()]
        old = [b for b in data.map(reference).as_numpy_iterator()]
        for got, expected in zip(new, old, strict=True):
            assert_same(got, expected)
    # A compiled Keras model (the serving path), and an empty batch.
    inputs = {
        name: keras.Input(shape=shape, dtype=dtype, name=name)
        for name, (dtype, shape) in schema.raw_input_specs().items()
    }
    model = keras.Model(inputs, layer(inputs))
    assert_same(model.predict(rows, batch_size=300, verbose=0), want)
    # A SavedModel, reloaded by TensorFlow alone.
    model.export(str(tmp_path / "preprocessing"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "preprocessing")).signatures["serving_default"]
    got = {k: v.numpy() for k, v in served(**tensors(rows)).items()}
    assert_same({k: got[k] for k in want}, want)
    empty = layer({k: v[:0] for k, v in tensors(rows).items()})
    assert all(v.shape[0] == 0 for v in empty.values())


def test_every_bucket_count_is_the_keras_one(adapted):
    # Unseen tokens spread over 3 OOV buckets exactly as StringLookup hashes them,
    # and hash bins whose lcm overflows int64 still match keras.layers.Hashing.
    schema, _ = adapted
    tokens = tf.constant([f"token {i}" for i in range(2000)])
    out = schema.preprocessor()({**tensors(every_kind_rows(2000, 3, True)), "v3": tokens})
    lookup = keras.layers.StringLookup(
        vocabulary=schema.vocabulary("v3"), num_oov_indices=3, mask_token=None
    )
    np.testing.assert_array_equal(out["v3"].numpy(), lookup(tokens).numpy())
    assert np.bincount(out["v3"].numpy()).tolist()[:3] != [0, 0, 0]
    big = every_kind_rows(2000, 3, True)["big"]
    for name, bins in zip(("big", "big2"), BIG_PRIMES, strict=True):
        want = keras.layers.Hashing(bins)(tf.constant(big)).numpy()
        got = schema.preprocessor()({**tensors(every_kind_rows(2000, 3, True)), name: big})
        np.testing.assert_array_equal(got[name].numpy(), want)


def count_ops(function, *args):
    graph = tf.function(function).get_concrete_function(*args).graph
    counts = {}
    for op in graph.get_operations():
        counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def test_op_counts_per_batch():
    def ops_of(n, **kwargs):
        schema = FeatureSchema(
            [NumericFeature(f"I{i}", transform="log1p", default=0.0) for i in range(n)]
            + [NumericFeature(f"Z{i}", transform="standardize", default=0.0) for i in range(n)]
            + [CategoricalFeature(f"C{i}", vocabulary=["a", "b"], **kwargs) for i in range(n)]
            + [CategoricalFeature(f"H{i}", encoding="hash", num_bins=10 + i) for i in range(n)]
        )
        schema.state = {f"Z{i}": {"mean": 1.0, "variance": 4.0} for i in range(n)}
        specs = {
            name: tf.TensorSpec([None], tf.float32 if name[0] in "IZ" else tf.string, name=name)
            for name in schema.names
        }
        return count_ops(schema.preprocessor(), specs)

    small, large = ops_of(2), ops_of(13)
    # The numeric fill and scaling and the hashing: as many ops for 52 features as for 8.
    for op in ("IsFinite", "SelectV2", "Maximum", "Sub", "DivNoNan", "StringToHashBucketFast"):
        assert small[op] == large[op] == 1, op
    assert large["Log1p"] == 13  # per column: the vectorized and scalar kernels differ
    # One lookup per vocabulary feature, on its own table, and no string built per call.
    assert large["LookupTableFindV2"] == 13 and not {"Add", "StringJoin", "AsString"} & set(large)
    # Several OOV buckets: the same one hash op serves them too.
    assert ops_of(13, num_oov_buckets=3)["StringToHashBucketFast"] == 1


# === Errors: the failing features named, in every path ===


def test_range_and_missing_value_errors_name_every_failing_feature():
    schema = FeatureSchema(
        [
            CategoricalFeature("hour", encoding="integer", num_ids=24),
            CategoricalFeature("day", encoding="integer", num_ids=7),
            CategoricalFeature("slot", encoding="integer", num_ids=3, out_of_range="oov"),
            NumericFeature("price"),
            NumericFeature("age", default=30.0),
        ]
    )
    layer = schema.preprocessor()
    good = {
        "hour": tf.constant([0, 23], tf.int64),
        "day": tf.constant([6, 0], tf.int64),
        "slot": tf.constant([9, -1], tf.int64),
        "price": tf.constant([1.0, 2.0]),
        "age": tf.constant([np.nan, 1.0]),
    }
    out = layer(good)
    np.testing.assert_array_equal(out["slot"].numpy(), [3, 3])
    np.testing.assert_array_equal(out["age"].numpy(), [30.0, 1.0])
    bad = dict(good, hour=tf.constant([24, 1], tf.int64), day=tf.constant([-1, 7], tf.int64))
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"`hour`.*`day`.*First bad values: 24, -1, 7"
    ):
        layer(bad)
    data = tf.data.Dataset.from_tensor_slices(bad).batch(2).map(layer)
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature `day`"):
        list(data)
    missing = dict(good, price=tf.constant([1.0, np.inf]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"feature `price`.*no `default`"):
        layer(missing)
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature `price`"):
        tf.function(layer)(missing)


def test_vocabularies_are_read_and_checked_as_the_keras_layers_do():
    # A reserved OOV token after the start is an ordinary token; at the start it is dropped.
    tokens = tf.constant(["[UNK]", "a", "b", "zz"])
    for vocabulary in (["a", "[UNK]"], ["[UNK]", "a", "b"]):
        schema = FeatureSchema([CategoricalFeature("c", vocabulary=vocabulary)])
        lookup = keras.layers.StringLookup(vocabulary=vocabulary, mask_token=None)
        np.testing.assert_array_equal(
            schema.preprocessor()({"c": tokens})["c"].numpy(), lookup(tokens).numpy()
        )
    schema = FeatureSchema([CategoricalFeature("c", vocabulary=["a", "b", "a"])])
    with pytest.raises(ValueError, match="Feature 'c'.*repeated"):
        schema.preprocessor()
    with pytest.raises(ValueError, match="repeated"):
        keras.layers.StringLookup(vocabulary=["a", "b", "a"], mask_token=None)


# === Saving: .keras without custom objects, configs written before the stacked layer ===

# `schema.preprocessor().get_config()["schema"]` as the per-feature layer wrote it.
OLD_SCHEMA_JSON = """{"format": "tf_fm.FeatureSchema", "version": 1, "label": "clicked",
"features": [
 {"name": "user", "encoding": "vocabulary", "dtype": "string", "min_count": 1,
  "max_tokens": null, "num_oov_buckets": 2, "vocabulary": null, "num_bins": null,
  "num_ids": null, "out_of_range": "error", "kind": "categorical"},
 {"name": "price", "transform": "standardize", "default": 0.0, "num_bins": null,
  "bin_boundaries": null, "epsilon": 0.01, "kind": "numeric"},
 {"name": "genres", "separator": "|", "max_length": null, "encoding": "vocabulary",
  "min_count": 1, "max_tokens": null, "num_oov_buckets": 1, "vocabulary": null,
  "num_bins": null, "num_ids": null, "weighted": false, "combiner": "sum",
  "kind": "multivalued"}],
"state": {
 "user": {"num_rows": 8, "num_missing": 1, "vocabulary": ["u1", "u2", "", "u3", "u4"]},
 "price": {"num_rows": 8, "num_missing": 1, "mean": 3.5625, "variance": 7.62109375,
  "min": 0.0, "max": 8.0},
 "genres": {"num_rows": 8, "num_missing": 1, "vocabulary": ["B", "A", "C", "E"],
  "max_observed_length": 3, "max_length": 3, "num_truncated_rows": 0}}}"""


def test_old_configs_and_keras_files_load(tmp_path):
    config = {"name": "feature_preprocessor", "schema": json.loads(OLD_SCHEMA_JSON)}
    layer = FeaturePreprocessor.from_config(config)
    schema = FeatureSchema.from_dict(config["schema"])
    rows = {
        "user": tf.constant(["u3", "zz", "", "u1"]),
        "price": tf.constant([np.nan, 1.0, 8.0, -2.0]),
        "genres": tf.constant(["A|E|Q", "", "C|C", "B"]),
    }
    want = ReferencePreprocessor(schema)(rows)
    assert_same(
        {k: v.numpy() for k, v in layer(rows).items()}, {k: v.numpy() for k, v in want.items()}
    )
    model = tf_fm.DeepFM(schema, embedding_dim=4, dnn_units=(4,))
    serving = schema.serving_model(model)
    serving.save(tmp_path / "serving.keras")
    restored = keras.saving.load_model(tmp_path / "serving.keras")  # no custom_objects
    np.testing.assert_array_equal(restored(rows).numpy(), serving(rows).numpy())


# === Classify / Regress: variable-length tf.Examples, as real producers write them ===


@pytest.fixture(scope="module")
def examples_export(tmp_path_factory):
    raw = {
        "user": np.array(["u1", "u2", "u1", "u3", "u2", "u1", "u4", ""], dtype=object),
        "price": np.array([1.0, 2.5, np.nan, 4.0, 5.5, 0.5, 7.0, 8.0], dtype="float32"),
        "genres": np.array(["A|B", "B", "", "A|B|C", "C", "A", "B|C", "E"], dtype=object),
        "hour": np.arange(8, dtype="int64"),
        "tags": np.where(np.eye(8, 3) > 0, 5, -1).astype("int64"),
        "tags_weights": np.full((8, 3), 0.5, dtype="float32"),
    }
    schema = FeatureSchema(
        [
            CategoricalFeature("user"),
            NumericFeature("price", transform="log1p", default=1.0),
            MultiValuedFeature("genres", max_length=2),
            CategoricalFeature("hour", encoding="integer", num_ids=24),
            MultiValuedFeature("tags", encoding="integer", num_ids=20, max_length=3, weighted=True),
        ]
    ).adapt(tf.data.Dataset.from_tensor_slices(raw).batch(4))
    model = tf_fm.FM(schema, embedding_dim=4)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(scale=0.5, size=w.shape) for w in model.get_weights()])
    base = tmp_path_factory.mktemp("examples")
    path = tf_fm.export_saved_model(model, base, schema=schema, sample=raw)  # verified
    return {"path": path, "servable": Servable(model, schema)}


def example(features):
    """A tf.Example from {name: list of values} (an empty list: the feature, no values)."""
    out = tf.train.Example()
    for name, values in features.items():
        feature = out.features.feature[name]
        if name in ("user", "genres"):
            feature.bytes_list.value.extend(v.encode() for v in values)
        elif name in ("hour", "tags"):
            feature.int64_list.value.extend(values)
        else:
            feature.float_list.value.extend(values)
    return out.SerializeToString()


# Examples with 0, 1, max_length (3) and more tag ids, missing and list-form features,
# and the serving_default row each one stands for.
EXAMPLES = [
    ({"user": ["u1"], "price": [2.0], "genres": ["A|B"], "hour": [3]}, ("u1", 2.0, "A|B", [])),
    (
        {"user": ["u2"], "genres": ["B"], "hour": [1], "tags": [4], "tags_weights": [2.0]},
        ("u2", np.nan, "B", [(4, 2.0)]),
    ),
    (
        {"hour": [0], "genres": ["C", "A", "B"], "tags": [1, 2, 3]},  # no weights: 1 each
        ("", np.nan, "C|A|B", [(1, 1.0), (2, 1.0), (3, 1.0)]),
    ),
    (
        {"user": ["zz"], "price": [-3.0], "genres": [], "hour": [23], "tags": [7, 8, 9, 1, 2]}
        | {"tags_weights": [0.5, 1.5, 2.5, 3.5, 4.5]},
        ("zz", -3.0, "", [(7, 0.5), (8, 1.5), (9, 2.5)]),
    ),
]


def serving_rows(pairs):
    """The `serving_default` inputs of the rows the Examples stand for."""
    rows = [r for _, r in pairs]
    tags = [[t for t, _ in r[3]] + [-1] * (3 - len(r[3])) for r in rows]
    weights = [[w for _, w in r[3]] + [1.0] * (3 - len(r[3])) for r in rows]
    return {
        "user": tf.constant([r[0] for r in rows]),
        "price": tf.constant([r[1] for r in rows], tf.float32),
        "genres": tf.constant([r[2] for r in rows]),
        "hour": tf.constant([e["hour"][0] for e, _ in pairs], tf.int64),
        "tags": tf.constant(tags, tf.int64),
        "tags_weights": tf.constant(weights, tf.float32),
    }


def test_classify_and_regress_take_variable_length_examples(examples_export):
    loaded = tf.saved_model.load(str(examples_export["path"]))
    serialized = tf.constant([example(e) for e, _ in EXAMPLES])
    want = loaded.signatures["serving_default"](**serving_rows(EXAMPLES))
    want = want["probability"].numpy()
    assert len(np.unique(want)) == len(EXAMPLES)
    scores = loaded.signatures["classification"](inputs=serialized)["scores"].numpy()
    np.testing.assert_allclose(scores[:, 1], want, atol=1e-6)
    outputs = loaded.signatures["regression"](inputs=serialized)["outputs"].numpy()
    np.testing.assert_allclose(outputs, want, atol=1e-6)
    # One Example at a time: the same predictions.
    for i, (features, _) in enumerate(EXAMPLES):
        one = loaded.signatures["regression"](inputs=tf.constant([example(features)]))
        np.testing.assert_allclose(one["outputs"].numpy(), want[i : i + 1], atol=1e-6)
    # Weights that do not match the ids, or a missing id feature: errors naming them.
    wrong = dict(EXAMPLES[3][0], tags_weights=[1.0, 2.0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="tags_weights"):
        loaded.signatures["regression"](inputs=tf.constant([example(wrong)]))
    no_hour = {k: v for k, v in EXAMPLES[0][0].items() if k != "hour"}
    with pytest.raises(tf.errors.InvalidArgumentError, match="hour"):
        loaded.signatures["classification"](inputs=tf.constant([example(no_hour)]))


@pytest.mark.slow
def test_classify_in_the_tf1_session_loader(examples_export):
    serialized = np.array([example(e) for e, _ in EXAMPLES], dtype=object)
    want = examples_export["servable"].classify(tf.constant(serialized))["scores"].numpy()
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta = tf.compat.v1.saved_model.loader.load(
            session, ["serve"], str(examples_export["path"])
        )
        signature = meta.signature_def["classification"]
        got = session.run(
            signature.outputs["scores"].name, {signature.inputs["inputs"].name: serialized}
        )
    np.testing.assert_allclose(got, want, atol=1e-6)
