"""The training callbacks' state, kept beside a checkpoint so that a resumed run decides alike.

A checkpoint (Keras' `BackupAndRestore`, the `tf_fm.distributed` loops')
restores the weights, the optimizer (the learning rate included) and the
epoch; without this module the callbacks that decide when to stop would
start again from nothing on resume: `ReduceLROnPlateau` and early stopping
would forget how many epochs they have waited and the best value so far,
and the best epoch's weights that early stopping ends on would be lost, so
an interrupted run would end on other weights than an uninterrupted one.

A callback's state is the attributes its class names: a class attribute
`state_attributes` (a tuple of names) and optionally `state_arrays`
(`{name of a list of arrays: name of the attribute that tags it}`), as
`tf_fm.BestEpochStopping` has; Keras' `ReduceLROnPlateau` and
`EarlyStopping` are described here. A state directory holds:

    callbacks.json                  [{"class": name, "state": {...}}, ...]
    <i>-<array name>-<tag>.npz      a list of arrays (e.g. the best weights)

An array file is written once per tag (the best weights once per new best
epoch) and hard-linked into the following states while its tag holds, so a
per-epoch state does not copy the model again. `save` writes into a
staging directory and renames it, so a kill leaves either the previous
directory or the complete new one.
"""

import json
import os
import pathlib
import shutil
import warnings
from collections.abc import Sequence

import keras
import numpy as np

STATE_FILE = "callbacks.json"

# The state of the Keras callbacks a run to convergence uses, by class.
_KERAS_STATE = {
    keras.callbacks.ReduceLROnPlateau: (("wait", "best", "cooldown_counter"), {}),
    keras.callbacks.EarlyStopping: (
        ("wait", "best", "best_epoch", "stopped_epoch"),
        {"best_weights": "best_epoch"},
    ),
}


def _spec(callback) -> tuple[tuple, dict] | None:
    """`(scalar attribute names, {array attribute: tag attribute})`, or None if stateless."""
    names = getattr(type(callback), "state_attributes", None)
    if names is not None:
        return tuple(names), dict(getattr(type(callback), "state_arrays", {}))
    for cls, spec in _KERAS_STATE.items():
        if isinstance(callback, cls):
            return spec
    return None


def stateful(callbacks: Sequence) -> list:
    """The callbacks of `callbacks` that have a state to keep, in order."""
    return [c for c in callbacks if _spec(c) is not None]


def _scalar(value):
    """A JSON value: None, bool, int or float (numpy scalars converted; inf allowed)."""
    if value is None or isinstance(value, bool | int | float):
        return value
    array = np.asarray(value)
    if array.ndim != 0:
        raise TypeError(f"a callback state attribute must be a scalar; got shape {array.shape}")
    return array.item()


def save(
    callbacks: Sequence, directory: str | os.PathLike, previous: str | os.PathLike | None = None
) -> None:
    """Writes the state of `callbacks` to `directory` (replaced whole, never half-written).

    Nothing is written when none of `callbacks` has a state.

    Args:
        callbacks: the run's callbacks; the stateless ones are skipped.
        directory: the state directory to write.
        previous: the last state directory, whose array files are
            hard-linked where their tag has not changed; or None.
    """
    if not stateful(callbacks):
        return
    directory = pathlib.Path(directory)
    staging = directory.with_name(f".tmp-{directory.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    entries = []
    for i, callback in enumerate(stateful(callbacks)):
        names, arrays = _spec(callback)
        state = {name: _scalar(getattr(callback, name)) for name in names}
        for name, tag_name in arrays.items():
            state[name] = _save_arrays(callback, i, name, tag_name, staging, previous)
        entries.append({"class": type(callback).__name__, "state": state})
    (staging / STATE_FILE).write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)


def _save_arrays(callback, index, name, tag_name, staging, previous) -> str | None:
    """Writes (or links) one list of arrays; returns its file name, None for no list."""
    values = getattr(callback, name)
    if values is None:
        return None
    file_name = f"{index}-{name}-{_scalar(getattr(callback, tag_name))}.npz"
    earlier = pathlib.Path(previous) / file_name if previous is not None else None
    if earlier is not None and earlier.is_file():
        try:
            os.link(earlier, staging / file_name)
            return file_name
        except OSError:  # a filesystem without hard links: copy
            pass
    tmp = staging / f".tmp-{file_name}"
    np.savez(tmp, *[np.asarray(v) for v in values])
    os.replace(tmp, staging / file_name)
    return file_name


def load(callbacks: Sequence, directory: str | os.PathLike) -> bool:
    """Sets the state of `callbacks` from `directory`; whether there was one to set.

    A directory without a state (a checkpoint of an earlier version) leaves
    the callbacks as they are: they start afresh, with a warning. A state of
    other callbacks (different classes or number) is refused the same way.
    """
    path = pathlib.Path(directory) / STATE_FILE
    targets = stateful(callbacks)
    if not targets:
        return False
    if not path.is_file():
        warnings.warn(
            f"{directory} holds no callback state: early stopping and learning-rate decay "
            "start afresh on this resumed run",
            stacklevel=2,
        )
        return False
    entries = json.loads(path.read_text(encoding="utf-8"))
    classes = [type(c).__name__ for c in targets]
    if [e["class"] for e in entries] != classes:
        warnings.warn(
            f"{path} is the state of the callbacks {[e['class'] for e in entries]}, not of "
            f"{classes}: they start afresh on this resumed run",
            stacklevel=2,
        )
        return False
    for callback, entry in zip(targets, entries, strict=True):
        _, arrays = _spec(callback)
        for name, value in entry["state"].items():
            if name in arrays and value is not None:
                with np.load(pathlib.Path(directory) / value) as saved:
                    value = [saved[f"arr_{i}"] for i in range(len(saved.files))]
            setattr(callback, name, value)
    return True


class EpochStates:
    """The callbacks' state after each epoch, beside a checkpoint the loop writes itself.

    `root/callbacks-<epoch>/` for the state after `epoch` epochs. Write it
    (`save`) before the checkpoint of that epoch and `prune` after it, so
    a kill between the two leaves the state of the checkpoint in force.

    Args:
        root: the checkpoint directory.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)

    def _directory(self, epoch: int) -> pathlib.Path:
        return self.root / f"callbacks-{epoch}"

    def save(self, callbacks: Sequence, epoch: int) -> None:
        """Writes the state after `epoch` epochs (array files linked from the epoch before)."""
        save(callbacks, self._directory(epoch), previous=self._directory(epoch - 1))

    def prune(self, epoch: int) -> None:
        """Removes every state but the one after `epoch` epochs."""
        for path in self.root.glob("callbacks-*"):
            if path != self._directory(epoch):
                shutil.rmtree(path, ignore_errors=True)

    def load(self, callbacks: Sequence, epoch: int) -> bool:
        """Sets the callbacks' state after `epoch` epochs (`load`)."""
        return load(callbacks, self._directory(epoch))
