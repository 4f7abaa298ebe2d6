"""Every use of a Keras 3 private API, in one place (TensorFlow backend).

Keras 3.15 (pinned in requirements.txt; `tf.keras` in TensorFlow 2.21) offers
no public hook for a callback to tell `fit()` where to resume or to see the
data iterator. What this module touches, and why:

- `Trainer._initial_epoch`: `fit()` starts at `self._initial_epoch or
  initial_epoch`, read right after `on_train_begin` (Keras's own
  BackupAndRestore sets it there). Never reset by Keras: the callback clears
  it at the first epoch.
- fit()'s local `epoch_iterator` (a `TFEpochIterator`): its
  `_enumerate_iterator` yields `(begin_step, end_step, iterator)` for one
  epoch, always from step 0. `start_at` replaces it, for the first epoch
  only, by the same loop (`_enumerate_from`) starting at the resumed step;
  `_current_iterator`, `_steps_seen`, `_num_batches`, `steps_per_epoch`,
  `steps_per_execution`, `_get_iterator()` and `data_adapter` are its state.
  `track_iterators` replaces `_get_iterator` (for one fit()) to count the
  iterators fit() makes.
- fit()'s local `initial_epoch` (the user's) and `callbacks` (a
  `CallbackList`, whose `.callbacks` list the callback reorders to run last).
- `Model.train_function`: made by `make_train_function()` before
  `on_train_begin`, then called as `train_function(iterator)` once per step
  (`steps_per_execution` batches); wrapped to skip trained batches.
- `Layer._seed_generators` / `SeedGenerator.state`: the random state of
  Dropout and other random layers. `tf.train.Checkpoint` does not reach it
  (a SeedGenerator is no trackable), so it is handed to the backup.
- Data adapters (`ArrayDataAdapter`, `TFDatasetAdapter`, `PyDatasetAdapter`
  with `shuffle`, `GeneratorDataAdapter`): `batch_size`, `num_batches`,
  `partial_batch_size`, `on_epoch_begin/end`, for what a position means and
  for `replay_epochs`.
- `Optimizer._learning_rate`, `LossScaleOptimizer.inner_optimizer`: whether
  the learning rate is a schedule.
- `Trainer._symbolic_build(data_batch=...)`: builds the compiled metrics
  before the first step (without a strategy fit() builds them when it
  traces the train step), so that a mid-epoch resume can restore them. It
  builds an unbuilt `model.optimizer` too unless `Optimizer.built` is set.
- TensorFlow's `Trackable._serialize_to_tensors`: overridden by an object
  that a checkpoint saves by itself (a MutableHashTable); one such held by
  a model is named in the warning at fit()'s start (the backup holds
  variables, not the model object).
- `BaseOptimizer._trainable_variables`: the variables an optimizer was
  built on (a subset of the model's, for a GAN's), so that a restore builds
  it on the same ones before filling its state.
- `keras.src.backend.Variable.value`: the tf.Variable (under a strategy a
  distributed one) behind a Keras variable, for per-replica metric state.

adapter_contract_test.py fails loudly when any of this changes in Keras.
"""

import random

import keras
import tensorflow as tf
from keras.src.backend.tensorflow.trainer import TFEpochIterator
from keras.src.trainers.data_adapters import generator_data_adapter
from keras.src.trainers.data_adapters import py_dataset_adapter
from keras.src.utils import file_utils

from backup_restore._src import fit_frames

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
        return _enumerate_from(context, step, drawn)

    context._enumerate_iterator = first_epoch


def clear_start(model, context) -> None:
    if isinstance(getattr(model, "_initial_epoch", None), _OneShotEpoch):
        model._initial_epoch = None
    if context is not None:
        context.__dict__.pop("_enumerate_iterator", None)
        context.__dict__.pop("_get_iterator", None)


