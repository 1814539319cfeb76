"""Functional builders of the FM family (FM, DeepFM, HOFM, FwFM, FFM, NFM), in the style of
`keras.applications`."""

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np

from tf_fm.callbacks import AtomicBackupAndRestore
from tf_fm.features import Feature, field_config, weights_input_name
from tf_fm.layers import (
    AnovaInteraction,
    FFMInteraction,
    FieldEmbedding,
    FMInteraction,
    FwFMInteraction,
    GlobalBias,
    PredictionHead,
)
from tf_fm.losses import CheckedBinaryCrossentropy, CheckedMeanSquaredError
from tf_fm.metrics import LogLoss
from tf_fm.optimizers import LazyAdam, RowwiseAdagrad
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
    """The task, logit, output and tables of a model built by `FM`, `DeepFM`, `HOFM`, etc.

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


def _field_embedding(
    fields, embedding_dim, out_of_range, embeddings_l2, linear_l2, name="field_embedding"
):
    return FieldEmbedding(
        _fields_of(fields),
        embedding_dim=embedding_dim,
        out_of_range=out_of_range,
        embeddings_l2=embeddings_l2,
        linear_l2=linear_l2,
        name=name,
    )


def _fm_terms(embedding, interaction=None):
    """The FM part the builders share: named inputs, their embeddings, the pairwise term.

    The pairwise term is `interaction` (default: `FMInteraction`) on the
    embeddings and their squares, so it is exact over the ids of a
    multi-valued field.
    """
    inputs = model_inputs(embedding.fields)
    embedded = embedding(inputs)
    if interaction is None:
        interaction = FMInteraction(name="fm_interaction")
    pairwise = interaction([embedded["embeddings"], embedded["squared_embeddings"]])
    return inputs, embedded, pairwise


def _check_rate(name, value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value}")


def _check_dnn_units(dnn_units):
    units = [int(u) for u in dnn_units]
    if any(u <= 0 for u in units):
        raise ValueError(f"`dnn_units` must be positive integers. Received: {units}")
    return units


def _dnn_layers(dnn_units, dnn_activation, dnn_dropout, dnn_batch_norm, regularizer):
    """The hidden layers of a DNN: Dense [-> BatchNormalization] -> activation [-> Dropout]."""
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
    return hidden


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
    dnn_units = _check_dnn_units(dnn_units)
    _check_rate("dnn_dropout", dnn_dropout)
    # === Layers ===
    embedding = _field_embedding(fields, embedding_dim, out_of_range, embeddings_l2, linear_l2)
    regularizer = keras.regularizers.L2(dnn_l2) if dnn_l2 else None
    hidden = _dnn_layers(dnn_units, dnn_activation, dnn_dropout, dnn_batch_norm, regularizer)
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


def _higher_order_layers(embedding, order, shared_embeddings):
    """The (table, ANOVA layer) pairs of orders 3..order; table None: the FM's own table."""
    if order == 2:
        return []
    if shared_embeddings:  # one pass of the dynamic programme gives every order
        return [(None, AnovaInteraction(order=order, min_order=3, name="anova_interaction"))]
    layers = []
    for m in range(3, order + 1):
        # One table per order (Blondel et al. 2016); only its factors are used.
        table = FieldEmbedding(
            embedding.fields,
            embedding_dim=embedding.embedding_dim,
            out_of_range=embedding.out_of_range,
            embeddings_l2=embedding.embeddings_l2,
            linear_l2=0.0,
            name=f"field_embedding_{m}",
        )
        layers.append((table, AnovaInteraction(order=m, name=f"anova_interaction_{m}")))
    return layers


