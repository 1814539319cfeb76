from collections.abc import Sequence
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from tf_fm import tables
from tf_fm.features import (
    OUT_OF_RANGE_MODES,
    PADDING_ID,
    Feature,
    field_config,
    weights_input_name,
)
from tf_fm.layers import _tf_ops


def _concat(parts):
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=1)


def _sum(parts):
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _check_arguments(fields, embedding_dim, out_of_range, embeddings_l2, linear_l2):
    if not fields:
        raise ValueError("`fields` must name at least one field. Received: fields=[]")
    names = [f["name"] for f in fields]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"Field names must be unique. Repeated: {duplicates}")
    if not isinstance(embedding_dim, int) or embedding_dim <= 0:
        raise ValueError(
            f"`embedding_dim` must be a positive integer. Received: embedding_dim={embedding_dim}"
        )
    if out_of_range not in OUT_OF_RANGE_MODES:
        raise ValueError(
            f"`out_of_range` must be one of {OUT_OF_RANGE_MODES}. "
            f"Received: out_of_range={out_of_range!r}"
        )
    for arg, value in (("embeddings_l2", embeddings_l2), ("linear_l2", linear_l2)):
        if value < 0:
            raise ValueError(f"`{arg}` must be >= 0. Received: {arg}={value}")
    _check_shared_tables(fields)


def _check_shared_tables(fields):
    """Fields that share a `table` share its rows: they must have as many ids."""
    sizes = {}
    for f in fields:
        if "table" not in f:
            continue
        first = sizes.setdefault(f["table"], (f["name"], f["vocabulary_size"]))
        if first[1] != f["vocabulary_size"]:
            raise ValueError(
                f"Fields '{first[0]}' and '{f['name']}' share table '{f['table']}' but have "
                f"{first[1]} and {f['vocabulary_size']} ids: features of one table need as many."
            )


class _Terms(NamedTuple):
    """One group of fields' part of the layer's outputs, in the group's field order."""

    embeddings: list  # blocks of (batch, fields, k)
    squared: list  # the same shapes
    linear: object  # (batch, 1)
    l2_factors: object  # (batch,), None without embeddings_l2
    l2_linear: object  # (batch,), None without linear_l2


