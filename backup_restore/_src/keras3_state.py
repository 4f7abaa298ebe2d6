"""The Keras 3 state a backup holds beyond `tf.train.Checkpoint`'s reach
(private API; part of keras3_adapter.py).

- `Layer._seed_generators` / `SeedGenerator.state`: the random state of
  Dropout and other random layers (a SeedGenerator is no trackable).
- `Layer._flatten_layers`: the layers of a model, its lookup layers among
  them.
- `Optimizer._learning_rate`, `LossScaleOptimizer.inner_optimizer`: whether
  the learning rate is a schedule or another callable; replaced by a number
  for one `get_config()` call where Keras cannot serialize the schedule
  (`learning_rate_schedule_set_aside`).
- `Trainer._symbolic_build(data_batch=...)`: builds the compiled metrics
  before the first step (without a strategy fit() builds them when it
  traces the train step), so that a mid-epoch resume can restore them. It
  builds an unbuilt `model.optimizer` too unless `Optimizer.built` is set.
- fit()'s `_distributed_dataset.element_spec`: the batch spec for it.
- TensorFlow's `Trackable._serialize_to_tensors`: overridden by an object
  that a checkpoint saves by itself (a MutableHashTable); one such held by
  a model is named in the warning at fit()'s start (the backup holds
  variables, not the model object).
- `BaseOptimizer._trainable_variables`: the variables an optimizer was
  built on (a subset of the model's, for a GAN's), so that a restore builds
  it on the same ones before filling its state.
- `keras.src.backend.Variable.value`: the tf.Variable (under a strategy a
  distributed one) behind a Keras variable, for per-replica metric state.
- Built-in callbacks' state attributes (`BUILTIN_CALLBACK_STATE`: private
  ones of ModelCheckpoint and TensorBoard among them) and the file object
  CSVLogger appends to (`keras.src.utils.file_utils.File`).
"""

import contextlib

import keras
import tensorflow as tf
from keras.src.utils import file_utils

from backup_restore._src import fit_frames
from backup_restore._src import unfilled_slots


def build_compiled_metrics(model, context) -> None:
    """Creates the compiled loss and metric state now, as fit() would at
    its first step (under a strategy it has already: then a no-op).

    `Trainer._symbolic_build` traces the model symbolically on one
    replica's batch spec; no state changes.
    """
    compiled = [model._compile_metrics, model._compile_loss]
    if all(c is None or c.built for c in compiled):
        # Nothing to build; a model with no call() of its own (a GAN that
        # only holds built models) could not be traced symbolically.
        return
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


# The attribute holding the tensors of a built-in callback's state, backed
# up in the checkpoint (None until it has some).
BUILTIN_CALLBACK_TENSORS = {keras.callbacks.EarlyStopping: "best_weights"}

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
    """What drives `optimizer`'s learning rate when it is not a value the
    optimizer holds: a LearningRateSchedule (a function of `iterations`,
    which is backed up), or any other callable, which Keras 3 calls for the
    rate at each step and which cannot be set; None otherwise."""
    owner = _rate_driver_owner(optimizer)
    return None if owner is None else owner._learning_rate  # pylint: disable=protected-access


def _rate_driver_owner(optimizer):
    """The optimizer (itself or one it wraps) whose `_learning_rate` is a
    schedule or another callable, or None."""
    schedule_type = keras.optimizers.schedules.LearningRateSchedule
    while optimizer is not None:
        value = getattr(optimizer, "_learning_rate", None)
        if isinstance(value, schedule_type) or (
            callable(value) and not is_variable(value)
        ):
            return optimizer
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return None


def learning_rate_schedule_set_aside(optimizer):
    """A context in which the schedule (or callable) `learning_rate_
    schedule` finds stands, on the optimizer holding it, replaced by a
    number: for `get_config()` to give the rest of a configuration when
    Keras cannot serialize the schedule. Replaced in the instance's own
    `__dict__`, so that tracking does not see it."""
    owner = _rate_driver_owner(optimizer)
    if owner is None:
        return contextlib.nullcontext()
    return unfilled_slots.method_replaced(
        owner, "_learning_rate", lambda _: 0.0
    )


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


def build_optimizer(optimizer, variables, unfilled=False) -> list:
    """Creates the optimizer's slot variables now (so that a restore fills
    them), as its first step would.

    With `unfilled`, the slots Keras would fill with zeros are made from
    `unfilled_slots.empty` instead (a restore is about to assign them);
    returns those variables. `add_variable_from_reference` is the method
    through which Keras 3 optimizers make their slots (`add_optimizer_
    variables` calls it); it is replaced on the instance, and on the
    optimizers it wraps (a LossScaleOptimizer builds its inner one), for
    the duration of the build.
    """
    if not unfilled or not unfilled_slots.wanted():
        optimizer.build(variables)
        return []
    made = []
    empties = unfilled_slots.Empties()

    def wrap(original):
        def add_variable_from_reference(
            reference_variable, name=None, initializer="zeros"
        ):
            shape = tf.TensorShape(reference_variable.shape)
            if not (
                isinstance(
                    keras.initializers.get(initializer),
                    keras.initializers.Zeros,
                )
                and shape.is_fully_defined()
            ):
                return original(
                    reference_variable, name=name, initializer=initializer
                )
            variable = original(
                reference_variable,
                name=name,
                initializer=lambda shape, dtype=None: empties(shape, dtype),
            )
            made.append(variable)
            return variable

        return add_variable_from_reference

    unfilled_slots.build_with_slot_maker(optimizer, variables, wrap, made)
    return made
