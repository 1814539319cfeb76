"""FeatureSchema: one declaration per raw feature, learned once, applied twice.

A `FeatureSchema` lists the feature declarations of `tf_fm.features`, one per
raw column (what the readers of `tf_fm.data` yield), and holds what they
learn from data:

* `CategoricalFeature`: a vocabulary learned from data (`StringLookup` /
  `IntegerLookup`, with a minimum count and OOV buckets), a fixed number of
  hash bins (`Hashing`), or integer ids that already are `[0, num_ids)`.
* `NumericFeature`: a real value, unchanged, standardized (`Normalization`),
  `log1p`-transformed, or bucketized (`Discretization`, then categorical).
* `MultiValuedFeature`: one delimited string per row (`"Action|Comedy"`),
  split, looked up and padded with -1 to `max_length` ids; or ids that
  already are padded rows (libSVM / libFM, optionally weighted).

`FeatureSchema.adapt(dataset)` learns every vocabulary and statistic in one
streaming pass. `FeatureSchema.preprocessor()` is the Keras layer that maps the
raw feature dict to the model-input dict: it runs inside `tf.data` for
training (`FeatureSchema.preprocess(dataset)`) and inside the served model
(`FeatureSchema.serving_model(model)`), so both paths compute the same ids.

Example:

>>> schema = FeatureSchema(
...     [
...         CategoricalFeature("user", min_count=2),
...         NumericFeature("price", transform="log1p", default=0.0),
...         MultiValuedFeature("genres", separator="|", max_length=4),
...     ]
... )
>>> schema.adapt(raw_dataset)  # ({"user": ..., "price": ..., "genres": ...}, label)
>>> model = tf_fm.FM(schema)
>>> model.fit(schema.preprocess(raw_dataset), epochs=1)
>>> serving = schema.serving_model(model)  # raw named features in, probability out
>>> serving.export("saved_models/fm/1")
"""

import collections
import copy
import dataclasses
import json
import math
import os
import pathlib
import re
from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tf_fm import features as features_lib
from tf_fm.features import (
    PADDING_ID,
    CategoricalFeature,
    Feature,
    MultiValuedFeature,
    NumericFeature,
    feature_from_config,
    needs_adapt,
    needs_vocabulary,
)

SCHEMA_FORMAT = "tf_fm.FeatureSchema"
SCHEMA_VERSION = 1
# Tokens the lookup layers reserve for OOV: a literal occurrence in the data
# is left out of the learned vocabulary, so it maps to an OOV id like any
# unseen value.
_STRING_OOV_TOKEN = "[UNK]"
_INTEGER_OOV_TOKEN = -1


# === TensorFlow ops shared by `adapt` and the preprocessing layer ===


def _flat(x):
    """`x` as `(batch,)`: reshaped unless it already is one-dimensional."""
    return x if x.shape.rank == 1 else tf.reshape(x, [-1])


def _rows(x, length):
    """`x` as `(batch, length)`: reshaped unless it already has that shape."""
    if x.shape.rank == 2 and x.shape[1] == length:
        return x
    return tf.reshape(x, [-1, length])


def _prepare_categorical(feature, x):
    """Raw values (batch,) as tf.string or int64."""
    x = _flat(tf.convert_to_tensor(x))
    if feature.dtype == "string":
        return x if x.dtype == tf.string else tf.strings.as_string(x)
    if x.dtype == tf.string or not (x.dtype.is_integer or x.dtype.is_bool):
        raise TypeError(
            f"Feature '{feature.name}' is declared dtype='int64' but its input has "
            f"dtype {x.dtype.name}."
        )
    return tf.cast(x, tf.int64)


def _missing_message(feature):
    # No quote characters: graph-mode assertion messages escape them.
    return (
        f"FeatureSchema: feature `{feature.name}` has a missing (NaN or inf) value and "
        "declares no `default`; give NumericFeature a default"
    )


def _prepare_numeric(feature, x):
    """Float32 (batch,) with missing values filled (or rejected), before the learned step.

    Returns:
        (values, number of missing values in the batch).
    """
    x = tf.cast(_flat(tf.convert_to_tensor(x)), tf.float32)
    finite = tf.math.is_finite(x)
    num_missing = tf.reduce_sum(tf.cast(tf.logical_not(finite), tf.int64))
    if feature.default is None:
        x = tf.debugging.assert_all_finite(x, _missing_message(feature))
    else:
        x = tf.where(finite, x, tf.constant(feature.default, tf.float32))
    if feature.transform == "log1p":
        x = tf.math.log1p(tf.maximum(x, 0.0))
    return x, num_missing


def _multivalued_strings(feature, x):
    """The delimited strings (batch,) of a multi-valued feature."""
    x = _flat(tf.convert_to_tensor(x))
    if x.dtype != tf.string:
        raise TypeError(
            f"Feature '{feature.name}' is multi-valued: its input must be tf.string. "
            f"Received dtype {x.dtype.name}."
        )
    return x


def _prepare_multivalued(feature, x):
    """Tokens as a RaggedTensor (batch, None) of tf.string, empty tokens dropped."""
    tokens = tf.strings.split(_multivalued_strings(feature, x), sep=feature.separator)
    return tf.ragged.boolean_mask(tokens, tf.not_equal(tokens, ""))


def _prepare_id_rows(feature, x):
    """Ready ids (batch, max_length) int64 of an integer multi-valued feature."""
    x = tf.convert_to_tensor(x)
    if not (x.dtype.is_integer or x.dtype.is_bool):
        raise TypeError(
            f"Feature '{feature.name}' holds ids (encoding='integer'): its input must be "
            f"integer. Received dtype {x.dtype.name}."
        )
    return _rows(tf.cast(x, tf.int64), feature.max_length)


def _features_of(*element):
    """The feature dict of a dataset element: `features` or `(features, label, ...)`."""
    return element[0]


# === Learned state: one streaming pass ===


