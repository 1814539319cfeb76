import math

import keras
from keras import ops

TASKS = ("binary", "regression")
CALIBRATION_METHODS = ("platt", "isotonic")


def _check_negative_downsampling(task, negative_downsampling):
    if negative_downsampling is None:
        return None
    rate = negative_downsampling
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
        raise ValueError(
            "`negative_downsampling` (the rate at which negatives were kept) must be in (0, 1]. "
            f"Received: negative_downsampling={negative_downsampling!r}"
        )
    if task != "binary":
        raise ValueError(
            f"`negative_downsampling` applies to task='binary' only. Received: task={task!r}"
        )
    return float(rate)


def _finite_floats(calibration, key, what):
    """`calibration[key]`, a non-empty list of finite numbers, as floats."""
    values = calibration.get(key)
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"`calibration` {what}: `{key}` must be a non-empty list of numbers")
    if not all(_is_finite_number(v) for v in values):
        raise ValueError(
            f"`calibration` {what}: `{key}` must hold finite numbers only. Received: {values!r}"
        )
    return [float(v) for v in values]


def _is_finite_number(value):
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def check_calibration(task: str, calibration: dict | None) -> dict | None:
    """`calibration` as plain JSON floats, or a `ValueError` naming what is wrong.

    Args:
        task: str. The head's task; calibration applies to `"binary"` only.
        calibration: dict or None. `{"method": "platt", "a": a, "b": b}` or
            `{"method": "isotonic", "x": [...], "y": [...]}` (knots: `x`
            strictly increasing in [0, 1], `y` non-decreasing in [0, 1]).

    Returns:
        The checked calibration (a new dict) or None.
    """
    if calibration is None:
        return None
    if task != "binary":
        raise ValueError(f"`calibration` applies to task='binary' only. Received: task={task!r}")
    method = calibration.get("method") if isinstance(calibration, dict) else None
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"`calibration` must be a dict with `method` one of {CALIBRATION_METHODS}. "
            f"Received: calibration={calibration!r}"
        )
    if method == "platt":
        a, b = (_finite_floats({k: [calibration.get(k)]}, k, method)[0] for k in ("a", "b"))
        return {"method": method, "a": a, "b": b}
    x = _finite_floats(calibration, "x", method)
    y = _finite_floats(calibration, "y", method)
    if len(x) != len(y):
        raise ValueError(f"`calibration` isotonic: {len(x)} `x` knots but {len(y)} `y` values")
    if any(x1 <= x0 for x0, x1 in zip(x, x[1:], strict=False)):
        raise ValueError("`calibration` isotonic: `x` knots must be strictly increasing")
    if any(y1 < y0 for y0, y1 in zip(y, y[1:], strict=False)):
        raise ValueError("`calibration` isotonic: `y` values must be non-decreasing")
    if not (0.0 <= x[0] and x[-1] <= 1.0 and 0.0 <= y[0] and y[-1] <= 1.0):
        raise ValueError("`calibration` isotonic: knots must lie in [0, 1]")
    return {"method": method, "x": x, "y": y}


def _interpolate(p, x, y):
    """Piecewise-linear through the knots `(x, y)`, constant outside them."""
    flat = ops.reshape(p, (-1,))
    if len(x) == 1:
        return ops.full_like(p, y[0])
    xs, ys = ops.convert_to_tensor(x, "float32"), ops.convert_to_tensor(y, "float32")
    segment = ops.clip(ops.searchsorted(xs, flat, side="right") - 1, 0, len(x) - 2)
    x0, x1 = ops.take(xs, segment), ops.take(xs, segment + 1)
    y0, y1 = ops.take(ys, segment), ops.take(ys, segment + 1)
    t = ops.clip(ops.divide_no_nan(flat - x0, x1 - x0), 0.0, 1.0)
    return ops.reshape(y0 + t * (y1 - y0), ops.shape(p))


