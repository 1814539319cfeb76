"""Exact explanations of FM-family logits, and integrated gradients for the DNN parts.

An FM's logit is a sum of terms that can be read off the model exactly:

    y = w0 + sum_f l_f + sum_{f<g} r_fg <e_f, e_g> + sum_f r_ff 0.5 (|e_f|^2 - sum_i x_i^2 |v_i|^2)

with e_f = sum_{i in f} x_i v_i the vector of field f (`FieldEmbedding`'s
`"embeddings"`), l_f = sum_{i in f} w_i x_i its first-order term, and r = 1
for FM (FwFM's learned field-pair weights otherwise). The last sum is the
pairs of features inside a multi-valued field; for a field with one id or
value it is 0. `explain` returns these terms per row, so they add up to the
model's logit to float tolerance.

* FFM: the pair (f, g) is <e_{f,g}, e_{g,f}>, with e_{f,g} = sum_{i in f}
  x_i v_{i,g} (field f's vectors for field g), and field f's own pairs
  0.5 (|e_{f,f}|^2 - sum_i x_i^2 |v_{i,f}|^2): exact, as for FM.
* HOFM: order 2 as FM. A term of order m >= 3 belongs to a set of m
  fields, not to a pair: each set's term is spread over its m (m - 1) / 2
  pairs of fields in equal parts and added to them, so the pairs still sum
  to the logit exactly, and the pair (f, g) holds its FM term plus its share
  of every set of fields that contains both.
* DeepFM: the FM part is split as above and the DNN logit, a function of
  the same embeddings e, is attributed to the fields with integrated
  gradients (Sundararajan et al. 2017) from the baseline e = 0: per field f,
  sum_k e_fk * integral_0^1 dDNN(a e)/de_fk da, by the trapezoid rule over
  `steps` intervals. The attributions add up to DNN(e) - DNN(0) up to the
  quadrature error.
* NFM: w0 and the first-order terms exactly; the DNN over the
  bi-interaction vector (there is no FM pair term) by integrated gradients
  as for DeepFM, along the path on which every x_i v_i is scaled by a: e
  becomes a e and the squares s a^2 s, so the attributions add up to
  DNN(e, s) - DNN(0, 0).

Example:

>>> explanation = tf_fm.explain(model, inputs)  # inputs: model-input arrays
>>> explanation.top_pairs(0, k=3)
[('user', 'item', 0.41), ('item', 'hour', -0.12), ('user', 'hour', 0.05)]
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_fm.layers import (
    AnovaInteraction,
    FFMInteraction,
    FieldEmbedding,
    FMInteraction,
    FwFMInteraction,
    GlobalBias,
)
from tf_fm.models import describe_model

__all__ = ["Explanation", "explain", "integrated_gradients", "read_model_inputs"]

SUPPORTED = "the tf_fm builders FM, FwFM, FFM, HOFM, DeepFM and NFM"
PAIRWISE = (FMInteraction, FwFMInteraction, FFMInteraction)
# Rows per integrated-gradients pass: (steps + 1) * IG_ROWS scaled embeddings at once.
IG_ROWS = 256
# Rows per pass of the HOFM split: arrays of (rows, F, F, k) floats.
SPLIT_ROWS = 64


@dataclasses.dataclass(frozen=True)
class Explanation:
    """The terms of N rows' logits, per field and per pair of fields.

    `bias + first_order.sum(1) + pairs.sum((1, 2))` is the logit of an FM,
    FwFM, FFM or HOFM exactly; for DeepFM and NFM add
    `dnn_baseline + dnn.sum(1)`, which equals the DNN logit up to the
    integrated-gradients quadrature error.

    Attributes:
        bias: float. The global bias w0.
        first_order: `(N, F)` array, per field sum_i w_i x_i.
        pairs: `(N, F, F)` array. `[n, f, g]`, f < g: the pair term
            r_fg <e_f, e_g> (r = 1 for FM; FFM: <e_{f,g}, e_{g,f}>; HOFM:
            plus the equal shares of the higher-order terms of the sets of
            fields holding f and g); `[n, f, f]`: the pairs inside field f;
            below the diagonal 0. All 0 for NFM (no pair term).
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

    probe: keras.Model  # model inputs -> [e, s, first order per field, logit, HOFM's e...]
    bias: float
    pair_kind: str | None  # "fm", "fwfm", "ffm"; None: no pair term in the logit (NFM)
    pair_weights: np.ndarray | None  # FwFM's r, None otherwise
    higher_orders: list  # per AnovaInteraction (HOFM): the orders it adds to the logit
    dnn: keras.Model | None  # e (or [e, s]) -> DNN logit
    dnn_powers: tuple  # the path a -> (a e) or (a e, a^2 s) of the integrated gradients
    field_names: list


