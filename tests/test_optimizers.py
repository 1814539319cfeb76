import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fm
from tf_fm import CategoricalFeature, MultiValuedFeature, NumericFeature
from tf_fm.data import make_fm_data
from tf_fm.optimizers import LazyAdam, RowwiseAdagrad, SparseAdagrad, SparseSGD, sum_duplicate_rows
from tf_fm.tables import mark_embedding_table

FIELDS = [
    CategoricalFeature("a", encoding="integer", num_ids=4),
    NumericFeature("x"),
    MultiValuedFeature("g", encoding="integer", num_ids=3, max_length=2),
    CategoricalFeature("b", encoding="integer", num_ids=2),
]


def densified(optimizer_cls):
    """The stock Keras optimizer fed the dense gradient (the mathematical reference).

    Stock Keras applies `ops.square` to an IndexedSlices row by row, so an id
    repeated in a batch adds the sum of squares of its row gradients to the
    second moment instead of the square of their sum: not the dense update.
    """

    class Dense(optimizer_cls):
        def update_step(self, gradient, variable, learning_rate):
            super().update_step(tf.convert_to_tensor(gradient), variable, learning_rate)

    return Dense


def accumulator_of(optimizer, variable):
    # The one optimizer variable of the parameter's shape (besides the step and learning rate).
    (accumulator,) = [v for v in optimizer.variables if v.shape == variable.shape]
    return accumulator.numpy()


def test_stock_keras_squares_repeated_ids_per_occurrence():
    # Why the references below densify: documents the stock behaviour.
    g = tf.IndexedSlices(tf.constant([[1.0], [1.0]]), tf.constant([0, 0]), tf.constant([2, 1]))
    accumulators = []
    for grad in (g, tf.convert_to_tensor(g)):
        var = keras.Variable(np.zeros((2, 1), "float32"), name="embeddings")
        opt = keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.0)
        opt.apply_gradients([(grad, var)])
        accumulators.append(accumulator_of(opt, var)[0, 0])
    assert accumulators == [2.0, 4.0]  # 1^2 + 1^2 vs (1 + 1)^2
    var = keras.Variable(np.zeros((2, 1), "float32"), name="embeddings")
    opt = SparseAdagrad(0.1, initial_accumulator_value=0.0)
    opt.apply_gradients([(g, var)])
    assert accumulator_of(opt, var)[0, 0] == 4.0


