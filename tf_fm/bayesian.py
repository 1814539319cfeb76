"""Bayesian Factorization Machine trained by Gibbs sampling (MCMC), as libFM's `-method mcmc`.

The model is the FM of `tf_fm.FM` with a regression likelihood and
hierarchical Gaussian priors (Freudenthaler, Schmidt-Thieme and Rendle 2011;
Rendle 2012, section 4):

    y_i ~ N(yhat_i, 1 / alpha),              alpha ~ Gamma(alpha_0 / 2, beta_0 / 2)
    w0 ~ N(0, 1 / w0_precision)
    w_l ~ N(mu_g, 1 / lambda_g),   v_lf ~ N(mu_gf, 1 / lambda_gf)   (g: the group of l)
    lambda ~ Gamma(alpha_0 / 2, beta_0 / 2),  mu | lambda ~ N(mu_0, 1 / (gamma_0 lambda))

A group is one field (its vocabulary, OOV ids included); all numeric fields
share one group (a field of one parameter says nothing about its own
hyperprior). Every parameter is drawn from its closed-form Gaussian
conditional: for a parameter theta the prediction is linear,
yhat_i = g_i + theta h_i, so with the residual e_i = y_i - yhat_i

    precision = alpha sum_i h_i^2 + lambda
    mean = (alpha sum_i (e_i + theta h_i) h_i + lambda mu) / precision

with h = x_il for w_l and h = x_il (q_if - v_lf x_il) for v_lf, where
q_if = sum_l v_lf x_il; e and q are cached and updated after each draw,
and recomputed from the parameters only every `REFRESH_EVERY` sweeps
(myfm recomputes e every sweep and q_f before each factor f): that bounds
their float drift, which without any recomputation stays below 1e-13 after
200 sweeps on 80k MovieLens rows.

**Blocks.** Parameters that never appear in one row are conditionally
independent, so they are drawn together, one vectorized step per block
(segment sums over the rows), which is exact Gibbs: a categorical field
(one id per row) is one block; each numeric field is a block of one; the ids
of a multi-valued field are split into blocks by a greedy coloring of their
co-occurrence graph (ids that share a row get different colors), so a block
still has at most one id per row. A row that repeats an id of a
multi-valued field is refused (its self-pair term is quadratic in the id's
factor, so the conditional is not Gaussian).

**Draw schedule** (what `Draws` is asked, in order; `tests/test_bayesian.py`
replays it into a coordinate-wise reference): initial factors
`normal(rows * k)` (row-major `(rows, k)`, times `init_stdev`); then per sweep
`gamma(1)` for alpha, `normal(1)` for w0, `gamma(G)` and `normal(G)` for the
groups' lambda and mu of w, `normal(len(block))` per block for w, then per
factor f: `gamma(G)`, `normal(G)` for lambda_f, mu_f and `normal(len(block))`
per block for v_f.

**The result** is the posterior-mean predictor (1/S) sum_s FM_s(x) over the S
samples kept after burn-in. It is exactly an FM: the factors of the S
samples concatenated and scaled by 1/sqrt(S) (embedding size k*S), w and w0
averaged. `BayesianFM.fit` returns it as a plain `tf_fm.FM` Keras model
(task regression, the same `FieldEmbedding` table layout), so `.keras`
save/load, `tf_fm.export` and TF Serving work unchanged.

Example:

>>> bfm = BayesianFM(schema, embedding_dim=8, samples=100, burn_in=20)
>>> model = bfm.fit(train_dataset, validation_data=valid_dataset)
>>> bfm.history["val_rmse"][-1]

References:
    Freudenthaler, Schmidt-Thieme, Rendle, "Bayesian Factorization
    Machines", NIPS Workshop on Sparse Representation and Low-rank
    Approximation, 2011.
    Rendle, "Factorization Machines with libFM", ACM TIST 3(3), 2012.
"""

import dataclasses
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_fm import metrics as metrics_lib
from tf_fm import models as models_lib
from tf_fm.features import PADDING_ID, field_config, weights_input_name
from tf_fm.layers import FieldEmbedding, FMInteraction, PredictionHead, ProbitAverage
from tf_fm.schema import FeatureSchema

# libFM's and myfm's practice: 100 sweeps; the first ones are discarded.
DEFAULT_SAMPLES = 100
DEFAULT_BURN_IN = 20
# Sweeps between two recomputations of the caches e and q (`GibbsSampler.refresh`,
# which costs about half a sweep).
REFRESH_EVERY = 25
# Mean items per run from which `Segments` sums and gathers by runs.
_MIN_RUN = 4


class Draws:
    """The sampler's source of randomness: standard normals and Gamma(shape, 1) draws.

    Every random number of a chain comes from one `Draws`, in the order of
    the module's draw schedule, so a chain is reproducible from its seed and
    another sampler can be driven by the same numbers (a subclass that
    records or replays them).

    Args:
        seed: int. Seed of the `numpy.random.Generator`. Defaults to 0.
    """

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng(seed)

    def normal(self, size: int) -> np.ndarray:
        """`size` independent N(0, 1) draws, float64."""
        return self._rng.standard_normal(size)

    def gamma(self, shape: np.ndarray) -> np.ndarray:
        """One Gamma(shape_j, rate 1) draw per entry of `shape`, float64."""
        return self._rng.standard_gamma(np.asarray(shape, dtype=np.float64))

    def uniform(self, size: int) -> np.ndarray:
        """`size` independent uniform draws in (0, 1], float64."""
        return 1.0 - self._rng.random(size)


