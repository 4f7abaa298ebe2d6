"""Every use of a tf-keras private API, in one place.

tf-keras 2.21 (pinned in requirements.txt) offers no public hook for a callback
to tell `fit()` where to resume or to see the data iterator. What this module
touches, and why:

- `Model._training_state`: `fit()` calls
  `model._training_state.maybe_load_initial_counters_from_ckpt(...)` right after
  `on_train_begin` to get (initial_epoch, initial_step). tf-keras's own
  BackupAndRestore uses this hook. Setting it leaves the user's `initial_epoch`
  alone, so the input pipeline is still built for every epoch.
- `Model.train_function`: created by `fit()` before `on_train_begin`, then
  called as `train_function(iterator)` once per step (or per
  `steps_per_execution` batches). Wrapping it lets the callback see the
  iterator `fit()` uses and skip the batches already trained on resume.
- `OwnedIterator._dataset` / `DistributedIterator._cardinality`: the
  cardinality of the dataset behind an iterator, to tell whether `fit()`
  creates a new iterator every epoch (see `recreated_per_epoch`).

adapter_contract_test.py fails loudly when any of this changes in tf-keras.
"""

import tensorflow as tf
import tf_keras

# The tf-keras version these internals were verified against.
VERIFIED_TF_KERAS_VERSION = "2.21.0"


class _InitialCounters:
    """Stands in for tf-keras's WorkerTrainingState inside `fit()`."""

    def __init__(self, epoch: int, step: int):
        self._epoch = epoch
        self._step = step

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch, initial_epoch, mode=None
    ):
        del steps_per_epoch, initial_epoch, mode  # decided by the callback
        return self._epoch, self._step


def set_initial_counters(model: tf_keras.Model, epoch: int, step: int) -> None:
    """Makes the running `fit()` start at (epoch, step)."""
    model._training_state = _InitialCounters(epoch, step)


def clear_initial_counters(model: tf_keras.Model) -> None:
    if isinstance(getattr(model, "_training_state", None), _InitialCounters):
        model._training_state = None


def wrap_train_function(model: tf_keras.Model, make_wrapper) -> None:
    """Replaces `model.train_function` with `make_wrapper(original)`.

    Must be called from `on_train_begin`, after `fit()` created the function.
    """
    original = model.train_function
    if original is None:
        raise RuntimeError(
            "model.train_function is not set in on_train_begin; this tf-keras "
            f"version differs from the verified {VERIFIED_TF_KERAS_VERSION}."
        )
    model.train_function = make_wrapper(original)


def iterator_cardinality(iterator) -> int | None:
    """The cardinality of the dataset behind a fit() iterator, if known.

    Returns a non-negative count, tf.data.INFINITE_CARDINALITY (-1), or None
    when unknown.
    """
    dataset = getattr(iterator, "_dataset", None)
    if isinstance(dataset, tf.data.Dataset):
        value = int(dataset.cardinality().numpy())
    else:
        value = getattr(iterator, "_cardinality", None)
        if value is None:
            return None
        value = int(value)
    if value == tf.data.UNKNOWN_CARDINALITY:
        return None
    return value


def recreated_per_epoch(iterator, batches_in_epoch: int) -> bool:
    """Whether fit() makes a new iterator each epoch for this input.

    tf-keras recreates it for a `tf.data.Dataset` given without
    `steps_per_epoch` (or with exactly its size); numpy arrays, generators,
    Sequences and repeated datasets use one iterator for all epochs. An
    iterator over exactly one epoch of data is the first kind; an infinite or
    multi-epoch one the second. Unknown cardinality comes from a finite
    dataset without `steps_per_epoch`: the first kind.
    """
    cardinality = iterator_cardinality(iterator)
    if cardinality is None:
        return True
    return cardinality == batches_in_epoch