@keras.saving.register_keras_serializable(package="tf_fm")
class PredictionHead(keras.layers.Layer):
    """The model's last layer: the logit in, the task's prediction out.

    It is where an `FM` / `DeepFM` model records its task: `task` is part of
    the layer's config (so it survives `.keras` save/load) and the layer's
    input is the model's logit. `tf_fm.models.describe_model` reads both;
    compilation and export use that, never layer names.

    * `"binary"`: sigmoid(logit), the click probability.
    * `"regression"`: the logit itself.

    A binary head can also carry what is learned after training (both in its
    config, so `.keras` files and SavedModel exports apply them;
    `tf_fm.calibration` fits and sets them):

    * `negative_downsampling=w`: the model was trained on data whose
      negatives were kept at rate w; the logit is corrected to the full
      distribution, logit + log(w), i.e. q = p / (p + (1 - p) / w).
    * `calibration`: Platt, sigmoid(a * z + b), or isotonic, the
      piecewise-linear interpolation through knots `(x, y)` of sigmoid(z),
      constant outside them; z is the (corrected) logit.

    Without either, the output is exactly sigmoid(logit). The input stays the
    model's raw logit in every case.

    The output is float32 whatever the dtype policy, so the loss is computed
    stably.

    Args:
        task: str. `"binary"` or `"regression"`.
        calibration: dict or None. `{"method": "platt", "a": a, "b": b}` or
            `{"method": "isotonic", "x": [...], "y": [...]}`. Defaults to None.
        negative_downsampling: float or None. The rate in (0, 1] at which
            training negatives were kept. Defaults to None (no correction).

    Input shape:
        `(batch, 1)`, the logit.

    Output shape:
        `(batch, 1)`.

    Example:

    >>> PredictionHead("binary")(np.zeros((2, 1))).numpy().ravel()
    array([0.5, 0.5], dtype=float32)
    >>> head = PredictionHead("binary", negative_downsampling=0.1)
    >>> head(np.zeros((1, 1))).numpy().ravel()  # 0.5 / (0.5 + 0.5 / 0.1)
    array([0.09090909], dtype=float32)

    References:
        Platt, "Probabilistic outputs for support vector machines", 1999.
        Zadrozny and Elkan, "Transforming classifier scores into accurate
        multiclass probability estimates", KDD 2002 (isotonic).
        He et al., "Practical lessons from predicting clicks on ads at
        Facebook", ADKDD 2014 (negative downsampling).
    """

    def __init__(
        self,
        task: str = "binary",
        calibration: dict | None = None,
        negative_downsampling: float | None = None,
        **kwargs,
    ):
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
        calibration = check_calibration(task, calibration)
        negative_downsampling = _check_negative_downsampling(task, negative_downsampling)
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.task = task
        self.calibration = calibration
        self.negative_downsampling = negative_downsampling

    def set_calibration(
        self, calibration: dict | None = None, negative_downsampling: float | None = None
    ) -> None:
        """Replaces the head's calibration and downsampling correction (checked as in `__init__`).

        A model already traced (compiled, predicted) keeps its traced
        functions: use `tf_fm.calibration.set_calibration(model, ...)`, which
        also resets them.
        """
        calibration = check_calibration(self.task, calibration)
        negative_downsampling = _check_negative_downsampling(self.task, negative_downsampling)
        self.calibration = calibration
        self.negative_downsampling = negative_downsampling

    def call(self, inputs):
        logit = ops.cast(inputs, "float32")
        if self.task != "binary":
            return logit
        if self.negative_downsampling is not None and self.negative_downsampling != 1.0:
            logit = logit + math.log(self.negative_downsampling)
        method = self.calibration["method"] if self.calibration else None
        if method == "platt":
            logit = self.calibration["a"] * logit + self.calibration["b"]
        elif method == "isotonic":
            p = ops.sigmoid(logit)
            return _interpolate(p, self.calibration["x"], self.calibration["y"])
        # keras.activations.sigmoid (not ops.sigmoid) keeps the logit on its
        # output, so binary_crossentropy is computed from the logit, stably.
        return keras.activations.sigmoid(logit)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "task": self.task,
                "calibration": self.calibration,
                "negative_downsampling": self.negative_downsampling,
            }
        )
        return config