def HOFM(
    fields: Fields,
    order: int = 3,
    embedding_dim: int = 10,
    shared_embeddings: bool = False,
    task: str = "binary",
    out_of_range: str = "error",
    embeddings_l2: float = 1e-5,
    linear_l2: float = 1e-5,
    name: str = "hofm",
) -> keras.Model:
    """Higher-order FM: y = w0 + sum_i w_i x_i + sum_{m=2..order} A^m(P^(m), x).

    A^m is the ANOVA kernel of order m, the sum over all m-subsets of
    features of prod x_i <v_i1, ..., v_im> (the elementwise product summed
    over the k factors). Each order has its own factor table P^(m), as in
    Blondel et al. (2016); with `shared_embeddings=True` every order reads
    the one table of the FM.

    * Order 2 is `FM`'s pairwise term (`FMInteraction` on the embeddings and
      their squares): exact over all non-zero x_i, also inside a
      multi-valued field. `HOFM(order=2)` is `FM`.
    * Orders 3..order are `AnovaInteraction` on the per-field vectors, in
      O(m F k) per example: the field-level kernel, which is the kernel over
      features when each field has one non-zero x (categorical and numeric
      fields); for a multi-valued field the subsets holding two or more of
      its ids are left out (see `AnovaInteraction`).

    Layers: `field_embedding` (order-2 factors and first-order weights),
    per order m >= 3 `field_embedding_<m>` (its weight column unused) and
    `anova_interaction_<m>`; shared: one `anova_interaction` for orders
    3..order (one pass). The sparse-row optimizers update every table.

    Args:
        fields: an adapted `FeatureSchema` or a list of features / field
            dicts, as in `FM`.
        order: int. The highest order, 2 <= order <= number of fields.
            Defaults to 3 (FuxiCTR's HOFM default).
        embedding_dim: int. Factor size k of every order. Defaults to 10.
        shared_embeddings: bool. One factor table for all orders (the
            paper's shared-parameter variant; FuxiCTR's `reuse_embedding`).
            Defaults to False (one table per order, as in the paper).
        task: str. `"binary"` or `"regression"`. Defaults to `"binary"`.
        out_of_range: str. `"error"` or `"oov"`. Defaults to `"error"`.
        embeddings_l2: float. L2 on the factor rows each example uses, in
            every table. Defaults to 1e-5.
        linear_l2: float. L2 on the first-order weights each example uses.
            Defaults to 1e-5.
        name: str. Model name. Defaults to `"hofm"`.

    Returns:
        A functional `keras.Model` taking a dict of named inputs.

    Example:

    >>> from tf_fm import CategoricalFeature
    >>> model = HOFM([CategoricalFeature(c, encoding="integer", num_ids=10) for c in "abcd"],
    ...              order=3)

    References:
        Blondel, Fujino, Ueda and Ishihata, "Higher-Order Factorization
        Machines", NeurIPS 2016.
        Rendle, "Factorization Machines", ICDM 2010.
    """
    _check_task(task)
    field_dicts = _fields_of(fields)
    if isinstance(order, bool) or not isinstance(order, int) or not 2 <= order <= len(field_dicts):
        raise ValueError(
            f"`order` must be an integer in [2, number of fields = {len(field_dicts)}]. "
            f"Received: order={order!r}"
        )
    # === Layers ===
    embedding = _field_embedding(field_dicts, embedding_dim, out_of_range, embeddings_l2, linear_l2)
    higher = _higher_order_layers(embedding, order, shared_embeddings)
    bias = GlobalBias(name="logit")
    output = _output_layer(task)

    # === Functional Model ===
    inputs, embedded, pairwise = _fm_terms(embedding)
    terms = [embedded["linear"], pairwise]
    for table, anova in higher:
        terms.append(anova((embedded if table is None else table(inputs))["embeddings"]))
    logit = bias(terms)
    outputs = output(logit)

    # === Config ===
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def FwFM(
    fields: Fields,
    embedding_dim: int = 10,
    pair_weights_l2: float = 1e-5,
    task: str = "binary",
    out_of_range: str = "error",
    embeddings_l2: float = 1e-5,
    linear_l2: float = 1e-5,
    name: str = "fwfm",
) -> keras.Model:
    """Field-weighted FM: y = w0 + sum_i w_i x_i + sum_{i<j} r_{F(i)F(j)} <v_i, v_j> x_i x_j.

    One learned weight r per pair of fields (`FwFMInteraction`, an F x F
    matrix initialised to 1, so training starts from the FM). The pairs are
    all pairs of non-zero x_i of a row, as in `FM`; two ids of one
    multi-valued field interact with their field's weight r_ff. The
    first-order part is the per-feature weights w_i x_i, as in `FM` (the
    paper's main formulation; FuxiCTR's `linear_type="LW"`).

    Args:
        fields: an adapted `FeatureSchema` or a list of features / field
            dicts, as in `FM`.
        embedding_dim: int. Factor size k. Defaults to 10.
        pair_weights_l2: float. L2 on the field-pair weights. Defaults to
            1e-5 (DeepCTR's `l2_reg_field_strength`).
        task: str. `"binary"` or `"regression"`. Defaults to `"binary"`.
        out_of_range: str. `"error"` or `"oov"`. Defaults to `"error"`.
        embeddings_l2: float. Defaults to 1e-5.
        linear_l2: float. Defaults to 1e-5.
        name: str. Model name. Defaults to `"fwfm"`.

    Returns:
        A functional `keras.Model` taking a dict of named inputs; the
        weights are `model.get_layer("fwfm_interaction").pair_weights`.

    Example:

    >>> model = FwFM(schema)  # an adapted tf_fm.FeatureSchema

    References:
        Pan et al., "Field-weighted Factorization Machines for Click-Through
        Rate Prediction in Display Advertising", WWW 2018.
    """
    _check_task(task)
    # === Layers ===
    embedding = _field_embedding(fields, embedding_dim, out_of_range, embeddings_l2, linear_l2)
    interaction = FwFMInteraction(pair_weights_l2=pair_weights_l2, name="fwfm_interaction")
    bias = GlobalBias(name="logit")
    output = _output_layer(task)

    # === Functional Model ===
    inputs, embedded, pairwise = _fm_terms(embedding, interaction)
    logit = bias([embedded["linear"], pairwise])
    outputs = output(logit)

    # === Config ===
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def FFM(
    fields: Fields,
    embedding_dim: int = 4,
    task: str = "binary",
    out_of_range: str = "error",
    embeddings_l2: float = 1e-5,
    linear_l2: float = 1e-5,
    name: str = "ffm",
) -> keras.Model:
    """Field-aware FM: y = w0 + sum_i w_i x_i + sum_{i<j} <v_{i,F(j)}, v_{j,F(i)}> x_i x_j.

    Each feature has one k-vector per field, v_{i,g}, which it uses against
    the features of field g (Juan et al. 2016; libFFM, xLearn). The vectors
    live in one `FieldEmbedding` of width `F * k` (`field_embedding`,
    row = `[v_{i,1}, ..., v_{i,F}, w_i]`), read by `FFMInteraction`: the
    table, and LazyAdam's two moment slots, hold F times the factors of an
    FM's with the same k (39 Criteo fields, k = 4: 157 floats a row against
    FM's 11 at k = 10), and a step costs O(F^2 k) per example instead of
    O(F k). The sparse-row optimizers update only the rows a batch uses,
    as for FM.

    The pairs are all pairs of non-zero x_i of a row, also inside a
    multi-valued field (they use the field's own block v_{i,F(i)}), as
    libFFM computes them. The first-order part is w_i x_i, as in `FM`.

    Args:
        fields: an adapted `FeatureSchema` or a list of features / field
            dicts, as in `FM`.
        embedding_dim: int. Factor size k of each per-field vector.
            Defaults to 4 (libFFM's and xLearn's default; the paper's
            Criteo runs use k = 4).
        task: str. `"binary"` or `"regression"`. Defaults to `"binary"`.
        out_of_range: str. `"error"` or `"oov"`. Defaults to `"error"`.
        embeddings_l2: float. L2 on the table rows each example uses (all F
            vectors of a feature). Defaults to 1e-5.
        linear_l2: float. Defaults to 1e-5.
        name: str. Model name. Defaults to `"ffm"`.

    Returns:
        A functional `keras.Model` taking a dict of named inputs.

    Example:

    >>> from tf_fm import CategoricalFeature
    >>> model = FFM([CategoricalFeature(c, encoding="integer", num_ids=10) for c in "abc"])

    References:
        Juan, Zhuang, Chin and Lin, "Field-aware Factorization Machines for
        CTR Prediction", RecSys 2016.
    """
    _check_task(task)
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(
            f"`embedding_dim` must be a positive integer. Received: embedding_dim={embedding_dim!r}"
        )
    field_dicts = _fields_of(fields)
    width = len(field_dicts) * embedding_dim  # one k-vector per field
    # === Layers ===
    embedding = _field_embedding(field_dicts, width, out_of_range, embeddings_l2, linear_l2)
    interaction = FFMInteraction(name="ffm_interaction")
    bias = GlobalBias(name="logit")
    output = _output_layer(task)

    # === Functional Model ===
    inputs, embedded, pairwise = _fm_terms(embedding, interaction)
    logit = bias([embedded["linear"], pairwise])
    outputs = output(logit)

    # === Config ===
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