class _Counter:
    """Token counts over batches (np.unique per batch, then merged)."""

    def __init__(self):
        self.counts = collections.Counter()
        self.undecodable = 0  # occurrences of values that are not UTF-8 (left to OOV)

    def update(self, values):
        if values.size:
            tokens, counts = np.unique(values, return_counts=True)
            self.counts.update(dict(zip(tokens.tolist(), counts.tolist(), strict=True)))

    def vocabulary(self, feature):
        reserved = _STRING_OOV_TOKEN if feature.dtype == "string" else _INTEGER_OOV_TOKEN
        items = []
        for token, count in self.counts.items():
            if isinstance(token, bytes):
                try:
                    token = token.decode("utf-8")
                except UnicodeDecodeError:  # a JSON vocabulary holds text: such values are OOV
                    self.undecodable += count
                    continue
            if count >= feature.min_count and token != reserved:
                items.append((token, count))
        items.sort(key=lambda tc: (-tc[1], tc[0]))
        if feature.max_tokens is not None:
            items = items[: feature.max_tokens]
        if not items:
            raise ValueError(
                f"Feature '{feature.name}': no value occurs min_count={feature.min_count} "
                "times in the adapt data, so the learned vocabulary is empty."
            )
        return [t for t, _ in items]


class _Moments:
    """Count, mean and M2 merged batch by batch (Chan et al.), in float64."""

    def __init__(self):
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def update(self, values):
        n = values.size
        if not n:
            return
        values = values.astype(np.float64)
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    @property
    def variance(self):
        return self.m2 / self.count if self.count else 0.0


class _FeatureAccumulator:
    """Everything `adapt` learns about one feature, updated batch by batch."""

    def __init__(self, feature):
        self.feature = feature
        self.num_rows = 0
        self.num_missing = 0
        self.counter = _Counter() if needs_vocabulary(feature) else None
        self.moments = _Moments() if feature.kind == "numeric" else None
        self.quantiles = None
        if feature.kind == "numeric" and feature.transform == "discretize":
            if feature.bin_boundaries is None:
                self.quantiles = keras.layers.Discretization(
                    num_bins=feature.num_bins, epsilon=feature.epsilon
                )
        self.max_observed_length = 0
        self.num_truncated_rows = 0
        self.num_out_of_range = 0

    def tensors(self, x):
        """The TF side: what this feature sends to `update` per batch."""
        feature = self.feature
        if feature.kind == "categorical":
            return {"values": _prepare_categorical(feature, x)}
        if feature.kind == "numeric":
            values, num_missing = _prepare_numeric(feature, x)
            observed = tf.math.is_finite(tf.cast(_flat(tf.convert_to_tensor(x)), tf.float32))
            return {"values": values, "num_missing": num_missing, "observed": observed}
        if feature.encoding == "integer":
            ids = _prepare_id_rows(feature, x)
            lengths = tf.reduce_sum(tf.cast(tf.not_equal(ids, PADDING_ID), tf.int64), axis=1)
            return {"tokens": tf.zeros([0], tf.int64), "lengths": lengths}
        tokens = _prepare_multivalued(feature, x)
        return {"tokens": tokens.flat_values, "lengths": tokens.row_lengths()}

    def update(self, batch):
        feature = self.feature
        if feature.kind == "multivalued":
            lengths = batch["lengths"]
            self.num_rows += lengths.size
            self.num_missing += int(np.sum(lengths == 0))
            if lengths.size:
                self.max_observed_length = max(self.max_observed_length, int(lengths.max()))
            if feature.max_length is not None:
                self.num_truncated_rows += int(np.sum(lengths > feature.max_length))
            if self.counter is not None:
                self.counter.update(batch["tokens"])
            return
        values = batch["values"]
        self.num_rows += values.size
        if feature.kind == "numeric":
            # Statistics and quantiles of the observed values: a filled-in
            # default is no observation (it would shrink the variance).
            self.num_missing += int(batch["num_missing"])
            observed = values[batch["observed"]]
            self.moments.update(observed)
            if self.quantiles is not None and observed.size:
                self.quantiles.update_state(observed)
            return
        if feature.dtype == "string":
            self.num_missing += int(np.sum(values == b""))
        if feature.encoding == "integer":
            self.num_out_of_range += int(np.sum((values < 0) | (values >= feature.num_ids)))
        if self.counter is not None:
            self.counter.update(values)

    def finalize(self):
        feature = self.feature
        state = {"num_rows": self.num_rows, "num_missing": self.num_missing}
        if feature.kind == "categorical" and feature.encoding == "integer":
            state["num_out_of_range"] = self.num_out_of_range
            if self.num_out_of_range and feature.out_of_range == "error":
                raise ValueError(
                    f"Feature '{feature.name}': {self.num_out_of_range} ids outside "
                    f"[0, {feature.num_ids}) in the adapt data; declare a larger `num_ids` "
                    "or out_of_range='oov'."
                )
        if self.counter is not None:
            state["vocabulary"] = self.counter.vocabulary(feature)
            if self.counter.undecodable:
                state["num_undecodable"] = self.counter.undecodable
        if feature.kind == "numeric":
            if self.num_rows == 0:
                raise ValueError(f"Feature '{feature.name}': the adapt data has no rows.")
            m = self.moments
            if m.count == 0:  # every value missing: the default stands for all of them
                filler = np.asarray([feature.default or 0.0], np.float32)
                m.update(filler)
                if self.quantiles is not None:
                    self.quantiles.update_state(filler)
            state.update({"mean": m.mean, "variance": m.variance, "min": m.min, "max": m.max})
            if self.quantiles is not None:
                self.quantiles.finalize_state()
                bounds = np.unique(np.asarray(self.quantiles.bin_boundaries, np.float64))
                state["bin_boundaries"] = [float(b) for b in bounds]
        if feature.kind == "multivalued":
            state["max_observed_length"] = self.max_observed_length
            state["num_truncated_rows"] = self.num_truncated_rows
            if feature.max_length is None:
                state["max_length"] = max(self.max_observed_length, 1)
        return state


# === The preprocessing layer ===

# Largest modulus one hash op serves (the lcm of the bucket counts it covers).
_MAX_HASH_MODULUS = 2**62


def _stack(columns):
    """`(batch,)` columns -> `(batch, n)`; a single column stays `(batch,)`.

    Per-column constants of shape `(n,)` broadcast against either form.
    """
    return columns[0] if len(columns) == 1 else tf.stack(columns, axis=1)


def _unstack(matrix, n):
    return [matrix] if n == 1 else tf.unstack(matrix, num=n, axis=1)


