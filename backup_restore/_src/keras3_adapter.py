"""Every use of a Keras 3 private API (TensorFlow backend), behind the
functions tf_keras_adapter.py offers too.

Keras 3.15 (`tf.keras` in TensorFlow 2.21) offers no public hook for a
callback to tell `fit()` where to resume or to see the data iterator. This
module holds what fit()'s frame and the model's entry points give a callback;
keras3_data.py the data iterator and position, keras3_state.py the state a
backup holds. What this module touches, and why:

- `Trainer._initial_epoch`: `fit()` starts at `self._initial_epoch or
  initial_epoch`, read right after `on_train_begin` (Keras's own
  BackupAndRestore sets it there). Never reset by Keras: the callback clears
  it at the first epoch.
- fit()'s locals `epoch_iterator` (a `TFEpochIterator`), `initial_epoch`
  (the user's) and `callbacks` (a `CallbackList`, whose `.callbacks` list
  the callback reorders to run last). `start_at` replaces the iterator's
  `_enumerate_iterator` for the first epoch (keras3_data.enumerate_from).
- `Model.train_function`: made by `make_train_function()` before
  `on_train_begin`, then called as `train_function(iterator)` once per step
  (`steps_per_execution` batches); wrapped to skip trained batches.

keras3_adapter_test.py fails loudly when any of this changes in Keras.
"""

import keras
import tensorflow as tf
from keras.src.backend.tensorflow.trainer import TFEpochIterator

from backup_restore._src import fit_frames
from backup_restore._src import keras3_data
from backup_restore._src import keras3_state

FLAVOUR = "keras3"
# The Keras version these internals were verified against.
VERIFIED_VERSION = "3.15.1"
VERSION = keras.__version__
NAME = f"Keras {VERSION}"


def owns(model) -> bool:
    return isinstance(model, keras.Model)


def check_backend() -> None:
    """Raises ValueError unless Keras runs on TensorFlow."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"backup_restore.BackupAndRestore serves Keras 3 with the "
            f"TensorFlow backend (and tf-keras); this Keras runs on "
            f"{backend!r}. Set KERAS_BACKEND=tensorflow before importing "
            "Keras, or use tf-keras. Nothing was read, written or deleted."
        )


def check_strategy(strategy) -> None:
    """Raises ValueError for a strategy Keras 3's fit() cannot train under
    (before anything is read or written)."""
    multi_worker = isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    )
    parameter_server = isinstance(
        strategy, tf.distribute.experimental.ParameterServerStrategy
    )
    if multi_worker or parameter_server:
        raise ValueError(
            f"{type(strategy).__name__} is not supported with Keras 3 "
            f"models: Keras {VERSION}'s fit() does not train under it "
            "(under MultiWorkerMirroredStrategy it fails even without any "
            "callback, converting a PerReplica batch to a tensor; it has no "
            "ParameterServerStrategy support). backup_restore supports both "
            "strategies with tf-keras models (import tf_keras, or "
            "TF_USE_LEGACY_KERAS=1). Nothing was read, written or deleted."
        )


def fit_context():
    """The train `TFEpochIterator` of the `fit()` call on this thread's
    stack (its data, its position); None outside fit()."""
    return fit_frames.fit_local("epoch_iterator", TFEpochIterator, depth=3)


def fit_callback_list():
    """The CallbackList of the `Model.fit()` call on this thread's stack."""
    return fit_frames.fit_local(
        "callbacks", keras.callbacks.CallbackList, depth=3
    )


def run_last(callback) -> list:
    """Makes `callback` the last of fit()'s callbacks; returns the others."""
    return fit_frames.run_last(callback, fit_callback_list())


def user_initial_epoch(context) -> int:
    """The `initial_epoch` the user passed to fit() (read in on_train_begin,
    before fit() combines it with `_initial_epoch`)."""
    del context
    value = fit_frames.fit_local("initial_epoch", int, depth=3)
    return int(value or 0)


class _OneShotEpoch(int):
    """The epoch fit() starts at. fit() reads `model._initial_epoch or
    initial_epoch` right after on_train_begin; reading it removes it, so
    that no later fit() starts there too."""

    def __new__(cls, model, epoch):
        value = super().__new__(cls, epoch)
        value._model = model
        return value

    def __bool__(self):
        if getattr(self._model, "_initial_epoch", None) is self:
            self._model._initial_epoch = None
        return int(self) != 0


def start_at(model, context, epoch: int, step: int, drawn: int) -> None:
    """Makes the running `fit()` start at batch `step` of `epoch`.

    `drawn` is how many batches the callback will skip in the first
    iterator (fit()'s own count of batches drawn from it).
    """
    model._initial_epoch = _OneShotEpoch(model, epoch)
    if step == 0 and drawn == 0:
        return

    def first_epoch():
        del context._enumerate_iterator  # back to the class's method
        return keras3_data.enumerate_from(context, step, drawn)

    context._enumerate_iterator = first_epoch


def clear_start(model, context) -> None:
    if isinstance(getattr(model, "_initial_epoch", None), _OneShotEpoch):
        model._initial_epoch = None
    if context is not None:
        context.__dict__.pop("_enumerate_iterator", None)
        context.__dict__.pop("_get_iterator", None)


def wrap_train_function(model, make_wrapper) -> None:
    fit_frames.wrap_train_function(
        model,
        make_wrapper,
        current_fit=fit_context,
        version=VERIFIED_VERSION,
    )


unwrap_train_function = fit_frames.unwrap_train_function
fit_arguments = fit_frames.fit_arguments


# The data iterator and position (keras3_data.py).
recreates_iterator_per_epoch = keras3_data.recreates_iterator_per_epoch
track_iterators = keras3_data.track_iterators
data_position = keras3_data.data_position
replay_epochs = keras3_data.replay_epochs
skip_in_input = keras3_data.skip_in_input
is_python_generator_input = keras3_data.is_python_generator_input
data_geometry = keras3_data.data_geometry
completed_epoch_steps = keras3_data.completed_epoch_steps
set_counted_epoch_steps = keras3_data.set_counted_epoch_steps

# The state a backup holds (keras3_state.py).
build_compiled_metrics = keras3_state.build_compiled_metrics
metrics_result = keras3_state.metrics_result
legacy_rng_layers = keras3_state.legacy_rng_layers
layers_with_unsaved_state = keras3_state.layers_with_unsaved_state
checkpoint_objects = keras3_state.checkpoint_objects
layer_random_generators = keras3_state.layer_random_generators
random_generators_of = keras3_state.random_generators_of
BUILTIN_CALLBACK_STATE = keras3_state.BUILTIN_CALLBACK_STATE
BUILTIN_CALLBACK_TENSORS = keras3_state.BUILTIN_CALLBACK_TENSORS
CSV_LOGGER = keras3_state.CSV_LOGGER
train_counter = keras3_state.train_counter
set_train_counter = keras3_state.set_train_counter
open_csv_for_append = keras3_state.open_csv_for_append
is_builtin_backup_callback = keras3_state.is_builtin_backup_callback
learning_rate_schedule = keras3_state.learning_rate_schedule
learning_rate_schedule_set_aside = keras3_state.learning_rate_schedule_set_aside
is_variable = keras3_state.is_variable
tf_variable = keras3_state.tf_variable
state_not_backed_up = keras3_state.state_not_backed_up
is_optimizer = keras3_state.is_optimizer
optimizer_variables = keras3_state.optimizer_variables
optimizer_built_on = keras3_state.optimizer_built_on
build_optimizer = keras3_state.build_optimizer
