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
  the dataset's element_spec (one replica's `PerReplicaSpec._value_specs`
  under a distribution strategy).
- fit()'s local `data_handler` (a `DataHandler`), read from fit's stack frame,
  and its `_adapter.should_recreate_iterator()`: whether `fit()` creates a new
  iterator every epoch, which decides how many batches to skip on resume.
- `DataHandler._dataset` / `._adapter`, and `KerasSequenceAdapter`'s
  `_shuffle_sequence` / `_keras_sequence`: `replay_epochs` brings a per-epoch
  input pipeline to where the skipped epochs would have left it.
- fit()'s local `callbacks` (a `CallbackList`) and its `.callbacks` list: the
  callback moves itself to the end, so that each backup sees the state of
  every other callback after the same batch or epoch.
- `ModelCheckpoint._batches_seen_since_last_saving` / `._last_batch_seen`:
  its batch-level save counters, backed up with its other state.
- `Callback._supports_tf_logs`: set to True, it tells fit() that the callback
  takes logs as tensors (it never reads batch logs). Under
  ParameterServerStrategy, fit() refuses batch-level callbacks without it
  (their logs are RemoteValues), so step-level backups would be impossible.
- `BaseRandomLayer._random_generator` (a `backend.RandomGenerator`), its
  `_rng_type` and `_generator`: layer randomness (Dropout, ...). tf-keras
  deliberately leaves it out of checkpoints; `layer_random_generators` hands
  the `tf.random.Generator`s to the backup so that they are saved too.

- `DataHandler._adapter`'s `batch_size()` / `get_size()` (in batches) /
  `partial_batch_size()`, `DataHandler._dataset.element_spec` and
  `inferred_steps` / `_inferred_steps`: what a data position means (checked
  on resume), and the epoch length fit() counted for an input of unknown
  size (given to a resumed fit()).
