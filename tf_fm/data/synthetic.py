"""Synthetic data drawn from a known ground-truth FM, with its Bayes-optimal metrics.

A model trained on these rows can be compared with the best achievable: the
metrics of the true probabilities (binary) or of the noise-free y (regression).
"""

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tf_fm import metrics
from tf_fm.features import CategoricalFeature, MultiValuedFeature, NumericFeature


@dataclass
class SyntheticData:
    """Rows of a synthetic FM task.

    Attributes:
        features: dict name -> numpy array (the model's named inputs).
        labels: `(n,)` float32 labels (0/1 for binary, real for regression).
        truth: `(n,)` float64 true probabilities (binary) or noise-free y.
        fields: field declarations to build `FM` / `DeepFM` with.
        task: `"binary"` or `"regression"`.
        noise: standard deviation of the label noise (regression).
        info: the ground truth: `w0`, `embedding_dim` and per field `params`
            `{"w": (rows,), "v": (rows, k)}` (numeric fields: one row).
    """

    features: dict
    labels: np.ndarray
    truth: np.ndarray
    fields: list
    task: str
    noise: float = 0.0
    info: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.labels)

    def bayes_metrics(self):
        """Metrics of the ground truth on these rows: the best a model can reach."""
        if self.task == "binary":
            return {
                "auc": metrics.roc_auc(self.labels, self.truth),
                "logloss": metrics.log_loss(self.labels, self.truth),
            }
        return {"rmse": metrics.rmse(self.labels, self.truth)}

    def evaluate(self, predictions):
        """The same metrics for a model's predictions on these rows."""
        predictions = np.asarray(predictions).reshape(-1)
        if self.task == "binary":
            return {
                "auc": metrics.roc_auc(self.labels, predictions),
                "logloss": metrics.log_loss(self.labels, predictions),
            }
        return {"rmse": metrics.rmse(self.labels, predictions)}

    def dataset(self, batch_size=1024, shuffle=True, seed=0, repeat=False):
        """`tf.data.Dataset` of `(features, label)` batches."""
        ds = tf.data.Dataset.from_tensor_slices((self.features, self.labels))
        if shuffle:
            ds = ds.shuffle(min(len(self), 100_000), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _zipf_probabilities(size, exponent):
    p = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    return p / p.sum()


def make_fm_data(
    n_train=50_000,
    n_test=20_000,
    cardinalities=(50, 20, 20, 10, 10, 5),
    n_numeric=2,
    multivalued_size=10,
    multivalued_max_length=3,
    embedding_dim=4,
    task="binary",
    zipf_exponent=1.2,
    interaction_scale=1.0,
    noise=0.5,
    base_rate=0.25,
    seed=0,
):
    """Draw train and test rows from one ground-truth FM.

    Fields: categorical `c0, c1, ...` with Zipf(`zipf_exponent`) ids over
    the given cardinalities; numeric `n0, n1, ...` ~ N(0, 1); a multi-valued
    `tags` field with 1..`multivalued_max_length` distinct Zipf ids (padded
    with -1, x = 1 each). Each id's w ~ N(0, 0.3^2) and v ~ N(0, s^2), s set
    so the pairwise term has standard deviation about `interaction_scale`.
    y_true = w0 + sum w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j (all non-zero
    x_i of the row, libFM's FM); binary labels ~ Bernoulli(sigmoid(y_true)),
    with w0 set so the mean label is about `base_rate`; regression labels =
    y_true + N(0, `noise`^2).

    Returns:
        `(train, test)`: two `SyntheticData` from the same truth.
    """
    if task not in ("binary", "regression"):
        raise ValueError(f"`task` must be 'binary' or 'regression'. Received: task={task!r}")
    rng = np.random.default_rng(seed)
    fields = _declare_fields(cardinalities, n_numeric, multivalued_size, multivalued_max_length)
    slots = len(cardinalities) + n_numeric + (multivalued_max_length if multivalued_size else 0)
    truth = _draw_truth(rng, fields, slots, embedding_dim, interaction_scale)
    train_feats, train_y = _draw_rows(rng, fields, truth, n_train, embedding_dim, zipf_exponent)
    test_feats, test_y = _draw_rows(rng, fields, truth, n_test, embedding_dim, zipf_exponent)
    w0 = _intercept(train_y, base_rate) if task == "binary" else 0.0
    info = {
        "w0": w0,
        "embedding_dim": embedding_dim,
        "params": {name: {"w": w, "v": v} for name, (w, v, _) in truth.items()},
    }

    def finish(feats, y):
        y = y + w0
        if task == "binary":
            p = 1.0 / (1.0 + np.exp(-y))
            labels = (rng.random(len(y)) < p).astype(np.float32)
            return SyntheticData(feats, labels, p, fields, task, info=info)
        labels = (y + rng.normal(0.0, noise, size=len(y))).astype(np.float32)
        return SyntheticData(feats, labels, y, fields, task, noise=noise, info=info)

    return finish(train_feats, train_y), finish(test_feats, test_y)


def _declare_fields(cardinalities, n_numeric, multivalued_size, multivalued_max_length):
    """Categorical `c0, c1, ...`, numeric `n0, n1, ...`, then (if any) multi-valued `tags`."""
    fields = [
        CategoricalFeature(f"c{i}", encoding="integer", num_ids=int(c))
        for i, c in enumerate(cardinalities)
    ]
    fields += [NumericFeature(f"n{i}") for i in range(n_numeric)]
    if multivalued_size:
        fields.append(
            MultiValuedFeature(
                "tags",
                encoding="integer",
                num_ids=multivalued_size,
                max_length=multivalued_max_length,
            )
        )
    return fields


def _draw_truth(rng, fields, slots, embedding_dim, interaction_scale):
    """Ground truth per field: `(w (rows,), v (rows, k), permutation of the ids by frequency)`.

    `slots` is the number of non-zero x of a row at most; the scale s of v
    is chosen so the pairwise term has about `interaction_scale` std.
    """
    n_slots_pairs = slots * (slots - 1) / 2
    # Var(<v_i, v_j>) = k s^4 for independent rows: choose s for the target std.
    s = (interaction_scale**2 / (n_slots_pairs * embedding_dim)) ** 0.25
    truth = {}
    for f in fields:
        rows = getattr(f, "num_ids", None) or 1
        truth[f.name] = (
            rng.normal(0.0, 0.3, size=rows),
            rng.normal(0.0, s, size=(rows, embedding_dim)),
            rng.permutation(rows),  # which id is most frequent
        )
    return truth


def _draw_rows(rng, fields, truth, n, embedding_dim, zipf_exponent):
    """`n` rows of features and their y_true without w0 (linear + pairwise terms)."""
    feats = {}
    linear = np.zeros(n)
    vec_sum = np.zeros((n, embedding_dim))
    sq_sum = np.zeros((n, embedding_dim))
    for f in fields:
        w, v, perm = truth[f.name]
        if isinstance(f, CategoricalFeature):
            ids = perm[
                rng.choice(f.num_ids, size=n, p=_zipf_probabilities(f.num_ids, zipf_exponent))
            ]
            feats[f.name] = ids.astype(np.int64)
            linear += w[ids]
            vec_sum += v[ids]
            sq_sum += v[ids] ** 2
        elif isinstance(f, NumericFeature):
            x = rng.normal(0.0, 1.0, size=n)
            feats[f.name] = x.astype(np.float32)
            x = x.astype(np.float32).astype(np.float64)
            linear += w[0] * x
            vec_sum += v[0] * x[:, None]
            sq_sum += v[0] ** 2 * x[:, None] ** 2
        else:
            ids = _draw_id_lists(rng, f, perm, n, zipf_exponent)
            feats[f.name] = ids
            mask = ids >= 0
            safe = np.where(mask, ids, 0)
            linear += (w[safe] * mask).sum(axis=1)
            vec_sum += (v[safe] * mask[..., None]).sum(axis=1)
            sq_sum += (v[safe] ** 2 * mask[..., None]).sum(axis=1)
    pairwise = 0.5 * (vec_sum**2 - sq_sum).sum(axis=1)
    return feats, linear + pairwise


def _draw_id_lists(rng, feature, perm, n, zipf_exponent):
    """`(n, max_length)` int64 ids of a multi-valued feature: 1..max_length distinct, -1 padded."""
    p = _zipf_probabilities(feature.num_ids, zipf_exponent)
    lengths = rng.integers(1, feature.max_length + 1, size=n)
    ids = np.full((n, feature.max_length), -1, dtype=np.int64)
    for i in range(n):
        chosen = rng.choice(feature.num_ids, size=lengths[i], replace=False, p=p)
        ids[i, : lengths[i]] = perm[chosen]
    return ids


def _intercept(y, base_rate):
    """w0 such that the mean of sigmoid(y + w0) is about `base_rate` (bisection)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(y + mid)))) > base_rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2