def _vocabulary_tokens(feature, vocabulary):
    """The tokens a Keras `StringLookup` / `IntegerLookup` keeps of `vocabulary`, checked alike.

    Leading OOV tokens (`num_oov_buckets` of them) are dropped (elsewhere
    the reserved token is an ordinary one); a repeated token or an empty
    list is an error.
    """
    reserved = _STRING_OOV_TOKEN if feature.dtype == "string" else _INTEGER_OOV_TOKEN
    n = feature.num_oov_buckets
    tokens = list(vocabulary)
    if tokens[:n] == [reserved] * n:
        tokens = tokens[n:]
    repeated = sorted(str(t) for t, c in collections.Counter(tokens).items() if c > 1)
    if not tokens or repeated:
        raise ValueError(
            f"Feature '{feature.name}': a vocabulary needs at least one token, each once. "
            f"Received {len(tokens)} tokens; repeated: {repeated}"
        )
    return tokens


def _token_key(token, integer):
    """A vocabulary token as its table key: int64, or the UTF-8 bytes of a string token."""
    if integer:
        return int(token)
    return token if isinstance(token, bytes) else str(token).encode()


def _vocabulary_table(feature, tokens):
    """A feature's static hash table: token -> id, ids after the OOV buckets.

    As in Keras' lookup layers, a token not in it gives the one OOV id 0,
    or -1 (to be hashed into one of several OOV buckets).
    """
    integer = feature.dtype == "int64"
    keys = tf.constant([_token_key(t, integer) for t in tokens], tf.int64 if integer else tf.string)
    first = feature.num_oov_buckets
    values = tf.constant(np.arange(first, first + len(tokens)), tf.int64)
    initializer = tf.lookup.KeyValueTensorInitializer(keys, values)
    return tf.lookup.StaticHashTable(initializer, default_value=0 if first == 1 else -1)


def _ids_of(found, hashed, like):
    """The vocabulary id where the table has the token, else its hash bucket.

    Args:
        found: the table's ids (-1 for a miss) or None (a hash feature).
        hashed: the hash buckets or None (one bucket: id 0).
        like: the raw tokens, for the shape of all-zero ids.
    """
    if found is None:
        return hashed if hashed is not None else tf.zeros_like(like, tf.int64)
    return found if hashed is None else tf.where(found >= 0, found, hashed)


def _oov_buckets(features, columns):
    """Hash bins / OOV buckets of the categorical columns that have several.

    FarmHash64 of the string (the decimal string of an integer hash
    feature), in one op over the stacked columns; an integer vocabulary's
    OOV bucket is the integer modulo its number of buckets (as
    `keras.layers.IntegerLookup`).

    Returns:
        dict feature name -> `(batch,)` int64, for those features only.
    """
    strings = [f for f in features if _buckets(f) > 1 and not _integer_vocabulary(f)]
    out = {}
    if strings:
        matrix = _stack(
            [
                c if c.dtype == tf.string else tf.strings.as_string(c)
                for c in (columns[f.name] for f in strings)
            ]
        )
        hashed = _hash_buckets(matrix, [_buckets(f) for f in strings])
        out.update(zip([f.name for f in strings], _unstack(hashed, len(strings)), strict=True))
    for feature in features:
        if _integer_vocabulary(feature) and feature.num_oov_buckets > 1:
            out[feature.name] = tf.math.floormod(columns[feature.name], feature.num_oov_buckets)
    return out


def _integer_vocabulary(feature):
    return feature.encoding == "vocabulary" and feature.dtype == "int64"


def _buckets(feature):
    """Hash buckets of a token that is not in the vocabulary: hash bins or OOV buckets."""
    return feature.num_bins if feature.encoding == "hash" else feature.num_oov_buckets


def _moduli(buckets):
    """Groups of columns whose bucket counts divide one modulus: [[modulus, member mask]]."""
    groups = []
    for i, n in enumerate(buckets):
        for group in groups:
            modulus = math.lcm(group[0], n)
            if modulus <= _MAX_HASH_MODULUS:
                group[0] = modulus
                group[1][i] = True
                break
        else:
            groups.append([n, [j == i for j in range(len(buckets))]])
    return groups


def _hash_buckets(strings, buckets):
    """`tf.strings.to_hash_bucket_fast` of each column with its own bucket count, in one op.

    FarmHash64 modulo n equals (FarmHash64 modulo M) modulo n for any n that
    divides M, so one op with M = lcm of the columns' bucket counts serves
    them all (one op per group of columns when that lcm would exceed 2**62).

    Args:
        strings: tf.string `(batch, n)` (or `(batch,)`: one column).
        buckets: list of n int. Bucket count of each column.
    """
    groups = _moduli(buckets)
    total = None
    for modulus, members in groups:
        hashed = tf.strings.to_hash_bucket_fast(strings, modulus)
        if any(n != modulus for n, member in zip(buckets, members, strict=True) if member):
            hashed = tf.math.floormod(hashed, np.asarray(buckets, np.int64))
        if len(groups) > 1:
            hashed = tf.where(np.asarray(members), hashed, tf.zeros_like(hashed))
        total = hashed if total is None else total + hashed
    return total


def _check_columns(ok, messages, values):
    """A check that fails naming every column of `ok` with a False, and the first bad values.

    The messages are built only when the check fails (inside a `tf.cond`),
    so a passing batch costs two ops.

    Args:
        ok: bool tensor `(batch, n)` (or `(batch,)` for one column).
        messages: list of n str, one per column.
        values: tensor of `ok`'s shape: the raw values shown on failure.

    Returns:
        A bool scalar to add as a control dependency of the outputs.
    """

    def fail():
        bad_columns = tf.logical_not(tf.reshape(tf.reduce_all(ok, axis=0), [-1]))
        names = tf.boolean_mask(tf.constant(messages), bad_columns)
        bad_values = tf.strings.as_string(tf.boolean_mask(values, tf.logical_not(ok))[:3])
        message = tf.strings.join(
            [
                tf.strings.reduce_join(names, separator="; "),
                tf.strings.reduce_join(bad_values, separator=", "),
            ],
            separator=". First bad values: ",
        )
        assertion = tf.debugging.Assert(False, [message])
        with tf.control_dependencies([assertion]):
            return tf.constant(False)

    return tf.cond(tf.reduce_all(ok), lambda: tf.constant(True), fail)


def _after(check, tensor):
    """`tensor`, computed only once `check` has passed."""
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def _id_range_message(feature):
    return (
        f"FeatureSchema: id out of range in feature `{feature.name}`: valid ids are "
        f"0..{feature.num_ids - 1}; declare out_of_range=`oov` to map such ids to an OOV id"
    )


