"""Functional FM and DeepFM builders, in the style of `keras.applications`."""

import dataclasses
from collections.abc import Sequence

import keras

from tf_fm.features import Feature, field_config, weights_input_name
from tf_fm.layers import FieldEmbedding, FMInteraction, GlobalBias, PredictionHead
from tf_fm.metrics import LogLoss
from tf_fm.optimizers import LazyAdam
from tf_fm.schema import FeatureSchema
from tf_fm.tables import is_embedding_table

TASKS = ("binary", "regression")


def _check_task(task):
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")


Fields = FeatureSchema | Sequence[Feature | dict]


def _fields_of(fields):
    """The field dicts of a schema (adapted) or of a list of features / field dicts."""
    if isinstance(fields, FeatureSchema):
        return fields.fields()
    if isinstance(fields, (str, bytes)) or not isinstance(fields, Sequence):
        raise TypeError(
            "`fields` must be a FeatureSchema or a list of features / field dicts. "
            f"Received: {type(fields).__name__}"
        )
    return [field_config(f) for f in fields]


def model_inputs(fields: Fields) -> dict:
    """One named `keras.Input` per model input of `fields`, keyed by name.

    Categorical fields: `(batch,)` int64; numeric: `(batch,)` float32;
    multi-valued: `(batch, max_length)` int64 ids, and `(batch, max_length)`
    float32 `"<name>_weights"` when weighted.
    """
    inputs = {}
    for field in _fields_of(fields):
        name = field["name"]
        if field["kind"] == "categorical":
            inputs[name] = keras.Input(shape=(), dtype="int64", name=name)
        elif field["kind"] == "numeric":
            inputs[name] = keras.Input(shape=(), dtype="float32", name=name)
        else:
            length = field["max_length"]
            inputs[name] = keras.Input(shape=(length,), dtype="int64", name=name)
            if field["weighted"]:
                weights = weights_input_name(name)
                inputs[weights] = keras.Input(shape=(length,), dtype="float32", name=weights)
    return inputs