def NFM(
    fields: Fields,
    embedding_dim: int = 10,
    dnn_units: Sequence[int] = (64,),
    dnn_activation: str = "relu",
    dnn_dropout: float = 0.0,
    bi_dropout: float = 0.0,
    dnn_batch_norm: bool = False,
    dnn_l2: float = 0.0,
    task: str = "binary",
    out_of_range: str = "error",
    embeddings_l2: float = 1e-5,
    linear_l2: float = 1e-5,
    name: str = "nfm",
) -> keras.Model:
    """Neural FM: y = w0 + sum_i w_i x_i + h^T DNN(f_BI), f_BI = sum_{i<j} x_i v_i * x_j v_j.

    The bi-interaction vector f_BI `(batch, k)` is `FMInteraction(reduce_sum=False)`
    on the embeddings and their squares (all pairs of non-zero x_i, also
    inside a multi-valued field); then batch normalization and dropout on
    it, the hidden layers (Dense -> batch normalization -> activation ->
    dropout), and the prediction weights h (a Dense of one unit without
    bias: w0 is the model's bias). With no hidden layers and h = 1 it is
    the FM.

    Defaults: one hidden layer of 64 (the paper: one hidden layer is best;
    the authors' code, `hexiangnan/neural_factorization_machine`), ReLU, and
    no dropout or batch normalization, as DeepCTR's NFM (`(128, 128)` units)
    and FuxiCTR's (`[64, 64, 64]`). The authors' code turns batch
    normalization on with keep probabilities `[0.8, 0.5]` (dropout 0.2 after
    the hidden layer, 0.5 on the bi-interaction vector); with those, test
    AUC under `tf_fm.train` defaults was 0.635 on the Criteo sample and 0.528
    on the Avazu sample (3 seeds) against 0.712 and 0.740 without them (2
    seeds, both under the earlier AUC-only monitor; `benchmarks/quality.md`
    has both defaults side by side). The embedding size stays the package's
    10 (the authors' code: 64).

    Args:
        fields: an adapted `FeatureSchema` or a list of features / field
            dicts, as in `FM`.
        embedding_dim: int. Factor size k. Defaults to 10.
        dnn_units: sequence of int. Hidden layer sizes; empty for none (the
            paper's NFM-0). Defaults to `(64,)`.
        dnn_activation: str. Hidden activation. Defaults to `"relu"`.
        dnn_dropout: float. Dropout rate after each hidden layer. Defaults
            to 0 (the authors' code: 0.2).
        bi_dropout: float. Dropout rate on the bi-interaction vector.
            Defaults to 0 (the authors' code: 0.5).
        dnn_batch_norm: bool. Batch normalization on the bi-interaction
            vector and before each hidden activation. Defaults to False
            (the authors' code: True).
        dnn_l2: float. L2 on the DNN kernels and h. Defaults to 0.
        task: str. `"binary"` or `"regression"`. Defaults to `"binary"`.
        out_of_range: str. `"error"` or `"oov"`. Defaults to `"error"`.
        embeddings_l2: float. Defaults to 1e-5.
        linear_l2: float. Defaults to 1e-5.
        name: str. Model name. Defaults to `"nfm"`.

    Returns:
        A functional `keras.Model` taking a dict of named inputs.

    Example:

    >>> model = NFM(schema)  # an adapted tf_fm.FeatureSchema

    References:
        He and Chua, "Neural Factorization Machines for Sparse Predictive
        Analytics", SIGIR 2017.
    """
    _check_task(task)
    dnn_units = _check_dnn_units(dnn_units)
    _check_rate("dnn_dropout", dnn_dropout)
    _check_rate("bi_dropout", bi_dropout)
    # === Layers ===
    embedding = _field_embedding(fields, embedding_dim, out_of_range, embeddings_l2, linear_l2)
    regularizer = keras.regularizers.L2(dnn_l2) if dnn_l2 else None
    interaction = FMInteraction(reduce_sum=False, name="bi_interaction")
    hidden = []
    if dnn_batch_norm:
        hidden.append(keras.layers.BatchNormalization(name="bi_batch_norm"))
    if bi_dropout:
        hidden.append(keras.layers.Dropout(bi_dropout, name="bi_dropout"))
    hidden += _dnn_layers(dnn_units, dnn_activation, dnn_dropout, dnn_batch_norm, regularizer)
    dnn_out = keras.layers.Dense(
        1, use_bias=False, kernel_regularizer=regularizer, name="dnn_logit"
    )
    bias = GlobalBias(name="logit")
    output = _output_layer(task)

    # === Functional Model ===
    inputs, embedded, x = _fm_terms(embedding, interaction)  # x: (batch, k)
    for layer in hidden:
        x = layer(x)
    logit = bias([embedded["linear"], dnn_out(x)])
    outputs = output(logit)

    # === Config ===
    return keras.Model(inputs=inputs, outputs=outputs, name=name)


