"""The one declaration of a feature: what a raw column is and how it enters the model.

A feature declaration says both halves at once:

* how the raw column (what the readers of `tf_fm.data` yield, what a client
  sends to the served model) is preprocessed: `tf_fm.FeatureSchema` learns
  the vocabularies and statistics it needs and applies them;
* how the result enters the model: a categorical field (one id per row), a
  numeric field (one real x per row) or a multi-valued field (several ids,
  optionally weighted, per row). `model_field` gives the plain dict that
  `FieldEmbedding` keeps in its config.

| class | raw column | model field |
|---|---|---|
| `CategoricalFeature` | a string or integer per row | categorical, one id |
| `NumericFeature` | a float per row (NaN missing) | numeric, or categorical when discretized |
| `MultiValuedFeature` | a delimited string, or ids padded with -1 (+ weights) | multi-valued |

Features whose ids are ready (`encoding="integer"`) and numeric features
without a learned transform need no adapting: `tf_fm.FM([...])` takes them
directly. Every other feature goes through an adapted `FeatureSchema`
(`tf_fm.FM(schema)`).

All validation and every constant of a feature live here; the layers and
the schema import them.
"""

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

FIELD_KINDS = ("categorical", "numeric", "multivalued")
ENCODINGS = ("vocabulary", "hash", "integer")
MULTI_VALUED_ENCODINGS = ("vocabulary", "hash", "integer")
TRANSFORMS = ("none", "standardize", "log1p", "discretize")
CATEGORICAL_DTYPES = ("string", "int64")
OUT_OF_RANGE_MODES = ("error", "oov")
COMBINERS = ("sum", "mean", "sqrtn")
PADDING_ID = -1


def weights_input_name(name: str) -> str:
    """Name of the input that carries a weighted multi-valued feature's values."""
    return f"{name}_weights"


