"""Exact explanations of FM and FwFM logits, and integrated gradients for DeepFM's DNN.

An FM's logit is a sum of terms that can be read off the model exactly:

    y = w0 + sum_f l_f + sum_{f<g} r_fg <e_f, e_g> + sum_f r_ff 0.5 (|e_f|^2 - sum_i x_i^2 |v_i|^2)

with e_f = sum_{i in f} x_i v_i the vector of field f (`FieldEmbedding`'s
`"embeddings"`), l_f = sum_{i in f} w_i x_i its first-order term, and r = 1
for FM (FwFM's learned field-pair weights otherwise). The last sum is the
pairs of features inside a multi-valued field; for a field with one id or
value it is 0. `explain` returns these terms per row, so they add up to the
model's logit to float tolerance.

For DeepFM the FM part is split as above and the DNN logit, a function of the
same embeddings e, is attributed to the fields with integrated gradients
(Sundararajan et al. 2017) from the baseline e = 0: per field f,
sum_k e_fk * integral_0^1 dDNN(a e)/de_fk da, by the trapezoid rule over
`steps` intervals. The attributions add up to DNN(e) - DNN(0) up to the
quadrature error.

Example:

>>> explanation = tf_fm.explain(model, inputs)  # inputs: model-input arrays
>>> explanation.top_pairs(0, k=3)
[('user', 'item', 0.41), ('item', 'hour', -0.12), ('user', 'hour', 0.05)]
"""

import dataclasses
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_fm.layers import (
    AnovaInteraction,
    FieldEmbedding,
    FMInteraction,
    FwFMInteraction,
    GlobalBias,
)
from tf_fm.models import describe_model

__all__ = ["Explanation", "explain", "integrated_gradients", "read_model_inputs"]

SUPPORTED = "FM, FwFM and DeepFM (tf_fm.FM, tf_fm.FwFM, tf_fm.DeepFM)"
# Rows per integrated-gradients pass: (steps + 1) * IG_ROWS scaled embeddings at once.
IG_ROWS = 256


@dataclasses.dataclass(frozen=True)
class Explanation:
    """The terms of N rows' logits, per field and per pair of fields.

    `bias + first_order.sum(1) + pairs.sum((1, 2))` is the logit of an FM or
    FwFM exactly; for DeepFM add `dnn_baseline + dnn.sum(1)`, which equals the
    DNN logit up to the integrated-gradients quadrature error.

    Attributes:
        bias: float. The global bias w0.
        first_order: `(N, F)` array, per field sum_i w_i x_i.
        pairs: `(N, F, F)` array. `[n, f, g]`, f < g: the pair term
            r_fg <e_f, e_g> (r = 1 for FM); `[n, f, f]`: the pairs inside
            field f; below the diagonal 0.
        dnn: `(N, F)` array of the DNN's integrated gradients per field, or
            None (no DNN).
        dnn_baseline: float or None. The DNN logit at e = 0.
        field_names: list of str, the field axis.
        logit: `(N,)` array, the model's logit.
    """

    bias: float
    first_order: np.ndarray
    pairs: np.ndarray
    dnn: np.ndarray | None
    dnn_baseline: float | None
    field_names: list
    logit: np.ndarray

    def total(self) -> np.ndarray:
        """`(N,)` sum of all the terms (the logit, up to IG's error for DeepFM)."""
        total = self.bias + self.first_order.sum(axis=1) + self.pairs.sum(axis=(1, 2))
        if self.dnn is not None:
            total = total + self.dnn_baseline + self.dnn.sum(axis=1)
        return total

    def top_pairs(self, row: int, k: int = 5) -> list[tuple[str, str, float]]:
        """The `k` largest |pair terms| of `row` as `(field_a, field_b, value)`, largest first.

        A pair `(f, f)` is the term of the pairs of features inside field f.
        """
        pairs = self.pairs[row]
        f, g = np.triu_indices(len(self.field_names))
        order = np.argsort(-np.abs(pairs[f, g]), kind="stable")[:k]
        names = self.field_names
        return [(names[f[i]], names[g[i]], float(pairs[f[i], g[i]])) for i in order]

    def mean_abs_pairs(self) -> np.ndarray:
        """`(F, F)` mean over the rows of |pair term| (0 below the diagonal)."""
        return np.abs(self.pairs).mean(axis=0)


@dataclasses.dataclass(frozen=True)
class _Parts:
    """The pieces of a model that `explain` reads."""

    probe: keras.Model  # model inputs -> [e, s, first order per field, logit]
    bias: float
    pair_weights: np.ndarray | None  # FwFM's r, None for FM
    dnn: keras.Model | None  # e -> DNN logit
    field_names: list