# The embedding-table rules `compile_model(embedding_optimizer=...)` offers.
EMBEDDING_OPTIMIZERS = {"lazy_adam": LazyAdam, "rowwise_adagrad": RowwiseAdagrad}


def compile_model(
    model: keras.Model,
    learning_rate: float = 1e-3,
    optimizer: keras.optimizers.Optimizer | None = None,
    metrics: bool | list = True,
    embedding_optimizer: str = "lazy_adam",
    **compile_kwargs,
) -> keras.Model:
    """Compile a model of this module (`FM`, `DeepFM`, `HOFM`, ...) with the package's defaults.

    * optimizer: `tf_fm.optimizers.LazyAdam(learning_rate)`: Adam on the DNN
      and biases, and on the embedding tables an update of only the rows the
      batch uses, so a step costs the same at 10^4 or 10^7 rows (stock Keras
      Adam updates every row every step). `learning_rate` 1e-3 is the DeepFM
      paper's and the BARS benchmark's Adam setting. With
      `embedding_optimizer="rowwise_adagrad"`, `tf_fm.optimizers.RowwiseAdagrad
      (learning_rate)`: the same Adam off the tables, and on them TorchRec /
      FBGEMM's row-wise Adagrad (one accumulator per row: slot memory rows x 1
      instead of rows x 2(k + 1)), at 10x `learning_rate`.
    * loss from the output: binary cross-entropy for a `probability` output,
      mean squared error for a `prediction` output, each refusing labels the
      task cannot have (`tf_fm.losses`: a NaN label, or one other than 0/1 for
      a binary model, stops the step with one line before any weight changes).
    * metrics (if `metrics` is True): AUC and log loss (binary), RMSE (regression).
    * `jit_compile=False`: the sparse updates are scatter operations XLA does not
      take (XLA is off on CPU anyway).

    Args:
        model: a model built by `FM`, `DeepFM`, `HOFM`, `FwFM` or `NFM`.
        learning_rate: float. Defaults to 1e-3.
        optimizer: a Keras optimizer to use instead of `LazyAdam`.
        metrics: bool or list. True for the defaults above.
        embedding_optimizer: str. The tables' rule: `"lazy_adam"` or
            `"rowwise_adagrad"` (see above). Defaults to `"lazy_adam"`.
        **compile_kwargs: passed on to `model.compile`.

    Returns:
        The model, compiled.
    """
    if embedding_optimizer not in EMBEDDING_OPTIMIZERS:
        raise ValueError(
            f"`embedding_optimizer` must be one of {sorted(EMBEDDING_OPTIMIZERS)}. "
            f"Received: embedding_optimizer={embedding_optimizer!r}"
        )
    if optimizer is not None and embedding_optimizer != "lazy_adam":
        raise ValueError("Pass `optimizer` or `embedding_optimizer`, not both")
    if optimizer is None:
        optimizer = EMBEDDING_OPTIMIZERS[embedding_optimizer](learning_rate)
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
        optimizer=optimizer,
        loss=CheckedBinaryCrossentropy() if binary else CheckedMeanSquaredError(),
        metrics=metrics or None,
        **compile_kwargs,
    )
    return model


