"""Plots of a training run and of a model's predictions, as PNG files or inline figures.

Every plotting function returns a `matplotlib.figure.Figure` built without
pyplot (no global figure registry, no backend switching), so it works headless
and in threads. Returned as the last expression of a Jupyter / Colab cell, the
figure displays inline (it has a `_repr_png_`). With `path`, the figure is also
written to that file: to a temporary name in the same directory first, then
renamed (`os.replace`), so a reader never sees a half-written file.

* `plot_training_curves`: loss and AUC / log loss / RMSE per epoch, training and
  validation, the best validation epoch marked.
* `plot_roc`: ROC curves with their AUC, against the chance diagonal.
* `plot_calibration`: reliability diagram (quantile bins by default) above a
  histogram of the predictions.
* `plot_predicted_vs_actual`: regression predictions against the targets.
* `plot_pair_contributions`: heat map of the mean |contribution| of each pair
  of fields (`tf_fm.explain`).
* `save_plots`: the ones that apply to a run, written into one directory.

Example:

>>> history = model.fit(train, validation_data=valid, epochs=5)
>>> tf_fm.plots.plot_training_curves(history, path="runs/1/training_curves.png")
>>> tf_fm.plots.plot_roc(test_labels, {"FM": p_fm, "DeepFM": p_deepfm})
"""

import io
import json
import os
import pathlib
import uuid
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import figure as mpl_figure
from matplotlib.ticker import MaxNLocator

from tf_fm import metrics

PathLike = str | os.PathLike
# A Keras History, its `.history` dict, or the path of a JSON file of it.
History = object
# One `(n,)` array, or a dict from curve name to one.
Predictions = np.ndarray | Mapping

__all__ = [
    "best_epoch",
    "calibration_bins",
    "plot_calibration",
    "plot_pair_contributions",
    "plot_predicted_vs_actual",
    "plot_roc",
    "plot_training_curves",
    "roc_curve",
    "save_plots",
]

# Per-epoch series drawn by `plot_training_curves`, and which way is better.
CURVE_METRICS = {"loss": "min", "auc": "max", "logloss": "min", "rmse": "min"}
CURVE_TITLES = {"loss": "loss", "auc": "AUC", "logloss": "log loss", "rmse": "RMSE"}
STRATEGIES = ("quantile", "uniform")
TASKS = ("binary", "regression")
DPI = 120
# Points drawn per model in `plot_predicted_vs_actual` (metrics use every row).
MAX_SCATTER_POINTS = 20_000


class Figure(mpl_figure.Figure):
    """A `matplotlib.figure.Figure` that displays itself in Jupyter / Colab.

    IPython renders a plain `Figure` inline only once pyplot's inline backend
    is set up; `_repr_png_` makes a returned figure display without pyplot.
    """

    def _repr_png_(self):
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()


def _new_figure(**kwargs):
    return Figure(layout="constrained", **kwargs)


