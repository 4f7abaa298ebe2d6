"""Every use of a tf-keras private API, behind the functions
keras3_adapter.py offers too.

tf-keras 2.21 offers no public hook for a callback to tell `fit()` where to
resume or to see the data iterator. This module holds what fit()'s frame and
the model's entry points give a callback; tf_keras_data.py the data iterator
and position, tf_keras_state.py the state a backup holds. What this module
touches, and why:

- `Model._training_state`: `fit()` calls
  `model._training_state.maybe_load_initial_counters_from_ckpt(...)` right
  after `on_train_begin` to get (initial_epoch, initial_step). tf-keras's own
  BackupAndRestore uses this hook. Setting it leaves the user's
  `initial_epoch` alone, so the input pipeline is still built for every
  epoch.
- `Model.train_function`: created by `fit()` before `on_train_begin`, then
  called as `train_function(iterator)` once per step (or per
  `steps_per_execution` batches). Wrapping it lets the callback see the
  iterator `fit()` uses and skip the batches already trained on resume.
- fit()'s locals `data_handler` (a `DataHandler`, its `_initial_epoch`: the
  user's) and `callbacks` (a `CallbackList`) and its `.callbacks` list: the
  callback moves itself to the end, so that each backup sees the state of
  every other callback after the same batch or epoch.
- `Callback._supports_tf_logs`: set to True, it tells fit() that the callback
  takes logs as tensors (it never reads batch logs). Under
  ParameterServerStrategy, fit() refuses batch-level callbacks without it
  (their logs are RemoteValues), so step-level backups would be impossible.

tf_keras_adapter_test.py fails loudly when any of this changes in tf-keras.
"""

import tf_keras
from tf_keras.src.engine import data_adapter

from backup_restore._src import fit_frames
from backup_restore._src import tf_keras_data
from backup_restore._src import tf_keras_state

FLAVOUR = "tf_keras"
# The tf-keras version these internals were verified against.
VERIFIED_VERSION = "2.21.0"
VERSION = tf_keras.__version__
NAME = f"tf-keras {VERSION}"


def owns(model) -> bool:
    return isinstance(model, tf_keras.Model)


def check_backend() -> None:
    """tf-keras always runs on TensorFlow."""


def check_strategy(strategy) -> None:
    """tf-keras's fit() trains under every tf.distribute strategy."""
    del strategy


class CallbackBase(tf_keras.callbacks.Callback):
    """The tf-keras side of a callback that is first a Keras 3
    `keras.callbacks.Callback` (whose `__init__`, `set_model` and `model`
    win): an instance of both flavours' Callback, with what tf-keras's
    CallbackList reads of a callback that its own `__init__` would set."""

    # Tells fit() that the callback takes logs as tensors (it never reads
    # batch logs). Under ParameterServerStrategy, fit() refuses batch-level
    # callbacks without it (their logs are RemoteValues).
    _supports_tf_logs = True
    _chief_worker_only = None
    validation_data = None


class _InitialCounters:
    """Stands in for tf-keras's WorkerTrainingState inside one `fit()`.

    One-shot: the fit() it was set for reads it right after on_train_begin;
    it then removes itself, so that no later fit() (one without the
    callback, or after an exception escaped this one) starts there too.
    """

    def __init__(self, model, epoch: int, step: int):
        self._model = model
        self._epoch = epoch
        self._step = step

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch, initial_epoch, mode=None
    ):
        del steps_per_epoch, initial_epoch, mode  # decided by the callback
        if getattr(self._model, "_training_state", None) is self:
            self._model._training_state = None
        return self._epoch, self._step


def start_at(model, context, epoch: int, step: int, drawn: int) -> None:
    """Makes the running `fit()` start at batch `step` of `epoch`."""
    del context, drawn  # tf-keras's fit() skips nothing itself
    model._training_state = _InitialCounters(model, epoch, step)


def clear_start(model, context) -> None:
    del context
    if isinstance(getattr(model, "_training_state", None), _InitialCounters):
        model._training_state = None


def fit_context():
    """The DataHandler of the `Model.fit()` call on this thread's stack
    (its data, its position); None outside fit()."""
    return fit_frames.fit_local("data_handler", data_adapter.DataHandler, 3)


def fit_callback_list():
    """The CallbackList of the `Model.fit()` call on this thread's stack."""
    return fit_frames.fit_local("callbacks", tf_keras.callbacks.CallbackList, 3)


def run_last(callback) -> list:
    """Makes `callback` the last of fit()'s callbacks; returns the others."""
    return fit_frames.run_last(callback, fit_callback_list())


def wrap_train_function(model, make_wrapper) -> None:
    fit_frames.wrap_train_function(
        model,
        make_wrapper,
        current_fit=fit_context,
        version=VERIFIED_VERSION,
    )


unwrap_train_function = fit_frames.unwrap_train_function
fit_arguments = fit_frames.fit_arguments


def user_initial_epoch(data_handler) -> int:
    """The `initial_epoch` the user passed to fit() (before any resume)."""
    return int(data_handler._initial_epoch)


# The data handler and position (tf_keras_data.py).
recreates_iterator_per_epoch = tf_keras_data.recreates_iterator_per_epoch
track_iterators = tf_keras_data.track_iterators
data_position = tf_keras_data.data_position
replay_epochs = tf_keras_data.replay_epochs
skip_in_input = tf_keras_data.skip_in_input
is_python_generator_input = tf_keras_data.is_python_generator_input
data_geometry = tf_keras_data.data_geometry
completed_epoch_steps = tf_keras_data.completed_epoch_steps
set_counted_epoch_steps = tf_keras_data.set_counted_epoch_steps

# The state a backup holds (tf_keras_state.py).
BUILTIN_CALLBACK_STATE = tf_keras_state.BUILTIN_CALLBACK_STATE
BUILTIN_CALLBACK_TENSORS = tf_keras_state.BUILTIN_CALLBACK_TENSORS
train_counter = tf_keras_state.train_counter
set_train_counter = tf_keras_state.set_train_counter
CSV_LOGGER = tf_keras_state.CSV_LOGGER
open_csv_for_append = tf_keras_state.open_csv_for_append
build_compiled_metrics = tf_keras_state.build_compiled_metrics
legacy_rng_layers = tf_keras_state.legacy_rng_layers
checkpoint_objects = tf_keras_state.checkpoint_objects
layer_random_generators = tf_keras_state.layer_random_generators
learning_rate_schedule = tf_keras_state.learning_rate_schedule
learning_rate_schedule_set_aside = (
    tf_keras_state.learning_rate_schedule_set_aside
)
layers_with_unsaved_state = tf_keras_state.layers_with_unsaved_state
is_builtin_backup_callback = tf_keras_state.is_builtin_backup_callback
metrics_result = tf_keras_state.metrics_result
random_generators_of = tf_keras_state.random_generators_of
is_variable = tf_keras_state.is_variable
tf_variable = tf_keras_state.tf_variable
state_not_backed_up = tf_keras_state.state_not_backed_up
is_optimizer = tf_keras_state.is_optimizer
optimizer_variables = tf_keras_state.optimizer_variables
optimizer_built_on = tf_keras_state.optimizer_built_on
build_optimizer = tf_keras_state.build_optimizer