def _enumerate_from(it, start: int, drawn: int):
    """`EpochIterator._enumerate_iterator` of Keras 3.15.1, starting at
    batch `start` with `drawn` batches already drawn from the iterator."""
    it.data_adapter.on_epoch_begin()
    steps_per_epoch = it.steps_per_epoch or it._num_batches or -1
    per_call = it.steps_per_execution
    if steps_per_epoch > 0:
        if it._current_iterator is None or it.steps_per_epoch is None:
            it._current_iterator = iter(it._get_iterator())
            it._steps_seen = drawn
        for step in range(start, steps_per_epoch, per_call):
            if it._num_batches and it._steps_seen >= it._num_batches:
                if it.steps_per_epoch:
                    it._interrupted_warning()
                break
            it._steps_seen += per_call
            yield step, step + per_call - 1, it._current_iterator
        if it._num_batches and it._steps_seen >= it._num_batches:
            it._current_iterator = iter(it._get_iterator())
            it._steps_seen = 0
    else:
        iterator = iter(it._get_iterator())
        step = start - per_call
        while True:
            step += per_call
            it._steps_seen = step + per_call
            yield step, step + per_call - 1, iterator
    it.data_adapter.on_epoch_end()


def wrap_train_function(model, make_wrapper) -> None:
    fit_frames.wrap_train_function(
        model,
        make_wrapper,
        current_fit=fit_context,
        version=VERIFIED_VERSION,
    )


unwrap_train_function = fit_frames.unwrap_train_function
fit_arguments = fit_frames.fit_arguments


def recreates_iterator_per_epoch(context) -> bool:
    """Whether fit() makes a new data iterator at every epoch: Keras 3 does
    unless `steps_per_epoch` is given (then one iterator runs on, and is
    made anew only when it runs out)."""
    return context.steps_per_epoch is None


class _CountingSource:
    """Stands in for the distributed dataset fit() makes its iterators
    from, and counts them. Keras 3 makes more than it trains on (a new one
    at the end of every epoch that used up its input, whether or not the
    next epoch uses it), and each one advances a `shuffle(seed=...)`'s
    reshuffle seeds: a resumed fit() must make as many."""

    def __init__(self, dataset):
        self._dataset = dataset
        self.made = 0

    def __iter__(self):
        iterator = iter(self._dataset)
        self.made += 1
        return iterator

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def track_iterators(context) -> None:
    """Counts the iterators this fit() makes from now on."""
    source = _CountingSource(context._get_iterator())
    context._get_iterator = lambda: source


def data_position(context, position, at_epoch_end: bool) -> dict:
    """The data position to back up (see position.py): how many iterators
    fit() made before the one the next step trains on, and how many batches
    were drawn from that one."""
    made = context._get_iterator().made
    if not at_epoch_end:
        # Mid-epoch, the current iterator is the newest one made.
        return {"iterators_done": made - 1, "drawn": position.iterator_batches}
    upcoming = context._current_iterator
    if recreates_iterator_per_epoch(context) or upcoming is None:
        return {"iterators_done": made, "drawn": 0}
    if upcoming is position.iterator:
        return {"iterators_done": made - 1, "drawn": position.iterator_batches}
    # The input ran out at this epoch's end: the next epoch trains on the
    # iterator fit() has just made.
    return {"iterators_done": made - 1, "drawn": 0}


def replay_epochs(context, iterators: int, epochs: int) -> None:
    """Brings fit()'s input to where the interrupted run had it, without
    reading it: makes `iterators` iterators (each `iter()` of a
    `Dataset.shuffle(seed=...)` draws its next reshuffle seeds), and for
    each of the `epochs` completed epochs runs the data adapter's epoch
    hooks (a PyDataset's `on_epoch_end` may reorder it) and, for a shuffled
    PyDataset, the batch-order draw from Python's `random` that its
    generator makes when an epoch starts reading it."""
    source = context._get_iterator()
    adapter = context.data_adapter
    for _ in range(iterators):
        iter(source)
    shuffled = (
        isinstance(adapter, py_dataset_adapter.PyDatasetAdapter)
        and adapter.shuffle
        and adapter.py_dataset.num_batches
    )
    for _ in range(epochs):
        if shuffled:
            random.shuffle(list(range(adapter.py_dataset.num_batches)))
        adapter.on_epoch_begin()
        adapter.on_epoch_end()