def _save(figure, path):
    """Writes `figure` to `path` atomically (temporary file in the same directory)."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower().lstrip(".")
    formats = figure.canvas.get_supported_filetypes()
    if suffix not in formats:
        raise ValueError(
            f"`path` must end in an image extension ({', '.join(sorted(formats))}). "
            f"Received: path={str(path)!r}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name beside the target: os.replace is atomic within one filesystem.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as file:
            figure.savefig(file, format=suffix, dpi=DPI)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _finish(figure, path, title):
    if title is not None:
        figure.suptitle(title)
    if path is not None:
        _save(figure, path)
    return figure


# === Input checks ===


def _history_dict(history):
    """`(series, epochs)` from a History, its `.history` dict, or a JSON file of it."""
    epochs = None
    if isinstance(history, (str, os.PathLike)):
        file = pathlib.Path(history)
        if not file.is_file():
            raise ValueError(f"`history` names no file. Received: history={str(history)!r}")
        try:
            history = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"`history` file {str(file)!r} is not JSON: {error}") from None
    elif hasattr(history, "history") and isinstance(history.history, Mapping):
        # keras.callbacks.History: `epoch` holds the 0-based epoch numbers run
        # (they start at `initial_epoch` when training resumed).
        epochs = list(getattr(history, "epoch", None) or []) or None
        history = history.history
    if not isinstance(history, Mapping):
        raise ValueError(
            "`history` must be a keras.callbacks.History, its `.history` dict or the path "
            f"of a JSON file of that dict. Received: {type(history).__name__}"
        )
    if not history or not any(np.size(v) for v in history.values()):
        raise ValueError("`history` is empty: it has no per-epoch values to plot.")
    series = {}
    for name in CURVE_METRICS:
        for key in (name, f"val_{name}"):
            if key not in history:
                continue
            try:
                values = np.asarray(history[key], dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(
                    f"`history['{key}']` must be a list of numbers. Received: {history[key]!r}"
                ) from None
            if len(values):
                series[key] = values
    if not series:
        raise ValueError(
            f"`history` has none of the series {sorted(CURVE_METRICS)} (or their val_ "
            f"versions) to plot. Its keys: {sorted(history)}"
        )
    lengths = {key: len(values) for key, values in series.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"`history` series differ in length (validation on some epochs only?): {lengths}. "
            "Plot a history with one value per epoch in every series."
        )
    n = next(iter(lengths.values()))
    if epochs is None or len(epochs) != n:
        epochs = range(n)
    return series, np.asarray(epochs, dtype=np.int64) + 1  # 1-based epochs


def _labels_array(labels, binary, what):
    try:
        array = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`labels` must be numbers. Received: {type(labels).__name__}") from None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(
            f"`labels` must be a non-empty 1-D array. Received shape: {np.shape(labels)}"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"`labels` has {int((~np.isfinite(array)).sum())} non-finite value(s).")
    if binary:
        bad = ~np.isin(array, (0.0, 1.0))
        if bad.any():
            found = np.unique(array[bad])[:5].tolist()
            raise ValueError(f"`labels` must be 0 or 1 for {what}. Received values: {found}")
    return array


def _predictions_dict(predictions, n, probabilities):
    """`{name: (n,) array}`; a single array gets the name `""`."""
    if isinstance(predictions, Mapping):
        if not predictions:
            raise ValueError("`predictions` is an empty dict: give at least one model's values.")
        items = [(str(k), v) for k, v in predictions.items()]
    else:
        items = [("", predictions)]
    out = {}
    for name, values in items:
        where = f"`predictions['{name}']`" if name else "`predictions`"
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where} must be numbers. Received: {type(values).__name__}"
            ) from None
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(f"{where} must be 1-D (or (n, 1)). Received shape: {array.shape}")
        if len(array) != n:
            raise ValueError(f"{where} has {len(array)} values but `labels` has {n}.")
        if not np.isfinite(array).all():
            raise ValueError(f"{where} has {int((~np.isfinite(array)).sum())} non-finite values.")
        if probabilities and ((array < 0).any() or (array > 1).any()):
            raise ValueError(
                f"{where} must be probabilities in [0, 1]. Received range: "
                f"[{array.min():.4g}, {array.max():.4g}]"
            )
        out[name] = array
    return out


def _check_both_classes(labels, what):
    if labels.min() == labels.max():
        raise ValueError(
            f"`labels` must contain both classes (0 and 1) for {what}. "
            f"Received only {int(labels[0])}s."
        )


# === Computations ===


def best_epoch(history: "History", metric: str = "loss") -> tuple[int, float] | None:
    """The epoch with the best validation value of a metric.

    Best is the largest value for `"auc"` and the smallest for `"loss"`,
    `"logloss"` and `"rmse"`. NaN epochs (a diverged run) are skipped.

    Args:
        history: `keras.callbacks.History`, its `.history` dict, or the path
            of a JSON file of that dict.
        metric: str. One of `"loss"`, `"auc"`, `"logloss"`, `"rmse"`.
            Defaults to `"loss"`.

    Returns:
        `(epoch, value)`: the 1-based epoch and its `val_<metric>` value, or
        None when every value is NaN.

    Example:

    >>> best_epoch({"val_auc": [0.70, 0.74, 0.73]}, "auc")
    (2, 0.74)
    """
    if metric not in CURVE_METRICS:
        raise ValueError(
            f"`metric` must be one of {tuple(CURVE_METRICS)}. Received: metric={metric!r}"
        )
    series, epochs = _history_dict(history)
    key = f"val_{metric}"
    if key not in series:
        raise ValueError(
            f"`history` has no '{key}' series (fit with validation data). "
            f"Its series: {sorted(series)}"
        )
    return _best(series[key], epochs, CURVE_METRICS[metric])


def _best(values, epochs, mode):
    if np.isnan(values).all():
        return None
    index = int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))
    return int(epochs[index]), float(values[index])


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold.

    Thresholds run from the highest score down; tied scores form one step (a
    diagonal segment), so the trapezoidal area under the points equals
    `tf_fm.metrics.roc_auc`.

    Args:
        labels: `(n,)` 0/1 labels, both classes present.
        scores: `(n,)` scores or probabilities (higher means positive).

    Returns:
        `(fpr, tpr)`: two float64 arrays starting at 0 and ending at 1.

    Example:

    >>> fpr, tpr = roc_curve([0, 1, 1, 0], [0.1, 0.8, 0.4, 0.4])
    >>> np.trapezoid(tpr, fpr)  # 0.875 = tf_fm.metrics.roc_auc(...)
    """
    labels = _labels_array(labels, binary=True, what="a ROC curve")
    _check_both_classes(labels, "a ROC curve")
    if isinstance(scores, Mapping):
        raise ValueError("`scores` must be one array here (one model's scores), not a dict.")
    scores = _predictions_dict(scores, len(labels), probabilities=False)[""]
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # Last index of each run of equal scores: one point per threshold.
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    true_positives = np.cumsum(labels)[last]
    false_positives = last + 1 - true_positives
    tpr = np.r_[0.0, true_positives / true_positives[-1]]
    fpr = np.r_[0.0, false_positives / false_positives[-1]]
    return fpr, tpr


