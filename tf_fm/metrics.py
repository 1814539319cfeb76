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


ECE_BINS = 10
BIN_STRATEGIES = ("uniform", "quantile")


def _probability_rows(labels, probabilities):
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if labels.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {labels.shape} vs {p.shape}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probabilities must lie in [0, 1] (a NaN or a value outside it given)")
    if not np.all((labels >= 0) & (labels <= 1)):
        raise ValueError("labels must lie in [0, 1] for a reliability curve")
    return labels, p


def _bin_edges(p, bins, strategy):
    if strategy not in BIN_STRATEGIES:
        raise ValueError(
            f"`strategy` must be one of {BIN_STRATEGIES}. Received: strategy={strategy!r}"
        )
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins <= 0:
        raise ValueError(f"`bins` must be a positive integer. Received: bins={bins!r}")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, bins + 1)
    return np.unique(np.quantile(p, np.linspace(0.0, 1.0, bins + 1)))


def reliability_curve(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS, strategy: str = "uniform"
) -> list[dict]:
    """Per bin of predictions: its edges, mean prediction, observed positive rate and rows.

    Bin i holds `edges[i] <= p < edges[i + 1]`, the last bin also its upper
    edge. `"uniform"`: `bins` equal widths on [0, 1]; `"quantile"` (equal
    mass): edges at the quantiles of the predictions, equal edges (many
    tied predictions) merged, so there can be fewer bins. Empty bins are
    left out.

    Args:
        labels: `(n,)` labels in [0, 1].
        probabilities: `(n,)` predicted probabilities.
        bins: int. Number of bins (at most). Defaults to 10.
        strategy: str. `"uniform"` or `"quantile"`. Defaults to `"uniform"`.

    Returns:
        A list of `{"lower", "upper", "mean_prediction", "observed_rate",
        "count"}`, in increasing order of predictions.

    Example:

    >>> curve = reliability_curve([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9], bins=2)
    >>> [(b["mean_prediction"], b["observed_rate"], b["count"]) for b in curve]
    [(0.2, 0.0, 2), (0.75, 1.0, 2)]
    """
    labels, p = _probability_rows(labels, probabilities)
    edges = _bin_edges(p, bins, strategy)
    num_bins = max(len(edges) - 1, 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    sum_p = np.bincount(index, weights=p, minlength=num_bins)
    sum_labels = np.bincount(index, weights=labels, minlength=num_bins)
    upper = edges[1:] if len(edges) > 1 else edges
    return [
        {
            "lower": float(edges[i]),
            "upper": float(upper[i]),
            "mean_prediction": float(sum_p[i] / counts[i]),
            "observed_rate": float(sum_labels[i] / counts[i]),
            "count": int(counts[i]),
        }
        for i in np.flatnonzero(counts)
    ]


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS, strategy: str = "uniform"
) -> float | None:
    """ECE: sum over bins of (rows / n) * |observed rate - mean prediction|.

    Bins as in `reliability_curve`: 10 equal widths on [0, 1] by default
    (Naeini et al., AAAI 2015; Guo et al., ICML 2017), or `"quantile"` for
    equal mass. None when there are no rows.
    """
    curve = reliability_curve(labels, probabilities, bins, strategy)
    total = sum(b["count"] for b in curve)
    if not total:
        return None
    gaps = sum(b["count"] * abs(b["observed_rate"] - b["mean_prediction"]) for b in curve)
    return float(gaps / total)


def score(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict:
    """The exact metrics of a run's predictions, as plain floats.

    Args:
        task: `"binary"` (AUC, log loss, positive rate, calibration) or
            `"regression"` (RMSE).
        labels: `(n,)` labels.
        predictions: `(n,)` probabilities or predictions.

    Returns:
        dict with `rows` and, binary: `auc` (None when one class only),
        `logloss`, `positive_rate`, `mean_prediction`, `ece` (10 equal-width
        bins), `ece_equal_mass` (10 quantile bins) and `reliability` (the
        equal-width `reliability_curve`); regression: `rmse`.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    if task == "binary":
        result = {"logloss": log_loss(labels, predictions)}
        both = 0 < labels.sum() < len(labels)
        result["auc"] = roc_auc(labels, predictions) if both else None
        result["positive_rate"] = float(labels.mean()) if len(labels) else None
        result.update(_calibration_scores(labels, predictions))
    else:
        result = {"rmse": rmse(labels, predictions)}
    result["rows"] = int(len(labels))
    return result


def _calibration_scores(labels, probabilities):
    """Calibration of binary predictions: mean prediction, ECE (two binnings), reliability."""
    if not len(labels):
        return {"mean_prediction": None, "ece": None, "ece_equal_mass": None, "reliability": []}
    return {
        "mean_prediction": float(probabilities.mean()),
        "ece": expected_calibration_error(labels, probabilities),
        "ece_equal_mass": expected_calibration_error(labels, probabilities, strategy="quantile"),
        "reliability": reliability_curve(labels, probabilities),
    }


def format_scores(scores: dict) -> str:
    """`score`'s result as one line: `auc 0.7312, logloss 0.4721, ece 0.0123, rows 391`."""
    parts = []
    for key in ("auc", "logloss", "ece", "rmse"):
        if key in scores:
            value = scores[key]
            parts.append(f"{key} {'n/a' if value is None else f'{value:.4f}'}")
    parts.append(f"rows {scores['rows']:,}")
    return ", ".join(parts)