def full_cover_batches(steps, n=16, seed=0):
    """Batches in which every row of every table appears (incl. the padding row)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps):
        g = rng.integers(0, 3, size=(n, 2))
        g[:, 1] = (g[:, 0] + 1) % 3
        g[0] = [0, 1]
        g[1] = [2, -1]
        batches.append(
            (
                {
                    "a": np.arange(n) % 4,
                    "x": rng.normal(size=n).astype("float32"),
                    "g": g,
                    "b": np.arange(n) % 2,
                },
                (rng.random(n) < 0.4).astype("float32"),
            )
        )
    return batches


def train(optimizer, batches, builder=tf_fm.DeepFM, seed=0):
    keras.utils.set_random_seed(seed)
    kwargs = {"dnn_units": (8,), "dnn_dropout": 0.0} if builder is tf_fm.DeepFM else {}
    model = builder(FIELDS, embedding_dim=3, **kwargs)
    model.compile(optimizer=optimizer, loss="binary_crossentropy")
    for features, labels in batches:
        model.train_on_batch(features, labels)
    return model


def assert_same_weights(m1, m2, rtol, atol):
    for w1, w2 in zip(m1.weights, m2.weights, strict=True):
        np.testing.assert_allclose(w1.numpy(), w2.numpy(), rtol=rtol, atol=atol, err_msg=w1.path)


def table_gradient_is_sparse():
    model = tf_fm.FM(FIELDS, embedding_dim=3)
    features, labels = full_cover_batches(1)[0]
    with tf.GradientTape() as tape:
        loss = keras.ops.mean(model(features))
    return isinstance(
        tape.gradient(loss, model.get_layer("field_embedding").table), tf.IndexedSlices
    )


def test_table_gradients_reach_the_optimizer_sparse():
    # Otherwise the sparse paths below would never run.
    assert table_gradient_is_sparse()


def test_sparse_adagrad_equals_dense_adagrad():
    # Random batches that do NOT cover every row: Adagrad is exact anyway.
    batches = full_cover_batches(6)
    for features, _ in batches:
        features["a"] = features["a"] % 2
    dense = train(densified(keras.optimizers.Adagrad)(0.1), batches)
    sparse = train(SparseAdagrad(0.1), batches)
    assert_same_weights(dense, sparse, rtol=1e-6, atol=1e-7)


def test_sparse_sgd_equals_dense_sgd():
    batches = full_cover_batches(5)
    for features, _ in batches:
        features["b"] = np.zeros_like(features["b"])
    dense = train(densified(keras.optimizers.SGD)(0.1), batches)
    sparse = train(SparseSGD(0.1), batches)
    assert_same_weights(dense, sparse, rtol=1e-6, atol=1e-7)


def test_lazy_adam_equals_adam_when_every_row_is_touched():
    batches = full_cover_batches(8)
    dense = train(densified(keras.optimizers.Adam)(0.01), batches)
    lazy = train(LazyAdam(0.01), batches)
    assert_same_weights(dense, lazy, rtol=1e-5, atol=1e-6)


def test_lazy_adam_leaves_absent_rows_and_their_moments_alone():
    batches = full_cover_batches(3)
    opt = LazyAdam(0.01)
    model = train(opt, batches, builder=tf_fm.FM)
    table = model.get_layer("field_embedding").table
    before = table.numpy().copy()
    m_before, v_before = (x.numpy().copy() for x in opt.moments(table))
    features, labels = batches[0]
    features = dict(features, a=np.zeros_like(features["a"]))  # rows 1..3 of `a` absent
    model.train_on_batch(features, labels)
    np.testing.assert_array_equal(table.numpy()[1:4], before[1:4])
    m_after, v_after = (x.numpy() for x in opt.moments(table))
    np.testing.assert_array_equal(m_after[1:4], m_before[1:4])
    np.testing.assert_array_equal(v_after[1:4], v_before[1:4])
    assert not np.array_equal(m_after[0], m_before[0])
    assert not np.array_equal(table.numpy()[0], before[0])  # row 0 was updated


def table_variable(value):
    # A variable tagged as an embedding table, as FieldEmbedding tags its own.
    return mark_embedding_table(keras.Variable(value, name="weights"))


@pytest.mark.parametrize("tagged", [True, False])  # fused moments slot / per-variable slots
@pytest.mark.parametrize("optimizer_cls", [SparseAdagrad, LazyAdam, SparseSGD])
def test_duplicate_ids_are_summed(optimizer_cls, tagged):
    # The same gradient as IndexedSlices with repeated ids and as a dense tensor.
    values = tf.constant([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
    indices = tf.constant([2, 0, 2])
    sparse = tf.IndexedSlices(values, indices, dense_shape=tf.constant([4, 2]))
    dense = tf.convert_to_tensor(sparse)
    results = []
    for grad in (sparse, dense):
        value = np.ones((4, 2), "float32")
        var = table_variable(value) if tagged else keras.Variable(value, name="weights")
        opt = optimizer_cls(0.1)
        opt.apply_gradients([(grad, var)])
        results.append(var.numpy())
    if optimizer_cls is LazyAdam:
        # Only the touched rows 0 and 2 move; they move as in dense Adam.
        np.testing.assert_allclose(results[0][[0, 2]], results[1][[0, 2]], rtol=1e-6)
        np.testing.assert_array_equal(results[0][[1, 3]], 1.0)
    else:
        np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_lazy_adam_table_slots_are_one_fused_variable_of_two_table_sizes():
    opt = LazyAdam(0.01)
    model = train(opt, full_cover_batches(1))
    table = model.get_layer("field_embedding").table
    rows, columns = table.shape
    big = [v for v in opt.variables if len(v.shape) == 2 and v.shape[0] == rows]
    assert [tuple(v.shape) for v in big] == [(rows, 2 * columns)]
    m, v = (x.numpy() for x in opt.moments(table))
    fused = big[0].numpy()
    np.testing.assert_array_equal(fused[:, :columns], m)
    np.testing.assert_array_equal(fused[:, columns:], v)
    # Dense variables keep Keras' own momentum and velocity slots.
    kernel = model.get_layer("dnn_dense_0").kernel
    km, kv = (x.numpy() for x in opt.moments(kernel))
    assert km.shape == kv.shape == tuple(kernel.shape)
    assert np.any(km != 0) and np.all(kv >= 0)


def test_lazy_adam_dense_gradient_for_a_table_is_dense_adam():
    # A table that receives a dense gradient goes through the fused slot on
    # every row: the same as keras.optimizers.Adam.
    rng = np.random.default_rng(0)
    results = []
    for cls in (keras.optimizers.Adam, LazyAdam):
        var = table_variable(np.ones((5, 3), "float32"))
        opt = cls(0.05)
        for _ in range(3):
            opt.apply_gradients([(tf.constant(rng.normal(size=(5, 3)), "float32"), var)])
        results.append(var.numpy())
        rng = np.random.default_rng(0)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer_cls", [LazyAdam, SparseAdagrad, SparseSGD, RowwiseAdagrad])
def test_weight_decay_skips_tagged_tables_only(optimizer_cls):
    # Row 1 has no gradient: weight decay alone would move it.
    table = table_variable(np.ones((2, 2), "float32"))
    other = keras.Variable(np.ones((2, 2), "float32"), name="embeddings")  # not tagged
    grad = tf.IndexedSlices(tf.ones([1, 2]), tf.constant([0]), tf.constant([2, 2]))
    opt = optimizer_cls(0.1, weight_decay=0.5)
    opt.apply_gradients([(grad, table), (grad, other)])
    np.testing.assert_array_equal(table.numpy()[1], [1.0, 1.0])
    np.testing.assert_allclose(other.numpy()[1], [0.95, 0.95], rtol=1e-6)  # 1 - lr * decay


def test_unsupported_options():
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdam(amsgrad=True)
    with pytest.raises(ValueError, match="momentum"):
        SparseSGD(momentum=0.9)


def test_config_round_trip():
    for opt in (
        LazyAdam(0.02, beta_1=0.8, beta_2=0.99, epsilon=1e-6, weight_decay=0.1),
        SparseAdagrad(0.3, initial_accumulator_value=0.2, epsilon=1e-5, clipnorm=1.0),
        SparseSGD(0.4),
        RowwiseAdagrad(
            0.02,
            epsilon=1e-6,
            initial_accumulator_value=0.1,
            embedding_weight_decay=0.01,
            embedding_weight_decay_mode="decoupled",
            embedding_learning_rate_multiplier=3.0,
            beta_1=0.8,
            adam_epsilon=1e-6,
            weight_decay=0.1,
        ),
    ):
        config = opt.get_config()
        assert type(opt).from_config(config).get_config() == config
        restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
        assert type(restored) is type(opt)


def test_slots_are_created_in_a_stable_order():
    # `.keras` files and checkpoints store optimizer variables by creation
    # order: per non-table variable its momentum and velocity, then the
    # fused slot of each table.
    opt = LazyAdam(0.01)
    model = train(opt, full_cover_batches(1), builder=tf_fm.FM)
    names = [v.name for v in opt.variables]
    dense = [w.path.replace("/", "_") for w in model.trainable_weights if w.name != "table"]
    expected = [f"{d}_{slot}" for d in dense for slot in ("momentum", "velocity")]
    assert names == ["iteration", "learning_rate", *expected, "field_embedding_table_moments"]


def test_untagged_embedding_takes_the_sparse_path_with_its_own_slots():
    # A plain keras.layers.Embedding is not a table: Keras-shaped m and v,
    # but its IndexedSlices gradient still leaves absent rows alone.
    keras.utils.set_random_seed(0)
    ids = keras.Input((2,), dtype="int32")
    embedding = keras.layers.Embedding(6, 3)
    model = keras.Model(ids, keras.layers.Dense(1)(keras.layers.Flatten()(embedding(ids))))
    opt = LazyAdam(0.01)
    model.compile(optimizer=opt, loss="mse")
    x, y = np.array([[0, 1], [1, 2]]), np.ones((2, 1), "float32")
    model.train_on_batch(x, y)
    before = embedding.embeddings.numpy().copy()
    m_before, v_before = (t.numpy().copy() for t in opt.moments(embedding.embeddings))
    model.train_on_batch(np.array([[0, 0], [0, 0]]), y)
    after = embedding.embeddings.numpy()
    m_after, v_after = (t.numpy() for t in opt.moments(embedding.embeddings))
    assert m_after.shape == v_after.shape == (6, 3)
    np.testing.assert_array_equal(after[1:], before[1:])
    np.testing.assert_array_equal(m_after[1:], m_before[1:])
    np.testing.assert_array_equal(v_after[1:], v_before[1:])
    assert not np.array_equal(after[0], before[0])
    assert not [v for v in opt.variables if v.name.endswith("_moments")]


@pytest.mark.parametrize("optimizer_cls", [LazyAdam, SparseAdagrad, RowwiseAdagrad])
def test_keras_save_load_keeps_optimizer_state_and_resumes(tmp_path, optimizer_cls):
    batches = full_cover_batches(6)
    straight = train(optimizer_cls(0.01), batches)

    half = train(optimizer_cls(0.01), batches[:3])
    path = tmp_path / "model.keras"
    half.save(path)
    restored = keras.saving.load_model(path)  # no custom_objects
    assert type(restored.optimizer) is optimizer_cls
    assert int(restored.optimizer.iterations.numpy()) == 3
    for v1, v2 in zip(half.optimizer.variables, restored.optimizer.variables, strict=True):
        np.testing.assert_array_equal(v1.numpy(), v2.numpy())
    for features, labels in batches[3:]:
        restored.train_on_batch(features, labels)
    assert_same_weights(straight, restored, rtol=1e-6, atol=1e-7)


def test_fit_resume_with_backup_and_restore(tmp_path):
    # model.fit resumes from a BackupAndRestore checkpoint with the optimizer
    # state: the resumed run ends where an uninterrupted one does.
    train_set, _ = make_fm_data(n_train=2048, n_test=10, seed=3)
    data = train_set.dataset(batch_size=256, shuffle=False)

    def new_model():
        keras.utils.set_random_seed(0)
        model = tf_fm.FM(train_set.fields, embedding_dim=4)
        model.compile(optimizer=LazyAdam(0.01), loss="binary_crossentropy")
        return model

    straight = new_model()
    straight.fit(data, epochs=4, verbose=0)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = new_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(data, epochs=4, verbose=0, callbacks=[backup, Interrupt()])
    resumed = new_model()
    history = resumed.fit(data, epochs=4, verbose=0, callbacks=[backup])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    assert_same_weights(straight, resumed, rtol=1e-5, atol=1e-6)


def test_lazy_adam_reaches_dense_adam_auc():
    train_set, test_set = make_fm_data(n_train=60_000, n_test=20_000, seed=0)
    aucs = {}
    for name, opt in (("dense", keras.optimizers.Adam(3e-3)), ("lazy", LazyAdam(3e-3))):
        keras.utils.set_random_seed(0)
        model = tf_fm.FM(train_set.fields)
        model.compile(optimizer=opt, loss="binary_crossentropy")
        model.fit(train_set.dataset(batch_size=512, seed=0), epochs=3, verbose=0)
        pred = model.predict(test_set.features, batch_size=4096, verbose=0)
        aucs[name] = test_set.evaluate(pred)["auc"]
    assert abs(aucs["dense"] - aucs["lazy"]) < 0.005, aucs
    assert test_set.bayes_metrics()["auc"] - aucs["lazy"] < 0.015, aucs


def test_lazy_adam_fused_kernel_matches_the_op_path():
    # The default path (ResourceApplyAdam on scratch rows) and the op-by-op
    # path taken under a distribution strategy give the same rows.
    rng = np.random.default_rng(0)
    steps = [
        tf.IndexedSlices(
            tf.constant(rng.normal(size=(6, 3)), "float32"),
            tf.constant(rng.integers(0, 5, size=6)),
            tf.constant([5, 3]),
        )
        for _ in range(4)
    ]
    results = []
    for strategy in (None, tf.distribute.OneDeviceStrategy("/cpu:0")):
        scope = strategy.scope() if strategy else contextlib.nullcontext()
        with scope:
            var = table_variable(np.ones((5, 3), "float32"))
            opt = LazyAdam(0.05)
            opt.build([var])
        assert (opt._row_scratch[0] is None) == (strategy is not None)
        for grad in steps:
            opt.apply_gradients([(grad, var)])
        results.append((var.numpy(), [x.numpy() for x in opt.moments(var)]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert not np.allclose(results[0][0], 1.0)


# --- RowwiseAdagrad ----------------------------------------------------------


def rowwise_adagrad_reference(table, accumulator, steps, lr, eps, decay=0.0, mode="l2"):
    """FBGEMM's EXACT_ROWWISE_ADAGRAD, row by row, on (ids, row gradients) per step."""
    table, accumulator = table.astype("float64"), accumulator.astype("float64")
    for ids, grads in steps:
        summed = {}
        for i, g in zip(ids, grads, strict=True):  # duplicate ids summed first
            summed[i] = summed.get(i, 0.0) + g.astype("float64")
        for i, g in summed.items():
            w = table[i].copy()
            if mode == "l2":
                g = g + decay * w
            accumulator[i] += sum(gj * gj for gj in g) / len(g)
            multiplier = lr / (np.sqrt(accumulator[i]) + eps)
            if mode == "decoupled":
                w = (1 - lr * decay) * w
            table[i] = w - multiplier * g
    return table, accumulator


