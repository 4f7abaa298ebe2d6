"""The tf-keras state a backup holds beyond the model's own checkpoint
(private API; part of tf_keras_adapter.py).

- `Model.compiled_loss` / `Model.compiled_metrics` and their `build()`: fit()
  builds them at its first step; a mid-epoch resume must restore the metric
  state before that step, so `build_compiled_metrics` builds them earlier
  from the dataset's element_spec (one replica's `PerReplicaSpec._value_specs`
  under a distribution strategy).
- `ModelCheckpoint._batches_seen_since_last_saving` / `._last_batch_seen`
  and `TensorBoard._global_train_batch` (`BUILTIN_CALLBACK_STATE`), and
  `Model._train_counter`, the step of TensorBoard's batch summaries.
- `BaseRandomLayer._random_generator` (a `backend.RandomGenerator`), its
  `_rng_type`, `_maybe_init()` and `_generator`: layer randomness (Dropout,
  ...). tf-keras deliberately leaves it out of checkpoints;
  `layer_random_generators` hands the `tf.random.Generator`s to the backup so
  that they are saved too.
- `Optimizer._built`, `_index_dict` and `_var_key` (optimizer.Optimizer):
  whether an optimizer made its slots and on which variables (a GAN's are
  built on a subset of the model's), so that a restore builds it on the
  same ones before filling them.
- `Layer._flatten_layers` / `_flatten_modules`, `Layer._auto_track_sub_layers`
  and `Module._flatten`: a model's layers, nested ones included, where the
  warnings at the start of fit() look for state a backup cannot hold, and
  where `layer_random_generators` looks for a generator first, reading the
  own attributes of a layer that does not track its sublayers (a
  Sequential) one level deep (`Module.submodules` walks every attribute of
  every layer: 30 ms on a Sequential of 200 layers, 1.5 ms this way).
- `Optimizer._learning_rate` (optimizer.Optimizer), `_hyper["learning_rate"]`
  (legacy optimizers), `LossScaleOptimizer.inner_optimizer`: whether the
  learning rate is a schedule (then it cannot be set, and need not be);
  replaced by a number for one `get_config()` call where tf-keras cannot
  serialize the schedule (`learning_rate_schedule_set_aside`).
"""

import contextlib
import itertools

import tensorflow as tf
import tf_keras
from tf_keras.src.engine import data_adapter

from backup_restore._src import fit_frames
from backup_restore._src import unfilled_slots

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


# The attribute holding the tensors of a built-in callback's state, backed
# up in the checkpoint (None until it has some).
BUILTIN_CALLBACK_TENSORS = {tf_keras.callbacks.EarlyStopping: "best_weights"}

CSV_LOGGER = tf_keras.callbacks.CSVLogger


def open_csv_for_append(filename):
    """The file object CSVLogger writes to, as its on_train_begin opens it."""
    return tf.io.gfile.GFile(filename, "a")


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


