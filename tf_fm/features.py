"""Field declarations: what kind each input column is and how it enters the FM.

These are the declarations `FieldEmbedding`, `FM` and `DeepFM` take. Each
converts to the plain dict stored in the layer's config (`to_dict`).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class CategoricalField:
    """One integer id per row, in `[0, vocabulary_size)`.

    Args:
        name: str. The input's name (also the serving signature's name).
        vocabulary_size: int. Number of distinct ids.
    """

    name: str
    vocabulary_size: int

    def to_dict(self):
        return {"name": self.name, "kind": "categorical", "vocabulary_size": self.vocabulary_size}


@dataclass(frozen=True)
class NumericField:
    """One real value x per row; the FM uses x * v and x * w for it.

    Args:
        name: str. The input's name.
    """

    name: str

    def to_dict(self):
        return {"name": self.name, "kind": "numeric"}


@dataclass(frozen=True)
class MultiValuedField:
    """Up to `max_length` ids per row (padded with -1), optionally weighted.

    Args:
        name: str. The input's name; weights come in `"<name>_weights"`.
        vocabulary_size: int. Number of distinct ids.
        max_length: int. Ids per row after padding.
        weighted: bool. Whether each id has a value (libFM's `idx:val`).
            Defaults to False (every id has x = 1).
        combiner: str. `"sum"`, `"mean"` or `"sqrtn"`: how the ids' x values
            are normalized within a row. Defaults to `"sum"`.
    """

    name: str
    vocabulary_size: int
    max_length: int
    weighted: bool = False
    combiner: str = "sum"

    def to_dict(self):
        return {
            "name": self.name,
            "kind": "multivalued",
            "vocabulary_size": self.vocabulary_size,
            "max_length": self.max_length,
            "weighted": self.weighted,
            "combiner": self.combiner,
        }
