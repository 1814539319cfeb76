"""Evaluation metrics: exact ones on numpy arrays, and a Keras log-loss metric."""

import keras
import numpy as np


@keras.saving.register_keras_serializable(package="tf_fm")
class LogLoss(keras.metrics.BinaryCrossentropy):
    """Binary cross-entropy as a Keras metric, accepting labels of shape (batch,).

    `keras.metrics.BinaryCrossentropy` requires labels of the output's rank;
    datasets usually carry `(batch,)` labels for a `(batch, 1)` probability.
    Unlike the training loss, this excludes regularization terms.
    """

    def __init__(self, name="logloss", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = keras.ops.reshape(keras.ops.cast(y_true, y_pred.dtype), keras.ops.shape(y_pred))
        return super().update_state(y_true, y_pred, sample_weight=sample_weight)


def _rankdata(x):
    """Average ranks (1-based), ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # Boundaries of runs of equal values.
    starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1..end
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores averaged)."""
    labels = np.asarray(labels).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.shape} vs {scores.shape}")
    positive = labels > 0.5
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs at least one positive and one negative label.")
    ranks = _rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))


def rmse(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Root mean squared error."""
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    return float(np.sqrt(np.mean((targets - predictions) ** 2)))


def score(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict:
    """The exact metrics of a run's predictions, as plain floats.

    Args:
        task: `"binary"` (AUC, log loss, positive rate) or `"regression"`
            (RMSE).
        labels: `(n,)` labels.
        predictions: `(n,)` probabilities or predictions.

    Returns:
        dict with `auc` (None when one class only), `logloss`,
        `positive_rate` (binary) or `rmse` (regression), and `rows`.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if task == "binary":
        result = {"logloss": log_loss(labels, predictions)}
        both = 0 < labels.sum() < len(labels)
        result["auc"] = roc_auc(labels, predictions) if both else None
        result["positive_rate"] = float(labels.mean()) if len(labels) else None
    else:
        result = {"rmse": rmse(labels, predictions)}
    result["rows"] = int(len(labels))
    return result


def format_scores(scores: dict) -> str:
    """`score`'s result as one line: `auc 0.7312, logloss 0.4721, rows 391`."""
    parts = []
    for key in ("auc", "logloss", "rmse"):
        if key in scores:
            value = scores[key]
            parts.append(f"{key} {'n/a' if value is None else f'{value:.4f}'}")
    parts.append(f"rows {scores['rows']:,}")
    return ", ".join(parts)