def _single(model, kinds, what):
    layers = [layer for layer in model.layers if isinstance(layer, kinds)]
    if len(layers) != 1:
        raise NotImplementedError(
            f"tf_fm.explain supports {SUPPORTED}. Model '{model.name}' has {len(layers)} "
            f"{what} layers (one expected)."
        )
    return layers[0]


def _holds(layer, tensor):
    try:
        return any(t is tensor for t in keras.tree.flatten(layer.output))
    except (AttributeError, ValueError):  # a layer called more than once
        return False


def _embedding_of(model, embeddings):
    """The `FieldEmbedding` whose `"embeddings"` output is `embeddings`."""
    for layer in model.layers:
        if isinstance(layer, FieldEmbedding) and _holds(layer, embeddings):
            return layer
    raise NotImplementedError(
        f"tf_fm.explain supports {SUPPORTED}. In model '{model.name}' the pairwise "
        "interaction does not read a FieldEmbedding's output."
    )


def _higher_orders(model, logit_terms):
    """The `AnovaInteraction` layers (HOFM) and the orders each adds to the logit."""
    found = []
    for layer in model.layers:
        if not isinstance(layer, AnovaInteraction):
            continue
        if not layer.reduce_sum or not any(t is layer.output for t in logit_terms):
            raise NotImplementedError(
                f"tf_fm.explain supports {SUPPORTED}. In model '{model.name}' the output of "
                f"'{layer.name}' is not a term of the logit."
            )
        lowest = layer.order if layer.min_order is None else layer.min_order
        found.append((layer, tuple(range(lowest, layer.order + 1))))
    return found


def _first_order_layer(embedding):
    """A copy of `embedding` whose `"embeddings"` hold each field's sum_i w_i x_i.

    Its factor table has one column, w: so the copy's output for field f is
    sum_{i in f} x_i w_i, the first-order term per field, by the layer's own
    lookup (ids, combiners, padding, rows shared between fields). Costs a
    table of `rows x 2` while `explain` runs.
    """
    config = embedding.get_config()
    config.update(embedding_dim=1, embeddings_l2=0.0, linear_l2=0.0, name="explain_first_order")
    layer = FieldEmbedding.from_config(config)
    layer.build()
    weights = embedding.get_linear_weights()
    layer.set_table(weights[:, None], weights)
    return layer


def _dnn_model(model, embeddings, squared, others):
    """The DNN logit as a model of the embeddings (and squares), and its path's powers.

    The bias inputs that are not FM terms are the DNN's logit. The graph
    from the embeddings tensor to it is what the DNN is (DeepFM: `Flatten`
    -> hidden layers -> `Dense(1)`; NFM: the bi-interaction of e and s ->
    hidden layers -> `Dense(1)`), found through the tensors, not the layer
    names.
    """
    if not others:
        return None, ()
    if len(others) == 1:
        for inputs, powers in ((embeddings, (1,)), ([embeddings, squared], (1, 2))):
            try:
                return keras.Model(inputs, others[0], name=f"{model.name}_dnn"), powers
            except ValueError:
                pass  # the term reads more than these inputs
    raise NotImplementedError(
        f"tf_fm.explain supports {SUPPORTED}; the logit of model '{model.name}' has terms "
        "besides the FM's that are not a function of the embeddings alone."
    )


