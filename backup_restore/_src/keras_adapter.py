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
- `Model.compiled_loss` / `Model.compiled_metrics` and their `build()`: fit()
  builds them at its first step; a mid-epoch resume must restore the metric
  state before that step, so `build_compiled_metrics` builds them earlier from
  the dataset's element_spec.
- fit()'s local `data_handler` (a `DataHandler`), read from fit's stack frame,
  and its `_adapter.should_recreate_iterator()`: whether `fit()` creates a new
  iterator every epoch, which decides how many batches to skip on resume.

adapter_contract_test.py fails loudly when any of this changes in tf-keras.
"""

import sys

import tensorflow as tf
import tf_keras
from tf_keras.src.engine import data_adapter

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


def fit_data_handler():
    """The DataHandler of the `Model.fit()` call on this thread's stack.

    tf-keras keeps it in a local variable of `fit()`; this reads it (never
    modifies it) from fit's frame. Returns None when not called under fit().
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit":
            handler = frame.f_locals.get("data_handler")
            if isinstance(handler, data_adapter.DataHandler):
                return handler
        frame = frame.f_back
    return None


def recreates_iterator_per_epoch(data_handler) -> bool:
    """Whether fit() makes a new data iterator at every epoch.

    tf-keras does for a `tf.data.Dataset` given without `steps_per_epoch`;
    numpy arrays, generators, Sequences and repeated datasets use one iterator
    for all epochs.
    """
    return bool(data_handler._adapter.should_recreate_iterator())


def build_compiled_metrics(model: tf_keras.Model, data_handler) -> None:
    """Creates the compiled loss and metric objects now, as fit() would later.

    The output structure comes from tracing (not running) the model on the
    dataset's element_spec; no state changes.
    """
    loss, metrics = model.compiled_loss, model.compiled_metrics
    if (loss is None or loss.built) and (metrics is None or metrics.built):
        return
    spec = data_handler._dataset.element_spec
    x, y, _ = data_adapter.unpack_x_y_sample_weight(spec)
    y_pred = (
        tf.function(lambda inputs: model(inputs, training=False))
        .get_concrete_function(x)
        .structured_outputs
    )
    if loss is not None and not loss.built:
        loss.build(y_pred)
    if metrics is not None and not metrics.built:
        metrics.build(y_pred, y)
