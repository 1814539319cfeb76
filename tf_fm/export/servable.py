"""What is served: the graph, its raw inputs, its outputs and signatures, written as a SavedModel.

A `Servable` takes the trained model and, explicitly, its `FeatureSchema`:
the schema's preprocessing goes into the graph (`schema.serving_model`), so
the raw inputs are the schema's (`schema.raw_input_specs()`). Without a
schema the model's own named inputs are the served inputs. The task and the
logit come from the model itself (`tf_fm.models.describe_model`: its
`PredictionHead`'s config and input); a Keras model without one is served
when `task=` is given, its logit then computed from the probability.

It is written with `keras.export.ExportArchive` and explicit signatures:
`serving_default` (Predict), `classification` (Classify, binary only) and
`regression` (Regress); `protos.set_method_names` then sets the Classify /
Regress method names.

Classify and Regress parse `tf.Example`s as their producers write them: a
scalar feature is one value (a missing string is `""`, a missing numeric
NaN, so its `default` applies; a missing int64 id is an error naming it),
and a multi-valued feature any number of values. Its ids (`int64_list`)
are padded with -1 or truncated to `max_length`, as a `serving_default`
client pads them; its weights (`<name>_weights`) are as many as its ids, or
none (each id then has x = 1); a delimited-string feature may come as one
delimited string or as a `bytes_list` of tokens (joined with its
separator). So an Example and the `serving_default` request of the same row
give the same prediction.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from tf_fm.export.common import (
    CLASS_LABELS,
    CLASSIFY_SIGNATURE,
    DEFAULT_SIGNATURE,
    EXAMPLES_INPUT,
    METHOD_NAMES,
    REGRESS_SIGNATURE,
)
from tf_fm.export.rows import DTYPES, dtype_name, to_tensor, typed_columns
from tf_fm.features import PADDING_ID, weights_input_name
from tf_fm.models import TASKS, describe_model
from tf_fm.schema import FeaturePreprocessor, FeatureSchema

UNSEEN_STRING = "tf_fm unseen value"
UNSEEN_ID = -(2**40)


def _check_schema(model, schema):
    if schema is None:
        if any(isinstance(layer, FeaturePreprocessor) for layer in model.layers):
            raise ValueError(
                f"Model '{model.name}' contains a FeaturePreprocessor: it looks like "
                "`schema.serving_model(model)`. Pass the trained model and its schema instead: "
                "export_saved_model(model, export_dir, schema=schema)."
            )
        return
    if not isinstance(schema, FeatureSchema):
        raise TypeError(
            f"`schema` must be a FeatureSchema or None. Received: {type(schema).__name__}"
        )
    if not schema.adapted:
        raise ValueError("`schema` is not adapted; call `schema.adapt(dataset)` first.")


def _task_output_logit(model, task):
    """(task, output, logit or None): from the model's PredictionHead, else from `task`."""
    if task is not None and task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
    try:
        info = describe_model(model)
    except ValueError as error:
        if task is None:
            raise ValueError(
                f"{error} For another Keras model pass task='binary' or task='regression' "
                "(a binary model's logit is then log(p) - log1p(-p) of its output)."
            ) from error
        if len(model.outputs) != 1:
            raise ValueError(
                "`model` must have one output (the FM / DeepFM output). "
                f"It has {len(model.outputs)}."
            ) from None
        return task, model.outputs[0], None
    if task is not None and task != info.task:
        raise ValueError(
            f"`task` is {task!r} but model '{model.name}' was built for {info.task!r} "
            "(its PredictionHead); leave `task` unset."
        )
    return info.task, info.output, info.logit


def _model_input_specs(model):
    specs = {}
    for tensor in keras.tree.flatten(model.inputs):
        if not tensor.name:
            raise ValueError("Every model input needs a name (the feature name).")
        specs[tensor.name] = (dtype_name(tensor.dtype), tuple(tensor.shape[1:]))
    return specs


def _variable_length_inputs(input_specs, schema):
    """The inputs a `tf.Example` gives any number of values, by role.

    Returns:
        (id rows: name -> max_length, weights: name -> the ids' input name,
        delimited strings: name -> separator).
    """
    id_rows = {n: s[0] for n, (d, s) in input_specs.items() if d == "int64" and len(s) == 1}
    weights = {
        weights_input_name(n): n
        for n, length in id_rows.items()
        if input_specs.get(weights_input_name(n)) == ("float32", (length,))
    }
    separators = {}
    if schema is not None:
        for feature in schema.features:
            if feature.kind == "multivalued" and feature.encoding != "integer":
                separators[feature.name] = feature.separator
    return id_rows, weights, separators


def _check_weights(name, ids_name, weights, ids):
    """Weights (ragged) as many as the ids of each row, or none."""
    lengths = weights.row_lengths()
    ok = tf.reduce_all(tf.logical_or(lengths == 0, lengths == ids.row_lengths()))
    return tf.debugging.Assert(
        ok,
        [
            f"tf.Example: feature `{name}` needs as many values as `{ids_name}` "
            "(or none: each id then has weight 1)"
        ],
    )