def _model_parts(model):
    info = describe_model(model)
    interaction = _single(model, PAIRWISE, "pairwise interaction")
    embeddings, squared = interaction.input
    embedding = _embedding_of(model, embeddings)
    bias = _single(model, GlobalBias, "GlobalBias")
    higher = _higher_orders(model, bias.input)
    pair_kind = None  # NFM: the interaction feeds the DNN, not the logit
    if any(t is interaction.output for t in bias.input):
        kinds = {FwFMInteraction: "fwfm", FFMInteraction: "ffm", FMInteraction: "fm"}
        pair_kind = kinds[type(interaction)]
    known = [interaction.output, *keras.tree.flatten(embedding.output)]
    known += [layer.output for layer, _ in higher]
    others = [t for t in bias.input if not any(t is u for u in known)]
    first_order = keras.ops.sum(_first_order_layer(embedding)(model.input)["embeddings"], axis=-1)
    outputs = [embeddings, squared, first_order, info.logit, *(h.input for h, _ in higher)]
    pair_weights = None
    if pair_kind == "fwfm":
        pair_weights = keras.ops.convert_to_numpy(interaction.pair_weights).astype(np.float64)
    dnn, powers = _dnn_model(model, embeddings, squared, others)
    return _Parts(
        probe=keras.Model(model.input, outputs),
        bias=float(keras.ops.convert_to_numpy(bias.bias)),
        pair_kind=pair_kind,
        pair_weights=pair_weights,
        higher_orders=[orders for _, orders in higher],
        dnn=dnn,
        dnn_powers=powers,
        field_names=list(embedding.field_names),
    )


def _ffm_pair_terms(e, s):
    """`(N, F, F)`: <e_{f,g}, e_{g,f}> above the diagonal, the within-field pairs on it."""
    n, fields = e.shape[:2]
    e = e.reshape(n, fields, fields, -1)  # e[n, f, g] = sum_{i in f} x_i v_{i,g}
    s = s.reshape(n, fields, fields, -1)
    pairs = np.triu(np.einsum("nfgk,ngfk->nfg", e, e), k=1)
    own = np.arange(fields)
    pairs[:, own, own] = 0.5 * (np.square(e[:, own, own]) - s[:, own, own]).sum(axis=2)
    return pairs


def _pair_terms(kind, embeddings, squared, pair_weights):
    """`(N, F, F)` pair terms of `kind` ("fm", "fwfm", "ffm"; None: zeros)."""
    e, s = embeddings.astype(np.float64), squared.astype(np.float64)
    if kind is None:
        return np.zeros((len(e), e.shape[1], e.shape[1]))
    if kind == "ffm":
        return _ffm_pair_terms(e, s)
    pairs = np.triu(np.einsum("nfk,ngk->nfg", e, e), k=1)
    fields = np.arange(e.shape[1])
    pairs[:, fields, fields] = 0.5 * (np.square(e) - s).sum(axis=2)
    if pair_weights is not None:
        pairs *= np.triu(pair_weights)
    return pairs


def _spread_anova(embeddings, orders):
    """`(N, F, F)`: each order-m ANOVA term (m in `orders`) spread over its pairs of fields.

    The term of a set S of m fields, sum_k prod_{h in S} e_hk, goes to each
    of its m (m - 1) / 2 pairs in equal parts, so pair (f, g), f < g, gets
    sum_k e_fk e_gk a_{m-2}(all fields but f, g)_k / (m (m - 1) / 2), with
    a_t the elementary symmetric polynomial of degree t. It comes from those
    of all fields, E_t, by E_t = a_t + (e_f + e_g) a_{t-1} + e_f e_g a_{t-2}.
    """
    e = embeddings.astype(np.float64)  # (n, F, k)
    top = max(orders) - 2
    symmetric = [np.ones_like(e[:, 0])] + [np.zeros_like(e[:, 0])] * top  # E_t, (n, k)
    for f in range(e.shape[1]):
        for t in range(top, 0, -1):
            symmetric[t] = symmetric[t] + e[:, f] * symmetric[t - 1]
    a, b = e[:, :, None, :], e[:, None, :, :]  # e_f, e_g
    rest = [np.ones(np.broadcast_shapes(a.shape, b.shape))]  # a_t without f and g
    for t in range(1, top + 1):
        before = rest[t - 2] if t >= 2 else 0.0
        rest.append(symmetric[t][:, None, None, :] - (a + b) * rest[t - 1] - a * b * before)
    pairs = sum((a * b * rest[m - 2]).sum(axis=-1) / math.comb(m, 2) for m in orders)
    return np.triu(pairs, k=1)