def legacy_rng_layers(model: tf_keras.Model) -> list[str]:
    """Names of layers whose RNG state cannot be backed up.

    tf-keras layers such as Dropout draw from a `backend.RandomGenerator`. Its
    legacy stateful mode uses stateful random ops whose state lives in the op
    kernels, not in variables; only the "stateful" mode (a tf.random.Generator,
    enabled by `tf_keras.backend.experimental.enable_tf_random_generator()`)
    is saved with the model and restored exactly.
    """
    names = []
    for layer in model._flatten_layers():
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
    the layer is built. The order is `Module.submodules`' (the order backups
    hold them in), or the layers' own tracking's where that walk fails; it
    visits every attribute of every layer, so it runs only where the
    quicker walk of the layers found a generator.
    """
    if next(_generators(_tracked_layers(model)), None) is None:
        return []
    try:
        modules = model.submodules
    except ValueError:
        # An attribute that walk cannot flatten: an RNN layer with
        # recurrent dropout keeps its masks per graph in a dict whose keys
        # do not sort. That layers' walk is the same for the same model.
        modules = _tracked_layers(model)
    return list(_generators(modules))


def _generators(layers):
    for layer in layers:
        random_generator = getattr(layer, "_random_generator", None)
        if random_generator is None:
            continue
        random_generator._maybe_init()
        generator = getattr(random_generator, "_generator", None)
        if isinstance(generator, tf.random.Generator):
            yield generator


def _tracked_layers(model):
    """`model`'s layers, nested ones included, by the layers' own tracking,
    and every module of what that tracking does not enter: a plain
    tf.Module a layer holds, a layer that does not track its sublayers.

    A layer that does not track its sublayers (a Sequential: it tracks the
    layers added to it itself) gets its own attributes walked, one level;
    the modules found there are walked the same way. Only a plain tf.Module
    gets `Module.submodules`, which visits every attribute below it.
    """
    seen = set()

    def visit(module):
        if id(module) in seen:
            return
        seen.add(id(module))
        yield module
        if not isinstance(module, tf_keras.layers.Layer):
            yield from module.submodules
            return
        children = module._flatten_modules(recursive=False, include_self=False)
        if not getattr(module, "_auto_track_sub_layers", True):
            children = itertools.chain(
                children,
                module._flatten(
                    recursive=False,
                    predicate=lambda value: isinstance(value, tf.Module),
                ),
            )
        for child in children:
            yield from visit(child)

    yield from visit(model)


@contextlib.contextmanager
def learning_rate_schedule_set_aside(optimizer):
    """Within the block, the schedule `learning_rate_schedule` finds
    stands, on the optimizer holding it, replaced by a number: for
    `get_config()` to give the rest of a configuration when tf-keras cannot
    serialize the schedule. A new optimizer holds it as `_learning_rate`
    (replaced in the instance's own `__dict__`, unseen by tracking), a
    legacy one in its `_hyper` mapping."""
    place = _schedule_place(optimizer)
    if place is None:
        yield
        return
    owner, legacy = place
    if not legacy:
        with unfilled_slots.method_replaced(
            owner, "_learning_rate", lambda _: 0.0
        ):
            yield
        return
    hyper = owner._hyper  # pylint: disable=protected-access
    previous = hyper["learning_rate"]
    hyper["learning_rate"] = 0.0
    try:
        yield
    finally:
        hyper["learning_rate"] = previous


def learning_rate_schedule(optimizer):
    """The LearningRateSchedule driving `optimizer`, or None.

    With a schedule the learning rate is a function of `iterations` (which
    is backed up); tf-keras's optimizers then refuse to have it set.
    """
    place = _schedule_place(optimizer)
    if place is None:
        return None
    owner, legacy = place
    if legacy:
        return owner._hyper["learning_rate"]  # pylint: disable=protected-access
    return owner._learning_rate  # pylint: disable=protected-access


def _schedule_place(optimizer):
    """(owner, legacy) for the optimizer (itself or one it wraps) holding
    the LearningRateSchedule that drives `optimizer`: as `_learning_rate`
    (optimizer.Optimizer, legacy False) or in `_hyper` (legacy True); None
    when there is none."""
    schedule_type = tf_keras.optimizers.schedules.LearningRateSchedule
    while optimizer is not None:
        if isinstance(
            getattr(optimizer, "_learning_rate", None), schedule_type
        ):
            return optimizer, False
        hyper = getattr(optimizer, "_hyper", {})
        if isinstance(hyper.get("learning_rate"), schedule_type):
            return optimizer, True
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
        for layer in model._flatten_layers()
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


def build_optimizer(optimizer, variables, unfilled=False) -> list:
    """Creates the optimizer's slot variables now (so that a restore fills
    them), as its first step would. Legacy optimizers make them lazily.

    With `unfilled`, the slots tf-keras would fill with zeros (no
    `initial_value` given) are made from `unfilled_slots.empty` instead (a
    restore is about to assign them); returns those variables.
    `Optimizer.add_variable_from_reference` is the method through which
    tf-keras optimizers make their slots; it is replaced on the instance,
    and on the optimizers it wraps (a LossScaleOptimizer builds its inner
    one), for the duration of the build.
    """
    if not hasattr(optimizer, "build"):
        return []
    if not unfilled or not unfilled_slots.wanted():
        optimizer.build(variables)
        return []
    made = []
    empties = unfilled_slots.Empties()

    def wrap(original):
        def add_variable_from_reference(
            model_variable, variable_name, shape=None, initial_value=None
        ):
            full = tf.TensorShape(
                model_variable.shape if shape is None else shape
            )
            if initial_value is not None or not full.is_fully_defined():
                return original(
                    model_variable,
                    variable_name,
                    shape=shape,
                    initial_value=initial_value,
                )
            # Under mixed precision a variable reports its compute dtype;
            # slots take the one it is stored in, as tf-keras's do.
            dtype = getattr(model_variable, "true_dtype", model_variable.dtype)
            variable = original(
                model_variable,
                variable_name,
                shape=shape,
                initial_value=empties(full, dtype),
            )
            made.append(variable)
            return variable

        return add_variable_from_reference

    unfilled_slots.build_with_slot_maker(optimizer, variables, wrap, made)
    return made
