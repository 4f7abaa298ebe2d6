"""Backing up the state of the other callbacks of a fit() call.

Restored so that a resumed run stops at the same epoch (EarlyStopping),
follows the same learning-rate trajectory (ReduceLROnPlateau; a
LearningRateScheduler's only state is the optimizer's learning rate, restored
with the optimizer), keeps the same best model (ModelCheckpoint with
save_best_only) and writes the same CSV file (CSVLogger: no lost or duplicate
rows).

User callbacks opt in with two methods, and their state must be JSON-
serializable (nothing is ever pickled):

    class MyCallback(keras.callbacks.Callback):
        def get_backup_state(self):
            return {"seen": self.seen}

        def set_backup_state(self, state):
            self.seen = state["seen"]

Callbacks are matched by class and by their position among callbacks of the
same class, so the resumed job must pass the same callbacks.
"""

import json

import numpy as np
import tensorflow as tf
from absl import logging

from backup_restore._src import model_fingerprint

GET_STATE = "get_backup_state"
SET_STATE = "set_backup_state"


def _keys(callbacks):
    counts = {}
    for callback in callbacks:
        name = f"{type(callback).__module__}.{type(callback).__qualname__}"
        index = counts.get(name, 0)
        counts[name] = index + 1
        yield f"{name}#{index}", callback


def _builtin_attrs(callback, adapter) -> tuple:
    """The attributes of a built-in callback's JSON state (the adapter's
    BUILTIN_CALLBACK_STATE); () for another callback."""
    for cls, attrs in adapter.BUILTIN_CALLBACK_STATE.items():
        if isinstance(callback, cls):
            return attrs
    return ()


def _tensors_attr(callback, adapter) -> str | None:
    """The attribute holding a built-in callback's tensors (the adapter's
    BUILTIN_CALLBACK_TENSORS); None if it holds none."""
    for cls, attr in adapter.BUILTIN_CALLBACK_TENSORS.items():
        if isinstance(callback, cls):
            return attr
    return None


_WARNED = set()  # (class, attribute) pairs warned about


def _read(callback, attrs, adapter) -> dict:
    """The attributes `attrs` of a built-in callback, by name.

    One the installed Keras's callback does not have (another release
    than the adapter was verified with renamed or dropped it) is left out,
    with one warning per class and attribute: a resumed run starts that
    part of the callback's state afresh.
    """
    values = {}
    for attr in attrs:
        try:
            values[attr] = getattr(callback, attr)
        except AttributeError:
            cls = type(callback)
            if (cls, attr) not in _WARNED:
                _WARNED.add((cls, attr))
                logging.warning(
                    "%s of %s has no attribute %r, part of the state "
                    "backup_restore backs up for it (verified with %s %s): "
                    "a resumed run starts that part afresh. Use the "
                    "verified release for an exact resume.",
                    cls.__name__,
                    adapter.NAME,
                    attr,
                    adapter.NAME.split(" ")[0],
                    adapter.VERIFIED_VERSION,
                )
    return values


def _file_size(path):
    try:
        return tf.io.gfile.stat(path).length
    except tf.errors.NotFoundError:
        return 0


def collect(callbacks, adapter) -> tuple[dict, dict]:
    """Returns (JSON states by key, tensors by key) of the callbacks."""
    states, tensors = {}, {}
    for key, callback in _keys(callbacks):
        if hasattr(callback, GET_STATE):
            state = callback.get_backup_state()
            try:
                json.dumps(state, allow_nan=True)
            except TypeError as e:
                raise TypeError(
                    f"{type(callback).__name__}.{GET_STATE}() must return "
                    f"JSON-serializable data (nothing is pickled): {e}"
                ) from e
            states[key] = {"user": state}
            continue
        attrs = _builtin_attrs(callback, adapter)
        if attrs:
            states[key] = {
                "attrs": model_fingerprint.to_json_value(
                    _read(callback, attrs, adapter)
                )
            }
            attr = _tensors_attr(callback, adapter)
            held = _read(callback, (attr,) if attr else (), adapter)
            if held.get(attr) is not None:
                tensors[key] = [np.asarray(w) for w in held[attr]]
        elif isinstance(callback, adapter.CSV_LOGGER):
            # None before its on_train_begin opens the file (Keras 3).
            if callback.csv_file is not None:
                callback.csv_file.flush()
            # The columns it chose at its first epoch's end, from the logs
            # as it saw them there: callbacks after it may add keys that
            # History records but its rows never hold.
            keys = getattr(callback, "keys", None)
            states[key] = {
                "csv_append": bool(callback.append),
                "csv_size": _file_size(callback.filename),
                "csv_keys": None if keys is None else [str(k) for k in keys],
            }
    return states, tensors


def restore(callbacks, adapter, states, tensors, history) -> list[str]:
    """Restores saved states; returns keys of saved states not matched.

    Runs after every callback's on_train_begin (which resets their state).
    """
    unmatched = set(states)
    for key, callback in _keys(callbacks):
        state = states.get(key)
        if state is None:
            continue
        unmatched.discard(key)
        if "user" in state:
            getattr(callback, SET_STATE)(state["user"])
        elif "attrs" in state:
            for attr, value in state["attrs"].items():
                setattr(callback, attr, value)
            if key in tensors:
                setattr(
                    callback,
                    _tensors_attr(callback, adapter),
                    [t.numpy() for t in tensors[key]],
                )
        elif "csv_append" in state:
            _restore_csv(callback, adapter, state, history)
    return sorted(unmatched)


def _restore_csv(callback, adapter, state, history):
    if state.get("csv_keys") is not None:
        callback.keys = list(state["csv_keys"])
    if callback.append:
        # The file already holds the rows up to the backup, maybe more from
        # after it: cut those, they are written again.
        callback.csv_file.flush()
        with tf.io.gfile.GFile(callback.filename, "rb") as f:
            kept = f.read(state["csv_size"])
        callback.csv_file.close()
        with tf.io.gfile.GFile(callback.filename, "wb") as f:
            f.write(kept)
        callback.csv_file = adapter.open_csv_for_append(callback.filename)
        return
    # on_train_begin truncated the file: write the restored epochs again,
    # through CSVLogger's own code, with its columns, so that the rows are
    # byte-identical.
    for i, epoch in enumerate(history["epoch"]):
        logs = {k: v[i] for k, v in history["history"].items() if i < len(v)}
        callback.on_epoch_end(epoch, logs)


def tensor_spec(tensors) -> dict:
    return {
        key: [[list(a.shape), a.dtype.name] for a in arrays]
        for key, arrays in tensors.items()
    }


def holder(tensors=None, spec=None):
    """A trackable holding callback tensors, from arrays or from a spec."""
    module = tf.Module()
    if tensors is not None:
        module.tensors = {
            key: [tf.Variable(a, trainable=False) for a in arrays]
            for key, arrays in tensors.items()
        }
    else:
        module.tensors = {
            key: [
                tf.Variable(tf.zeros(shape, dtype), trainable=False)
                for shape, dtype in arrays
            ]
            for key, arrays in spec.items()
        }
    return module


def assign(module, tensors) -> None:
    """Puts new values into a holder made for the same tensor_spec."""
    for key, arrays in tensors.items():
        for variable, array in zip(module.tensors[key], arrays, strict=True):
            variable.assign(array)