def _single(model, kinds, what):
    layers = [layer for layer in model.layers if isinstance(layer, kinds)]
    if len(layers) != 1:
        raise NotImplementedError(
            f"tf_fm.explain supports {SUPPORTED}. Model '{model.name}' has {len(layers)} "
            f"{what} layers (one expected)."
        )
    return layers[0]


def _check_supported(model):
    """Raises NotImplementedError for HOFM, NFM and models of other shapes."""
    if any(isinstance(layer, AnovaInteraction) for layer in model.layers):
        raise NotImplementedError(
            f"tf_fm.explain supports {SUPPORTED}; model '{model.name}' has orders above 2 "
            "(HOFM), whose terms are not split yet."
        )
    for layer in model.layers:
        if isinstance(layer, FMInteraction) and not layer.reduce_sum:
            raise NotImplementedError(
                f"tf_fm.explain supports {SUPPORTED}; model '{model.name}' feeds the "
                "bi-interaction vector into a DNN (NFM), which has no exact split."
            )


def _row_fields(embedding):
    """`(rows,)` index of the field that owns each row of the fused table (-1: padding)."""
    owner = np.full(embedding.total_rows, -1, dtype=np.int64)
    ends = [*embedding.offsets[1:], embedding.padding_row or embedding.total_rows]
    for f, (start, end) in enumerate(zip(embedding.offsets, ends, strict=True)):
        owner[start:end] = f
    return owner


def _first_order_layer(embedding):
    """A copy of `embedding` whose `"embeddings"` hold each field's sum_i w_i x_i.

    Its factor table has one column per field: row r holds w_r in the column
    of the field that owns r, 0 elsewhere. So the copy's output for field f
    is sum_{i in f} x_i w_i in column f and 0 in the others: the first-order
    terms per field, by the layer's own lookup (ids, combiners, padding).
    Costs a table of `rows x (F + 1)` while `explain` runs.
    """
    fields = len(embedding.fields)
    config = embedding.get_config()
    config.update(
        embedding_dim=fields, embeddings_l2=0.0, linear_l2=0.0, name="explain_first_order"
    )
    layer = FieldEmbedding.from_config(config)
    layer.build()
    weights = embedding.get_linear_weights()
    owner = _row_fields(embedding)
    factors = np.zeros((embedding.total_rows, fields), dtype=weights.dtype)
    used = np.flatnonzero(owner >= 0)
    factors[used, owner[used]] = weights[used]
    layer.set_table(factors, weights)
    return layer


def _dnn_model(model, embeddings, others):
    """The DNN logit as a model of the embeddings, from the bias inputs that are not FM terms.

    The graph from the embeddings tensor to that logit is what the DNN is
    (DeepFM: `Flatten` -> hidden layers -> `Dense(1)`), found through the
    tensors, not the layer names.
    """
    if not others:
        return None
    if len(others) == 1:
        try:
            return keras.Model(embeddings, others[0], name=f"{model.name}_dnn")
        except ValueError:
            pass  # the term reads more than the embeddings
    raise NotImplementedError(
        f"tf_fm.explain supports {SUPPORTED}; the logit of model '{model.name}' has terms "
        "besides the FM's that are not a function of the embeddings alone."
    )


def _model_parts(model):
    info = describe_model(model)
    _check_supported(model)
    embedding = _single(model, FieldEmbedding, "FieldEmbedding")
    interaction = _single(model, (FMInteraction, FwFMInteraction), "pairwise interaction")
    bias = _single(model, GlobalBias, "GlobalBias")
    embeddings, squared = interaction.input
    fm_terms = [interaction.output, *keras.tree.flatten(embedding.output)]
    others = [t for t in bias.input if not any(t is u for u in fm_terms)]
    first_order = keras.ops.sum(_first_order_layer(embedding)(model.input)["embeddings"], axis=-1)
    probe = keras.Model(model.input, [embeddings, squared, first_order, info.logit])
    pair_weights = None
    if isinstance(interaction, FwFMInteraction):
        pair_weights = keras.ops.convert_to_numpy(interaction.pair_weights).astype(np.float64)
    return _Parts(
        probe=probe,
        bias=float(keras.ops.convert_to_numpy(bias.bias)),
        pair_weights=pair_weights,
        dnn=_dnn_model(model, embeddings, others),
        field_names=list(embedding.field_names),
    )


