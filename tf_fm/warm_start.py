"""Warm start: go on training a model on new data whose vocabularies grew.

A CTR model is retrained daily on new logs, and new ids (new ads, new
users) appear every day. Training from scratch throws away what the old
ids learned; feeding new data to the old model maps every new id to OOV.
Warm start does neither:

* `extend_schema(schema, dataset)`: a copy of an adapted schema whose learned
  vocabularies are the old tokens, in their old order (so they keep their
  ids), followed by the tokens of the new data that pass the feature's
  `min_count` (counted on the new data) and are not in it yet, most frequent
  first, up to `max_tokens` in all. Everything else the schema learned (numeric
  statistics and defaults, bin boundaries, multi-valued lengths) and every
  hashed feature (bins and salt are in its declaration) stays as it was, so an
  old row becomes the same model input as before.
* `transfer(old_model, new_model)`: copies a trained model into a model built
  on the extended schema (same builder and options). Every weight is copied;
  in each `FieldEmbedding` table the rows of each field's old ids, its OOV
  rows and the padding row move to their place in the new layout, and the
  new ids' rows keep the new model's initial values. The optimizer state is
  carried the same way (the new rows' slots start at zero, as for a row never
  seen), with its step count; the learning rate is the new model's own.

So before the first step of warm-started training, old ids have their old
vectors and an old row's prediction is the old model's (a test), and
the model is an ordinary one: it saves, loads and exports as any other.
`tf_fm.train(..., warm_start=RUN)` and `tf-fm train --warm-start RUN` do
both on the run's files.
"""

import copy

import keras
import numpy as np

from tf_fm.layers import FieldEmbedding
from tf_fm.schema import FeatureSchema


def extend_schema(schema: FeatureSchema, dataset) -> tuple[FeatureSchema, dict[str, int]]:
    """`schema` with its learned vocabularies extended by the new tokens of `dataset`.

    Args:
        schema: an adapted `FeatureSchema` (the trained model's).
        dataset: batched `tf.data.Dataset` of raw `features` dicts or
            `(features, label)` tuples: the new data.

    Returns:
        `(extended, added)`: the new schema (adapted) and the number of
        tokens added per learned vocabulary.
    """
    if not schema.adapted:
        raise ValueError("extend_schema: `schema` must be adapted (the trained model's schema)")
    fresh = FeatureSchema(schema.features, label=schema.label).adapt(dataset)
    state = copy.deepcopy(schema.state)
    added = {}
    for feature in schema.features:
        if not _learns_vocabulary(feature):
            continue
        old = list(state[feature.name]["vocabulary"])
        known = set(old)
        new = [t for t in fresh.state[feature.name]["vocabulary"] if t not in known]
        if feature.max_tokens is not None:
            new = new[: max(0, feature.max_tokens - len(old))]
        state[feature.name]["vocabulary"] = old + new
        added[feature.name] = len(new)
    return FeatureSchema(schema.features, label=schema.label, state=state), added


def _learns_vocabulary(feature):
    return getattr(feature, "encoding", None) == "vocabulary" and feature.vocabulary is None


def _row_map(old: FieldEmbedding, new: FieldEmbedding) -> tuple[np.ndarray, np.ndarray]:
    """`(source, target)` rows: where each row of `old`'s table goes in `new`'s."""
    if old.field_names != new.field_names or old.out_of_range != new.out_of_range:
        raise ValueError(
            f"transfer: layer '{new.name}' has fields {new.field_names} "
            f"(out_of_range={new.out_of_range!r}), the trained model's '{old.name}' "
            f"{old.field_names} (out_of_range={old.out_of_range!r})"
        )
    oov = old.out_of_range == "oov"
    source, target = [], []
    mapped = set()  # blocks already mapped: fields with one `table` share theirs
    for f_old, f_new, at_old, at_new in zip(
        old.fields, new.fields, old.offsets, new.offsets, strict=True
    ):
        if at_old in mapped:
            continue
        mapped.add(at_old)
        if f_old["kind"] == "numeric":
            source.append(at_old)
            target.append(at_new)
            continue
        n_old, n_new = f_old["vocabulary_size"], f_new["vocabulary_size"]
        if n_new < n_old:
            raise ValueError(
                f"transfer: field '{f_old['name']}' has {n_new} ids in the new model, "
                f"fewer than the trained model's {n_old}: vocabularies can only grow"
            )
        source.extend(range(at_old, at_old + n_old))
        target.extend(range(at_new, at_new + n_old))
        if oov:  # the layer's out-of-range row ends each block
            source.append(at_old + n_old)
            target.append(at_new + n_new)
    if old.padding_row is not None:
        source.append(old.padding_row)
        target.append(new.padding_row)
    return np.asarray(source), np.asarray(target)