MIN_DELTA = 1e-4  # smaller validation gains do not count as improvements
MIN_LEARNING_RATE = 1e-6
# What the binary loop monitors: BARS / FuxiCTR's `monitor: {AUC: 1, logloss: -1}`.
BINARY_MONITOR = "val_auc_minus_logloss"
BINARY_MONITOR_TERMS = {"val_auc": 1.0, "val_logloss": -1.0}


class WeightedSum(keras.callbacks.Callback):
    """Adds `name = sum_k weight_k * logs[k]` to each epoch's logs, for the callbacks after it.

    The monitor of BARS / FuxiCTR, validation AUC minus validation log loss,
    as one logged value that `ReduceLROnPlateau` and `BestEpochStopping`
    read. Nothing is added when a term is missing from the logs.

    Args:
        name: str. The key added to the logs.
        terms: dict `{log key: weight}`.
    """

    def __init__(self, name: str, terms: dict):
        super().__init__()
        self.name, self.terms = name, dict(terms)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or any(logs.get(key) is None for key in self.terms):
            return
        logs[self.name] = float(weighted_sum(logs, self.terms))


def start_at_base_rate(model: keras.Model, mean: float, task: str) -> float:
    """Sets the model's global bias w0 so that it first predicts the training data's mean.

    A model built with w0 = 0 first predicts p = 0.5 (binary) or 0
    (regression). Adam moves w0 by about its learning rate per step, so at
    1e-3 a 4% click rate (logit -3.2) takes some 3,000 steps and a 0.5% one
    (logit -5.3) 5,000: on data of a few hundred thousand rows the first
    epochs go to the base rate, and early stopping judges epochs whose log
    loss is still mostly that. Starting w0 at logit(mean) (binary) or at the
    mean target (regression), as TensorFlow's guide on imbalanced data
    does, removes that phase; the interaction terms start near 0 (small
    initial factors), so the first predictions are the base rate.

    Args:
        model: a package model (its global bias is the layer named
            `"logit"`, a `tf_fm.layers.GlobalBias`).
        mean: the mean label (binary: the click rate) of the training data.
        task: `"binary"` or `"regression"`.

    Returns:
        The value w0 was set to.
    """
    if task == "binary":
        rate = min(max(float(mean), 1e-6), 1.0 - 1e-6)
        value = float(np.log(rate / (1.0 - rate)))
    else:
        value = float(mean)
    model.get_layer("logit").bias.assign(value)
    return value