def calibration_bins(
    labels: np.ndarray, predictions: np.ndarray, n_bins: int = 10, strategy: str = "quantile"
) -> dict:
    """Mean predicted probability and observed positive rate per bin of predictions.

    Bin edges: `"quantile"` puts about the same number of predictions in each
    bin (edges at the quantiles of `predictions`; equal edges, from many tied
    predictions, are merged, so there can be fewer bins), which suits CTR
    predictions bunched at low values; `"uniform"` splits [0, 1] into
    `n_bins` equal widths. Bin i holds `edges[i] <= p < edges[i + 1]`, the last
    bin also its upper edge. Bins with no prediction are left out.

    Args:
        labels: `(n,)` 0/1 labels.
        predictions: `(n,)` probabilities in [0, 1].
        n_bins: int. Number of bins (at most). Defaults to 10.
        strategy: str. `"quantile"` or `"uniform"`. Defaults to `"quantile"`.

    Returns:
        `(mean_predicted, observed_rate, counts)`: per non-empty bin, in
        increasing order of predictions, the mean prediction, the mean label
        and the number of rows.

    Example:

    >>> calibration_bins([0, 0, 1, 1], [0.1, 0.2, 0.6, 0.9], n_bins=2, strategy="uniform")
    (array([0.15, 0.75]), array([0., 1.]), array([2, 2]))
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={strategy!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins <= 0:
        raise ValueError(f"`n_bins` must be a positive integer. Received: n_bins={n_bins!r}")
    labels = _labels_array(labels, binary=True, what="a calibration plot")
    if isinstance(predictions, Mapping):
        raise ValueError("`predictions` must be one array here (one model's probabilities).")
    p = _predictions_dict(predictions, len(labels), probabilities=True)[""]
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    num_bins = max(len(edges) - 1, 1)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    sum_predicted = np.bincount(index, weights=p, minlength=num_bins)
    sum_labels = np.bincount(index, weights=labels, minlength=num_bins)
    kept = counts > 0
    counts = counts[kept]
    return sum_predicted[kept] / counts, sum_labels[kept] / counts, counts


# === Figures ===


def plot_training_curves(
    history: "History", path: PathLike | None = None, title: str | None = None
) -> "Figure":
    """Per-epoch training and validation curves of a `model.fit` run.

    One panel for the loss and one for each of `auc`, `logloss` and `rmse`
    that the history has; in each, the training series (`"auc"`) and the
    validation series (`"val_auc"`) against the epoch (1-based). The best
    validation epoch (largest AUC, smallest loss / log loss / RMSE) is marked
    with a dotted vertical line and a point, its value in the legend.

    Args:
        history: `keras.callbacks.History` (its epoch numbers are used, so a
            resumed run starts at `initial_epoch + 1`), its `.history` dict,
            or the path of a JSON file of that dict. Every plotted series
            needs one value per epoch.
        path: str or path-like, or None. Also write the figure there (PNG for
            a `.png` name), creating parent directories. Defaults to None.
        title: str or None. Figure title. Defaults to None.

    Returns:
        The `matplotlib.figure.Figure`.

    Example:

    >>> history = model.fit(train, validation_data=valid, epochs=5)
    >>> plot_training_curves(history, path="runs/1/training_curves.png")
    """
    series, epochs = _history_dict(history)
    names = [m for m in CURVE_METRICS if m in series or f"val_{m}" in series]
    figure = _new_figure(figsize=(4.2 * len(names), 3.4))
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        if name in series:
            ax.plot(epochs, series[name], marker="o", markersize=3, label="train")
        val = series.get(f"val_{name}")
        if val is not None:
            ax.plot(epochs, val, marker="o", markersize=3, label="validation")
            best = _best(val, epochs, CURVE_METRICS[name])
            if best is not None:
                epoch, value = best
                ax.axvline(epoch, color="0.4", linestyle=":", linewidth=1)
                ax.plot(
                    [epoch],
                    [value],
                    marker="*",
                    markersize=12,
                    color="tab:red",
                    linestyle="none",
                    label=f"best: epoch {epoch} ({value:.4f})",
                    gid="best_epoch",
                )
        ax.set_title(CURVE_TITLES[name])
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _finish(figure, path, title)


def plot_roc(
    labels: np.ndarray,
    predictions: "Predictions",
    path: PathLike | None = None,
    title: str | None = None,
) -> "Figure":
    """ROC curves (true vs false positive rate) of one or more models, with their AUC.

    Args:
        labels: `(n,)` 0/1 labels, both classes present.
        predictions: `(n,)` scores or probabilities, or a dict name -> `(n,)`
            array for one curve per model.
        path: str or path-like, or None. Also write the figure there.
            Defaults to None.
        title: str or None. Figure title. Defaults to None.

    Returns:
        The `matplotlib.figure.Figure`; the legend gives each curve's AUC
        (`tf_fm.metrics.roc_auc`), and the chance diagonal is drawn.

    Example:

    >>> plot_roc(test.labels, {"FM": p_fm, "DeepFM": p_deepfm}, path="roc.png")
    """
    labels = _labels_array(labels, binary=True, what="a ROC curve")
    _check_both_classes(labels, "a ROC curve")
    curves = _predictions_dict(predictions, len(labels), probabilities=False)
    figure = _new_figure(figsize=(5.0, 4.6))
    ax = figure.subplots()
    for name, scores in curves.items():
        fpr, tpr = roc_curve(labels, scores)
        auc = metrics.roc_auc(labels, scores)
        label = f"{name} (AUC {auc:.4f})" if name else f"AUC {auc:.4f}"
        ax.plot(fpr, tpr, linewidth=1.5, label=label, gid=f"roc:{name}")
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="chance (AUC 0.5)")
    ax.set(xlim=(0, 1), ylim=(0, 1.005), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _finish(figure, path, title)


def plot_calibration(
    labels: np.ndarray,
    predictions: "Predictions",
    path: PathLike | None = None,
    n_bins: int = 10,
    strategy: str = "quantile",
    title: str | None = None,
) -> "Figure":
    """Reliability diagram and histogram of predicted probabilities.

    Top panel: per bin of predictions (`calibration_bins`), the observed
    positive rate against the mean predicted probability, with the diagonal
    of perfect calibration; the legend gives each model's expected
    calibration error (ECE: the row-weighted mean of |observed - predicted|
    over the bins). The axes are zoomed to the range of the bins (CTR
    predictions rarely go near 1). Bottom panel: histogram of the
    predictions.

    Args:
        labels: `(n,)` 0/1 labels.
        predictions: `(n,)` probabilities in [0, 1], or a dict name -> `(n,)`
            array for one curve per model.
        path: str or path-like, or None. Also write the figure there.
            Defaults to None.
        n_bins: int. Bins per model (at most). Defaults to 10.
        strategy: str. `"quantile"` (equal counts) or `"uniform"` (equal
            widths on [0, 1]). Defaults to `"quantile"`.
        title: str or None. Figure title. Defaults to None.

    Returns:
        The `matplotlib.figure.Figure`.

    Example:

    >>> plot_calibration(test.labels, {"FM": p_fm}, path="calibration.png")
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={strategy!r}")
    labels = _labels_array(labels, binary=True, what="a calibration plot")
    curves = _predictions_dict(predictions, len(labels), probabilities=True)
    figure = _new_figure(figsize=(5.2, 6.0))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    bins = {name: calibration_bins(labels, p, n_bins, strategy) for name, p in curves.items()}
    upper = max(max(curves[name].max(), bins[name][1].max()) for name in curves)
    limit = min(1.0, max(0.05, 1.05 * upper))
    for name, p in curves.items():
        mean_predicted, observed, counts = bins[name]
        ece = float(np.sum(counts * np.abs(observed - mean_predicted)) / counts.sum())
        label = f"{name} (ECE {ece:.4f})" if name else f"ECE {ece:.4f}"
        (line,) = top.plot(
            mean_predicted, observed, marker="o", markersize=4, label=label, gid=f"calib:{name}"
        )
        bottom.hist(p, bins=40, range=(0, limit), histtype="step", color=line.get_color())
    top.plot([0, limit], [0, limit], color="0.5", linestyle="--", linewidth=1, label="perfect")
    top.set(xlim=(0, limit), ylim=(0, limit), ylabel="observed positive rate")
    top.set_title(f"reliability ({strategy} bins)", fontsize="medium")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    bottom.set(xlabel="predicted probability", ylabel="rows")
    bottom.grid(alpha=0.3)
    return _finish(figure, path, title)