# === The probit link: the standard normal CDF and its inverse, in float64 ===


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x), accurate in both tails (`erfc`), float64."""
    return 0.5 * tf.math.erfc(-np.asarray(x, np.float64) / np.sqrt(2.0)).numpy()


def normal_quantile(p: np.ndarray) -> np.ndarray:
    """Phi^-1(p) for p in (0, 1], float64."""
    return tf.math.ndtri(tf.constant(np.asarray(p, np.float64))).numpy()


def truncated_normal(mean: np.ndarray, positive: np.ndarray, u: np.ndarray) -> np.ndarray:
    """z ~ N(mean, 1) conditioned on z > 0 where `positive`, z <= 0 elsewhere, by inversion.

    With u uniform in (0, 1]: above 0, the upper tail P(z' > z) = u P(z' > 0),
    z = mean - Phi^-1(u Phi(mean)); below, the lower tail P(z' <= z) =
    u P(z' <= 0), z = mean + Phi^-1(u Phi(-mean)). Both are exact in the far
    tails (the products stay representable down to Phi ~ 1e-308); the sign
    is then enforced for |mean| > 37, where Phi underflows to 0.
    """
    sign = np.where(positive, 1.0, -1.0)
    tail = normal_quantile(u * normal_cdf(sign * mean))
    z = mean - sign * tail
    tiny = np.finfo(np.float64).tiny
    return np.where(positive, np.maximum(z, tiny), np.minimum(z, 0.0))


@dataclasses.dataclass(frozen=True)
class Priors:
    """Hyperpriors of the Bayesian FM (libFM's and myfm's defaults).

    Args:
        alpha_0: float. Shape (times 2) of the Gamma priors of the noise
            precision and of each group's lambda. Defaults to 1.
        beta_0: float. Rate (times 2) of the same Gamma priors. Defaults to 1.
        mu_0: float. Prior mean of each group's mu. Defaults to 0.
        gamma_0: float. Prior precision of mu, relative to lambda. Defaults
            to 1.
        w0_precision: float. Precision of the Gaussian prior N(0, 1/.) of
            w0. Defaults to 0 (flat, as libFM).
        init_stdev: float. Standard deviation of the initial factors.
            Defaults to 0.1 (libFM).
    """

    alpha_0: float = 1.0
    beta_0: float = 1.0
    mu_0: float = 0.0
    gamma_0: float = 1.0
    w0_precision: float = 0.0
    init_stdev: float = 0.1

    def __post_init__(self):
        for name in ("alpha_0", "beta_0", "gamma_0", "init_stdev"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={getattr(self, name)}")
        if not self.w0_precision >= 0:
            raise ValueError(f"`w0_precision` must be >= 0. Received: {self.w0_precision}")


@dataclasses.dataclass
class Sample:
    """One kept draw of the FM's parameters, in the `FieldEmbedding` table layout.

    Attributes:
        w0: float. The global bias.
        w: `(rows,)` first-order weights (row = field offset + id).
        v: `(rows, k)` factors.
        alpha: float. The noise precision.
    """

    w0: float
    w: np.ndarray
    v: np.ndarray
    alpha: float


# === The design: what each row holds, in table rows ===


@dataclasses.dataclass
class _Slots:
    """One field's entries of the data: `(n, slots)` table rows and their x (0: none)."""

    rows: np.ndarray  # int64, (n, L)
    x: np.ndarray  # float64, (n, L)


class Segments:
    """Sums per segment and gathers per item, for items `ids (m,)` in segments 0 .. size - 1.

    When the items of a segment come one after another in runs that are
    long on average (the rows of a multi-valued block are ordered so, data
    sorted by a field, parameters in table order), both go run by run on
    contiguous memory, `np.add.reduceat` / `np.repeat`: faster than
    `np.bincount` / `np.take` per item, whose additions into one bin chain.
    """

    def __init__(self, ids: np.ndarray, size: int):
        self.ids, self.size = ids, size
        m = len(ids)
        starts = np.flatnonzero(np.diff(ids, prepend=-1))
        self.runs = None
        if size > 1 and 0 < _MIN_RUN * len(starts) <= m:
            self.runs = (starts, ids[starts], np.diff(starts, append=m))

    def sum(self, values: np.ndarray) -> np.ndarray:
        """`(size,)` sums of the items' `values (m,)` per segment."""
        if self.runs is None:
            return np.bincount(self.ids, values, self.size)
        starts, ids, _ = self.runs
        return np.bincount(ids, np.add.reduceat(values, starts), self.size)

    def gather(self, values: np.ndarray) -> np.ndarray:
        """`(m,)` the segments' `values (size,)` at the items: `values[ids]`."""
        if self.runs is None:
            return np.take(values, self.ids, mode="clip")
        _, ids, lengths = self.runs
        return np.repeat(values[ids], lengths)


@dataclasses.dataclass
class Block:
    """Parameters drawn in one vectorized step: no two of them appear in one row.

    Attributes:
        params: `(p,)` table rows of the block's parameters, sorted.
        data_rows: `(m,)` data rows that hold one of them (each once), or
            None for every row in order.
        local: `(m,)` which parameter (index into `params`) each row holds.
        x: `(m,)` its value x in that row, or None for x = 1 everywhere.
        group: int. The hyperprior group of the parameters.
        segments: `Segments` of `local` (set here).
    """

    params: np.ndarray
    data_rows: np.ndarray | None
    local: np.ndarray
    x: np.ndarray | None
    group: int
    segments: Segments = dataclasses.field(init=False)

    def __post_init__(self):
        self.segments = Segments(self.local, len(self.params))


def _to_numpy(x, y, what):
    """Model-input dict and labels as numpy, from arrays or a dataset of batches."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError(f"{what}: pass labels inside the dataset, not as `y`.")
        features, labels = {}, []
        for element in x.as_numpy_iterator():
            if not isinstance(element, tuple) or len(element) < 2:
                raise ValueError(f"{what}: the dataset must yield (features, label) batches.")
            for name, value in element[0].items():
                features.setdefault(name, []).append(value)
            labels.append(np.reshape(element[1], -1))
        if not labels:
            raise ValueError(f"{what}: the dataset has no rows.")
        x = {name: np.concatenate(parts) for name, parts in features.items()}
        y = np.concatenate(labels)
    if not isinstance(x, dict) or y is None:
        raise TypeError(f"{what}: give a dict of model inputs with `y`, or a tf.data.Dataset.")
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(y)):
        bad = int(np.flatnonzero(~np.isfinite(y))[0])
        raise ValueError(f"{what}: label of row {bad} is not finite ({y[bad]}).")
    return {name: np.asarray(value) for name, value in x.items()}, y


def _input(inputs, name, n, what, shape=()):
    if name not in inputs:
        raise KeyError(f"{what}: missing input for field '{name}'. Received: {sorted(inputs)}")
    value = np.asarray(inputs[name])
    if not shape and value.ndim == 2 and value.shape[1] == 1:
        value = value[:, 0]  # (n, 1), as FieldEmbedding also takes
    if value.shape != (n,) + shape:
        raise ValueError(
            f"{what}: field '{name}' has shape {value.shape}; expected {(n,) + shape}."
        )
    return value


def _categorical_ids(field, value, oov, what):
    size = field["vocabulary_size"]
    ids = value.astype(np.int64)
    outside = (ids < 0) | (ids >= size)
    if outside.any() and not oov:
        row = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{what}: field '{field['name']}' has id {ids[row]} in row {row}, outside "
            f"[0, {size}); use out_of_range='oov' to map such ids to an OOV row."
        )
    return np.where(outside, size, ids)


def _multivalued_x(field, ids, inputs, n):
    """x of each id slot, as `FieldEmbedding` computes it (combiner, weights, padding 0)."""
    length = (field["max_length"],)
    if field["weighted"]:
        weights = _input(inputs, weights_input_name(field["name"]), n, "weights", length)
        weights = weights.astype(np.float64)
    else:
        weights = np.ones(ids.shape)
    weights = np.where(ids == PADDING_ID, 0.0, weights)
    if field["combiner"] == "sum":
        return weights
    if field["combiner"] == "mean":
        denom = weights.sum(axis=1, keepdims=True)
    else:
        denom = np.sqrt(np.square(weights).sum(axis=1, keepdims=True))
    return weights / np.where(denom == 0.0, 1.0, denom)


def _multivalued_ids(field, value, oov, what):
    size = field["vocabulary_size"]
    ids = value.astype(np.int64)
    padding = ids == PADDING_ID
    outside = ((ids < 0) | (ids >= size)) & ~padding
    if outside.any():
        if not oov:
            row = int(np.flatnonzero(outside.any(axis=1))[0])
            raise ValueError(
                f"{what}: field '{field['name']}' row {row} has id(s) "
                f"{sorted(set(ids[row][outside[row]].tolist()))} outside [0, {size})."
            )
        ids = np.where(outside, size, ids)
    ordered = np.sort(ids, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PADDING_ID)
    if repeated.any():
        row = int(np.flatnonzero(repeated.any(axis=1))[0])
        raise ValueError(
            f"{what}: field '{field['name']}' row {row} repeats an id ({ids[row].tolist()}); "
            "the Bayesian FM needs distinct ids per row."
        )
    return ids


def _design(layout, inputs, what):
    """Per field, the `_Slots` of the rows in `inputs` (table rows as `FieldEmbedding`'s)."""
    n = None
    for field in layout.fields:
        if field["name"] in inputs:
            n = len(inputs[field["name"]])
            break
    if not n:
        raise ValueError(f"{what}: no rows (or none of the fields {layout.field_names}).")
    oov = layout.out_of_range == "oov"
    slots = []
    for field, offset in zip(layout.fields, layout.offsets, strict=True):
        name = field["name"]
        if field["kind"] == "numeric":
            x = _input(inputs, name, n, what).astype(np.float64)
            if not np.all(np.isfinite(x)):
                row = int(np.flatnonzero(~np.isfinite(x))[0])
                raise ValueError(f"{what}: field '{name}' row {row} is not finite ({x[row]}).")
            slots.append(_Slots(np.full((n, 1), offset, np.int64), x[:, None]))
        elif field["kind"] == "categorical":
            ids = _categorical_ids(field, _input(inputs, name, n, what), oov, what)
            slots.append(_Slots((ids + offset)[:, None], np.ones((n, 1))))
        else:
            value = _input(inputs, name, n, what, (field["max_length"],))
            ids = _multivalued_ids(field, value, oov, what)
            x = _multivalued_x(field, ids, inputs, n)
            slots.append(_Slots(np.where(ids == PADDING_ID, 0, ids) + offset, x))
    return slots


# === Blocks and groups ===


def _coloring(ids, size):
    """Greedy coloring of a multi-valued field's ids: ids sharing a row differ in color.

    Args:
        ids: `(n, L)` local ids, -1 for padding.
        size: number of ids.

    Returns:
        `(size,)` colors; ids in no row get color 0.
    """
    length = ids.shape[1]
    first, second = np.triu_indices(length, k=1)
    a, b = ids[:, first].reshape(-1), ids[:, second].reshape(-1)
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep], b[keep]
    edges = np.unique(np.concatenate([a * size + b, b * size + a]))
    sources, targets = edges // size, edges % size
    starts = np.searchsorted(sources, np.arange(size + 1))
    counts = np.bincount(ids[ids >= 0], minlength=size)
    colors = np.full(size, -1, np.int64)
    for node in np.argsort(-counts, kind="stable"):
        taken = set(colors[targets[starts[node] : starts[node + 1]]].tolist())
        color = 0
        while color in taken:
            color += 1
        colors[node] = color
    return colors


def _field_blocks(field, offset, slots, group, oov):
    """The blocks of one field's parameters (see the module docstring)."""
    n = len(slots.rows)
    if field["kind"] == "numeric":
        return [Block(np.array([offset]), None, np.zeros(n, np.int64), slots.x[:, 0], group)]
    size = field["vocabulary_size"] + (1 if oov else 0)
    if field["kind"] == "categorical":
        params = offset + np.arange(size)
        return [Block(params, None, slots.rows[:, 0] - offset, None, group)]
    ids = np.where(slots.x != 0.0, slots.rows - offset, PADDING_ID)
    colors = _coloring(ids, size)
    blocks = []
    for color in range(int(colors.max()) + 1):
        params = np.flatnonzero(colors == color)
        data_rows, slot = np.nonzero((ids >= 0) & (colors[np.maximum(ids, 0)] == color))
        local = np.searchsorted(params, ids[data_rows, slot])
        # The rows of one id in a run (`Segments`), in new contiguous arrays:
        # np.nonzero's are strided views, slower to index with.
        by_id = np.argsort(local, kind="stable")
        data_rows, slot, local = data_rows[by_id], slot[by_id], local[by_id]
        x = slots.x[data_rows, slot]
        blocks.append(Block(params + offset, data_rows, local, x, group))
    return blocks


def _groups(fields):
    """Group index per field: one per non-numeric field, one shared by all numeric fields."""
    groups, numeric = [], None
    count = 0
    for field in fields:
        if field["kind"] == "numeric":
            if numeric is None:
                numeric, count = count, count + 1
            groups.append(numeric)
        else:
            groups.append(count)
            count += 1
    return groups, count


# === The sampler ===


def _dot(a, b):
    """sum_i a_i b_i of two vectors, in this thread.

    `np.dot` calls BLAS, and OpenBLAS wakes its worker threads for long
    vectors: on a busy 2-core machine that cost 5 ms per call (30k rows)
    instead of 5 us.
    """
    return np.einsum("i,i->", a, b)


class GibbsSampler:
    """The Gibbs chain of a Bayesian FM on one training set (regression or probit).

    Holds the parameters (`w0`, `w (rows,)`, `v (k, rows)`), the
    hyperparameters (`alpha`, `mu_w`, `lambda_w (G,)`, `mu_v`, `lambda_v
    (k, G)`) and the caches `e (n,)` = y - yhat and `q (k, n)`; `sweep()`
    draws each of them once, in the order of the module's draw schedule
    (`sweeps` counts them).

    With `task="binary"` the likelihood is the probit P(label = 1) =
    Phi(yhat) (Albert and Chib 1993, as libFM's and myfm's classification):
    `y` holds the latent z ~ N(yhat, 1), positive exactly for the label-1
    rows, drawn first in each sweep (`uniform(n)` in the draw schedule,
    instead of alpha's `gamma(1)`); alpha stays 1, and every other draw is
    the regression's on z.

    Args:
        layout: an (unbuilt) `FieldEmbedding`: fields, row offsets, rows.
        inputs: dict of model inputs (numpy), as `FieldEmbedding` reads them.
        y: `(n,)` targets (binary: labels 0 / 1).
        embedding_dim: int. Factor size k.
        priors: `Priors`.
        draws: `Draws`.
        task: `"regression"` or `"binary"`. Defaults to `"regression"`.
    """

    def __init__(self, layout, inputs, y, embedding_dim, priors, draws, task="regression"):
        self.layout, self.k, self.priors, self.draws = layout, embedding_dim, priors, draws
        self.task = task
        self.labels = np.asarray(y, np.float64)
        # The target the Gaussian draws fit: y (regression), the latent z (binary, probit).
        self.y = self.labels.copy() if task == "regression" else np.zeros_like(self.labels)
        self.slots = _design(layout, inputs, "BayesianFM.fit")
        if len(self.y) != len(self.slots[0].rows):
            raise ValueError(
                f"BayesianFM.fit: {len(self.y)} labels for {len(self.slots[0].rows)} rows."
            )
        group_of, self.num_groups = _groups(layout.fields)
        oov = layout.out_of_range == "oov"
        self.blocks = [
            block
            for field, offset, slots, group in zip(
                layout.fields, layout.offsets, self.slots, group_of, strict=True
            )
            for block in _field_blocks(field, offset, slots, group, oov)
        ]
        rows = layout.total_rows
        self.param_group = np.full(rows, -1, np.int64)  # -1: the padding row
        for block in self.blocks:
            self.param_group[block.params] = block.group
        self.is_param = self.param_group >= 0
        self.group_sizes = np.bincount(self.param_group[self.is_param], minlength=self.num_groups)
        self._param_rows = np.flatnonzero(self.is_param)
        self._param_segments = Segments(self.param_group[self._param_rows], self.num_groups)
        # The quadratic term sum_i x_i^2 of each block's w: fixed by the data.
        ones = np.ones(len(self.y))
        self._w_quadratic = [
            self._sum_products(b, ones if b.x is None else b.x, b.x) for b in self.blocks
        ]
        self._init_state(rows)

    def _init_state(self, rows):
        k, g = self.k, self.num_groups
        self.w0 = 0.0
        self.w = np.zeros(rows)
        v = self.priors.init_stdev * self.draws.normal(rows * k).reshape(rows, k)
        self.v = np.ascontiguousarray(np.where(self.is_param[:, None], v, 0.0).T)  # (k, rows)
        self.alpha = 1.0
        self.mu_w, self.lambda_w = np.zeros(g), np.ones(g)
        self.mu_v, self.lambda_v = np.zeros((k, g)), np.ones((k, g))
        self.sweeps = 0
        self.refresh()

    def predict(self, slots):
        """`(n,)` predictions of the current parameters on a design (`_Slots` per field)."""
        linear = sum((self.w[s.rows] * s.x).sum(axis=1) for s in slots)
        vectors = self.v.T
        q = sum(np.einsum("nlk,nl->nk", vectors[s.rows], s.x) for s in slots)
        squares = sum(np.einsum("nlk,nl->n", vectors[s.rows] ** 2, s.x**2) for s in slots)
        return self.w0 + linear + 0.5 * ((q**2).sum(axis=1) - squares)

    def refresh(self):
        """Recomputes the caches e and q from the parameters, block by block."""
        n = len(self.y)
        linear, squares = np.zeros(n), np.zeros(n)
        self.q = np.zeros((self.k, n))
        for block in self.blocks:
            x = 1.0 if block.x is None else block.x
            table_rows = block.params[block.local]
            w = self.w[table_rows] * x
            v = np.take(self.v, table_rows, axis=1) * x  # (k, rows of the block)
            if block.data_rows is None:
                linear += w
                squares += (v**2).sum(axis=0)
                self.q += v
            else:
                linear[block.data_rows] += w
                squares[block.data_rows] += (v**2).sum(axis=0)
                self.q[:, block.data_rows] += v
        yhat = self.w0 + linear + 0.5 * ((self.q**2).sum(axis=0) - squares)
        self.e = self.y - yhat

    # --- Hyperparameters ---

    def _draw_alpha(self):
        p = self.priors
        shape = (p.alpha_0 + len(self.y)) / 2
        rate = (p.beta_0 + _dot(self.e, self.e)) / 2
        self.alpha = float(self.draws.gamma([shape])[0] / rate)

    def _draw_latent(self):
        """Probit: z_i ~ N(yhat_i, 1) truncated to the side of 0 its label says (alpha = 1)."""
        yhat = self.y - self.e
        self.y = truncated_normal(yhat, self.labels > 0.5, self.draws.uniform(len(self.y)))
        self.e = self.y - yhat

    def _draw_w0(self):
        precision = self.alpha * len(self.y) + self.priors.w0_precision
        mean = self.alpha * np.sum(self.e + self.w0) / precision
        new = mean + self.draws.normal(1)[0] / np.sqrt(precision)
        self.e -= new - self.w0
        self.w0 = float(new)

    def _draw_hyper(self, theta, mu, lam):
        """lambda (all groups), then mu (all groups), given the parameters `theta (rows,)`."""
        p = self.priors
        values = np.take(theta, self._param_rows, mode="clip")
        deviation = self._param_segments.sum((values - self._param_segments.gather(mu)) ** 2)
        shape = (p.alpha_0 + self.group_sizes + 1) / 2
        rate = (p.beta_0 + p.gamma_0 * (mu - p.mu_0) ** 2 + deviation) / 2
        lam[:] = self.draws.gamma(shape) / rate
        total = self._param_segments.sum(values)
        scale = p.gamma_0 + self.group_sizes
        mean = (total + p.gamma_0 * p.mu_0) / scale
        mu[:] = mean + self.draws.normal(self.num_groups) / np.sqrt(scale * lam)

    # --- Parameters, one block at a time ---

    def _sum_products(self, block, a, b=None):
        """Per parameter of the block, sum_i a_i b_i over its rows (b = 1 when None), `(p,)`."""
        if len(block.params) == 1:  # a numeric field or a lone multi-valued id: one plain sum
            return np.array([a.sum() if b is None else _dot(a, b)])
        return block.segments.sum(a if b is None else a * b)

    def _gaussian(self, block, quadratic, linear, old, mu, lam):
        """New values of a block's parameters from their Gaussian conditionals.

        With quadratic = sum_i h_i^2 and linear = sum_i e_i h_i per parameter,
        sum_i (e_i + theta h_i) h_i = linear + theta quadratic.
        """
        lam, mu = lam[block.group], mu[block.group]
        precision = self.alpha * quadratic + lam
        mean = (self.alpha * (linear + old * quadratic) + lam * mu) / precision
        return mean + self.draws.normal(len(old)) / np.sqrt(precision)

    def _rows_of(self, cache, block):
        """A cache at the block's rows: the cache itself when it has them all, else a copy."""
        if block.data_rows is None:
            return cache
        return np.take(cache, block.data_rows, mode="clip")

    def _write_back(self, cache, block, rows):
        """Stores the block's rows of a cache that `_rows_of` copied out (else a no-op)."""
        if block.data_rows is not None:
            cache[block.data_rows] = rows

    def _per_row(self, block, values):
        """A block's `(p,)` values at its rows: `values[local]`, a scalar when p = 1."""
        return values[0] if len(values) == 1 else block.segments.gather(values)

    def _draw_linear(self, block, quadratic):
        """The block's w given the rest (`quadratic`: its fixed sum_i x_i^2); e follows."""
        old = self.w[block.params]
        e = self._rows_of(self.e, block)
        linear = self._sum_products(block, e, block.x)
        new = self._gaussian(block, quadratic, linear, old, self.mu_w, self.lambda_w)
        self.w[block.params] = new
        delta = self._per_row(block, new - old)
        e -= delta if block.x is None else delta * block.x
        self._write_back(self.e, block, e)

    def _draw_factor(self, block, f):
        """The block's v_f given the rest; e and q_f follow."""
        vf, qf, x = self.v[f], self.q[f], block.x
        old = vf[block.params]
        q, e = self._rows_of(qf, block), self._rows_of(self.e, block)
        old_rows = self._per_row(block, old)
        h = q - old_rows if x is None else x * (q - old_rows * x)
        quadratic, linear = self._sum_products(block, h, h), self._sum_products(block, e, h)
        new = self._gaussian(block, quadratic, linear, old, self.mu_v[f], self.lambda_v[f])
        vf[block.params] = new
        delta = self._per_row(block, new - old)
        e -= delta * h
        q += delta if x is None else delta * x
        self._write_back(self.e, block, e)
        self._write_back(qf, block, q)

    def sweep(self):
        """One Gibbs sweep: alpha (regression) or the latent z (binary), then the rest.

        e and q are updated with each draw; every `REFRESH_EVERY` sweeps they are
        recomputed from the parameters (`refresh`), which bounds their float drift.
        """
        if self.task == "binary":
            self._draw_latent()
        else:
            self._draw_alpha()
        self._draw_w0()
        self._draw_hyper(self.w, self.mu_w, self.lambda_w)
        for block, quadratic in zip(self.blocks, self._w_quadratic, strict=True):
            self._draw_linear(block, quadratic)
        for f in range(self.k):
            self._draw_hyper(self.v[f], self.mu_v[f], self.lambda_v[f])
            for block in self.blocks:
                self._draw_factor(block, f)
        self.sweeps += 1
        if self.sweeps % REFRESH_EVERY == 0:
            self.refresh()

    def sample(self) -> Sample:
        """The current parameters as a `Sample` (copies, float32 tables)."""
        return Sample(self.w0, self.w.astype(np.float32), self.v.T.astype(np.float32), self.alpha)


# === The public API ===


def posterior_mean_model(
    fields: Sequence,
    samples: Sequence[Sample],
    out_of_range: str = "error",
    name: str = "bayesfm",
) -> keras.Model:
    """The posterior-mean predictor (1/S) sum_s FM_s(x) as one `tf_fm.FM` Keras model.

    The average of S FMs is an FM: for any two features
    (1/S) sum_s <v_i^s, v_j^s> = <u_i, u_j> with u_i the S factor vectors
    concatenated and scaled by 1/sqrt(S); w and w0 average. The model has
    embedding size k*S and the table layout of `FieldEmbedding(fields)`.

    Args:
        fields: what `tf_fm.FM` takes (an adapted `FeatureSchema`, features
            or field dicts).
        samples: the kept `Sample`s.
        out_of_range: `"error"` or `"oov"`, as the samples were drawn with.
        name: str. Model name. Defaults to `"bayesfm"`.

    Returns:
        A `tf_fm.FM` model, task regression (output `prediction`).
    """
    if not samples:
        raise ValueError("posterior_mean_model: no samples.")
    s, k = len(samples), samples[0].v.shape[1]
    model = models_lib.FM(
        fields,
        embedding_dim=k * s,
        task="regression",
        out_of_range=out_of_range,
        embeddings_l2=0.0,
        linear_l2=0.0,
        name=name,
    )
    factors = np.concatenate([sample.v for sample in samples], axis=1) / np.sqrt(s)
    linear = np.mean([sample.w for sample in samples], axis=0)
    model.get_layer("field_embedding").set_table(factors, linear)
    model.get_layer("logit").bias.assign(np.mean([sample.w0 for sample in samples]))
    return model


def _field_dicts(fields):
    if isinstance(fields, FeatureSchema):
        return fields.fields()
    return [field_config(f) for f in fields]


def probit_average_model(
    fields: Sequence,
    samples: Sequence[Sample],
    out_of_range: str = "error",
    name: str = "bayesfm",
) -> keras.Model:
    """The probit posterior predictive (1/S) sum_s Phi(FM_s(x)) as one Keras model.

    An average of probabilities is not one FM, so the S samples stay side
    by side: a `FieldEmbedding` ("field_embedding") of width k*S holds their
    factors (sample s in columns s*k .. (s+1)*k - 1; its own w column is 0),
    a second one ("sample_linear") of width S their first-order weights
    (column s: sample s's w); `FMInteraction(reduce_sum=False)` gives each
    factor's pairwise term, and `ProbitAverage` adds the per-sample biases
    and returns the logit of the average probability, which the
    `PredictionHead("binary")` ("probability") turns back into it. Both
    tables have the layout of `FieldEmbedding(fields)`.

    Args:
        fields, samples, out_of_range, name: as `posterior_mean_model`.

    Returns:
        A functional `keras.Model`, task binary (output `probability`).
    """
    if not samples:
        raise ValueError("probit_average_model: no samples.")
    s, k = len(samples), samples[0].v.shape[1]
    field_dicts = _field_dicts(fields)
    inputs = models_lib.model_inputs(field_dicts)
    factors = FieldEmbedding(
        field_dicts, k * s, out_of_range, embeddings_l2=0.0, linear_l2=0.0, name="field_embedding"
    )
    linear = FieldEmbedding(
        field_dicts, s, out_of_range, embeddings_l2=0.0, linear_l2=0.0, name="sample_linear"
    )
    embedded = factors(inputs)
    pairwise = FMInteraction(reduce_sum=False, name="fm_interaction")(
        [embedded["embeddings"], embedded["squared_embeddings"]]
    )
    average = ProbitAverage(s, name="logit")
    logit = average([pairwise, linear(inputs)["embeddings"]])
    model = keras.Model(inputs, PredictionHead("binary", name="probability")(logit), name=name)
    rows = factors.total_rows
    factors.set_table(np.concatenate([sample.v for sample in samples], axis=1), np.zeros(rows))
    linear.set_table(np.stack([sample.w for sample in samples], axis=1), np.zeros(rows))
    average.bias.assign(np.array([sample.w0 for sample in samples], np.float32))
    return model


class BayesianFM:
    """A Factorization Machine trained by Gibbs sampling (MCMC): regression or probit.

    libFM's `-method mcmc`: hierarchical Gaussian priors on w0, w and V with
    per-field normal-gamma hyperpriors and a Gamma prior on the noise
    precision, every parameter drawn from its closed-form conditional (see
    the module docstring), whole blocks of conditionally independent
    parameters at once. The prediction is the average over the `samples`
    sweeps after `burn_in`: for regression exported as one `tf_fm.FM`
    model (`posterior_mean_model`); for `task="binary"` (the probit
    likelihood P(y = 1) = Phi(FM(x)), libFM's and myfm's classification)
    the average of the samples' probabilities (`probit_average_model`).

    Args:
        fields: an adapted `FeatureSchema` or the features / field dicts
            `tf_fm.FM` takes. Multi-valued fields need distinct ids per row.
        embedding_dim: int. Factor size k of each sample. Defaults to 8.
        samples: int. Sweeps kept (averaged) after burn-in. Defaults to 100.
        burn_in: int. Sweeps discarded first. Defaults to 20.
        priors: `Priors` or None (libFM's defaults).
        out_of_range: `"error"` or `"oov"`, as in `FieldEmbedding`.
            Defaults to `"error"`.
        seed: int. Seed of the chain (`Draws(seed)`). Defaults to 0.
        task: `"regression"` or `"binary"` (labels 0 / 1, probit).
            Defaults to `"regression"`.

    Attributes:
        history: after `fit`, per sweep: `"rmse"` (training rows),
            `"val_rmse"` (with validation data) of the running posterior
            mean (the current sample during burn-in), and `"alpha"`; binary:
            `"auc"`, `"logloss"` and `"val_auc"`, `"val_logloss"` of the
            running mean probability.
        samples_: after `fit`, the kept `Sample`s.

    Example:

    >>> bfm = BayesianFM(fields, embedding_dim=8, samples=50, burn_in=10)
    >>> model = bfm.fit(features, labels)  # a tf_fm.FM of embedding size 8 * 50
    >>> model.predict(features)

    References:
        Freudenthaler, Schmidt-Thieme, Rendle, "Bayesian Factorization
        Machines", 2011. Rendle, "Factorization Machines with libFM", 2012.
    """

    def __init__(
        self,
        fields: "FeatureSchema | Sequence",
        embedding_dim: int = 8,
        samples: int = DEFAULT_SAMPLES,
        burn_in: int = DEFAULT_BURN_IN,
        priors: Priors | None = None,
        out_of_range: str = "error",
        seed: int = 0,
        task: str = "regression",
    ):
        if task not in ("regression", "binary"):
            raise ValueError(f"`task` must be 'regression' or 'binary'. Received: task={task!r}")
        for arg, value, low in (
            ("embedding_dim", embedding_dim, 1),
            ("samples", samples, 1),
            ("burn_in", burn_in, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"`{arg}` must be an integer >= {low}. Received: {arg}={value!r}")
        self.fields = fields
        field_dicts = _field_dicts(fields)
        shared = [f["name"] for f in field_dicts if "table" in f]
        if shared:
            raise ValueError(
                f"BayesianFM: fields {shared} share a table (`table=`); the Gibbs sampler draws "
                "each row from the field that owns it, so it needs every field's own rows."
            )
        self.layout = FieldEmbedding(field_dicts, embedding_dim=1, out_of_range=out_of_range)
        self.embedding_dim = int(embedding_dim)
        self.samples = int(samples)
        self.burn_in = int(burn_in)
        self.priors = priors or Priors()
        self.out_of_range = out_of_range
        self.seed = seed
        self.task = task
        self.history = {}
        self.samples_ = []
        self.sampler = None

    def fit(
        self,
        x: "dict | tf.data.Dataset",
        y: np.ndarray | None = None,
        validation_data: "tuple | tf.data.Dataset | None" = None,
        draws: Draws | None = None,
        log: Callable[[str], None] | None = None,
        log_every: int = 10,
    ) -> keras.Model:
        """Runs the chain and returns the posterior-mean predictor as a `tf_fm.FM` model.

        Args:
            x: dict of model inputs (numpy, as `tf_fm.FM` takes them) with
                `y`, or a `tf.data.Dataset` of `(inputs, label)` batches
                (e.g. `schema.preprocess(raw)`), read once.
            y: `(n,)` targets when `x` is a dict.
            validation_data: `(inputs, labels)` or a dataset, or None.
            draws: `Draws` or None (`Draws(seed)`): the chain's random numbers.
            log: callable printing one line, or None. Defaults to None.
            log_every: int. Log every this many sweeps. Defaults to 10.

        Returns:
            The `tf_fm.FM` model (task regression, embedding size
            `embedding_dim * samples`).
        """
        inputs, labels = self._labelled(x, y, "BayesianFM.fit")
        draws = draws or Draws(self.seed)
        sampler = GibbsSampler(
            self.layout, inputs, labels, self.embedding_dim, self.priors, draws, self.task
        )
        self.sampler = sampler
        valid = None
        if validation_data is not None:
            valid_x, valid_y = (
                (validation_data, None)
                if isinstance(validation_data, tf.data.Dataset)
                else validation_data
            )
            valid_inputs, valid_labels = self._labelled(valid_x, valid_y, "validation_data")
            valid = (_design(self.layout, valid_inputs, "validation_data"), valid_labels)
        self.history, self.samples_ = self._run(sampler, valid, log, log_every)
        if self.task == "binary":
            return probit_average_model(self.fields, self.samples_, self.out_of_range)
        return posterior_mean_model(self.fields, self.samples_, self.out_of_range)

    def _labelled(self, x, y, what):
        inputs, labels = _to_numpy(x, y, what)
        if self.task == "binary" and not np.all((labels == 0) | (labels == 1)):
            bad = int(np.flatnonzero((labels != 0) & (labels != 1))[0])
            raise ValueError(
                f"{what}: label of row {bad} is {labels[bad]}; task='binary' needs 0 / 1."
            )
        return inputs, labels

    def _scores(self, labels, predictions, prefix=""):
        """This sweep's metrics of the running predictions (probabilities for binary)."""
        if self.task == "regression":
            return {f"{prefix}rmse": metrics_lib.rmse(labels, predictions)}
        return {
            f"{prefix}auc": metrics_lib.roc_auc(labels, predictions),
            f"{prefix}logloss": metrics_lib.log_loss(labels, predictions),
        }

    def _prediction(self, latent):
        """What is averaged over the samples: the FM (regression) or Phi(FM) (probit)."""
        return latent if self.task == "regression" else normal_cdf(latent)

    def _run(self, sampler, valid, log, log_every):
        history = {}
        kept, train_sum, valid_sum = [], 0.0, 0.0
        total = self.burn_in + self.samples
        for sweep in range(total):
            sampler.sweep()
            train_pred = self._prediction(sampler.y - sampler.e)
            valid_pred = None if valid is None else self._prediction(sampler.predict(valid[0]))
            if sweep >= self.burn_in:
                kept.append(sampler.sample())
                train_sum = train_sum + train_pred
                train_pred = train_sum / len(kept)
                if valid is not None:
                    valid_sum = valid_sum + valid_pred
                    valid_pred = valid_sum / len(kept)
            logs = self._scores(sampler.labels, train_pred)
            if self.task == "regression":
                logs["alpha"] = sampler.alpha
            if valid is not None:
                logs.update(self._scores(valid[1], valid_pred, "val_"))
            for key, value in logs.items():
                history.setdefault(key, []).append(value)
            if log is not None and ((sweep + 1) % log_every == 0 or sweep + 1 == total):
                shown = ", ".join(f"{key} {values[-1]:.4f}" for key, values in history.items())
                phase = "burn-in" if sweep < self.burn_in else f"{len(kept)} samples"
                log(f"  sweep {sweep + 1}/{total} ({phase}): {shown}")
        return history, kept