def weighted_sum(logs: dict, terms: dict = BINARY_MONITOR_TERMS):
    """`sum_k weight_k * logs[k]`: of one epoch's floats, or of a history's per-epoch lists."""
    return sum(w * np.asarray(logs[key], dtype=float) for key, w in terms.items())


class BestEpochStopping(keras.callbacks.Callback):
    """Early stopping that ends on the best epoch's weights, whatever ends training.

    Like `keras.callbacks.EarlyStopping(restore_best_weights=True)`, with
    three differences a training run to convergence needs:

    * a gain smaller than `min_delta` is not an improvement (tiny gains at
      a decayed learning rate do not keep a run going);
    * training also stops at the first epoch without improvement once the
      learning rate is at `min_lr` (nothing left to decay to);
    * the best epoch's weights are restored at the end of training however
      it ended (patience, the learning-rate floor, or the `epochs` cap),
      not only when patience ran out.

    Args:
        monitor: str. The validation metric, e.g. `"val_auc"`.
        mode: str. `"max"` or `"min"`.
        patience: int. Epochs without improvement before stopping.
        min_delta: float. Smallest change that counts as an improvement.
        min_lr: float. The learning-rate floor (as `ReduceLROnPlateau`'s).
    """

    # What a resumed run restores (`tf_fm.callback_state`): the best weights
    # are written again only when the best epoch changes.
    state_attributes = ("best", "best_epoch", "wait", "last_epoch")
    state_arrays = {"best_weights": "best_epoch"}

    def __init__(self, monitor, mode, patience, min_delta=MIN_DELTA, min_lr=MIN_LEARNING_RATE):
        super().__init__()
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta, self.min_lr = patience, min_delta, min_lr

    def on_train_begin(self, logs=None):
        self.best, self.best_weights, self.best_epoch, self.wait = None, None, None, 0
        self.last_epoch = None

    def _improved(self, value):
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        self.last_epoch = epoch
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if self.wait >= self.patience or rate <= self.min_lr * (1 + 1e-6):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None and self.last_epoch != self.best_epoch:
            self.model.set_weights(self.best_weights)


