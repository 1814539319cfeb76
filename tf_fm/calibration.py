"""Recalibration of a binary model, fitted on validation data and carried inside the model.

A click model's probabilities can be well ordered (high AUC) and still
biased: it was trained on negatively downsampled data, or it is over- or
under-confident. Both are fixed after training by a function of the logit
alone, which this module fits and stores in the model's `PredictionHead`
(`tf_fm.layers.PredictionHead`: its config), so `model.keras`, its
SavedModel export and TF Serving return the calibrated probability:

* negative-downsampling correction: negatives kept at rate w during
  training, so the model's p is the downsampled distribution's; the full
  distribution's is q = p / (p + (1 - p) / w), logit(q) = logit(p) + log(w);
* Platt scaling: sigmoid(a * z + b), (a, b) the logistic regression of the
  labels on the (corrected) logit z, with Platt's smoothed targets
  (N+ + 1) / (N+ + 2) and 1 / (N- + 2), so the fit stays finite on
  separable data;
* isotonic regression: the non-decreasing step function of sigmoid(z)
  closest to the labels (pool adjacent violators), applied as centred
  isotonic regression (Oron and Flournoy 2017): the piecewise-linear
  interpolation through one knot per step, at the step's mean
  probability, constant outside the first and last. Unlike interpolating
  through the ends of the steps (scikit-learn's `IsotonicRegression`), it
  has no near-vertical ramps between adjacent steps, where float rounding
  in the logit (1e-7) would move a probability by 1e-4; and it is strictly
  increasing between steps, so it keeps more of the model's ranking. It
  can return exactly 0 or 1 where a step of the validation data had one
  class.

Example:

>>> model = tf_fm.FM(fields)
>>> model.fit(train_ds, epochs=3)
>>> tf_fm.calibration.calibrate(model, valid_ds, "platt")
{'method': 'platt', 'a': 0.93, 'b': -0.04}
>>> model.save("model.keras")   # predicts calibrated probabilities

References:
    Platt, "Probabilistic outputs for support vector machines", 1999.
    Zadrozny and Elkan, KDD 2002 (isotonic calibration).
    Oron and Flournoy, "Centered isotonic regression: point and interval
    estimation for dose-response studies", Statistics in Biopharmaceutical
    Research 9(3), 2017.
    He et al., "Practical lessons from predicting clicks on ads at
    Facebook", ADKDD 2014 (negative downsampling and its correction).
"""

import math

import keras
import numpy as np

from tf_fm.layers.prediction_head import check_calibration
from tf_fm.models import describe_model

METHODS = ("none", "platt", "isotonic")


def _rows(values, what):
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(values):
        raise ValueError(f"{what}: no rows to fit a calibration on")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: {int(np.sum(~np.isfinite(values)))} non-finite value(s)")
    return values


def _labels(labels, n):
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"labels and predictions differ in length: {len(labels)} vs {n}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("calibration needs 0/1 labels (task='binary')")
    return labels


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function in float64, stable for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


# === Platt ===


def _platt_loss(a, b, z, t):
    s = a * z + b
    # -[t log sigmoid(s) + (1 - t) log(1 - sigmoid(s))], stably.
    return float(np.sum(np.logaddexp(0.0, s) - t * s))


def fit_platt(logits: np.ndarray, labels: np.ndarray, max_steps: int = 100) -> dict:
    """Platt scaling: the (a, b) of sigmoid(a * z + b) that maximise the likelihood.

    Newton's method with step halving on the smoothed targets (Platt 1999):
    positives count as (N+ + 1) / (N+ + 2), negatives as 1 / (N- + 2).

    Args:
        logits: `(n,)` logits z (already corrected for negative downsampling).
        labels: `(n,)` 0/1 labels.
        max_steps: int. Most Newton steps. Defaults to 100.

    Returns:
        `{"method": "platt", "a": a, "b": b}`.
    """
    z = _rows(logits, "fit_platt logits")
    y = _labels(labels, len(z))
    n_pos = y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (len(y) - n_pos + 2))
    a, b = 0.0, math.log((len(y) - n_pos + 1) / (n_pos + 1))
    loss = _platt_loss(a, b, z, t)
    for _ in range(max_steps):
        p = sigmoid(a * z + b)
        gradient = np.array([np.sum((p - t) * z), np.sum(p - t)])
        h = p * (1 - p)
        hessian = np.array([[np.sum(h * z * z), np.sum(h * z)], [np.sum(h * z), np.sum(h)]])
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        scale = 1.0
        while scale > 1e-10:
            new_loss = _platt_loss(a - scale * step[0], b - scale * step[1], z, t)
            if new_loss <= loss:
                break
            scale /= 2
        a, b = a - scale * step[0], b - scale * step[1]
        converged = loss - new_loss <= 1e-12 * max(1.0, abs(loss))
        loss = min(loss, new_loss)
        if converged:
            break
    return {"method": "platt", "a": float(a), "b": float(b)}


# === Isotonic ===


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to `values` in weighted least squares.

    Pool adjacent violators in one pass: a stack of blocks (weighted mean,
    weight, length), merging the top two while they are out of order.

    Args:
        values: `(n,)` values, in the order the result must increase in.
        weights: `(n,)` positive weights, or None (all 1).

    Returns:
        `(n,)` float64 fitted values, non-decreasing.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, np.float64)
    means, totals, lengths = [], [], []
    for value, weight in zip(values, weights, strict=True):
        means.append(value)
        totals.append(weight)
        lengths.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            weight = totals[-2] + totals[-1]
            mean = (means[-2] * totals[-2] + means[-1] * totals[-1]) / weight
            length = lengths[-2] + lengths[-1]
            del means[-1], totals[-1], lengths[-1]
            means[-1], totals[-1], lengths[-1] = mean, weight, length
    return np.repeat(means, lengths)