def _group_of(feature):
    """Which computation of the layer a feature's column joins (a method `_<group>`)."""
    if feature.kind == "numeric":
        return "numeric"
    if feature.kind == "multivalued":
        return "id_rows" if feature.encoding == "integer" else "tokens"
    return "ids" if feature.encoding == "integer" else "categorical"


@dataclasses.dataclass(frozen=True)
class _Layout:
    """A schema's features grouped by the computation their columns join.

    Attributes:
        groups: `(group, features)` pairs, in order of first use.
        output_names: the layer's output keys, in order.
    """

    groups: tuple
    output_names: tuple

    @classmethod
    def of(cls, features):
        groups, output_names = {}, []
        for feature in features:
            groups.setdefault(_group_of(feature), []).append(feature)
            output_names.append(feature.name)
            if getattr(feature, "weighted", False):
                output_names.append(features_lib.weights_input_name(feature.name))
        return cls(
            tuple((key, tuple(members)) for key, members in groups.items()),
            tuple(output_names),
        )


@keras.saving.register_keras_serializable(package="tf_fm")
class FeaturePreprocessor(keras.layers.Layer):
    """Maps the raw feature dict to the model-input dict of a `FeatureSchema`.

    Built from an adapted schema (its declarations and learned state are the
    layer's config, so a `.keras` file restores it without re-adapting). It
    runs in `tf.data` (`dataset.map`, any `num_parallel_calls`) and inside a
    Keras model alike; `FeatureSchema.preprocessor()` returns one.

    What is the same arithmetic for many features runs once per batch on
    their stacked columns, so its cost in ops does not grow with the number
    of features (a batch-1 serving request pays per op): the numeric fill,
    missing-value check and scaling on the `(batch, numeric features)`
    matrix, one FarmHash64 op for the hash bins and OOV buckets of all
    categorical string columns, one range check for all ready ids. A
    vocabulary lookup stays one op per feature, on the feature's own static
    hash table: a table shared by several features needs a second lookup
    (or a key string built per value) to tell them apart, and one lookup op
    over all columns runs on one thread, both of which cost more at large
    batches than the ops they save at batch 1 (`benchmarks/README.md`).

    The ids and values are those of Keras' `StringLookup`, `IntegerLookup`,
    `Hashing`, `Normalization` and `Discretization` layers configured from
    the schema (the OOV bucket of an unseen string is its FarmHash64 modulo
    `num_oov_buckets`, of an unseen integer the integer modulo
    `num_oov_buckets`). `log1p` runs per column: TensorFlow's vectorized
    float32 `log1p` and its scalar one differ in the last bit, so a
    column's values would otherwise depend on the columns beside it.

    Args:
        schema: `FeatureSchema` (adapted) or its `to_dict()` form.
        **kwargs: base `keras.layers.Layer` arguments (`name`, ...). The
            dtype policy defaults to `"float32"`, whatever the global policy.

    Call arguments:
        inputs: dict from raw feature name to a `(batch,)` tensor: tf.string
            or int64 for categorical features, float32 (NaN for missing) for
            numeric ones, tf.string for multi-valued ones. Other keys are
            ignored.

    Returns:
        dict from feature name to `(batch,)` int64 ids (categorical and
        discretized numeric features), `(batch,)` float32 values (numeric),
        or `(batch, max_length)` int64 ids padded with -1 (multi-valued).

    Example:

    >>> preprocessor = schema.preprocessor()
    >>> train = raw_dataset.map(lambda x, y: (preprocessor(x), y))
    """

    def __init__(self, schema: "FeatureSchema | dict", **kwargs):
        if isinstance(schema, FeatureSchema):
            schema = schema.to_dict()
        schema = FeatureSchema.from_dict(schema)
        missing = [f.name for f in schema.features if needs_adapt(f) and f.name not in schema.state]
        if missing:
            raise ValueError(
                f"FeaturePreprocessor needs an adapted schema; call `schema.adapt(dataset)` "
                f"first. Not adapted: {missing}"
            )
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.schema = schema
        self._layout = _Layout.of(schema.features)
        self.vocabulary_tables = {
            f.name: _vocabulary_table(f, _vocabulary_tokens(f, schema.vocabulary(f.name)))
            for f in schema.features
            if getattr(f, "encoding", None) == "vocabulary"
        }
        self.built = True

    # --- One computation per group of features ---

    def _categorical(self, features, inputs):
        """Categorical features with a vocabulary or hash bins: `(batch,)` ids each."""
        columns = {f.name: _prepare_categorical(f, inputs[f.name]) for f in features}
        hashed = _oov_buckets(features, columns)
        ids = {}
        for feature in features:
            name = feature.name
            table = self.vocabulary_tables.get(name)
            found = None if table is None else table.lookup(columns[name])
            ids[name] = _ids_of(found, hashed.get(name), columns[name])
        return ids

    def _ids(self, features, inputs):
        """Ready integer ids: checked against `num_ids`, or out-of-range ids -> `num_ids`."""
        x = _stack([_prepare_categorical(f, inputs[f.name]) for f in features])
        sizes = np.asarray([f.num_ids for f in features], np.int64)
        lenient = np.asarray([f.out_of_range == "oov" for f in features])
        outside = tf.logical_or(x < 0, x >= sizes)
        ids = x
        if lenient.any():
            replace = outside if lenient.all() else tf.logical_and(outside, lenient)
            ids = tf.where(replace, sizes, x)
        if not lenient.all():
            ok = tf.logical_not(outside)
            ok = ok if not lenient.any() else tf.logical_or(ok, lenient)
            messages = [_id_range_message(f) for f in features]
            ids = _after(_check_columns(ok, messages, x), ids)
        return dict(zip([f.name for f in features], _unstack(ids, len(features)), strict=True))

    def _numeric(self, features, inputs):
        """Numeric features: fill, check and scale `(batch, n)` at once, then per column."""
        x = _stack(
            [tf.cast(_flat(tf.convert_to_tensor(inputs[f.name])), tf.float32) for f in features]
        )
        finite = tf.math.is_finite(x)
        defaults = np.asarray([0.0 if f.default is None else f.default for f in features])
        values = tf.where(finite, x, defaults.astype(np.float32))
        strict = np.asarray([f.default is None for f in features])
        if strict.any():
            ok = finite if strict.all() else tf.logical_or(finite, np.logical_not(strict))
            check = _check_columns(ok, [_missing_message(f) for f in features], x)
            values = _after(check, values)
        values = self._scaled(values, features)
        outputs = {}
        for feature, column in zip(features, _unstack(values, len(features)), strict=True):
            if feature.transform == "log1p":
                column = tf.math.log1p(column)  # per column: see the class docstring
            elif feature.transform == "discretize":
                bounds = [float(b) for b in self.schema.bin_boundaries(feature.name)]
                column = tf.cast(tf.raw_ops.Bucketize(input=column, boundaries=bounds), tf.int64)
            outputs[feature.name] = column
        return outputs

    def _scaled(self, values, features):
        """`max(x, 0)` in the log1p columns, `(x - mean) / std` in the standardized ones.

        The other columns go through unchanged (`max(x, -inf)`, `(x - 0) / 1`).
        """
        transforms = [f.transform for f in features]
        if "log1p" in transforms:
            lower = [0.0 if t == "log1p" else -np.inf for t in transforms]
            values = tf.maximum(values, np.asarray(lower, np.float32))
        if "standardize" in transforms:
            mean = np.zeros(len(features), np.float32)
            std = np.ones(len(features), np.float32)
            for i, feature in enumerate(features):
                if feature.transform == "standardize":
                    state = self.schema.state[feature.name]
                    variance = np.float32(state["variance"] if state["variance"] > 0 else 1.0)
                    mean[i] = state["mean"]
                    # As keras.layers.Normalization: max(sqrt(variance), epsilon), float32.
                    std[i] = max(np.sqrt(variance), np.float32(keras.config.epsilon()))
            # divide_no_nan (std > 0, so exactly x / std): grappler rewrites a division
            # by a constant into a multiplication by its reciprocal, which rounds
            # differently.
            values = tf.math.divide_no_nan(values - mean, std)
        return values

    def _tokens(self, features, inputs):
        """Delimited-string features: `(batch, max_length)` ids each, padded with -1."""
        outputs = {}
        for feature in features:
            tokens = tf.strings.split(
                _multivalued_strings(feature, inputs[feature.name]), sep=feature.separator
            )
            keep = tf.reshape(tf.where(tf.not_equal(tokens.values, "")), [-1])  # drops empty tokens
            values = tf.gather(tokens.values, keep)
            rows = tf.gather(tokens.value_rowids(), keep)
            buckets = _buckets(feature)
            hashed = tf.strings.to_hash_bucket_fast(values, buckets) if buckets > 1 else None
            table = self.vocabulary_tables.get(feature.name)
            ids = _ids_of(None if table is None else table.lookup(values), hashed, values)
            ragged = tf.RaggedTensor.from_value_rowids(ids, rows, tokens.nrows(), validate=False)
            # Pads with -1 and truncates to the first `max_length` ids of each row.
            length = self.schema.max_length(feature.name)
            outputs[feature.name] = ragged.to_tensor(PADDING_ID, shape=[None, length])
        return outputs

    def _id_rows(self, features, inputs):
        """Ready id rows `(batch, max_length)` of integer multi-valued features, and weights."""
        outputs = {}
        for feature in features:
            outputs[feature.name] = _prepare_id_rows(feature, inputs[feature.name])
            if feature.weighted:
                weights = features_lib.weights_input_name(feature.name)
                if weights not in inputs:
                    raise KeyError(
                        f"FeaturePreprocessor: feature '{feature.name}' is weighted; its values "
                        f"come in '{weights}', which is missing. Received keys: {sorted(inputs)}"
                    )
                values = tf.cast(tf.convert_to_tensor(inputs[weights]), tf.float32)
                outputs[weights] = _rows(values, feature.max_length)
        return outputs

    def call(self, inputs):
        for feature in self.schema.features:
            if feature.name not in inputs:
                raise KeyError(
                    f"FeaturePreprocessor: missing input for feature '{feature.name}'. "
                    f"Received keys: {sorted(inputs)}"
                )
        outputs = {}
        for group, features in self._layout.groups:
            outputs.update(getattr(self, f"_{group}")(features, inputs))
        return {name: outputs[name] for name in self._layout.output_names}

    def compute_output_spec(self, inputs):
        batch = None
        for value in inputs.values():
            batch = value.shape[0] if len(value.shape) else None
            break
        specs = {}
        for feature in self.schema.features:
            if feature.name not in inputs:
                raise KeyError(f"FeaturePreprocessor: missing input for feature '{feature.name}'.")
            field = self.schema.field(feature.name)
            if field["kind"] == "numeric":
                specs[feature.name] = keras.KerasTensor((batch,), dtype="float32")
            elif field["kind"] == "categorical":
                specs[feature.name] = keras.KerasTensor((batch,), dtype="int64")
            else:
                shape = (batch, field["max_length"])
                specs[feature.name] = keras.KerasTensor(shape, dtype="int64")
                if field["weighted"]:
                    weights = features_lib.weights_input_name(feature.name)
                    specs[weights] = keras.KerasTensor(shape, dtype="float32")
        return specs

    def get_config(self):
        config = super().get_config()
        config.update({"schema": self.schema.to_dict()})
        return config