- `Optimizer._built`, `_index_dict` and `_var_key` (optimizer.Optimizer):
  whether an optimizer made its slots and on which variables (a GAN's are
  built on a subset of the model's), so that a restore builds it on the
  same ones before filling them.
- `Optimizer._learning_rate` (optimizer.Optimizer), `_hyper["learning_rate"]`
  (legacy optimizers), `LossScaleOptimizer.inner_optimizer`: whether the
  learning rate is a schedule (then it cannot be set, and need not be).

adapter_contract_test.py fails loudly when any of this changes in tf-keras.
"""

import random

import tensorflow as tf
import tf_keras
from tf_keras.src.engine import data_adapter

from backup_restore._src import fit_frames

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


def accept_tensor_logs(callback: tf_keras.callbacks.Callback) -> None:
    """Lets fit() hand `callback` unconverted logs (and run its batch hooks
    under ParameterServerStrategy). The callback must not read batch logs."""
    callback._supports_tf_logs = True


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


# Attributes that make up the state of tf-keras's built-in callbacks.
BUILTIN_CALLBACK_STATE = {
    tf_keras.callbacks.EarlyStopping: (
        "wait",
        "stopped_epoch",
        "best",
        "best_epoch",
    ),
    tf_keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
    tf_keras.callbacks.ModelCheckpoint: (
        "best",
        "epochs_since_last_save",
        "_batches_seen_since_last_saving",
        "_last_batch_seen",
    ),
    # The batch count its profiler reads (reset by on_train_begin); its
    # summaries' step is the model's train counter (`train_counter`).
    tf_keras.callbacks.TensorBoard: ("_global_train_batch",),
}


def train_counter(model: tf_keras.Model) -> int:
    """`model._train_counter`: the steps this fit() trained, the step of
    TensorBoard's batch summaries. fit() sets it to 0 before
    on_train_begin; no checkpoint holds it."""
    return int(model._train_counter.numpy())


def set_train_counter(model: tf_keras.Model, value) -> None:
    if value is not None:
        model._train_counter.assign(value)


CSV_LOGGER = tf_keras.callbacks.CSVLogger


def open_csv_for_append(filename):
    """The file object CSVLogger writes to, as its on_train_begin opens it."""
    return tf.io.gfile.GFile(filename, "a")


def recreates_iterator_per_epoch(data_handler) -> bool:
    """Whether fit() makes a new data iterator at every epoch.

    tf-keras does for a `tf.data.Dataset` given without `steps_per_epoch`;
    numpy arrays, generators, Sequences and repeated datasets use one iterator
    for all epochs.
    """
    return bool(data_handler._adapter.should_recreate_iterator())


def track_iterators(data_handler) -> None:
    """tf-keras makes an iterator only to train on it: the position counts
    them (position.py)."""
    del data_handler


def data_position(data_handler, position, at_epoch_end: bool) -> dict:
    """The data position to back up (see position.py)."""
    return position.record(
        at_epoch_end=at_epoch_end,
        next_iterator_new=recreates_iterator_per_epoch(data_handler),
    )


def build_compiled_metrics(model: tf_keras.Model, data_handler) -> None:
    """Creates the compiled loss and metric objects now, as fit() would later.

    The output structure comes from tracing (not running) the model on the
    dataset's element_spec; no state changes.
    """
    loss, metrics = model.compiled_loss, model.compiled_metrics
    if (loss is None or loss.built) and (metrics is None or metrics.built):
        return
    spec = fit_frames.one_replica_spec(data_handler._dataset.element_spec)
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


def replay_epochs(data_handler, iterators: int, epochs: int) -> None:
    """Advances a per-epoch input pipeline by `iterators` epochs without
    training (tf-keras makes one iterator per epoch for such an input, and
    none for the others; `epochs` is the same count then).

    For inputs that get a new iterator every epoch, what orders epoch k lives
    outside the checkpoint: the reshuffle seed generator of a
    `Dataset.shuffle(seed=...)` advances once per iterator created, fit's
    Sequence shuffle draws from Python's `random` once per epoch, and a
    Sequence may reorder itself in `on_epoch_end`. Doing the same for each
    makes the resumed epoch see what the uninterrupted run saw.
    """
    del epochs
    adapter = data_handler._adapter
    dataset = data_handler._dataset
    for _ in range(iterators):
        iter(dataset)  # draws the next reshuffle seeds; never read
        if isinstance(adapter, data_adapter.KerasSequenceAdapter):
            if adapter._shuffle_sequence:
                random.shuffle(list(range(len(adapter._keras_sequence))))
        adapter.on_epoch_end()


def is_python_generator_input(data_handler) -> bool:
    """Whether fit() reads a plain Python generator (not a Sequence)."""
    return type(data_handler._adapter) is data_adapter.GeneratorDataAdapter


def user_initial_epoch(data_handler) -> int:
    """The `initial_epoch` the user passed to fit() (before any resume)."""
    return int(data_handler._initial_epoch)


def legacy_rng_layers(model: tf_keras.Model) -> list[str]:
    """Names of layers whose RNG state cannot be backed up.

    tf-keras layers such as Dropout draw from a `backend.RandomGenerator`. Its
    legacy stateful mode uses stateful random ops whose state lives in the op
    kernels, not in variables; only the "stateful" mode (a tf.random.Generator,
    enabled by `tf_keras.backend.experimental.enable_tf_random_generator()`)
    is saved with the model and restored exactly.
    """
    names = []
    for layer in model.submodules:
        generator = getattr(layer, "_random_generator", None)
        rng_type = getattr(generator, "_rng_type", None)
        if rng_type == getattr(generator, "RNG_LEGACY_STATEFUL", object()):
            names.append(getattr(layer, "name", type(layer).__name__))
    return names


def checkpoint_objects(model, random_generators, held) -> dict:
    """What a backup's tf.train.Checkpoint holds of the model: the model,
    its optimizer, and the layers' tf.random.Generators, which tf-keras
    leaves out of the model's checkpoint. The model's checkpoint holds
    everything it tracks: its other optimizers and its raw tf.Variables
    (`held`) among them."""
    del held
    return {
        "model": model,
        "optimizer": model.optimizer,
        "layer_random_generators": random_generators,
    }


def layer_random_generators(model: tf_keras.Model) -> list:
    """The tf.random.Generator of every layer that has one, in a fixed order.

    Only layers whose RandomGenerator is in "stateful" mode (the default once
    `enable_tf_random_generator()` was called) have one; it is created when
    the layer is built.
    """
    generators = []
    for layer in model.submodules:
        random_generator = getattr(layer, "_random_generator", None)
        if random_generator is None:
            continue
        random_generator._maybe_init()
        generator = getattr(random_generator, "_generator", None)
        if isinstance(generator, tf.random.Generator):
            generators.append(generator)
    return generators


def data_geometry(data_handler) -> dict:
    """What a position in fit()'s input means: batches per epoch, batch size
    and number of samples, each None where fit() does not know it."""

    def known(read):
        try:
            value = read()
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            return None
        return None if value is None else int(value)

    adapter = data_handler._adapter
    batch_size = known(adapter.batch_size)
    # Array adapters count their size in batches; the last may be partial.
    batches = known(adapter.get_size)
    partial = known(adapter.partial_batch_size)
    samples = None
    if batch_size is not None and batches is not None:
        samples = batches * batch_size - (
            batch_size - partial if partial else 0
        )
    return {
        "steps_per_epoch": known(lambda: data_handler.inferred_steps),
        "batch_size": batch_size,
        "num_samples": samples,
        # A tf.data.Dataset tells fit() neither of those two; its element
        # shapes include the batch size with batch(drop_remainder=True).
        "element_spec": fit_frames.batch_shapes(data_handler._dataset),
    }


def completed_epoch_steps(data_handler):
    """Batches per epoch, once fit() has counted them; None before."""
    return data_handler.inferred_steps


def set_counted_epoch_steps(data_handler, steps: int) -> None:
    """Tells fit() how many batches an epoch has, as it would have counted
    itself at the end of the first epoch of an input of unknown size.

    Without it, a resumed fit() runs its first epoch to the end of the data
    again; that last, failing step increments the optimizer's `iterations`
    once more than the uninterrupted run did.
    """
    data_handler._inferred_steps = int(steps)


def learning_rate_schedule(optimizer):
    """The LearningRateSchedule driving `optimizer`, or None.

    With a schedule the learning rate is a function of `iterations` (which
    is backed up); tf-keras's optimizers then refuse to have it set.
    """
    schedule_type = tf_keras.optimizers.schedules.LearningRateSchedule
    while optimizer is not None:
        for value in (
            getattr(optimizer, "_learning_rate", None),  # optimizer.Optimizer
            getattr(optimizer, "_hyper", {}).get("learning_rate"),  # legacy
        ):
            if isinstance(value, schedule_type):
                return value
        # LossScaleOptimizer delegates to the optimizer it wraps.
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


# Preprocessing layers whose state tf.train.Checkpoint does not save: the
# vocabulary of the lookup layers lives in a StaticHashTable, the bin
# boundaries of Discretization in a Python list.
_UNSAVED_STATE_LAYERS = (
    tf_keras.layers.StringLookup,
    tf_keras.layers.IntegerLookup,
    tf_keras.layers.TextVectorization,
    tf_keras.layers.Discretization,
)


def layers_with_unsaved_state(model: tf_keras.Model) -> list[str]:
    """Names of the model's layers whose state a backup cannot hold (not
    the lookup layer inside a TextVectorization: the user made the outer)."""
    found = [
        layer
        for layer in model.submodules
        if isinstance(layer, _UNSAVED_STATE_LAYERS)
    ]
    inner = {
        id(sub)
        for layer in found
        for sub in layer.submodules
        if sub is not layer
    }
    return [
        f"{layer.name} ({type(layer).__name__})"
        for layer in found
        if id(layer) not in inner
    ]


def is_builtin_backup_callback(callback) -> bool:
    """Whether `callback` is tf-keras's own BackupAndRestore."""
    return isinstance(callback, tf_keras.callbacks.BackupAndRestore)


