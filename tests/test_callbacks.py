"""AtomicBackupAndRestore: resumes exactly, and a kill mid-write cannot leave it unreadable."""

import shutil

import keras
import numpy as np
import pytest

import tf_fm
from tf_fm.callbacks import AtomicBackupAndRestore
from tf_fm.data import make_fm_data
from tf_fm.models import BestEpochStopping
from tf_fm.optimizers import LazyAdam


class Interrupt(keras.callbacks.Callback):
    def __init__(self, after_epoch):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise RuntimeError("interrupted")


def new_model(fields):
    keras.utils.set_random_seed(0)
    model = tf_fm.FM(fields, embedding_dim=4)
    model.compile(optimizer=LazyAdam(0.01), loss="binary_crossentropy")
    return model


@pytest.fixture(scope="module")
def data():
    train_set, _ = make_fm_data(n_train=1024, n_test=10, seed=3)
    return train_set.fields, train_set.dataset(batch_size=256, shuffle=False)


def assert_same_weights(m1, m2):
    for w1, w2 in zip(m1.weights, m2.weights, strict=True):
        np.testing.assert_allclose(w1.numpy(), w2.numpy(), rtol=1e-5, atol=1e-6, err_msg=w1.path)


def interrupted_run(fields, dataset, backup_dir, after_epoch=1):
    model = new_model(fields)
    callbacks = [AtomicBackupAndRestore(backup_dir), Interrupt(after_epoch)]
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(dataset, epochs=4, verbose=0, callbacks=callbacks)


def test_resumed_fit_ends_where_an_uninterrupted_one_does(data, tmp_path):
    fields, dataset = data
    straight = new_model(fields)
    straight.fit(dataset, epochs=4, verbose=0)
    interrupted_run(fields, dataset, tmp_path / "backup")
    assert AtomicBackupAndRestore.has_state(tmp_path / "backup")
    resumed = new_model(fields)
    history = resumed.fit(
        dataset, epochs=4, verbose=0, callbacks=[AtomicBackupAndRestore(tmp_path / "backup")]
    )
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    assert_same_weights(straight, resumed)
    assert not (tmp_path / "backup").exists()  # removed once training ended


def test_a_write_killed_half_way_resumes_from_the_last_committed_epoch(data, tmp_path):
    # What a SIGKILL during Keras' in-place write leaves: a truncated weights
    # file in the scratch directory, and a half-copied next state.
    fields, dataset = data
    backup = tmp_path / "backup"
    interrupted_run(fields, dataset, backup, after_epoch=2)  # states after epochs 1..3
    weights = backup / "scratch" / "latest.weights.h5"
    weights.write_bytes(weights.read_bytes()[:100])
    (backup / ".tmp-state-4").mkdir()
    (backup / ".tmp-state-4" / "latest.weights.h5").write_bytes(b"\x89HDF")

    reference = new_model(fields)
    reference.fit(dataset, epochs=4, verbose=0)
    resumed = new_model(fields)
    history = resumed.fit(dataset, epochs=4, verbose=0, callbacks=[AtomicBackupAndRestore(backup)])
    assert len(history.history["loss"]) == 1  # epoch 4 only
    assert_same_weights(reference, resumed)


def test_no_committed_state_means_a_fresh_start(data, tmp_path):
    fields, dataset = data
    backup = tmp_path / "backup"
    (backup / "scratch").mkdir(parents=True)
    (backup / "scratch" / "latest.weights.h5").write_bytes(b"truncated")
    assert not AtomicBackupAndRestore.has_state(backup)
    (backup / "current").write_text("state-3\n")  # names a state that never got renamed
    assert not AtomicBackupAndRestore.has_state(backup)
    model = new_model(fields)
    history = model.fit(dataset, epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup)])
    assert len(history.history["loss"]) == 2


# The state of the callbacks that decide when to stop (tf_fm.callback_state).


@pytest.fixture(scope="module")
def split():
    train_set, valid_set = make_fm_data(n_train=2048, n_test=1024, seed=5)
    return (
        train_set.fields,
        train_set.dataset(batch_size=256, shuffle=False),
        valid_set.dataset(batch_size=1024, shuffle=False),
    )


def converging_model(fields):
    keras.utils.set_random_seed(0)
    return tf_fm.compile_model(tf_fm.FM(fields, embedding_dim=4), learning_rate=0.05)


def fit_to_convergence(model, split, callbacks):
    _, train, valid = split
    return model.fit(train, validation_data=valid, epochs=40, verbose=0, callbacks=callbacks)


def stopping(callbacks):
    (callback,) = [c for c in callbacks if isinstance(c, BestEpochStopping)]
    return callback


def test_a_resumed_run_stops_on_the_epoch_and_weights_of_an_uninterrupted_one(split, tmp_path):
    fields = split[0]
    straight = converging_model(fields)
    straight_callbacks = tf_fm.default_callbacks()
    epochs = len(fit_to_convergence(straight, split, straight_callbacks).history["loss"])
    best = stopping(straight_callbacks).best_epoch
    assert best < epochs - 1 < 39  # stopped by patience, and not on its best epoch
    # Interrupted after the first epoch without improvement: the run has
    # waited one epoch, its best weights are from an earlier one.
    after = best + 1
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="interrupted"):
        callbacks = tf_fm.default_callbacks(backup_dir=backup) + [Interrupt(after)]
        fit_to_convergence(converging_model(fields), split, callbacks)
    assert sorted(p.name for p in (backup / f"state-{after + 1}" / "callbacks").iterdir()) == [
        f"1-best_weights-{best}.npz",  # BestEpochStopping, after ReduceLROnPlateau
        "callbacks.json",
    ]
    resumed = converging_model(fields)
    resumed_callbacks = tf_fm.default_callbacks(backup_dir=backup)
    history = fit_to_convergence(resumed, split, resumed_callbacks).history
    assert len(history["loss"]) == epochs - after - 1  # the epochs after the interruption only
    assert stopping(resumed_callbacks).best_epoch == best
    assert_same_weights(straight, resumed)  # the best epoch's weights


def test_the_best_weights_are_written_once_per_best_epoch(split, tmp_path):
    fields = split[0]
    backup = tmp_path / "backup"
    callbacks = tf_fm.default_callbacks(backup_dir=backup)
    model = converging_model(fields)
    best_files = {}

    class Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            (state,) = (backup / "current").read_text().split()
            for path in (backup / state / "callbacks").glob("*.npz"):
                best_files.setdefault(path.name, set()).add(path.stat().st_ino)

    fit_to_convergence(model, split, callbacks + [Watch()])
    assert len(best_files) > 1 and all(len(inodes) == 1 for inodes in best_files.values())


def test_a_backup_without_callback_state_resumes_with_fresh_callbacks(split, tmp_path):
    # The backup an earlier tf_fm wrote: Keras' files only.
    fields = split[0]
    backup = tmp_path / "backup"
    with pytest.raises(RuntimeError, match="interrupted"):
        callbacks = tf_fm.default_callbacks(backup_dir=backup) + [Interrupt(1)]
        fit_to_convergence(converging_model(fields), split, callbacks)
    shutil.rmtree(backup / "state-2" / "callbacks")
    callbacks = tf_fm.default_callbacks(backup_dir=backup)
    with pytest.warns(UserWarning, match="no callback state"):
        history = fit_to_convergence(converging_model(fields), split, callbacks).history
    assert 1 <= len(history["loss"]) <= 38
    assert stopping(callbacks).best_epoch >= 2  # counted afresh from the resumed epoch 3