# === The schema ===


class FeatureSchema:
    """One declaration per raw feature, adapted once, applied in training and serving.

    Args:
        features: list of `CategoricalFeature`, `NumericFeature` and
            `MultiValuedFeature` (or their `get_config()` dicts). Their order
            is the order of `fields()`, hence of the model's field axis.
        label: str or None. Name of the label column, kept for reference
            (`infer_schema` sets it; the schema never reads it). Defaults to
            None.
        state: dict or None. Learned state per feature name, as written by
            `adapt` (and by `to_dict`). Defaults to None (not adapted).

    Example:

    >>> schema = FeatureSchema([CategoricalFeature("user"), NumericFeature("age")])
    >>> schema.adapt(raw_dataset)
    >>> model = tf_fm.DeepFM(schema.fields())
    """

    def __init__(
        self,
        features: Sequence[Feature | dict],
        label: str | None = None,
        state: dict | None = None,
    ):
        features = [
            f
            if isinstance(f, tuple(features_lib.FEATURE_CLASSES.values()))
            else feature_from_config(f)
            for f in features
        ]
        if not features:
            raise ValueError("`features` must declare at least one feature. Received: []")
        names = [f.name for f in features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"Feature names must be unique. Repeated: {duplicates}")
        if label is not None and label in names:
            raise ValueError(f"The label '{label}' cannot also be a feature.")
        self.features = features
        self.label = label
        self.state = copy.deepcopy(dict(state or {}))
        unknown = sorted(set(self.state) - set(names))
        if unknown:
            raise ValueError(f"`state` names unknown features: {unknown}")
        self._preprocessor = None

    # --- Accessors ---

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __getitem__(self, name):
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"No feature named '{name}'. Features: {self.names}")

    @property
    def adapted(self) -> bool:
        """Whether every feature that learns something has its learned state."""
        return all(f.name in self.state for f in self.features if needs_adapt(f))

    def vocabulary(self, name: str) -> list:
        """The vocabulary of a vocabulary-encoded feature (fixed or learned), without OOV."""
        return features_lib.vocabulary_of(self[name], self.state.get(name))

    def bin_boundaries(self, name: str) -> list:
        """Bucket boundaries of a discretized numeric feature (fixed or learned)."""
        return features_lib.bin_boundaries_of(self[name], self.state.get(name))

    def max_length(self, name: str) -> int:
        """Ids per row of a multi-valued feature (declared or learned)."""
        return features_lib.max_length_of(self[name], self.state.get(name))

    def field(self, name: str) -> dict:
        """How one feature enters the model: its field dict (`tf_fm.features.model_field`)."""
        return features_lib.model_field(self[name], self.state.get(name))

    def fields(self) -> list[dict]:
        """The model's fields: one field dict per feature, in schema order.

        `tf_fm.FM(schema)` / `tf_fm.DeepFM(schema)` build on them; they hold
        the learned vocabulary sizes, so the schema must be adapted.
        """
        return [self.field(f.name) for f in self.features]

    # --- Learning ---

    def adapt(self, dataset: tf.data.Dataset, steps: int | None = None) -> "FeatureSchema":
        """Learns all vocabularies and statistics in one streaming pass.

        The dataset is read once, batch by batch: per feature only the token
        counts, running moments and a quantile sketch are kept, never the
        rows. Each batch is prepared by the same TensorFlow ops as the
        preprocessing layer (NaN filling and its check, `log1p`, splitting),
        run in a parallel `dataset.map`.

        Args:
            dataset: batched `tf.data.Dataset` of `features` dicts or
                `(features, label, ...)` tuples, each feature `(batch,)`.
            steps: int or None. Read at most this many batches (needed for
                an infinitely repeating dataset). Defaults to None.

        Returns:
            The schema itself (adapted).
        """
        if not isinstance(dataset, tf.data.Dataset):
            raise TypeError(
                f"`dataset` must be a batched tf.data.Dataset. Received: {type(dataset).__name__}"
            )
        spec = dataset.element_spec
        present = spec[0] if isinstance(spec, tuple) else spec
        if not isinstance(present, dict):
            raise TypeError(
                "FeatureSchema.adapt: the dataset's elements must be a feature dict or "
                f"(features, label, ...) with a feature dict. Received: {spec}"
            )
        missing = [name for name in self.names if name not in present]
        if missing:  # checked here, not while tracing: a plain message, not a traceback
            raise KeyError(
                f"FeatureSchema.adapt: the dataset has no feature {missing}. "
                f"It has: {sorted(present)}"
            )
        accumulators = {f.name: _FeatureAccumulator(f) for f in self.features}

        def prepare(*element):
            features = _features_of(*element)
            return {name: acc.tensors(features[name]) for name, acc in accumulators.items()}

        prepared = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        if steps is not None:
            prepared = prepared.take(steps)
        num_rows = 0
        for batch in prepared.prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            for name, accumulator in accumulators.items():
                accumulator.update(batch[name])
            num_rows = accumulators[self.features[0].name].num_rows
        if num_rows == 0:
            raise ValueError("FeatureSchema.adapt: the dataset has no rows.")
        self.state = {name: acc.finalize() for name, acc in accumulators.items()}
        self._preprocessor = None
        return self

    # --- Applying ---

    def preprocessor(self) -> "FeaturePreprocessor":
        """The `FeaturePreprocessor` layer of this schema (one instance, reused).

        Returns:
            A `FeaturePreprocessor`: raw feature dict -> model-input dict.
        """
        if self._preprocessor is None:
            self._preprocessor = FeaturePreprocessor(self, name="feature_preprocessor")
        return self._preprocessor

    def preprocess(
        self, dataset: tf.data.Dataset, num_parallel_calls: int = tf.data.AUTOTUNE
    ) -> tf.data.Dataset:
        """Applies the preprocessing inside `tf.data` (the training path).

        Args:
            dataset: batched `tf.data.Dataset` of raw `features` dicts or
                `(features, label, ...)` tuples.
            num_parallel_calls: int. Passed to `dataset.map`. Defaults to
                `tf.data.AUTOTUNE`.

        Returns:
            The mapped dataset, labels (and sample weights) untouched.
        """
        preprocessor = self.preprocessor()

        def apply(*element):
            if len(element) == 1:
                return preprocessor(element[0])
            return (preprocessor(element[0]), *element[1:])

        return dataset.map(apply, num_parallel_calls=num_parallel_calls)

    def raw_input_specs(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """What a client sends per row: feature name -> (dtype name, shape after the batch axis).

        Returns:
            dict from raw input name to `(dtype, shape)`, dtype `"string"`,
            `"int64"` or `"float32"`, in feature order.
        """
        specs = {}
        for feature in self.features:
            specs.update(features_lib.raw_specs(feature))
        return specs

    def raw_inputs(self) -> dict[str, keras.KerasTensor]:
        """One `keras.Input` per raw feature, `(batch,)`, named after the feature.

        Returns:
            dict from feature name to `keras.Input` of dtype `"string"`,
            `"int64"` or `"float32"`.
        """
        return {
            name: keras.Input(shape=shape, dtype=dtype, name=name)
            for name, (dtype, shape) in self.raw_input_specs().items()
        }

    def serving_model(self, model: keras.Model, name: str | None = None) -> keras.Model:
        """Composes the preprocessing with a trained model: raw features in.

        Args:
            model: a `keras.Model` taking the model-input dict (`tf_fm.FM`,
                `tf_fm.DeepFM`, built on `fields()`).
            name: str or None. Name of the returned model. Defaults to
                `"<model name>_serving"`.

        Returns:
            A functional `keras.Model` whose inputs are the raw named features
            (`raw_inputs()`) and whose output is `model`'s output. It saves to
            `.keras` and exports (`.export(path)`) without custom objects.
        """
        inputs = self.raw_inputs()
        model_inputs = self.preprocessor()(inputs)
        wanted = [t.name for t in keras.tree.flatten(model.inputs)]
        unknown = [n for n in wanted if n not in model_inputs]
        if unknown:
            raise ValueError(
                f"The model reads inputs the schema does not produce: {unknown}. "
                f"Schema features: {self.names}"
            )
        outputs = model({n: model_inputs[n] for n in wanted})
        return keras.Model(inputs=inputs, outputs=outputs, name=name or f"{model.name}_serving")

    # --- Serialization ---

    def to_dict(self) -> dict:
        """Declarations and learned state as plain JSON types."""
        return {
            "format": SCHEMA_FORMAT,
            "version": SCHEMA_VERSION,
            "label": self.label,
            "features": [f.get_config() for f in self.features],
            "state": copy.deepcopy(self.state),
        }

    @classmethod
    def from_dict(cls, config: dict) -> "FeatureSchema":
        """Rebuild a schema (learned state included) from `to_dict()`."""
        if config.get("format", SCHEMA_FORMAT) != SCHEMA_FORMAT:
            raise ValueError(f"Not a {SCHEMA_FORMAT} dict. Received format={config['format']!r}")
        if config.get("version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise ValueError(
                f"Schema version {config['version']} is newer than this tf_fm ({SCHEMA_VERSION})."
            )
        return cls(config["features"], label=config.get("label"), state=config.get("state"))

    def to_json(self, **kwargs) -> str:
        """The schema as a JSON string (learned vocabularies and statistics included).

        Args:
            **kwargs: passed to `json.dumps` (e.g. `indent=2`).
        """
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSchema":
        """Rebuild a schema from `to_json()`, without re-adapting."""
        return cls.from_dict(json.loads(text))

    def save(self, path: "str | os.PathLike") -> None:
        """Writes `to_json()` to `path`."""
        path = pathlib.Path(path)
        tmp = path.with_name(f".{path.name}.tmp")  # a reader never sees half a file
        tmp.write_text(self.to_json(indent=1), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "FeatureSchema":
        """Reads a schema written by `save`."""
        return cls.from_json(pathlib.Path(path).read_text(encoding="utf-8"))

    def __eq__(self, other):
        return isinstance(other, FeatureSchema) and self.to_dict() == other.to_dict()

    __hash__ = None

    # --- Display ---

    def _describe(self, feature):
        if feature.kind == "numeric":
            text = feature.transform
            if feature.transform == "discretize" and feature.bin_boundaries is None:
                text += f" ({feature.num_bins} quantile bins)"
        elif feature.encoding == "vocabulary":
            text = f"vocabulary (min_count={feature.min_count}, {feature.num_oov_buckets} OOV)"
            if feature.vocabulary is not None:
                text = f"fixed vocabulary ({feature.num_oov_buckets} OOV)"
        elif feature.encoding == "hash":
            text = f"hash ({feature.num_bins} bins)"
        elif feature.kind == "multivalued":
            text = f"integer ids ({feature.num_ids}, {'weighted' if feature.weighted else 'x=1'})"
        else:
            text = f"integer ids (out_of_range={feature.out_of_range})"
        if feature.kind == "multivalued" and feature.encoding != "integer":
            text += f", split {feature.separator!r}"
        if feature.kind == "numeric" and feature.default is not None:
            text += f", default={feature.default:g}"
        return text

    def _describe_field(self, feature):
        try:
            field = self.field(feature.name)
        except ValueError:
            return "(not adapted)"
        if field["kind"] == "numeric":
            return "numeric"
        if field["kind"] == "categorical":
            return f"categorical({field['vocabulary_size']})"
        return f"multivalued({field['vocabulary_size']}, len {field['max_length']})"

    def _describe_state(self, feature):
        state = self.state.get(feature.name)
        if state is None:
            return ""
        parts = []
        if "vocabulary" in state:
            parts.append(f"{len(state['vocabulary'])} tokens")
        if feature.kind == "numeric":
            parts.append(f"mean {state['mean']:.4g}, std {math.sqrt(state['variance']):.4g}")
        if state.get("num_missing"):
            parts.append(f"{state['num_missing']} missing")
        if state.get("num_truncated_rows"):
            parts.append(f"{state['num_truncated_rows']} rows truncated")
        if state.get("num_out_of_range"):
            parts.append(f"{state['num_out_of_range']} out of range")
        if state.get("num_undecodable"):
            parts.append(f"{state['num_undecodable']} not UTF-8 (OOV)")
        return ", ".join(parts)

    def __str__(self):
        header = ("feature", "kind", "preprocessing", "raw input", "model input", "learned")
        rows = [
            (
                f.name,
                f.kind,
                self._describe(f),
                f.raw_dtype,
                self._describe_field(f),
                self._describe_state(f),
            )
            for f in self.features
        ]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = []
        rows_seen = max((s.get("num_rows", 0) for s in self.state.values()), default=0)
        title = f"FeatureSchema: {len(self.features)} features"
        if self.label is not None:
            title += f", label '{self.label}'"
        title += f", adapted on {rows_seen:,} rows" if self.state else ", not adapted"
        lines.append(title)
        for row in [header, *rows]:
            lines.append(
                "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )
            if row is header:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __repr__(self):
        return (
            f"FeatureSchema({self.names}, label={self.label!r}, "
            f"adapted={self.adapted and bool(self.state)})"
        )


# === Inference ===


# Name tokens that say an integer column counts or measures something.
QUANTITY_WORDS = frozenset(
    "count counts cnt num number amount price cost qty quantity total sum duration "
    "seconds secs minutes mins hours days length len size distance income salary "
    "views clicks impressions timestamp time ts".split()
)


def _name_tokens(name):
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)  # camelCase -> camel Case
    return set(re.split(r"[^a-z0-9]+", spaced.lower())) - {""}


def _integer_quantity_evidence(name, values, max_integer_cardinality):
    """Why an integer column is a quantity rather than an id, or None (an id)."""
    words = sorted(_name_tokens(name) & QUANTITY_WORDS)
    if words:
        return f"its name says a quantity ({', '.join(words)})"
    present = values.dropna()
    if len(present) and present.min() < 0:
        return f"negative values (min {present.min()})"
    distinct = present.nunique()
    if len(present) >= 100 and distinct > 0.9 * len(present):
        return f"{distinct:,} distinct values in {len(present):,} rows (a row id or a measurement)"
    if max_integer_cardinality is not None and distinct > max_integer_cardinality:
        return f"{distinct:,} distinct values > max_integer_cardinality={max_integer_cardinality}"
    return None


def _numeric_feature(name, values):
    numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = numbers[np.isfinite(numbers)]
    default = None
    if len(finite) < len(numbers):
        default = float(finite.mean()) if len(finite) else 0.0
    return NumericFeature(name, transform="standardize", default=default)


def infer_feature(
    name: str,
    values: pd.Series,
    separator: str | None = None,
    max_integer_cardinality: int | None = None,
    notes: list | None = None,
) -> Feature:
    """The one rule that decides a column's kind (`infer_schema`, `read_dataframe`, the CLI).

    * booleans: `CategoricalFeature`;
    * integers: ids, `CategoricalFeature` (a learned vocabulary with OOV,
      raw values read as strings, so a DataFrame, a CSV file and a served
      request give the same ids), unless there is evidence of a quantity:
      a name token such as `count`, `price`, `duration`, `timestamp`
      (`QUANTITY_WORDS`), negative values, distinct values in more than
      90% of the rows (a row id or a measurement), or more than
      `max_integer_cardinality` distinct values when that is set; then
      numeric as floats are;
    * floats: `NumericFeature(transform="standardize")`, `default` = the
      mean of the finite values when some are missing (NaN, or a literal
      inf), no default otherwise;
    * strings: `MultiValuedFeature(separator=separator)` if `separator` is
      given and some value contains it, else `CategoricalFeature`.

    Args:
        name: str. The column's name.
        values: `pandas.Series`, the column (or a sample of it).
        separator: str or None. Separator of multi-valued strings.
        max_integer_cardinality: int or None. If set, integer columns with
            more distinct values are numeric. Defaults to None.
        notes: list or None. Receives one line per integer column saying
            what it became and why (`item: 4,082 distinct integers ->
            categorical vocabulary`).

    Returns:
        A feature declaration (not adapted).
    """
    if pd.api.types.is_bool_dtype(values):
        return CategoricalFeature(name)
    if pd.api.types.is_integer_dtype(values):
        evidence = _integer_quantity_evidence(name, values, max_integer_cardinality)
        distinct = f"{values.nunique():,} distinct integers"
        if evidence is None:
            _note(notes, f"{name}: {distinct} -> categorical vocabulary (an id)")
            return CategoricalFeature(name)
        _note(notes, f"{name}: {distinct} -> numeric (standardized): {evidence}")
        return _numeric_feature(name, values)
    if pd.api.types.is_numeric_dtype(values):
        return _numeric_feature(name, values)
    if pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        strings = values.dropna().astype(str)
        if separator is not None and strings.str.contains(separator, regex=False).any():
            return MultiValuedFeature(name, separator=separator)
        return CategoricalFeature(name)
    raise ValueError(
        f"Column '{name}' has dtype {values.dtype}, which infer_schema cannot map; "
        "declare it in `overrides` or `exclude` it."
    )


def _note(notes, line):
    if notes is not None:
        notes.append(line)


def raw_column_type(feature: Feature) -> str:
    """How a reader types a feature's raw column: `"string"`, `"int"` or `"float"`."""
    if feature.kind == "numeric":
        return "float"
    return "int" if feature.raw_dtype == "int64" else "string"


def infer_schema(
    data: "pd.DataFrame | str",
    label: str | None = None,
    separator: str | None = None,
    max_integer_cardinality: int | None = None,
    overrides: dict | None = None,
    exclude: Sequence[str] = (),
    sample_rows: int = 100_000,
    notes: list | None = None,
) -> "FeatureSchema":
    """Proposes a `FeatureSchema` from a pandas DataFrame or a CSV sample.

    Per column (the label and `exclude` left out, `overrides` first), the
    rule of `infer_feature`: booleans and integer ids are categorical (read
    as strings), integers with evidence of a quantity and floats
    standardized numeric, strings categorical or multi-valued.

    The proposal is a starting point: check the integer columns' lines in
    `notes`, and declare a column in `overrides` where the rule guessed
    wrong.

    Args:
        data: `pandas.DataFrame`, or path of a CSV file (its first
            `sample_rows` rows are read).
        label: str or None. Label column, left out of the features.
            Defaults to None.
        separator: str or None. Separator of multi-valued string columns;
            None never infers multi-valued. Defaults to None.
        max_integer_cardinality: int or None. If set, integer columns with
            more distinct values are numeric. Defaults to None.
        overrides: dict or None. Column name -> feature declaration used
            as is (None drops the column). Defaults to None.
        exclude: sequence of str. Columns to leave out. Defaults to `()`.
        sample_rows: int. Rows read from a CSV path. Defaults to 100000.
        notes: list or None. Receives one line per integer column: what it
            became and why. Defaults to None.

    Returns:
        A `FeatureSchema` (not adapted), features in column order.

    Example:

    >>> schema = infer_schema(df, label="clicked", separator="|")
    >>> print(schema)
    """
    if isinstance(data, pd.DataFrame):
        frame = data
    else:
        frame = pd.read_csv(data, nrows=sample_rows)
    overrides = dict(overrides or {})
    exclude = set(exclude)
    unknown = sorted((set(overrides) | exclude | ({label} if label else set())) - set(frame))
    if unknown:
        raise ValueError(f"Columns not in the data: {unknown}. Columns: {list(frame.columns)}")
    features = []
    for column in frame.columns:
        if column == label or column in exclude:
            continue
        if column in overrides:
            if overrides[column] is not None:
                features.append(overrides[column])
            continue
        features.append(
            infer_feature(
                str(column),
                frame[column],
                separator=separator,
                max_integer_cardinality=max_integer_cardinality,
                notes=notes,
            )
        )
    return FeatureSchema(features, label=label)