def default_callbacks(
    task: str = "binary", patience: int = 2, backup_dir: str | None = None
) -> list[keras.callbacks.Callback]:
    """The training loop of the BARS benchmark as Keras callbacks, for `model.fit`.

    Pass them with `validation_data` and a generous `epochs` (BARS: up to
    100; `tf_fm.train` uses 100): the callbacks decide when to stop.

    * `ReduceLROnPlateau`: learning rate x0.1 after an epoch in which the
      validation metric did not improve by `MIN_DELTA` (BARS / FuxiCTR:
      factor 0.1, patience 1), down to `MIN_LEARNING_RATE`;
    * `BestEpochStopping`: stop after `patience` epochs without an
      improvement of `MIN_DELTA` (BARS: patience 2), or at the first one
      once the learning rate is at its floor, and end on the best epoch's
      weights;
    * with `backup_dir`, `tf_fm.callbacks.AtomicBackupAndRestore(backup_dir)`:
      the model and optimizer state after every epoch, with the state of
      the two callbacks above (epochs waited, best value, best weights),
      committed so that a kill at any moment leaves a readable state, so an
      interrupted `fit` with the same callbacks resumes from the last
      finished epoch and stops where the uninterrupted one would.

    The metric is BARS / FuxiCTR's monitor for a binary model, validation
    AUC minus validation log loss (`val_auc_minus_logloss`, maximized, added
    to the logs by `WeightedSum`), and `val_rmse` (minimized) for
    regression: the names `compile_model` gives its metrics. AUC alone
    stopped FM runs on the Avazu sample after 3 epochs while the model was
    still learning the base rate (validation log loss falling 0.637 ->
    0.586, AUC flat at 0.54-0.55); the log-loss term sees that progress.
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

    >>> model.fit(train, validation_data=valid, epochs=100,
    ...           callbacks=tf_fm.default_callbacks())
    """
    _check_task(task)
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"`patience` must be a positive integer. Received: patience={patience!r}")
    monitor, mode = (BINARY_MONITOR, "max") if task == "binary" else ("val_rmse", "min")
    callbacks = [WeightedSum(BINARY_MONITOR, BINARY_MONITOR_TERMS)] if task == "binary" else []
    callbacks += [
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor,
            mode=mode,
            factor=0.1,
            patience=1,
            min_delta=MIN_DELTA,
            min_lr=MIN_LEARNING_RATE,
        ),
        BestEpochStopping(monitor, mode, patience),
    ]
    if backup_dir is not None:
        callbacks.append(AtomicBackupAndRestore(backup_dir, restore=callbacks))
    return callbacks