def sparse_steps(rows, columns, n_steps, n_ids=7, seed=0):
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(n_steps):
        ids = rng.integers(0, rows - 2, size=n_ids)  # the last two rows never touched
        ids[1] = ids[0]  # always a duplicate
        steps.append((ids, rng.normal(size=(n_ids, columns)).astype("float32")))
    return steps


@pytest.mark.parametrize(
    "decay, mode, initial", [(0.0, "l2", 0.0), (0.3, "l2", 0.1), (0.3, "decoupled", 0.0)]
)
def test_rowwise_adagrad_matches_the_fbgemm_formula(decay, mode, initial):
    rows, columns = 6, 3
    start = np.random.default_rng(1).normal(size=(rows, columns)).astype("float32")
    steps = sparse_steps(rows, columns, n_steps=5)
    table = table_variable(start)
    opt = RowwiseAdagrad(
        0.02,
        embedding_learning_rate_multiplier=5.0,
        epsilon=1e-3,
        initial_accumulator_value=initial,
        embedding_weight_decay=decay,
        embedding_weight_decay_mode=mode,
    )
    for ids, grads in steps:
        grad = tf.IndexedSlices(tf.constant(grads), tf.constant(ids), tf.constant([rows, columns]))
        opt.apply_gradients([(grad, table)])
    expected, expected_acc = rowwise_adagrad_reference(
        start, np.full(rows, initial), steps, lr=0.1, eps=1e-3, decay=decay, mode=mode
    )
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.accumulator(table).numpy(), expected_acc, rtol=1e-5)
    # The two rows no step touched: value and accumulator exactly as they started.
    np.testing.assert_array_equal(table.numpy()[-2:], start[-2:])
    np.testing.assert_array_equal(opt.accumulator(table).numpy()[-2:], np.float32(initial))