def _path_integrated_gradients(function, inputs, powers, steps):
    """Integrated gradients along a -> (a^p x for x, p in zip(inputs, powers)), per field.

    The attribution of field f is the integral over a in [0, 1] of
    sum_x sum_k x_fk p a^(p - 1) dF/dx_fk, by the trapezoid rule; their sum
    is F(inputs) - F(0) up to the quadrature error.
    """
    if steps < 1:
        raise ValueError(f"`steps` must be a positive integer. Received: steps={steps}")
    alphas = np.linspace(0.0, 1.0, steps + 1)
    trapezoid = np.full(steps + 1, 1.0 / steps)
    trapezoid[[0, -1]] = 0.5 / steps
    results = []
    for start in range(0, len(inputs[0]), IG_ROWS):
        xs = [np.asarray(x[start : start + IG_ROWS], dtype=np.float32) for x in inputs]
        paths = [
            tf.constant((alphas[:, None, None, None] ** p * x[None]).astype(np.float32))
            for x, p in zip(xs, powers, strict=True)
        ]
        paths = [tf.reshape(path, (-1, *x.shape[1:])) for path, x in zip(paths, xs, strict=True)]
        with tf.GradientTape() as tape:
            tape.watch(paths)
            y = function(paths[0] if len(paths) == 1 else paths, training=False)
        attribution = 0.0
        for x, p, grad in zip(xs, powers, tape.gradient(y, paths), strict=True):
            grad = grad.numpy().reshape(steps + 1, *x.shape).astype(np.float64)
            speed = p * alphas ** (p - 1)  # d(a^p)/da
            attribution = attribution + (x * np.tensordot(trapezoid * speed, grad, axes=1)).sum(2)
        y = y.numpy().reshape(steps + 1, len(xs[0]))
        results.append((attribution, y[-1], y[0]))
    return tuple(np.concatenate(r) for r in zip(*results, strict=True))


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
    return _path_integrated_gradients(function, [embeddings], (1,), steps)


def explain(
    model: keras.Model,
    inputs: Mapping[str, np.ndarray],
    steps: int = 64,
    batch_size: int = 1024,
) -> Explanation:
    """Splits the logits of N rows into the bias, first-order and field-pair terms.

    Args:
        model: a `tf_fm.FM`, `FwFM`, `FFM`, `HOFM`, `DeepFM` or `NFM`
            model (built or loaded from `.keras`).
        inputs: dict from model-input name to an array of N rows: the
            preprocessed ids and values the model takes
            (`FeatureSchema.preprocess`, `read_model_inputs`).
        steps: int. DeepFM, NFM: trapezoid intervals of the integrated
            gradients. Defaults to 64.
        batch_size: int. Rows per forward pass. Defaults to 1024.

    Returns:
        An `Explanation`.

    Raises:
        NotImplementedError: a model of another shape.
    """
    parts = _model_parts(model)
    names = model.input.keys() if isinstance(model.input, Mapping) else inputs.keys()
    embeddings, squared, first_order, logit, *higher = parts.probe.predict(
        {name: inputs[name] for name in names}, batch_size=batch_size, verbose=0
    )
    pairs = _pair_terms(parts.pair_kind, embeddings, squared, parts.pair_weights)
    for e, orders in zip(higher, parts.higher_orders, strict=True):
        for start in range(0, len(e), SPLIT_ROWS):
            pairs[start : start + SPLIT_ROWS] += _spread_anova(
                e[start : start + SPLIT_ROWS], orders
            )
    dnn = baseline = None
    if parts.dnn is not None:
        dnn_inputs = [embeddings, squared][: len(parts.dnn_powers)]
        dnn, _, baselines = _path_integrated_gradients(
            parts.dnn, dnn_inputs, parts.dnn_powers, steps
        )
        baseline = float(baselines[0])
    return Explanation(
        bias=parts.bias,
        first_order=first_order.astype(np.float64),
        pairs=pairs,
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
