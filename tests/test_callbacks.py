"""AtomicBackupAndRestore: resumes exactly, and a kill mid-write cannot leave it unreadable."""

import keras
import numpy as np
import pytest

import tf_fm
from tf_fm.callbacks import AtomicBackupAndRestore
from tf_fm.data import make_fm_data
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