def is_python_generator_input(context) -> bool:
    return isinstance(
        context.data_adapter, generator_data_adapter.GeneratorDataAdapter
    )


def data_geometry(context) -> dict:
    """What a position in fit()'s input means (None where unknown)."""
    adapter = context.data_adapter

    def known(name):
        value = getattr(adapter, name, None)
        return None if value is None else int(value)

    batch_size = known("batch_size")
    samples = getattr(adapter, "_num_samples", None)
    return {
        "steps_per_epoch": context.num_batches,
        "batch_size": batch_size,
        "num_samples": None if samples is None else int(samples),
        "element_spec": fit_frames.batch_shapes(context._distributed_dataset),
    }


def completed_epoch_steps(context):
    """Batches per epoch, once fit() knows them; None before."""
    return context.num_batches


def set_counted_epoch_steps(context, steps: int) -> None:
    """Tells fit() the epoch length it counted in the interrupted run's
    first epoch of an input of unknown size."""
    context._num_batches = int(steps)


def build_compiled_metrics(model, context) -> None:
    """Creates the compiled loss and metric state now, as fit() would at
    its first step (under a strategy it has already: then a no-op).

    `Trainer._symbolic_build` traces the model symbolically on one
    replica's batch spec; no state changes.
    """
    spec = fit_frames.one_replica_spec(
        context._distributed_dataset.element_spec
    )
    batch = tf.nest.map_structure(
        lambda s: keras.KerasTensor(tuple(s.shape), s.dtype.name), spec
    )
    # `_symbolic_build` also builds an unbuilt `model.optimizer` on every
    # trainable variable; one that a custom train_step never uses (a GAN's
    # default) stays unbuilt in an uninterrupted run, and so here.
    optimizer = model.optimizer
    unbuilt = optimizer is not None and not optimizer.built
    if unbuilt:
        optimizer.built = True
    try:
        model._symbolic_build(data_batch=batch)
    finally:
        if unbuilt:
            optimizer.built = False


def metrics_result(model) -> dict:
    return model.get_metrics_result()


def legacy_rng_layers(model) -> list[str]:
    """Keras 3 layers draw from SeedGenerators, whose state is backed up."""
    del model
    return []


# Preprocessing layers whose state tf.train.Checkpoint does not save.
_UNSAVED_STATE_LAYERS = (
    keras.layers.StringLookup,
    keras.layers.IntegerLookup,
    keras.layers.TextVectorization,
    keras.layers.Discretization,
)


def layers_with_unsaved_state(model) -> list[str]:
    found = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, _UNSAVED_STATE_LAYERS)
    ]
    inner = {
        id(sub)
        for layer in found
        for sub in layer._flatten_layers(include_self=False)
    }
    return [
        f"{layer.name} ({type(layer).__name__})"
        for layer in found
        if id(layer) not in inner
    ]


def checkpoint_objects(model, random_generators, held) -> dict:
    """What a backup's tf.train.Checkpoint holds of the model: the
    tf.Variable behind every Keras variable of the model (weights, seed
    states) and of its optimizer, in their (deterministic) order; then,
    where the model holds them (`held`, a keras_state.HeldState), those of
    its other optimizers and the variables outside `model.variables`.

    Not the model itself: TensorFlow's asynchronous checkpointing copies a
    Keras 3 variable with `Variable._copy_trackable_to_cpu`, which makes a
    new tf.Variable at every trace and so fails inside its tf.function
    ("tf.function only supports singleton tf.Variables"). The plain
    tf.Variables behind them are copied correctly. The fingerprint checks
    that the lists line up before anything is restored.
    """
    del random_generators  # among model.variables
    objects = {
        "model_variables": [tf_variable(v) for v in model.variables],
        "optimizer_variables": [
            tf_variable(v) for v in model.optimizer.variables
        ],
    }
    # Only where there are any: a backup of a model without them holds
    # what it always held.
    others = [
        o
        for _, o in held.optimizers
        if o is not model.optimizer
        and optimizer_built_on(o, held.variables) != (True, None)
    ]
    if others:
        objects["held_optimizers"] = [
            [tf_variable(v) for v in optimizer.variables]
            for optimizer in others
        ]
    if held.extra_variables:
        objects["held_variables"] = [
            tf_variable(v) for _, v in held.extra_variables
        ]
    return objects