def test_rowwise_adagrad_leaves_absent_rows_and_their_accumulators_alone():
    opt = RowwiseAdagrad(0.01)
    model = train(opt, full_cover_batches(3), builder=tf_fm.FM)
    table = model.get_layer("field_embedding").table
    before, acc_before = table.numpy().copy(), opt.accumulator(table).numpy().copy()
    assert np.all(acc_before[:4] > 0)  # the rows of `a` were all touched
    features, labels = full_cover_batches(1, seed=1)[0]
    model.train_on_batch(dict(features, a=np.zeros_like(features["a"])), labels)
    after, acc_after = table.numpy(), opt.accumulator(table).numpy()
    np.testing.assert_array_equal(after[1:4], before[1:4])  # rows 1..3 of `a`
    np.testing.assert_array_equal(acc_after[1:4], acc_before[1:4])
    assert not np.array_equal(after[0], before[0]) and acc_after[0] > acc_before[0]


def test_rowwise_adagrad_slots_are_one_float_per_table_row_and_adam_elsewhere():
    opt = RowwiseAdagrad(0.01)
    model = train(opt, full_cover_batches(2), builder=tf_fm.DeepFM)
    table = model.get_layer("field_embedding").table
    names = [v.name for v in opt.variables]
    dense = [w for w in model.trainable_weights if w.name != "table"]
    expected = [f"{w.path.replace('/', '_')}_{s}" for w in dense for s in ("momentum", "velocity")]
    assert names == ["iteration", "learning_rate", *expected, "field_embedding_table_accumulator"]
    assert tuple(opt.variables[-1].shape) == (table.shape[0],)