def _check_positive_int(feature, arg, value, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(
            f"Feature '{feature}': `{arg}` must be a positive integer. Received: {arg}={value!r}"
        )


def _check_choice(feature, arg, value, choices):
    if value not in choices:
        raise ValueError(
            f"Feature '{feature}': `{arg}` must be one of {choices}. Received: {arg}={value!r}"
        )


def _check_ids(feature):
    """What categorical and multi-valued features validate alike: their id encodings."""
    name = feature.name
    _check_positive_int(name, "min_count", feature.min_count)
    _check_positive_int(name, "max_tokens", feature.max_tokens, allow_none=True)
    _check_positive_int(name, "num_oov_buckets", feature.num_oov_buckets)
    if feature.vocabulary is not None:
        object.__setattr__(feature, "vocabulary", tuple(feature.vocabulary))
    if feature.encoding == "hash":
        _check_positive_int(name, "num_bins", feature.num_bins)
    if feature.encoding == "integer":
        _check_positive_int(name, "num_ids", feature.num_ids)


def _check_table(feature):
    """`table` names an id space shared with other features: integer ids only."""
    if feature.table is None:
        return
    if not isinstance(feature.table, str) or not feature.table:
        raise ValueError(
            f"Feature '{feature.name}': `table` must be a non-empty string or None. "
            f"Received: table={feature.table!r}"
        )
    if feature.encoding != "integer":
        raise ValueError(
            f"Feature '{feature.name}': `table` (rows shared with other features) needs "
            f"encoding='integer', ids of one id space. Received: encoding={feature.encoding!r}"
        )


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise ValueError(f"A feature needs a non-empty string `name`. Received: name={name!r}")


class _Declaration:
    """What the three feature classes share: their config (plain JSON types, with `kind`)."""

    kind = ""

    def get_config(self) -> dict:
        config = dataclasses.asdict(self)
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
        config["kind"] = self.kind
        return config


@dataclasses.dataclass(frozen=True)
class CategoricalFeature(_Declaration):
    """A categorical column: one raw value per row -> one id in `[0, size)`.

    Three encodings:

    * `"vocabulary"` (default): the ids of the values seen at least
      `min_count` times in `FeatureSchema.adapt` (a `keras.layers.StringLookup`
      for `dtype="string"`, `keras.layers.IntegerLookup` for `"int64"`).
      Ids `0 .. num_oov_buckets - 1` are the OOV buckets: a value not in the
      vocabulary (unseen, or rarer than `min_count`) is hashed into one of them,
      never dropped. Learned tokens follow, most frequent first (ties in
      token order). The missing value `""` is an ordinary category. A raw
      value that is not UTF-8 cannot be in the (JSON) vocabulary: it maps
      to an OOV id, and `adapt` counts it (`state[name]["num_undecodable"]`).
    * `"hash"`: `keras.layers.Hashing(num_bins)` (FarmHash64, the same bin in
      every process and on every machine); nothing is learned. For unbounded
      vocabularies.
    * `"integer"`: the raw values already are ids in `[0, num_ids)`. With
      `out_of_range="error"` another id fails the preprocessing (training
      pipeline or served model) with a message naming the feature; with
      `"oov"` such ids (negative included) map to the extra id `num_ids`, so
      the field has `num_ids + 1` ids.

    Args:
        name: str. The raw column's name, also the model input's name.
        encoding: str. `"vocabulary"`, `"hash"` or `"integer"`. Defaults to
            `"vocabulary"`.
        dtype: str or None. The raw column's type: `"string"` or `"int64"`
            (ints of any width are cast). Defaults to `"int64"` for
            `encoding="integer"`, `"string"` otherwise.
        min_count: int. Vocabulary: fewest occurrences a value needs to get
            its own id. Defaults to 1.
        max_tokens: int or None. Vocabulary: keep at most this many of the
            most frequent values (not counting OOV buckets). Defaults to None.
        num_oov_buckets: int. Vocabulary: number of OOV ids, >= 1. Defaults
            to 1.
        vocabulary: sequence or None. Vocabulary: a fixed list of values used
            instead of learning one. Defaults to None.
        num_bins: int. Hash: number of bins. Required for `"hash"`.
        num_ids: int. Integer: number of ids. Required for `"integer"`.
        out_of_range: str. Integer: `"error"` or `"oov"`. Defaults to
            `"error"`.
        table: str or None. Integer: the name of an id space this feature
            shares with others: features with the same `table` look their
            ids up in one block of the model's table (one row per id, as
            DeepCTR's `embedding_name`), so their `num_ids` must agree.
            Defaults to None (the feature's own rows).
    """

    name: str
    encoding: str = "vocabulary"
    dtype: str | None = None
    min_count: int = 1
    max_tokens: int | None = None
    num_oov_buckets: int = 1
    vocabulary: tuple | None = None
    num_bins: int | None = None
    num_ids: int | None = None
    out_of_range: str = "error"
    table: str | None = None

    kind = "categorical"

    def __post_init__(self):
        _check_name(self.name)
        if self.dtype is None:
            object.__setattr__(self, "dtype", "int64" if self.encoding == "integer" else "string")
        _check_choice(self.name, "encoding", self.encoding, ENCODINGS)
        _check_choice(self.name, "dtype", self.dtype, CATEGORICAL_DTYPES)
        _check_choice(self.name, "out_of_range", self.out_of_range, OUT_OF_RANGE_MODES)
        _check_ids(self)
        _check_table(self)
        if self.encoding == "integer":
            if self.dtype != "int64":
                raise ValueError(
                    f"Feature '{self.name}': encoding='integer' needs dtype='int64'. "
                    f"Received: dtype={self.dtype!r}"
                )

    @property
    def raw_dtype(self):
        return self.dtype


@dataclasses.dataclass(frozen=True)
class NumericFeature(_Declaration):
    """A numeric column: one float per row, NaN for missing.

    A missing value (NaN, or +-inf) is replaced by `default`, in raw units,
    before the transform. With `default=None` a non-finite value is an error
    naming the feature (`InvalidArgumentError` from the preprocessing, and a
    failure of `FeatureSchema.adapt`).

    Transforms:

    * `"none"`: x.
    * `"standardize"`: `(x - mean) / std` (`keras.layers.Normalization`), with
      the mean and population standard deviation of the filled values seen in
      `adapt`. A constant column is only centered (std taken as 1).
    * `"log1p"`: `log(1 + max(x, 0))`: negative values are clipped to 0, as
      in the DLRM Criteo preprocessing, so no value gives NaN.
    * `"discretize"`: the bucket index of x (`keras.layers.Discretization`):
      bucket i holds `boundaries[i - 1] <= x < boundaries[i]`. Boundaries are
      given (`bin_boundaries`) or learned as approximate quantiles of the
      data (`num_bins`, the `Discretization` quantile sketch with
      `epsilon`); duplicate learned boundaries (many equal values) are
      merged. The model sees a categorical field with
      `len(boundaries) + 1` ids.

    Args:
        name: str. The raw column's name, also the model input's name.
        transform: str. `"none"`, `"standardize"`, `"log1p"` or
            `"discretize"`. Defaults to `"none"`.
        default: float or None. Raw value that replaces NaN / inf. Defaults
            to None (missing values are an error).
        num_bins: int or None. Discretize: number of quantile buckets to
            learn.
        bin_boundaries: sequence of float or None. Discretize: fixed sorted
            boundaries.
        epsilon: float. Discretize: error tolerance of the learned quantiles.
            Defaults to 0.01.
    """

    name: str
    transform: str = "none"
    default: float | None = None
    num_bins: int | None = None
    bin_boundaries: tuple | None = None
    epsilon: float = 0.01

    kind = "numeric"

    def __post_init__(self):
        _check_name(self.name)
        _check_choice(self.name, "transform", self.transform, TRANSFORMS)
        if self.default is not None:
            if not math.isfinite(float(self.default)):
                raise ValueError(
                    f"Feature '{self.name}': `default` must be finite. "
                    f"Received: default={self.default!r}"
                )
            object.__setattr__(self, "default", float(self.default))
        if self.transform == "discretize":
            if (self.num_bins is None) == (self.bin_boundaries is None):
                raise ValueError(
                    f"Feature '{self.name}': transform='discretize' needs exactly one of "
                    f"`num_bins` and `bin_boundaries`. Received: num_bins={self.num_bins!r}, "
                    f"bin_boundaries={self.bin_boundaries!r}"
                )
            if self.num_bins is not None:
                _check_positive_int(self.name, "num_bins", self.num_bins)
                if self.num_bins < 2:
                    raise ValueError(
                        f"Feature '{self.name}': `num_bins` must be >= 2. "
                        f"Received: num_bins={self.num_bins}"
                    )
            else:
                bounds = tuple(float(b) for b in self.bin_boundaries)
                if not bounds or any(b >= c for b, c in zip(bounds[:-1], bounds[1:], strict=True)):
                    raise ValueError(
                        f"Feature '{self.name}': `bin_boundaries` must be a non-empty, "
                        f"strictly increasing sequence. Received: bin_boundaries={bounds!r}"
                    )
                object.__setattr__(self, "bin_boundaries", bounds)
        elif self.num_bins is not None or self.bin_boundaries is not None:
            raise ValueError(
                f"Feature '{self.name}': `num_bins` / `bin_boundaries` need "
                f"transform='discretize'. Received: transform={self.transform!r}"
            )

    @property
    def raw_dtype(self):
        return "float32"


@dataclasses.dataclass(frozen=True)
class MultiValuedFeature(_Declaration):
    """A multi-valued categorical column: several ids per row, padded with -1.

    With `encoding="vocabulary"` or `"hash"` the raw column is one delimited
    string per row: each row is split on `separator` (`tf.strings.split`),
    empty tokens are dropped (so `""` is a row with no values), each token
    becomes an id (vocabulary with OOV buckets, or hash bins, as in
    `CategoricalFeature`), and the ids are padded with -1 to `max_length`
    per row. A row with more tokens keeps its first `max_length`; `adapt`
    counts such rows (`FeatureSchema.state[name]["num_truncated_rows"]`).
    Tokens are not de-duplicated: a repeated token (or two unseen tokens
    hashed to one OOV bucket) gives a repeated id, which `FieldEmbedding`
    counts twice.

    With `encoding="integer"` the raw column already is `(batch, max_length)`
    int64 ids in `[0, num_ids)`, padded with -1 (what the libSVM / libFM /
    libFFM readers yield), and, when `weighted`, a float32
    `"<name>_weights"` column of the same shape with each id's value x
    (libFM's `idx:val`). An id outside the range fails the model's step
    with a message naming the feature.

    Args:
        name: str. The raw column's name, also the model input's name.
        separator: str. Token separator. Defaults to `"|"`.
        max_length: int or None. Ids per row after padding / truncation.
            None learns it as the longest row seen in `adapt` (required for
            `"integer"`). Defaults to None.
        encoding: str. `"vocabulary"`, `"hash"` or `"integer"`. Defaults to
            `"vocabulary"`.
        min_count: int. Vocabulary: fewest occurrences per token. Defaults
            to 1.
        max_tokens: int or None. Vocabulary: most frequent tokens kept (not
            counting OOV buckets). Defaults to None.
        num_oov_buckets: int. Vocabulary: number of OOV ids. Defaults to 1.
        vocabulary: sequence of str or None. A fixed vocabulary. Defaults to
            None.
        num_bins: int. Hash: number of bins.
        num_ids: int. Integer: number of ids.
        weighted: bool. Integer: whether each id has a value x (input
            `"<name>_weights"`); otherwise every id has x = 1. Defaults to
            False.
        combiner: str. `"sum"`, `"mean"` or `"sqrtn"`: how the x values of a
            row are normalized (`FieldEmbedding`). Defaults to `"sum"`.
        table: str or None. Integer: the name of an id space shared with
            other features (see `CategoricalFeature`); the libFFM format's
            per-field features share one (`tf_fm.data.libffm_features`).
            Defaults to None.
    """

    name: str
    separator: str = "|"
    max_length: int | None = None
    encoding: str = "vocabulary"
    min_count: int = 1
    max_tokens: int | None = None
    num_oov_buckets: int = 1
    vocabulary: tuple | None = None
    num_bins: int | None = None
    num_ids: int | None = None
    weighted: bool = False
    combiner: str = "sum"
    table: str | None = None

    kind = "multivalued"

    def __post_init__(self):
        _check_name(self.name)
        if not isinstance(self.separator, str) or not self.separator:
            raise ValueError(
                f"Feature '{self.name}': `separator` must be a non-empty string. "
                f"Received: separator={self.separator!r}"
            )
        _check_positive_int(self.name, "max_length", self.max_length, allow_none=True)
        _check_choice(self.name, "encoding", self.encoding, MULTI_VALUED_ENCODINGS)
        _check_choice(self.name, "combiner", self.combiner, COMBINERS)
        _check_ids(self)
        _check_table(self)
        if self.encoding == "integer":
            _check_positive_int(self.name, "max_length", self.max_length)
        elif self.weighted:
            raise ValueError(
                f"Feature '{self.name}': `weighted=True` needs encoding='integer' (tokens of a "
                f"string have no values). Received: encoding={self.encoding!r}"
            )
        object.__setattr__(self, "weighted", bool(self.weighted))

    @property
    def raw_dtype(self):
        return "int64" if self.encoding == "integer" else "string"

    @property
    def dtype(self):
        return self.raw_dtype


FEATURE_CLASSES = {
    "categorical": CategoricalFeature,
    "numeric": NumericFeature,
    "multivalued": MultiValuedFeature,
}


def feature_from_config(config):
    """Rebuild a feature declaration from its `get_config()` dict."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in FEATURE_CLASSES:
        raise ValueError(f"`kind` must be one of {tuple(FEATURE_CLASSES)}. Received: kind={kind!r}")
    return FEATURE_CLASSES[kind](**config)


Feature = CategoricalFeature | NumericFeature | MultiValuedFeature


def needs_vocabulary(feature: Feature) -> bool:
    """Whether the feature learns a vocabulary in `FeatureSchema.adapt`."""
    return (
        feature.kind in ("categorical", "multivalued")
        and feature.encoding == "vocabulary"
        and feature.vocabulary is None
    )


def needs_adapt(feature: Feature) -> bool:
    """Whether the feature has something to learn before it can be applied."""
    if needs_vocabulary(feature):
        return True
    if feature.kind == "numeric":
        return feature.transform == "standardize" or (
            feature.transform == "discretize" and feature.bin_boundaries is None
        )
    return feature.kind == "multivalued" and feature.max_length is None


def raw_specs(feature: Feature) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The raw inputs of one feature: name -> (dtype name, shape after the batch axis).

    One input per feature, named after it, plus `"<name>_weights"` for a
    weighted integer multi-valued feature.
    """
    if feature.kind == "multivalued" and feature.encoding == "integer":
        specs = {feature.name: ("int64", (feature.max_length,))}
        if feature.weighted:
            specs[weights_input_name(feature.name)] = ("float32", (feature.max_length,))
        return specs
    return {feature.name: (feature.raw_dtype, ())}


def _learned(feature, state, key):
    if state is None or key not in state:
        raise ValueError(
            f"Feature '{feature.name}' is not adapted yet; call `schema.adapt(dataset)` first "
            "and build the model from the schema (or declare ids that need no learning: "
            "encoding='integer' with num_ids)."
        )
    return state[key]


def vocabulary_of(feature: Feature, state: dict | None = None) -> list:
    """The vocabulary (fixed or learned, OOV buckets not included) of a vocabulary feature."""
    if getattr(feature, "encoding", None) != "vocabulary":
        raise ValueError(f"Feature '{feature.name}' has no vocabulary.")
    if feature.vocabulary is not None:
        return list(feature.vocabulary)
    return list(_learned(feature, state, "vocabulary"))


def bin_boundaries_of(feature: Feature, state: dict | None = None) -> list:
    """Bucket boundaries (fixed or learned) of a discretized numeric feature."""
    if feature.kind != "numeric" or feature.transform != "discretize":
        raise ValueError(f"Feature '{feature.name}' is not discretized.")
    if feature.bin_boundaries is not None:
        return list(feature.bin_boundaries)
    return list(_learned(feature, state, "bin_boundaries"))


def max_length_of(feature: Feature, state: dict | None = None) -> int:
    """Ids per row (declared or learned) of a multi-valued feature."""
    if feature.max_length is not None:
        return feature.max_length
    return int(_learned(feature, state, "max_length"))


def _num_ids(feature, state):
    if feature.encoding == "hash":
        return feature.num_bins
    if feature.encoding == "integer":
        oov = feature.kind == "categorical" and feature.out_of_range == "oov"
        return feature.num_ids + (1 if oov else 0)
    return feature.num_oov_buckets + len(vocabulary_of(feature, state))


def model_field(feature: Feature, state: dict | None = None) -> dict[str, Any]:
    """How a feature enters the model: the field dict `FieldEmbedding` keeps in its config.

    Args:
        feature: a feature declaration.
        state: dict or None. What `FeatureSchema.adapt` learned for it
            (`schema.state[name]`); None for a feature that learns nothing.

    Returns:
        `{"name", "kind": "numeric"}`, `{"name", "kind": "categorical",
        "vocabulary_size"}` or `{"name", "kind": "multivalued",
        "vocabulary_size", "max_length", "weighted", "combiner"}`, plus
        `"table"` when the feature shares an id space (`table=`).

    Raises:
        ValueError: the feature needs learned state that `state` lacks.
    """
    name = feature.name
    if feature.kind == "numeric":
        if feature.transform != "discretize":
            return {"name": name, "kind": "numeric"}
        size = len(bin_boundaries_of(feature, state)) + 1
        return {"name": name, "kind": "categorical", "vocabulary_size": size}
    size = _num_ids(feature, state)
    shared = {} if feature.table is None else {"table": feature.table}
    if feature.kind == "categorical":
        return {"name": name, "kind": "categorical", "vocabulary_size": size, **shared}
    return {
        "name": name,
        "kind": "multivalued",
        "vocabulary_size": size,
        "max_length": max_length_of(feature, state),
        "weighted": feature.weighted,
        "combiner": feature.combiner,
        **shared,
    }


def _check_field_dict(spec, field):
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"Every field needs a non-empty string `name`. Received: {field!r}")
    kind = spec.get("kind")
    if kind not in FIELD_KINDS:
        raise ValueError(
            f"Field '{name}': `kind` must be one of {FIELD_KINDS}. Received: kind={kind!r}"
        )
    out = {"name": name, "kind": kind}
    if kind in ("categorical", "multivalued"):
        _check_positive_int(name, "vocabulary_size", spec.get("vocabulary_size"))
        out["vocabulary_size"] = int(spec["vocabulary_size"])
    if kind == "multivalued":
        _check_positive_int(name, "max_length", spec.get("max_length"))
        combiner = spec.get("combiner", "sum")
        _check_choice(name, "combiner", combiner, COMBINERS)
        out["max_length"] = int(spec["max_length"])
        out["weighted"] = bool(spec.get("weighted", False))
        out["combiner"] = combiner
    table = spec.get("table")
    if table is not None:
        if kind == "numeric" or not isinstance(table, str) or not table:
            raise ValueError(
                f"Field '{name}': `table` is the non-empty name of an id space shared by "
                f"categorical / multi-valued fields. Received: kind={kind!r}, table={table!r}"
            )
        out["table"] = table
    return out