def plot_predicted_vs_actual(
    labels: np.ndarray,
    predictions: "Predictions",
    path: PathLike | None = None,
    title: str | None = None,
) -> "Figure":
    """Regression predictions against the targets, with the identity line.

    At most 20,000 points per model are drawn (an even subsample); the RMSE
    in the legend uses every row.

    Args:
        labels: `(n,)` real targets.
        predictions: `(n,)` predictions, or a dict name -> `(n,)` array.
        path: str or path-like, or None. Also write the figure there.
            Defaults to None.
        title: str or None. Figure title. Defaults to None.

    Returns:
        The `matplotlib.figure.Figure`.

    Example:

    >>> plot_predicted_vs_actual(test.labels, model.predict(test.features))
    """
    labels = _labels_array(labels, binary=False, what="")
    curves = _predictions_dict(predictions, len(labels), probabilities=False)
    figure = _new_figure(figsize=(5.0, 4.8))
    ax = figure.subplots()
    step = max(1, len(labels) // MAX_SCATTER_POINTS)
    lo, hi = labels.min(), labels.max()
    for name, values in curves.items():
        error = metrics.rmse(labels, values)
        label = f"{name} (RMSE {error:.4f})" if name else f"RMSE {error:.4f}"
        ax.scatter(labels[::step], values[::step], s=4, alpha=0.3, label=label, rasterized=True)
        lo, hi = min(lo, values.min()), max(hi, values.max())
    ax.plot([lo, hi], [lo, hi], color="0.3", linestyle="--", linewidth=1, label="y = x")
    ax.set(xlabel="actual", ylabel="predicted")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small", markerscale=3)
    return _finish(figure, path, title)


def plot_pair_contributions(
    pairs: np.ndarray,
    field_names: Sequence[str],
    path: PathLike | None = None,
    title: str | None = None,
) -> "Figure":
    """Heat map of the mean |contribution| of each pair of fields to the logit.

    The cells above the diagonal are the field pairs (f, g), f < g; the
    diagonal holds the pairs of features inside one field (multi-valued
    fields); below the diagonal is left blank. The values come from
    `tf_fm.explain` (`Explanation.pairs` or `Explanation.mean_abs_pairs()`).

    Args:
        pairs: `(n, F, F)` per-row pair contributions (their mean absolute
            value is drawn), or an `(F, F)` array drawn as its absolute value.
        field_names: the F field names, in the order of the field axes.
        path: str or path-like, or None. Also write the figure there.
            Defaults to None.
        title: str or None. Figure title. Defaults to None.

    Returns:
        The `matplotlib.figure.Figure`.

    Example:

    >>> explanation = tf_fm.explain(model, inputs)
    >>> plot_pair_contributions(explanation.pairs, explanation.field_names, path="pairs.png")
    """
    values = np.abs(np.asarray(pairs, dtype=np.float64))
    if values.ndim == 3:
        values = values.mean(axis=0)
    names = [str(n) for n in field_names]
    if values.ndim != 2 or values.shape != (len(names), len(names)):
        raise ValueError(
            f"`pairs` must be (n, F, F) or (F, F) with F = len(field_names) = {len(names)}. "
            f"Received shape: {np.shape(pairs)}"
        )
    if not np.isfinite(values).all():
        raise ValueError(f"`pairs` has {int((~np.isfinite(values)).sum())} non-finite values.")
    shown = np.where(np.triu(np.ones(values.shape, dtype=bool)), values, np.nan)
    size = min(14.0, 2.5 + 0.45 * len(names))
    figure = _new_figure(figsize=(size + 1.2, size))
    ax = figure.subplots()
    image = ax.imshow(shown, cmap="viridis", vmin=0.0, interpolation="nearest")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=90, fontsize="small")
    ax.set_yticks(ticks, names, fontsize="small")
    figure.colorbar(image, ax=ax, label="mean |contribution| to the logit")
    return _finish(figure, path, title)