def layer_random_generators(model) -> list:
    """The state variable of every SeedGenerator of the model's layers, in a
    fixed order (Dropout, GaussianNoise, random augmentation layers...)."""
    return fit_frames.unique(
        generator.state
        for layer in model._flatten_layers()
        for generator in layer._seed_generators
    )


def random_generators_of(objects) -> list:
    """`layer_random_generators` of every Keras 3 layer among `objects`."""
    return fit_frames.unique(
        state
        for obj in objects
        if isinstance(obj, keras.layers.Layer)
        for state in layer_random_generators(obj)
    )


# Attributes that make up the state of Keras 3's built-in callbacks.
BUILTIN_CALLBACK_STATE = {
    keras.callbacks.EarlyStopping: (
        "wait",
        "stopped_epoch",
        "best",
        "best_epoch",
    ),
    keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
    keras.callbacks.ModelCheckpoint: (
        "best",
        "_batches_seen_since_last_saving",
        "_last_batch_seen",
    ),
    # The step of its batch-level summaries (reset by on_train_begin).
    keras.callbacks.TensorBoard: ("_global_train_batch",),
}
CSV_LOGGER = keras.callbacks.CSVLogger


def train_counter(model):
    """The count of steps fit() trained that other callbacks read; None:
    Keras 3's fit() keeps none (its TensorBoard counts its own, see
    BUILTIN_CALLBACK_STATE)."""
    del model


def set_train_counter(model, value) -> None:
    del model, value


def open_csv_for_append(filename):
    """The file object CSVLogger writes to, as its on_train_begin opens it
    (`keras.src.utils.file_utils.File`)."""
    return file_utils.File(filename, "a")


def is_builtin_backup_callback(callback) -> bool:
    return isinstance(callback, keras.callbacks.BackupAndRestore)


def learning_rate_schedule(optimizer):
    """The LearningRateSchedule driving `optimizer`, or None."""
    schedule_type = keras.optimizers.schedules.LearningRateSchedule
    while optimizer is not None:
        value = getattr(optimizer, "_learning_rate", None)
        if isinstance(value, schedule_type):
            return value
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


def is_variable(value) -> bool:
    return isinstance(value, keras.Variable)


def tf_variable(variable):
    """The tf.Variable behind a Keras variable (a distributed one under a
    strategy)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def state_not_backed_up(obj) -> bool:
    """Whether `obj`, found among a model's trackable attributes, saves
    state of its own in a tf.train.Checkpoint (a MutableHashTable) that
    checkpoint_objects does not hold (it holds variables, not the model).

    `Trackable._serialize_to_tensors` is what such an object overrides.
    """
    if isinstance(obj, (keras.Variable, tf.Variable)):
        return False
    own = getattr(type(obj), "_serialize_to_tensors", None)
    return own is not None and own is not _TRACKABLE_SERIALIZE


_TRACKABLE_SERIALIZE = tf.__internal__.tracking.Trackable._serialize_to_tensors


def is_optimizer(value) -> bool:
    return isinstance(value, keras.optimizers.Optimizer)


def optimizer_variables(optimizer) -> list:
    return list(optimizer.variables)


def optimizer_built_on(optimizer, candidates):
    """(built, indices): whether `optimizer` has made its per-variable
    state, and the positions in `candidates` of the variables it was built
    on, in its order (None when one of them is not among `candidates`).

    `BaseOptimizer._trainable_variables` is the list it was built on.
    """
    if not optimizer.built:
        return False, None
    position = {}
    for i, candidate in enumerate(candidates):
        position.setdefault(id(candidate), i)
        position.setdefault(id(tf_variable(candidate)), i)
    indices = [position.get(id(v)) for v in optimizer._trainable_variables]
    return True, None if None in indices else indices


def build_optimizer(optimizer, variables) -> None:
    """Creates the optimizer's slot variables now (so that a restore fills
    them), as its first step would."""
    optimizer.build(variables)