class Servable:
    """The graph to export: raw inputs in, `(batch,)` float32 outputs out.

    Args:
        model: keras.Model. The trained model (`tf_fm.FM` / `tf_fm.DeepFM`,
            or a Keras model of one output given with `task`).
        schema: `FeatureSchema` or None. The adapted schema whose
            preprocessing goes into the graph; None when the model's inputs
            already are the raw inputs. Defaults to None.
        task: `"binary"`, `"regression"` or None (the model's
            `PredictionHead` says). Defaults to None.

    Attributes:
        task: `"binary"` or `"regression"`.
        schema: the schema or None.
        name: the Keras model's name.
        model: the Keras model served (raw inputs to the dict of outputs).
        input_specs: raw input name -> (dtype name, shape after the batch axis).
        output_names: `["probability", "logit"]` or `["prediction"]`.
        logit_from_probability: bool. The logit is `log(p) - log1p(-p)`
            (a model without a `PredictionHead`).
    """

    def __init__(
        self, model: keras.Model, schema: FeatureSchema | None = None, task: str | None = None
    ):
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
        _check_schema(model, schema)
        self.task, output, logit = _task_output_logit(model, task)
        if tuple(output.shape[1:]) not in ((), (1,)):
            raise ValueError(
                f"`model` must output one value per example, shape (batch, 1) or (batch,). "
                f"Received shape {output.shape}."
            )
        self.schema = schema
        self.name = model.name
        self.logit_from_probability = self.task == "binary" and logit is None
        if self.task == "binary":
            outputs = {"probability": output}
            if logit is not None:
                outputs["logit"] = logit
        else:
            outputs = {"prediction": output}
        core = keras.Model(model.input, outputs, name=f"{model.name}_outputs")
        if schema is not None:
            self.model = schema.serving_model(core)
            self.input_specs = schema.raw_input_specs()
            self._dict_input = True
        else:
            self.model = core
            self.input_specs = _model_input_specs(model)
            self._dict_input = isinstance(model.input, dict)
        bad_shapes = [n for n, (_, shape) in self.input_specs.items() if None in shape]
        if bad_shapes:
            raise ValueError(f"Inputs need a fixed shape after the batch axis: {bad_shapes}")
        self.output_names = ["probability", "logit"] if self.task == "binary" else ["prediction"]
        self._id_rows, self._weights, self._separators = _variable_length_inputs(
            self.input_specs, schema
        )

    # --- Graph functions (traced into the signatures) ---

    def predict(self, inputs):
        """Raw feature dict -> dict of `(batch,)` float32 outputs."""
        inputs = {name: inputs[name] for name in self.input_specs}
        if self._dict_input:
            out = self.model(inputs, training=False)
        else:
            out = self.model([inputs[name] for name in self.input_specs], training=False)
        out = {k: tf.reshape(tf.cast(v, tf.float32), [-1]) for k, v in out.items()}
        if self.logit_from_probability:
            p = out["probability"]
            # log(p / (1 - p)) from the probability: exact up to float32 rounding
            # of p, +-inf only where p rounded to exactly 0 or 1.
            out["logit"] = tf.math.log(p) - tf.math.log1p(-p)
        return {k: out[k] for k in self.output_names}

    def example_spec(self) -> dict:
        """The `tf.io.parse_example` spec of the Classify / Regress `tf.Example`s.

        Scalar inputs are fixed-length features (a missing string is `""`, a
        missing numeric NaN, a missing int64 an error); id rows, their weights
        and delimited strings are `RaggedFeature`s (any number of values).
        """
        spec = {}
        for name, (dtype, shape) in self.input_specs.items():
            if name in self._id_rows or name in self._weights or name in self._separators:
                spec[name] = tf.io.RaggedFeature(DTYPES[dtype], row_splits_dtype=tf.int64)
                continue
            if dtype == "string":
                default = "" if not shape else None
            elif dtype == "float32":
                default = float("nan") if not shape else None
            else:
                default = None  # required: no value is a safe stand-in for an id
            spec[name] = tf.io.FixedLenFeature(list(shape), DTYPES[dtype], default_value=default)
        return spec

    def parse_examples(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        """Serialized `tf.Example`s -> the raw input dict `serving_default` takes.

        Id rows are padded with -1 / truncated to their `max_length` (weights
        alike, a missing weight 1), delimited-string tokens joined with
        their separator: what a `serving_default` client sends for the row.
        """
        parsed = tf.io.parse_example(serialized, self.example_spec())
        inputs, checks = {}, []
        for name, value in parsed.items():
            if name in self._separators:
                value = tf.strings.reduce_join(value, axis=1, separator=self._separators[name])
            elif name in self._id_rows:
                value = value.to_tensor(PADDING_ID, shape=[None, self._id_rows[name]])
            elif name in self._weights:
                ids_name = self._weights[name]
                checks.append(_check_weights(name, ids_name, value, parsed[ids_name]))
                value = value.to_tensor(1.0, shape=[None, self._id_rows[ids_name]])
            inputs[name] = value
        if not checks:
            return inputs
        with tf.control_dependencies(checks):
            return {name: tf.identity(value) for name, value in inputs.items()}

    def classify(self, inputs):
        """Serialized `tf.Example`s -> `scores` `(batch, 2)` and `classes` `(batch, 2)`."""
        p = self.predict(self.parse_examples(inputs))["probability"]
        scores = tf.stack([1.0 - p, p], axis=1)
        classes = tf.tile(tf.constant([list(CLASS_LABELS)]), tf.stack([tf.shape(p)[0], 1]))
        return {"scores": scores, "classes": classes}

    def regress(self, inputs):
        """Serialized `tf.Example`s -> `outputs` `(batch,)`."""
        out = self.predict(self.parse_examples(inputs))
        return {"outputs": out["probability" if self.task == "binary" else "prediction"]}

    # --- Signatures ---

    @property
    def signature_names(self):
        """The signatures written, in order."""
        if self.task == "binary":
            return [DEFAULT_SIGNATURE, CLASSIFY_SIGNATURE, REGRESS_SIGNATURE]
        return [DEFAULT_SIGNATURE, REGRESS_SIGNATURE]

    @property
    def method_names(self):
        """Signature name -> the method name TF Serving requires of it."""
        return {name: METHOD_NAMES[name] for name in self.signature_names}

    def expected_signatures(self):
        """Signature name -> {method_name, inputs, outputs}, as `describe_signatures` gives."""
        examples = {EXAMPLES_INPUT: {"dtype": "string", "shape": [-1]}}
        parts = {
            DEFAULT_SIGNATURE: (
                {n: {"dtype": d, "shape": [-1, *s]} for n, (d, s) in self.input_specs.items()},
                {k: {"dtype": "float32", "shape": [-1]} for k in self.output_names},
            ),
            CLASSIFY_SIGNATURE: (
                examples,
                {
                    "classes": {"dtype": "string", "shape": [-1, 2]},
                    "scores": {"dtype": "float32", "shape": [-1, 2]},
                },
            ),
            REGRESS_SIGNATURE: (examples, {"outputs": {"dtype": "float32", "shape": [-1]}}),
        }
        return {
            name: {
                "method_name": METHOD_NAMES[name],
                "inputs": parts[name][0],
                "outputs": parts[name][1],
            }
            for name in self.signature_names
        }

    def write(self, path: str | os.PathLike) -> None:
        """Writes the SavedModel (Keras `ExportArchive`, explicit signatures) to `path`."""
        archive = keras.export.ExportArchive()
        archive.track(self.model)
        specs = {
            name: tf.TensorSpec([None, *shape], DTYPES[dtype], name=name)
            for name, (dtype, shape) in self.input_specs.items()
        }
        examples = [tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)]
        functions = {CLASSIFY_SIGNATURE: self.classify, REGRESS_SIGNATURE: self.regress}
        archive.add_endpoint(DEFAULT_SIGNATURE, self.predict, input_signature=[specs])
        for name in self.signature_names[1:]:
            archive.add_endpoint(name, functions[name], input_signature=examples)
        archive.write_out(str(path), verbose=False)

    # --- Reference outputs and a stand-in sample ---

    def outputs_numpy(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """In-memory outputs (the reference for `verify`) of typed raw `columns`."""
        out = self.predict({n: to_tensor(columns[n], self.input_specs[n][0]) for n in columns})
        return {k: v.numpy() for k, v in out.items()}

    def synthetic_columns(self, num_rows: int = 8) -> dict[str, np.ndarray]:
        """A stand-in sample when none is given: known tokens, an unseen one, NaN numerics."""
        columns = {}
        for name, (dtype, shape) in self.input_specs.items():
            values = self._synthetic_values(name, dtype, shape, num_rows)
            if values is None:
                zero = {"string": "", "int64": 0, "float32": 0.0}[dtype]
                values = [np.full(shape, zero).tolist() if shape else zero] * num_rows
            columns[name] = values
        return typed_columns(columns, self.input_specs)

    def _synthetic_values(self, name, dtype, shape, num_rows):
        """Values of one schema feature (None: zeros will do)."""
        if self.schema is None or name not in self.schema.names or shape:
            return None
        feature = self.schema[name]
        encoding = getattr(feature, "encoding", None)
        rows = range(num_rows)
        if encoding == "vocabulary":
            unseen = UNSEEN_STRING if dtype == "string" else UNSEEN_ID
            tokens = [*self.schema.vocabulary(name)[: num_rows - 1], unseen]
            if feature.kind == "multivalued":
                tokens = [str(t) for t in tokens]
                return [feature.separator.join(tokens[i : i + 2]) for i in rows]
            return [tokens[i % len(tokens)] for i in rows]
        if feature.kind == "numeric":
            mean = self.schema.state.get(name, {}).get("mean", 0.0)
            values = [float(mean) * (i % 3) for i in rows]
            if feature.default is not None:
                values[-1] = float("nan")
            return values
        if encoding == "integer":
            return [i % feature.num_ids for i in rows]
        return None