def metrics_result(model: tf_keras.Model) -> dict:
    """The logs a train step returns, from the metrics' current state."""
    return model.get_metrics_result()


def random_generators_of(objects) -> list:
    """`layer_random_generators` of every tf-keras layer among `objects`."""
    return fit_frames.unique(
        generator
        for obj in objects
        if isinstance(obj, tf_keras.layers.Layer)
        for generator in layer_random_generators(obj)
    )


def is_variable(value) -> bool:
    return isinstance(value, tf.Variable)


def tf_variable(variable):
    return variable


def state_not_backed_up(obj) -> bool:
    """Nothing the model tracks: the backup holds the model object, and so
    everything a checkpoint of it saves."""
    del obj
    return False


def is_optimizer(value) -> bool:
    return isinstance(
        value,
        (tf_keras.optimizers.Optimizer, tf_keras.optimizers.legacy.Optimizer),
    )


def optimizer_variables(optimizer) -> list:
    variables = optimizer.variables
    # A legacy optimizer's is a method.
    return list(variables() if not isinstance(variables, list) else variables)


def optimizer_built_on(optimizer, candidates):
    """(built, indices): whether `optimizer` has made its per-variable
    state (None for a legacy optimizer, which makes its slots lazily and
    has them restored when it does), and the positions in `candidates` of
    the variables it was built on, in its order (None when one of them is
    not among `candidates`).

    `Optimizer._built`, `_index_dict` (variable key -> position in the list
    it was built on) and `_var_key`: what `Optimizer.build` records.
    """
    # A LossScaleOptimizer is built by building the optimizer it wraps.
    while is_optimizer(getattr(optimizer, "inner_optimizer", None)):
        optimizer = optimizer.inner_optimizer
    if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
        return None, None
    if not getattr(optimizer, "_built", False):
        return False, None
    index = getattr(optimizer, "_index_dict", None)
    if index is None:
        return True, None
    found = {}
    for i, candidate in enumerate(candidates):
        try:
            key = optimizer._var_key(candidate)
        except AttributeError:
            continue  # not a variable (a lookup layer's vocabulary handler)
        found.setdefault(index.get(key), i)
    found.pop(None, None)
    if sorted(found) != list(range(len(index))):
        return True, None
    return True, [found[position] for position in range(len(index))]


def build_optimizer(optimizer, variables) -> None:
    """Creates the optimizer's slot variables now (so that a restore fills
    them), as its first step would. Legacy optimizers make them lazily."""
    if hasattr(optimizer, "build"):
        optimizer.build(variables)