def _pair_terms(embeddings, squared, pair_weights):
    """`(N, F, F)`: <e_f, e_g> above the diagonal, the within-field pairs on it, times r."""
    e = embeddings.astype(np.float64)
    pairs = np.triu(np.einsum("nfk,ngk->nfg", e, e), k=1)
    fields = np.arange(e.shape[1])
    pairs[:, fields, fields] = 0.5 * (np.square(e) - squared.astype(np.float64)).sum(axis=2)
    if pair_weights is not None:
        pairs *= np.triu(pair_weights)
    return pairs


def integrated_gradients(
    function: keras.Model, embeddings: np.ndarray, steps: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrated gradients of a scalar function of `(N, F, k)` embeddings, per field.

    Baseline e = 0; the path integral by the trapezoid rule over `steps`
    equal intervals (`steps + 1` evaluations per row).

    Args:
        function: `keras.Model` from `(batch, F, k)` to `(batch, 1)`, called
            with `training=False`.
        embeddings: `(N, F, k)` array.
        steps: int. Intervals of the trapezoid rule. Defaults to 64.

    Returns:
        `(attributions, values, baselines)`: `(N, F)` per-field attributions,
        `(N,)` function values at `embeddings`, `(N,)` values at 0.
        `attributions.sum(1)` approximates `values - baselines`.
    """
    if steps < 1:
        raise ValueError(f"`steps` must be a positive integer. Received: steps={steps}")
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    trapezoid = np.full(steps + 1, 1.0 / steps)
    trapezoid[[0, -1]] = 0.5 / steps
    results = []
    for start in range(0, len(embeddings), IG_ROWS):
        e = np.asarray(embeddings[start : start + IG_ROWS], dtype=np.float32)
        path = tf.constant((alphas[:, None, None, None] * e[None]).reshape(-1, *e.shape[1:]))
        with tf.GradientTape() as tape:
            tape.watch(path)
            y = function(path, training=False)
        grads = tape.gradient(y, path).numpy().reshape(steps + 1, *e.shape).astype(np.float64)
        y = y.numpy().reshape(steps + 1, len(e))
        average = np.tensordot(trapezoid, grads, axes=1)  # (n, F, k)
        results.append(((e * average).sum(axis=2), y[-1], y[0]))
    return tuple(np.concatenate(r) for r in zip(*results, strict=True))


def explain(
    model: keras.Model,
    inputs: Mapping[str, np.ndarray],
    steps: int = 64,
    batch_size: int = 1024,
) -> Explanation:
    """Splits the logits of N rows into the bias, first-order and field-pair terms.

    Args:
        model: a `tf_fm.FM`, `tf_fm.FwFM` or `tf_fm.DeepFM` model (built or
            loaded from `.keras`).
        inputs: dict from model-input name to an array of N rows: the
            preprocessed ids and values the model takes
            (`FeatureSchema.preprocess`, `read_model_inputs`).
        steps: int. DeepFM: trapezoid intervals of the integrated gradients.
            Defaults to 64.
        batch_size: int. Rows per forward pass. Defaults to 1024.

    Returns:
        An `Explanation`.

    Raises:
        NotImplementedError: HOFM, NFM, or a model of another shape.
    """
    parts = _model_parts(model)
    names = model.input.keys() if isinstance(model.input, Mapping) else inputs.keys()
    embeddings, squared, first_order, logit = parts.probe.predict(
        {name: inputs[name] for name in names}, batch_size=batch_size, verbose=0
    )
    dnn = baseline = None
    if parts.dnn is not None:
        dnn, _, baselines = integrated_gradients(parts.dnn, embeddings, steps)
        baseline = float(baselines[0])
    return Explanation(
        bias=parts.bias,
        first_order=first_order.astype(np.float64),
        pairs=_pair_terms(embeddings, squared, parts.pair_weights),
        dnn=dnn,
        dnn_baseline=baseline,
        field_names=parts.field_names,
        logit=logit.reshape(-1).astype(np.float64),
    )


def read_model_inputs(run, files: str | Sequence[str], rows: int) -> dict[str, np.ndarray]:
    """The model inputs of the first `rows` rows of `files`, read as the run reads its data.

    Args:
        run: a `tf_fm.training.Run`.
        files: a path, a glob, or a list of them.
        rows: int. How many rows (fewer if the files have fewer).

    Returns:
        dict from model-input name to a numpy array.
    """
    if rows < 1:
        raise ValueError(f"`rows` must be a positive integer. Received: rows={rows}")
    files = [files] if isinstance(files, str) else list(files)
    dataset = run.schema.preprocess(run.read(files, batch_size=rows, need_label=False))
    element = next(iter(dataset.take(1)))
    features = element[0] if isinstance(element, tuple) else element
    return {name: value.numpy() for name, value in features.items()}