def _output_layer(task):
    # The output's name is the serving signature's output name.
    return PredictionHead(task, name="probability" if task == "binary" else "prediction")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What compilation, export and the optimizers need to know of a tf_fm model.

    Attributes:
        task: `"binary"` or `"regression"` (the `PredictionHead`'s config).
        logit: `keras.KerasTensor`, the input of the `PredictionHead`:
            `keras.Model(model.input, info.logit)` computes the logit.
        output: `keras.KerasTensor`, the model's output.
        tables: list of the embedding-table variables (`tf_fm.tables`).
    """

    task: str
    logit: keras.KerasTensor
    output: keras.KerasTensor
    tables: list


def describe_model(model: keras.Model) -> ModelInfo:
    """The task, logit, output and tables of a model built by `FM` / `DeepFM`.

    The model records them itself: its last layer is a `PredictionHead`
    (whose config holds the task and whose input is the logit) and its
    table variables carry the `tf_fm.tables` tag; both survive `.keras`
    save/load.

    Args:
        model: a functional `keras.Model` ending in a `PredictionHead`.

    Returns:
        A `ModelInfo`.

    Raises:
        ValueError: the model's single output is not a `PredictionHead`'s.
    """
    head = model.layers[-1] if model.layers else None
    if len(model.outputs) != 1 or not isinstance(head, PredictionHead):
        raise ValueError(
            f"Model '{model.name}' does not end in a tf_fm PredictionHead (its task and logit "
            "are unknown); build it with tf_fm.FM / tf_fm.DeepFM, or end it with "
            "tf_fm.layers.PredictionHead."
        )
    tables = [v for v in model.weights if is_embedding_table(v)]
    return ModelInfo(task=head.task, logit=head.input, output=model.outputs[0], tables=tables)


def _field_embedding(fields, embedding_dim, out_of_range, embeddings_l2, linear_l2):
    return FieldEmbedding(
        _fields_of(fields),
        embedding_dim=embedding_dim,
        out_of_range=out_of_range,
        embeddings_l2=embeddings_l2,
        linear_l2=linear_l2,
        name="field_embedding",
    )


def _fm_terms(embedding):
    """The FM part both builders share: named inputs, their embeddings, the pairwise term."""
    inputs = model_inputs(embedding.fields)
    embedded = embedding(inputs)
    interaction = FMInteraction(name="fm_interaction")
    pairwise = interaction([embedded["embeddings"], embedded["squared_embeddings"]])
    return inputs, embedded, pairwise


def FM(
    fields: Fields,
    embedding_dim: int = 10,
    task: str = "binary",
    out_of_range: str = "error",
    embeddings_l2: float = 1e-5,
    linear_l2: float = 1e-5,
    name: str = "fm",
) -> keras.Model:
    """Factorization Machine: y = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j.

    The pairwise term is exact over all non-zero x_i of a row (libFM), also
    inside multi-valued fields.

    Args:
        fields: an adapted `FeatureSchema` (its `fields()`), or a list of
            feature declarations that need no learned state
            (`CategoricalFeature(..., encoding="integer", num_ids=n)`,
            `NumericFeature`, ...) or field dicts (see `FieldEmbedding`).
            Each becomes a named model input.
        embedding_dim: int. Factor size k. Defaults to 10 (the DeepFM paper's
            embedding size).
        task: str. `"binary"` (output `probability` = sigmoid(y)) or
            `"regression"` (output `prediction` = y). Defaults to `"binary"`.
        out_of_range: str. `"error"` or `"oov"`, see `FieldEmbedding`.
            Defaults to `"error"`.
        embeddings_l2: float. L2 on the factor rows each example uses.
            Defaults to 1e-5 (DeepCTR's `l2_reg_embedding`).
        linear_l2: float. L2 on the first-order weights each example uses.
            Defaults to 1e-5 (DeepCTR's `l2_reg_linear`).
        name: str. Model name. Defaults to `"fm"`.

    Returns:
        A functional `keras.Model` taking a dict of named inputs.

    Example:

    >>> from tf_fm import CategoricalFeature, NumericFeature
    >>> model = FM([CategoricalFeature("user", encoding="integer", num_ids=100),
    ...             NumericFeature("age")])
    >>> model.compile(optimizer="adam", loss="binary_crossentropy")

    References:
        Rendle, "Factorization Machines", ICDM 2010.
    """
    _check_task(task)
    # === Layers ===
    embedding = _field_embedding(fields, embedding_dim, out_of_range, embeddings_l2, linear_l2)
    bias = GlobalBias(name="logit")
    output = _output_layer(task)

    # === Functional Model ===
    inputs, embedded, pairwise = _fm_terms(embedding)
    logit = bias([embedded["linear"], pairwise])
    outputs = output(logit)

    # === Config ===
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def DeepFM(
    fields: Fields,
    embedding_dim: int = 10,
    dnn_units: Sequence[int] = (400, 400, 400),
    dnn_activation: str = "relu",
    dnn_dropout: float = 0.5,
    dnn_batch_norm: bool = False,
    dnn_l2: float = 0.0,
    task: str = "binary",
    out_of_range: str = "error",
    embeddings_l2: float = 1e-5,
    linear_l2: float = 1e-5,
    name: str = "deepfm",
) -> keras.Model:
    """DeepFM: output(y_FM + y_DNN), the DNN reading the FM's own embeddings.

    The FM part is `FM`'s logit (w0 + first order + exact pairwise term). The
    DNN reads the same per-field vectors `(batch, fields * k)` flattened, so
    one table is trained by both parts.

    Args:
        fields: an adapted `FeatureSchema` or a list of features / field
            dicts, as in `FM`.
        embedding_dim: int. Factor size k. Defaults to 10 (DeepFM paper).
        dnn_units: sequence of int. Hidden layer sizes. Defaults to
            `(400, 400, 400)` (DeepFM paper, section 3.3).
        dnn_activation: str. Hidden activation. Defaults to `"relu"` (paper).
        dnn_dropout: float. Dropout rate after each hidden layer. Defaults to
            0.5 (paper).
        dnn_batch_norm: bool. Batch normalization before each activation.
            Defaults to False (paper).
        dnn_l2: float. L2 on the DNN kernels. Defaults to 0.
        task: str. `"binary"` or `"regression"`. Defaults to `"binary"`.
        out_of_range: str. `"error"` or `"oov"`. Defaults to `"error"`.
        embeddings_l2: float. Defaults to 1e-5.
        linear_l2: float. Defaults to 1e-5.
        name: str. Model name. Defaults to `"deepfm"`.

    Returns:
        A functional `keras.Model` taking a dict of named inputs.

    Example:

    >>> model = DeepFM(schema)  # an adapted tf_fm.FeatureSchema

    References:
        Guo et al., "DeepFM: A Factorization-Machine based Neural Network for
        CTR Prediction", IJCAI 2017.
    """
    _check_task(task)
    dnn_units = [int(u) for u in dnn_units]
    if any(u <= 0 for u in dnn_units):
        raise ValueError(f"`dnn_units` must be positive integers. Received: {dnn_units}")
    if not 0.0 <= dnn_dropout < 1.0:
        raise ValueError(f"`dnn_dropout` must be in [0, 1). Received: dnn_dropout={dnn_dropout}")
    # === Layers ===
    embedding = _field_embedding(fields, embedding_dim, out_of_range, embeddings_l2, linear_l2)
    regularizer = keras.regularizers.L2(dnn_l2) if dnn_l2 else None
    hidden = []
    for i, units in enumerate(dnn_units):
        hidden.append(
            keras.layers.Dense(
                units,
                use_bias=not dnn_batch_norm,
                kernel_regularizer=regularizer,
                name=f"dnn_dense_{i}",
            )
        )
        if dnn_batch_norm:
            hidden.append(keras.layers.BatchNormalization(name=f"dnn_batch_norm_{i}"))
        hidden.append(keras.layers.Activation(dnn_activation, name=f"dnn_activation_{i}"))
        if dnn_dropout:
            hidden.append(keras.layers.Dropout(dnn_dropout, name=f"dnn_dropout_{i}"))
    dnn_out = keras.layers.Dense(1, kernel_regularizer=regularizer, name="dnn_logit")
    bias = GlobalBias(name="logit")
    output = _output_layer(task)

    # === Functional Model ===
    inputs, embedded, pairwise = _fm_terms(embedding)
    x = keras.layers.Flatten(name="dnn_input")(embedded["embeddings"])  # (batch, fields * k)
    for layer in hidden:
        x = layer(x)
    logit = bias([embedded["linear"], pairwise, dnn_out(x)])
    outputs = output(logit)

    # === Config ===
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def compile_model(
    model: keras.Model,
    learning_rate: float = 1e-3,
    optimizer: keras.optimizers.Optimizer | None = None,
    metrics: bool | list = True,
    **compile_kwargs,
) -> keras.Model:
    """Compile an `FM` / `DeepFM` model with the package's defaults.

    * optimizer: `tf_fm.optimizers.LazyAdam(learning_rate)`: Adam on the DNN
      and biases, and on the embedding tables an update of only the rows the
      batch uses, so a step costs the same at 10^4 or 10^7 rows (stock Keras
      Adam updates every row every step). `learning_rate` 1e-3 is the DeepFM
      paper's and the BARS benchmark's Adam setting.
    * loss from the output: `binary_crossentropy` for a `probability` output,
      `mean_squared_error` for a `prediction` output.
    * metrics (if `metrics` is True): AUC and log loss (binary), RMSE (regression).
    * `jit_compile=False`: the sparse updates are scatter operations XLA does not
      take (XLA is off on CPU anyway).

    Args:
        model: a model built by `FM` or `DeepFM`.
        learning_rate: float. Defaults to 1e-3.
        optimizer: a Keras optimizer to use instead of `LazyAdam`.
        metrics: bool or list. True for the defaults above.
        **compile_kwargs: passed on to `model.compile`.

    Returns:
        The model, compiled.
    """
    binary = describe_model(model).task == "binary"
    if metrics is True:
        if binary:
            metrics = [
                keras.metrics.AUC(name="auc", num_thresholds=1000),
                LogLoss(name="logloss"),
            ]
        else:
            metrics = [keras.metrics.RootMeanSquaredError(name="rmse")]
    compile_kwargs.setdefault("jit_compile", False)
    model.compile(
        optimizer=optimizer if optimizer is not None else LazyAdam(learning_rate),
        loss="binary_crossentropy" if binary else "mean_squared_error",
        metrics=metrics or None,
        **compile_kwargs,
    )
    return model


def default_callbacks(
    task: str = "binary", patience: int = 2, backup_dir: str | None = None
) -> list[keras.callbacks.Callback]:
    """The training loop of the BARS benchmark as Keras callbacks, for `model.fit`.

    Pass them with `validation_data`:

    * `ReduceLROnPlateau`: learning rate x0.1 after an epoch in which the
      validation metric did not improve (BARS / FuxiCTR: factor 0.1, patience 1);
    * `EarlyStopping`: stop after `patience` epochs without improvement and
      keep the best epoch's weights (BARS: patience 2);
    * with `backup_dir`, `keras.callbacks.BackupAndRestore(backup_dir)`: the
      model and optimizer state after every epoch, so an interrupted `fit`
      with the same callbacks resumes from the last finished epoch.

    The metric is `val_auc` (maximized) for a binary model and `val_rmse`
    (minimized) for regression: the names `compile_model` gives its metrics.
    On the real Criteo, Avazu and MovieLens samples this loop was the
    largest gain of every setting checked (test AUC 0.658 -> 0.728 on the
    Criteo sample, 0.643 -> 0.700 on criteo_tiny; `benchmarks/defaults.md`):
    without it DeepFM overfits these samples after two epochs.

    Args:
        task: `"binary"` or `"regression"`. Defaults to `"binary"`.
        patience: int. Epochs without improvement before stopping. Defaults
            to 2.
        backup_dir: str or None. Where `BackupAndRestore` keeps its state.
            Defaults to None (no backup).

    Returns:
        A list of Keras callbacks.

    Example:

    >>> model.fit(train, validation_data=valid, epochs=50,
    ...           callbacks=tf_fm.default_callbacks())
    """
    _check_task(task)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"`patience` must be a positive integer. Received: patience={patience!r}")
    monitor, mode = ("val_auc", "max") if task == "binary" else ("val_rmse", "min")
    callbacks = [
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode=mode, factor=0.1, patience=1, min_lr=1e-6
        ),
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=patience, restore_best_weights=True
        ),
    ]
    if backup_dir is not None:
        callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir)))
    return callbacks