def _table_maps(old_model, new_model):
    """Row maps `(source, target)` of the `FieldEmbedding` tables, by `(old rows, new rows)`."""
    old_layers = [layer for layer in old_model.layers if isinstance(layer, FieldEmbedding)]
    new_layers = [layer for layer in new_model.layers if isinstance(layer, FieldEmbedding)]
    if len(old_layers) != len(new_layers):
        raise ValueError(
            f"transfer: the models have {len(old_layers)} and {len(new_layers)} "
            "FieldEmbedding tables: they were not built by the same builder"
        )
    maps = {}
    for old, new in zip(old_layers, new_layers, strict=True):
        key = (old.total_rows, new.total_rows)
        rows = _row_map(old, new)
        if key in maps and not all(map(np.array_equal, maps[key], rows)):
            raise ValueError(f"transfer: two tables of {key[0]} rows grow differently")
        maps[key] = rows
    return maps


def _moved(old_value, new_variable, maps):
    """`old_value` in the shape of `new_variable`: rows moved by the maps, the rest new."""
    old_value = np.asarray(old_value)
    new_value = np.array(keras.ops.convert_to_numpy(new_variable), copy=True)
    if old_value.shape == new_value.shape:
        return old_value
    key = (old_value.shape[0], new_value.shape[0]) if old_value.ndim else None
    if key not in maps or old_value.shape[1:] != new_value.shape[1:]:
        raise ValueError(
            f"transfer: '{new_variable.path}' is {new_value.shape} in the new model and "
            f"{old_value.shape} in the trained one, and is not an embedding table"
        )
    source, target = maps[key]
    new_value[target] = old_value[source]
    return new_value


def transfer(old_model: keras.Model, new_model: keras.Model, optimizer: bool = True) -> None:
    """Copies a trained model's weights and optimizer state into its extended rebuild.

    Args:
        old_model: the trained model (compiled, with its optimizer state, as
            `keras.saving.load_model` returns it).
        new_model: the same builder and options on the extended schema
            (`extend_schema`), compiled; its initial values stay on the rows
            of new ids.
        optimizer: bool. Copy the optimizer state too. Defaults to True.
            The distributed loops build their optimizer state themselves
            (the parameter servers' per-shard moments): there the new run's
            optimizer starts fresh.

    A trained model without optimizer state (loaded with `compile=False`)
    gives its weights only; the new model's optimizer starts fresh.
    """
    maps = _table_maps(old_model, new_model)
    if len(old_model.weights) != len(new_model.weights):
        raise ValueError(
            f"transfer: the models have {len(old_model.weights)} and "
            f"{len(new_model.weights)} weights: they were not built by the same builder"
        )
    for old, new in zip(old_model.weights, new_model.weights, strict=True):
        new.assign(_moved(keras.ops.convert_to_numpy(old), new, maps))
    if optimizer:
        _transfer_optimizer(old_model, new_model, maps)


def _transfer_optimizer(old_model, new_model, maps):
    old_optimizer = getattr(old_model, "optimizer", None)
    new_optimizer = getattr(new_model, "optimizer", None)
    if old_optimizer is None or new_optimizer is None or not old_optimizer.variables:
        return
    if not new_optimizer.built:
        new_optimizer.build(new_model.trainable_variables)
    learning_rate = float(keras.ops.convert_to_numpy(new_optimizer.learning_rate))
    old_variables, new_variables = old_optimizer.variables, new_optimizer.variables
    if len(old_variables) != len(new_variables):
        raise ValueError(
            f"transfer: the optimizers hold {len(old_variables)} and {len(new_variables)} "
            "variables: compile both models with the same optimizer"
        )
    for old, new in zip(old_variables, new_variables, strict=True):
        new.assign(_moved(keras.ops.convert_to_numpy(old), new, maps))
    new_optimizer.learning_rate = learning_rate  # the new run's, not the old one's decayed rate