@keras.saving.register_keras_serializable(package="tf_fm")
class FieldEmbedding(keras.layers.Layer):
    """Turns a row's fields into the FM's terms x_i v_i and x_i w_i.

    All fields share one fused table of `sum(rows per field)` rows, each
    holding a feature's factor vector v and its first-order weight w
    (`k + 1` columns); per-field row offsets are added to the ids, so a batch
    costs one gather, and its gradient and update touch each row once.

    * `categorical` field: one id per row in `[0, vocabulary_size)`, x = 1.
    * `numeric` field: a real value x per row, one learned vector v and weight
      w per field, scaled by x (exactly how the FM formula treats a real x).
      x is used as given: a NaN or infinite x gives a NaN prediction. Missing
      values are the schema's to fill (`FeatureSchema.preprocess`, and every
      export, put the feature's default in their place first); a model fed
      model inputs directly must be given finite values.
    * fields with the same `table` (integer ids of one id space, e.g. the
      fields of a libFFM file) look their ids up in one block of rows: id j
      is the same row, hence the same v and w, in each of them, while each
      still is its own field of the output.
    * `multivalued` field: `max_length` ids per row, padded with -1 (padding
      contributes exactly nothing), optional per-id weights (input
      `"<name>_weights"`), and a `combiner` that sets x_i of each id:
      `"sum"` x_i = w_i, `"mean"` x_i = w_i / sum(w), `"sqrtn"`
      x_i = w_i / sqrt(sum(w^2)). A libFM row (`idx:val ...`) is one weighted
      multi-valued field with combiner `"sum"`. Ids within a row are
      expected to be distinct, as in libFM; a repeated id counts as two
      features (its self-pair enters the pairwise term).

    An id outside its field's range is never silently turned into a zero
    vector: with `out_of_range="error"` the step fails with a message naming
    the field; with `out_of_range="oov"` each field gets one extra
    out-of-vocabulary row that such ids map to.

    The table lookup gathers on the TensorFlow variable directly (see
    `_tf_ops.resource_gather`), so a training step touches only the rows of
    the batch, not the whole table.

    Args:
        fields: list of field dicts (`tf_fm.features.model_field`, what
            `FeatureSchema.fields()` returns) or of `tf_fm.features`
            declarations that need no learned state (ids with
            `encoding="integer"`, numeric features). A dict has `name`,
            `kind` (`"categorical"`, `"numeric"` or `"multivalued"`),
            `vocabulary_size` (categorical, multivalued), `max_length`,
            `weighted` and `combiner` (multivalued), and optionally `table`
            (categorical, multivalued). Order sets the field axis.
        embedding_dim: int. Size k of the factor vectors. Defaults to 10.
        out_of_range: str. `"error"` or `"oov"`. Defaults to `"error"`.
        embeddings_initializer: initializer of the factor table. Defaults to
            `RandomNormal(stddev=0.01)` (Rendle 2012 recommends a small normal).
        linear_initializer: initializer of the first-order weights. Defaults
            to `"zeros"`.
        embeddings_l2: float. L2 penalty on the factor rows each example uses,
            averaged over the batch (libFM's per-example regularization; it
            touches only the rows of the batch). Defaults to 1e-5.
        linear_l2: float. Same for the first-order weights. Defaults to 1e-5.

    Call arguments:
        inputs: dict from field name to a tensor: `(batch,)` or `(batch, 1)`
            for categorical (int) and numeric (float) fields,
            `(batch, max_length)` ids (and weights) for multi-valued fields.

    Returns:
        dict with
        `"embeddings"`: `(batch, fields, k)`, per field sum_i x_i v_i;
        `"squared_embeddings"`: `(batch, fields, k)`, per field
        sum_i x_i^2 v_i^2 (equals `embeddings**2` for one-id fields; needed
        by `FMInteraction` to be exact for multi-valued fields);
        `"linear"`: `(batch, 1)`, sum over all fields of sum_i w_i x_i.

    Example:

    >>> layer = FieldEmbedding(
    ...     [{"name": "user", "kind": "categorical", "vocabulary_size": 100},
    ...      {"name": "age", "kind": "numeric"}],
    ...     embedding_dim=4,
    ... )
    >>> out = layer({"user": np.array([3, 7]), "age": np.array([0.5, 1.0])})
    >>> out["embeddings"].shape
    TensorShape([2, 2, 4])

    References:
        Rendle, "Factorization Machines", ICDM 2010.
        Guo et al., "DeepFM: A Factorization-Machine based Neural Network for
        CTR Prediction", IJCAI 2017.
    """

    def __init__(
        self,
        fields: Sequence[Feature | dict],
        embedding_dim: int = 10,
        out_of_range: str = "error",
        embeddings_initializer: str | keras.initializers.Initializer | None = None,
        linear_initializer: str | keras.initializers.Initializer = "zeros",
        embeddings_l2: float = 1e-5,
        linear_l2: float = 1e-5,
        **kwargs,
    ):
        fields = [field_config(f) for f in fields]
        _check_arguments(fields, embedding_dim, out_of_range, embeddings_l2, linear_l2)
        super().__init__(**kwargs)
        self.fields = fields
        self.embedding_dim = embedding_dim
        self.out_of_range = out_of_range
        if embeddings_initializer is None:
            embeddings_initializer = keras.initializers.RandomNormal(stddev=0.01)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.linear_initializer = keras.initializers.get(linear_initializer)
        self.embeddings_l2 = float(embeddings_l2)
        self.linear_l2 = float(linear_l2)
        self._lay_out_table()
        self._group_fields()

    def _lay_out_table(self):
        """Row layout of the fused table: a block of rows per field, in field order.

        Fields with the same `"table"` share the block of the first of them.
        Then, if any field is multi-valued, one padding row.
        """
        oov_rows = 1 if self.out_of_range == "oov" else 0
        self.offsets = []
        shared = {}  # table name -> offset of its block
        rows = 0
        for f in self.fields:
            if f.get("table") in shared:
                self.offsets.append(shared[f["table"]])
                continue
            if "table" in f:
                shared[f["table"]] = rows
            self.offsets.append(rows)
            rows += 1 if f["kind"] == "numeric" else f["vocabulary_size"] + oov_rows
        self.padding_row = rows if any(f["kind"] == "multivalued" for f in self.fields) else None
        self.total_rows = rows + (1 if self.padding_row is not None else 0)

    def _group_fields(self):
        """The fields grouped by kind, as `call` handles them.

        A few batched ops instead of a few per field: the fields that look
        rows up by id (categorical, multi-valued) with one gather of
        `(batch, slots)` rows, the numeric fields (one fixed row each) with
        one gather of those rows, broadcast over the batch: they add no
        per-example rows to the gather, its gradient or the optimizer's
        deduplication. The outputs are put back in declared order with
        `_order`.
        """
        fields = self.fields
        offset_of = dict(zip(self.field_names, self.offsets, strict=True))
        group_order = ("categorical", "multivalued", "numeric")
        self._grouped = [f for kind in group_order for f in fields if f["kind"] == kind]
        order = [self._grouped.index(f) for f in fields]
        self._order = None if order == list(range(len(fields))) else order
        self._numeric_rows = [offset_of[f["name"]] for f in self._grouped if f["kind"] == "numeric"]
        # Per id slot (one per categorical field, max_length per multi-valued
        # field), in grouped order: what the range check and the row offsets
        # need.
        self._slots = {"offset": [], "size": [], "low": [], "multivalued": [], "field": []}
        for f in self._grouped:
            if f["kind"] == "numeric":
                continue
            n = f["max_length"] if f["kind"] == "multivalued" else 1
            self._slots["offset"] += [offset_of[f["name"]]] * n
            self._slots["size"] += [f["vocabulary_size"]] * n
            self._slots["low"] += [PADDING_ID if f["kind"] == "multivalued" else 0] * n
            self._slots["multivalued"] += [f["kind"] == "multivalued"] * n
            self._slots["field"] += [f["name"]] * n

    @property
    def input_dtype(self):
        # Real-valued x is kept in float32 under mixed precision policies.
        return self.variable_dtype

    @property
    def field_names(self):
        return [f["name"] for f in self.fields]

    @property
    def input_names(self):
        """Every input the layer reads: field names, plus `<name>_weights`."""
        names = []
        for f in self.fields:
            names.append(f["name"])
            if f["kind"] == "multivalued" and f["weighted"]:
                names.append(weights_input_name(f["name"]))
        return names

    def build(self, input_shape=None):
        k = self.embedding_dim

        def initializer(shape, dtype=None):
            return ops.concatenate(
                [
                    self.embeddings_initializer((shape[0], k), dtype=dtype),
                    self.linear_initializer((shape[0], 1), dtype=dtype),
                ],
                axis=1,
            )

        # One row per feature: v (k columns) then w. The forward gather, its
        # gradient and the optimizer's row update touch each row once.
        # autocast=False: the lookup needs the tf.Variable itself, not a cast copy.
        self.table = tables.mark_embedding_table(
            self.add_weight(
                name="table",
                shape=(self.total_rows, k + 1),
                initializer=initializer,
                autocast=False,
            )
        )

    def get_factors(self):
        """The factor vectors v, `(rows, k)` numpy array (row = offset + id)."""
        return keras.ops.convert_to_numpy(self.table)[:, : self.embedding_dim]

    def get_linear_weights(self):
        """The first-order weights w, `(rows,)` numpy array."""
        return keras.ops.convert_to_numpy(self.table)[:, self.embedding_dim]

    def set_table(self, factors, linear_weights):
        """Assign v `(rows, k)` and w `(rows,)`."""
        factors = np.asarray(factors, dtype=self.variable_dtype)
        linear = np.asarray(linear_weights, dtype=self.variable_dtype).reshape(-1, 1)
        self.table.assign(np.concatenate([factors, linear], axis=1))

    def _input(self, inputs, name, dtype, shape):
        if name not in inputs:
            raise KeyError(f"FieldEmbedding: missing input for field '{name}'.")
        x = ops.cast(inputs[name], dtype)
        return x if tuple(x.shape[1:]) == shape else ops.reshape(x, (-1,) + shape)

    def _multivalued_ids_and_values(self, field, inputs):
        """Ids (batch, max_length) and x values (batch, max_length) of a multi-valued field."""
        length = (field["max_length"],)
        ids = self._input(inputs, field["name"], "int64", length)
        if field["weighted"]:
            weights = self._input(
                inputs, weights_input_name(field["name"]), self.variable_dtype, length
            )
        else:
            weights = ops.ones_like(ids, dtype=self.variable_dtype)
        weights = ops.where(ops.equal(ids, PADDING_ID), 0.0, weights)
        if field["combiner"] == "sum":
            return ids, weights
        if field["combiner"] == "mean":
            denom = ops.sum(weights, axis=1, keepdims=True)
        else:
            denom = ops.sqrt(ops.sum(ops.square(weights), axis=1, keepdims=True))
        return ids, weights / ops.where(ops.equal(denom, 0.0), 1.0, denom)

    def _id_rows(self, inputs):
        """Table rows `(batch, slots)` and x values (None: all 1) of the id slots."""
        ids, values = [], []  # per group: (batch, slots of the group)
        categorical = [f["name"] for f in self._grouped if f["kind"] == "categorical"]
        if categorical:
            ids.append(
                ops.stack([self._input(inputs, n, "int64", ()) for n in categorical], axis=1)
            )
        for field in self._grouped:
            if field["kind"] == "multivalued":
                i, v = self._multivalued_ids_and_values(field, inputs)
                ids.append(i)
                values.append(v)
        # Categorical slots have x = 1: values are only needed (and built)
        # when a multi-valued field brings other x values.
        if values and categorical:
            values.insert(0, ops.ones_like(ids[0], dtype=self.variable_dtype))
        values = _concat(values) if values else None
        ids = _concat(ids)  # (batch, slots)

        slots = self._slots
        size = np.asarray(slots["size"], dtype="int64")
        offset = np.asarray(slots["offset"], dtype="int64")
        padding = None
        if self.padding_row is not None:
            padding = ops.logical_and(
                ops.equal(ids, PADDING_ID), np.asarray(slots["multivalued"], dtype=bool)
            )
        if self.out_of_range == "error":
            ids = _tf_ops.check_ids_in_range(ids, slots["low"], slots["size"], slots["field"])
        else:
            outside = ops.logical_or(ops.less(ids, 0), ops.greater_equal(ids, size))
            if padding is not None:
                outside = ops.logical_and(outside, ops.logical_not(padding))
            ids = ops.where(outside, size, ids)  # the field's OOV row
        rows = ids + offset  # (batch, slots)
        if padding is not None:
            rows = ops.where(padding, self.padding_row, rows)
        return rows, values

    def _id_terms(self, inputs):
        """Terms of the categorical and multi-valued fields: one gather of their rows."""
        rows, values = self._id_rows(inputs)
        gathered = _tf_ops.resource_gather(self.table, rows)  # (batch, slots, k + 1)
        # v (batch, slots, k) and w (batch, slots, 1). A split, not two
        # slices: its gradient is one concatenation, where two slices'
        # gradients are two zero-filled full-size tensors and their sum.
        factors, weights = ops.split(gathered, [self.embedding_dim], axis=-1)
        if values is None:  # categorical only: x = 1, one id per field
            return self._one_id_terms(factors, weights)
        return self._weighted_id_terms(factors, weights[..., 0], values)

    def _one_id_terms(self, factors, weights):
        """Terms of categorical fields only: v `(batch, fields, k)`, w `(batch, fields, 1)`."""
        # v^2 is both the squared embedding and the penalty's summand.
        squares = ops.square(factors)
        return _Terms(
            embeddings=[factors],
            squared=[squares],
            linear=ops.sum(weights, axis=1),  # (batch, 1)
            l2_factors=ops.sum(squares, axis=(1, 2)) if self.embeddings_l2 else None,
            l2_linear=ops.sum(ops.square(weights), axis=(1, 2)) if self.linear_l2 else None,
        )

    def _weighted_id_terms(self, factors, weights, values):
        """Terms of id slots with x values: v `(batch, slots, k)`, w and x `(batch, slots)`."""
        lengths = [
            f["max_length"] if f["kind"] == "multivalued" else 1
            for f in self._grouped
            if f["kind"] != "numeric"
        ]
        terms = factors * values[..., None]  # x_i v_i, (batch, slots, k)
        linear = ops.sum(weights * values, axis=1, keepdims=True)
        embeddings, squared = [], []
        start = 0
        for n in lengths:
            block = terms[:, start : start + n, :]
            if n == 1:
                embeddings.append(block)
                squared.append(ops.square(block))
            else:
                embeddings.append(ops.sum(block, axis=1, keepdims=True))
                squared.append(ops.sum(ops.square(block), axis=1, keepdims=True))
            start += n
        used = ops.cast(ops.not_equal(values, 0.0), self.variable_dtype)
        l2_factors = l2_linear = None
        if self.embeddings_l2:
            per_slot = ops.sum(ops.square(factors), axis=-1)  # (batch, slots)
            l2_factors = ops.sum(per_slot * used, axis=1)
        if self.linear_l2:
            l2_linear = ops.sum(ops.square(weights) * used, axis=1)
        return _Terms(embeddings, squared, linear, l2_factors, l2_linear)

    def _numeric_terms(self, inputs):
        """Terms of the numeric fields: one fixed row per field, scaled by x."""
        k = self.embedding_dim
        numeric = [f["name"] for f in self._grouped if f["kind"] == "numeric"]
        dtype = self.variable_dtype
        x = ops.stack([self._input(inputs, n, dtype, ()) for n in numeric], axis=1)
        row = _tf_ops.resource_gather(self.table, np.asarray(self._numeric_rows, "int64"))
        v, w = row[:, :k], row[:, k:]  # (numeric, k), (numeric, 1)
        terms = x[..., None] * v  # x_i v_i, (batch, numeric, k)
        squared = ops.square(terms)  # one value per field: (x v)^2
        linear = ops.matmul(x, w)  # (batch, 1)
        used = ops.cast(ops.not_equal(x, 0.0), dtype)  # (batch, numeric)
        l2_factors = l2_linear = None
        if self.embeddings_l2:
            l2_factors = ops.matmul(used, ops.sum(ops.square(v), axis=1))
        if self.linear_l2:
            l2_linear = ops.matmul(used, ops.square(w[:, 0]))
        return _Terms([terms], [squared], linear, l2_factors, l2_linear)

    def call(self, inputs):
        groups = []  # grouped order: the id fields, then the numeric fields
        if self._slots["field"]:  # categorical and multi-valued fields
            groups.append(self._id_terms(inputs))
        if self._numeric_rows:
            groups.append(self._numeric_terms(inputs))

        embeddings = _concat([e for g in groups for e in g.embeddings])  # (batch, fields, k)
        squared = _concat([s for g in groups for s in g.squared])
        linear = _sum([g.linear for g in groups])  # (batch, 1)
        if self._order is not None:  # back to the declared field order
            embeddings = ops.take(embeddings, self._order, axis=1)
            squared = ops.take(squared, self._order, axis=1)

        if self.embeddings_l2:
            self.add_loss(self.embeddings_l2 * ops.mean(_sum([g.l2_factors for g in groups])))
        if self.linear_l2:
            self.add_loss(self.linear_l2 * ops.mean(_sum([g.l2_linear for g in groups])))

        dtype = self.compute_dtype
        return {
            "embeddings": ops.cast(embeddings, dtype),
            "squared_embeddings": ops.cast(squared, dtype),
            "linear": ops.cast(linear, dtype),
        }

    def compute_output_shape(self, input_shape):
        batch = None
        for shape in (input_shape or {}).values():
            batch = shape[0]
            break
        vectors = (batch, len(self.fields), self.embedding_dim)
        return {
            "embeddings": vectors,
            "squared_embeddings": vectors,
            "linear": (batch, 1),
        }

    def compute_output_spec(self, inputs):
        shapes = self.compute_output_shape({k: v.shape for k, v in inputs.items()})
        return {
            key: keras.KerasTensor(shape, dtype=self.compute_dtype) for key, shape in shapes.items()
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "fields": [dict(f) for f in self.fields],
                "embedding_dim": self.embedding_dim,
                "out_of_range": self.out_of_range,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "linear_initializer": keras.initializers.serialize(self.linear_initializer),
                "embeddings_l2": self.embeddings_l2,
                "linear_l2": self.linear_l2,
            }
        )
        return config