def field_config(field: "Feature | dict") -> dict[str, Any]:
    """The validated field dict of a model input, from a feature or a field dict.

    Args:
        field: a feature declaration that needs no learned state (see
            `model_field`), or a field dict as `model_field` returns it.

    Returns:
        The field dict, validated.
    """
    if isinstance(field, tuple(FEATURE_CLASSES.values())):
        return model_field(field)
    if not isinstance(field, dict):
        raise TypeError(
            "A field is a tf_fm feature (CategoricalFeature, NumericFeature, "
            f"MultiValuedFeature) or a field dict. Received: {field!r}"
        )
    return _check_field_dict(dict(field), field)


# === Names of an earlier release (deprecated) ===


def _deprecated(old, new):
    warnings.warn(
        f"tf_fm.{old} is deprecated and will be removed in the next release; use {new}.",
        DeprecationWarning,
        stacklevel=3,
    )


def CategoricalField(name: str, vocabulary_size: int) -> CategoricalFeature:  # noqa: N802
    """Deprecated: `CategoricalFeature(name, encoding="integer", num_ids=vocabulary_size)`."""
    _deprecated("CategoricalField", 'CategoricalFeature(name, encoding="integer", num_ids=n)')
    return CategoricalFeature(name, encoding="integer", num_ids=vocabulary_size)


def NumericField(name: str) -> NumericFeature:  # noqa: N802
    """Deprecated: `NumericFeature(name)`."""
    _deprecated("NumericField", "NumericFeature(name)")
    return NumericFeature(name)


def MultiValuedField(  # noqa: N802
    name: str, vocabulary_size: int, max_length: int, weighted: bool = False, combiner: str = "sum"
) -> MultiValuedFeature:
    """Deprecated: `MultiValuedFeature(name, encoding="integer", num_ids=..., max_length=...)`."""
    _deprecated("MultiValuedField", 'MultiValuedFeature(name, encoding="integer", ...)')
    return MultiValuedFeature(
        name,
        encoding="integer",
        num_ids=vocabulary_size,
        max_length=max_length,
        weighted=weighted,
        combiner=combiner,
    )
