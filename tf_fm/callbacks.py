"""`BackupAndRestore` whose saved state survives a kill at any moment.

Keras' `BackupAndRestore` writes its weights file in place after every
epoch; a process killed in the middle of that write leaves a truncated HDF5
file that the next `fit` cannot open (`OSError: bad object header version
number`), so the interrupted run cannot resume. This subclass lets Keras
write into a scratch directory, then commits a complete copy of it with
renames, and rebuilds the scratch directory from the last committed copy
before Keras reads it:

    backup_dir/
      current          the name of the last committed state (atomic replace)
      state-<epoch>/   a complete copy of Keras' files after that epoch, and
        callbacks/     the state of the callbacks it restores (`tf_fm.callback_state`)
      scratch/         where Keras reads and writes (rebuilt at train begin)

A kill before `current` is replaced leaves the previous state in force; the
previous state is deleted only after it has been replaced.
"""

import os
import pathlib
import shutil
from collections.abc import Sequence

import keras

from tf_fm import callback_state

_POINTER = "current"
_SCRATCH = "scratch"
_STATE_PREFIX = "state-"
_CALLBACKS = "callbacks"


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` that a kill cannot leave unreadable.

    Saves once per epoch, like Keras' default `save_freq="epoch"`; an
    interrupted `fit` with the same callbacks resumes after the last epoch
    whose state was committed. Keras' own `BackupAndRestore` restores the
    weights, the optimizer and the epoch only; this one also restores the
    state of the callbacks in `restore` (`ReduceLROnPlateau`'s and early
    stopping's epochs waited and best value, `BestEpochStopping`'s best
    weights), so a resumed run stops on the epoch and ends on the weights
    an uninterrupted one would. Put it after those callbacks in `fit`'s
    list: their `on_train_begin` resets them, then this one restores them.

    Args:
        backup_dir: str or path-like. Where the state is kept; deleted when
            training ends.
        restore: the callbacks whose state is kept and restored
            (`tf_fm.callback_state`; the stateless ones are skipped).
            Defaults to none.
    """

    def __init__(self, backup_dir: str | os.PathLike, restore: Sequence = ()):
        self.root = pathlib.Path(backup_dir)
        self.restore = tuple(restore)
        super().__init__(str(self.root / _SCRATCH), save_freq="epoch", delete_checkpoint=True)

    @staticmethod
    def has_state(backup_dir: str | os.PathLike) -> bool:
        """Whether `backup_dir` holds a committed state to resume from."""
        return _committed(pathlib.Path(backup_dir)) is not None

    def on_train_begin(self, logs=None):
        scratch = self.root / _SCRATCH
        shutil.rmtree(scratch, ignore_errors=True)  # possibly half-written by a killed run
        state = _committed(self.root)
        if state is not None:
            shutil.copytree(state, scratch, ignore=shutil.ignore_patterns(_CALLBACKS))
        super().on_train_begin(logs)
        if state is not None:
            callback_state.load(self.restore, state / _CALLBACKS)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)  # Keras writes the scratch directory
        _commit(self.root, epoch + 1, self.restore)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        shutil.rmtree(self.root, ignore_errors=True)


def _committed(root: pathlib.Path) -> pathlib.Path | None:
    """The state directory `current` names, or None."""
    pointer = root / _POINTER
    if not pointer.is_file():
        return None
    state = root / pointer.read_text(encoding="utf-8").strip()
    return state if state.is_dir() else None


def _commit(root: pathlib.Path, epoch: int, callbacks: Sequence) -> None:
    """Copies the scratch directory and the callbacks' state to `state-<epoch>`; points to it."""
    name = f"{_STATE_PREFIX}{epoch}"
    staging = root / f".tmp-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(root / _SCRATCH, staging)
    previous = _committed(root)
    earlier = previous / _CALLBACKS if previous is not None else None
    callback_state.save(callbacks, staging / _CALLBACKS, previous=earlier)
    shutil.rmtree(root / name, ignore_errors=True)
    os.replace(staging, root / name)
    tmp = root / f".tmp-{_POINTER}"
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, root / _POINTER)
    for stale in root.iterdir():
        if stale.name != name and stale.name.startswith((_STATE_PREFIX, ".tmp-")):
            shutil.rmtree(stale, ignore_errors=True)