def test_rowwise_adagrad_dense_variables_get_adam():
    # Non-table variables: keras.optimizers.Adam at `learning_rate`, whatever
    # the tables' multiplier.
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(4, 3)).astype("float32") for _ in range(3)]
    results = []
    for opt in (keras.optimizers.Adam(0.05), RowwiseAdagrad(0.05)):
        var = keras.Variable(np.ones((4, 3), "float32"), name="kernel")
        for g in grads:
            opt.apply_gradients([(tf.constant(g), var)])
        results.append(var.numpy())
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-7)


def test_rowwise_adagrad_dense_gradient_for_a_table_equals_the_sparse_one():
    values = tf.constant([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]])
    sparse = tf.IndexedSlices(values, tf.constant([2, 0, 2]), dense_shape=tf.constant([4, 2]))
    results = []
    for grad in (sparse, tf.convert_to_tensor(sparse)):
        var = table_variable(np.ones((4, 2), "float32"))
        opt = RowwiseAdagrad(0.01)
        opt.apply_gradients([(grad, var)])
        results.append((var.numpy(), opt.accumulator(var).numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)
    np.testing.assert_array_equal(results[0][0][[1, 3]], 1.0)


@pytest.mark.parametrize(
    "strategy",
    [tf.distribute.OneDeviceStrategy("/cpu:0"), tf.distribute.MirroredStrategy(["/cpu:0"])],
    ids=["one_device", "mirrored"],
)
def test_rowwise_adagrad_under_a_distribution_strategy(strategy):
    steps = sparse_steps(5, 3, n_steps=3)
    results = []
    for distributed in (False, True):
        with strategy.scope() if distributed else contextlib.nullcontext():
            var = table_variable(np.ones((5, 3), "float32"))
            opt = RowwiseAdagrad(0.01)
            opt.build([var])
        for ids, grads in steps:
            grad = tf.IndexedSlices(tf.constant(grads), tf.constant(ids), tf.constant([5, 3]))
            if distributed:
                strategy.run(opt.apply_gradients, args=([(grad, var)],))
            else:
                opt.apply_gradients([(grad, var)])
        results.append((var.numpy(), opt.accumulator(var).numpy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)


def test_rowwise_adagrad_rejects_bad_arguments():
    with pytest.raises(ValueError, match="embedding_weight_decay_mode"):
        RowwiseAdagrad(embedding_weight_decay_mode="decouple")
    with pytest.raises(ValueError, match="epsilon"):
        RowwiseAdagrad(epsilon=-1.0)
    with pytest.raises(ValueError, match="embedding_learning_rate_multiplier"):
        RowwiseAdagrad(embedding_learning_rate_multiplier=0.0)


def test_sum_duplicate_rows_keeps_the_gradient_and_makes_ids_distinct():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, 40)
    rows = rng.normal(size=(40, 3)).astype("float32")
    summed = sum_duplicate_rows(tf.IndexedSlices(rows, tf.constant(ids), tf.constant([7, 3])))
    assert len(set(summed.indices.numpy().tolist())) == len(summed.indices) == len(set(ids))
    dense = np.zeros((7, 3), "float32")
    np.add.at(dense, ids, rows)
    np.testing.assert_allclose(tf.convert_to_tensor(summed).numpy(), dense, atol=1e-5)
    assert summed.indices.dtype == tf.int64 and summed.dense_shape.numpy().tolist() == [7, 3]