def save_plots(
    out_dir: PathLike,
    history: "History | None" = None,
    labels: np.ndarray | None = None,
    predictions: "Predictions | None" = None,
    task: str = "binary",
) -> dict[str, pathlib.Path]:
    """Writes the plots that apply to a run into `out_dir`, as PNG files.

    * `training_curves.png` when `history` is given;
    * with `labels` and `predictions`: `roc.png` and `calibration.png`
      (`task="binary"`) or `predicted_vs_actual.png` (`"regression"`).

    Args:
        out_dir: str or path-like. Directory, created if missing.
        history: `keras.callbacks.History`, its `.history` dict, a JSON file
            of it, or None. Defaults to None.
        labels: `(n,)` labels of the evaluation rows, or None. Defaults to
            None.
        predictions: `(n,)` array or dict name -> array, or None. Defaults to
            None.
        task: str. `"binary"` or `"regression"`. Defaults to `"binary"`.

    Returns:
        dict from plot name (`"training_curves"`, `"roc"`, `"calibration"`,
        `"predicted_vs_actual"`) to the `pathlib.Path` written.

    Example:

    >>> save_plots("runs/1", history=history, labels=test.labels, predictions=p)
    {'training_curves': PosixPath('runs/1/training_curves.png'), 'roc': ..., ...}
    """
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
    if (labels is None) != (predictions is None):
        missing = "labels" if labels is None else "predictions"
        raise ValueError(f"`labels` and `predictions` go together: `{missing}` is None.")
    if history is None and labels is None:
        raise ValueError("Nothing to plot: give `history`, or `labels` and `predictions`.")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    if history is not None:
        written["training_curves"] = _save(
            plot_training_curves(history), out_dir / "training_curves.png"
        )
    if labels is not None:
        if task == "binary":
            written["roc"] = _save(plot_roc(labels, predictions), out_dir / "roc.png")
            written["calibration"] = _save(
                plot_calibration(labels, predictions), out_dir / "calibration.png"
            )
        else:
            written["predicted_vs_actual"] = _save(
                plot_predicted_vs_actual(labels, predictions),
                out_dir / "predicted_vs_actual.png",
            )
    return written