def fit_isotonic(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Isotonic calibration: knots of the monotone fit of the labels on the probabilities.

    Equal probabilities are pooled first (one point, their mean label and
    count); pool adjacent violators then fits the non-decreasing steps, and
    each step gives one knot: its count-weighted mean probability and its
    value (centred isotonic regression).

    Args:
        probabilities: `(n,)` probabilities (already corrected for negative
            downsampling).
        labels: `(n,)` 0/1 labels.

    Returns:
        `{"method": "isotonic", "x": [...], "y": [...]}`.
    """
    p = _rows(probabilities, "fit_isotonic probabilities")
    y = _labels(labels, len(p))
    if p.min() < 0 or p.max() > 1:
        raise ValueError("fit_isotonic: probabilities must lie in [0, 1]")
    x, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y) / counts
    fitted = pool_adjacent_violators(means, counts)
    # One knot per step: its count-weighted mean probability and its value.
    step = np.cumsum(np.r_[True, fitted[1:] != fitted[:-1]]) - 1
    centres = np.bincount(step, weights=x * counts) / np.bincount(step, weights=counts)
    values = fitted[np.r_[True, fitted[1:] != fitted[:-1]]]
    return {"method": "isotonic", "x": centres.tolist(), "y": values.tolist()}


# === Applying ===


def correct_downsampling(logits: np.ndarray, negative_downsampling: float | None) -> np.ndarray:
    """logit(q) = logit(p) + log(w): a downsampled model's logit on the full distribution."""
    logits = np.asarray(logits, dtype=np.float64)
    if negative_downsampling is None:
        return logits
    return logits + math.log(negative_downsampling)


def apply_calibration(
    calibration: dict | None, logits: np.ndarray, negative_downsampling: float | None = None
) -> np.ndarray:
    """What a `PredictionHead` with this calibration outputs, in numpy float64.

    Args:
        calibration: dict or None (see `tf_fm.layers.PredictionHead`).
        logits: the model's raw logits (before the downsampling correction).
        negative_downsampling: float or None. The rate negatives were kept at.

    Returns:
        The calibrated probabilities, shaped as `logits`.
    """
    calibration = check_calibration("binary", calibration)
    z = correct_downsampling(logits, negative_downsampling)
    if calibration is None:
        return sigmoid(z)
    if calibration["method"] == "platt":
        return sigmoid(calibration["a"] * z + calibration["b"])
    return np.interp(sigmoid(z), calibration["x"], calibration["y"])


def fit_calibration(
    method: str,
    logits: np.ndarray,
    labels: np.ndarray,
    negative_downsampling: float | None = None,
) -> dict | None:
    """Fits `method` (`"none"`, `"platt"`, `"isotonic"`) on corrected validation logits."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    if method == "none":
        return None
    z = correct_downsampling(logits, negative_downsampling)
    if method == "platt":
        return fit_platt(z, labels)
    return fit_isotonic(sigmoid(z), labels)


# === Models ===


def set_calibration(
    model: keras.Model, calibration: dict | None = None, negative_downsampling: float | None = None
) -> keras.Model:
    """Sets the calibration and downsampling correction of `model`'s `PredictionHead`, in place.

    No weight changes; the model's traced train / test / predict functions
    are dropped so the next call traces the new head. `set_calibration(model)`
    removes both (e.g. before training the model further).

    Args:
        model: a model built by `tf_fm.FM`, `tf_fm.DeepFM`, ... (binary).
        calibration: dict or None, as `fit_calibration` returns it.
        negative_downsampling: float or None. The rate negatives were kept at.

    Returns:
        `model`.
    """
    describe_model(model)  # a tf_fm model, ending in its PredictionHead
    model.layers[-1].set_calibration(calibration, negative_downsampling)
    model.train_function = model.test_function = model.predict_function = None
    return model


def model_logits(model: keras.Model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """The raw logits (the `PredictionHead`'s input) and labels over `(features, label)` batches."""
    info = describe_model(model)
    logit_model = keras.Model(model.inputs, info.logit)
    logits, labels = [], []
    for features, label in dataset:
        logits.append(np.asarray(logit_model.predict_on_batch(features)).reshape(-1))
        labels.append(np.asarray(label).reshape(-1))
    if not logits:
        raise ValueError("calibration: the dataset has no rows")
    return np.concatenate(logits), np.concatenate(labels)


def calibrate(
    model: keras.Model, dataset, method: str, negative_downsampling: float | None = None
) -> dict | None:
    """Fits `method` on `dataset` and sets it, with the correction, in `model`'s head.

    Args:
        model: a trained binary `tf_fm` model. Its current calibration is
            ignored: the fit reads the raw logits.
        dataset: `(features, label)` batches of validation data from the
            full (not downsampled) distribution.
        method: `"none"`, `"platt"` or `"isotonic"`.
        negative_downsampling: float or None. The rate the training
            negatives were kept at; the fit sees the corrected logits.

    Returns:
        The fitted calibration (None for `"none"`).
    """
    if describe_model(model).task != "binary":
        raise ValueError("calibration applies to binary models only (task='regression' given)")
    calibration = None
    if method != "none":
        logits, labels = model_logits(model, dataset)
        calibration = fit_calibration(method, logits, labels, negative_downsampling)
    set_calibration(model, calibration, negative_downsampling)
    return calibration
