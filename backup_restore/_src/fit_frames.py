"""What both Keras flavours' `fit()` offer a callback the same way.

Neither tf-keras 2.21 nor Keras 3.15 gives a callback its `fit()` call's data
iterator or callback list. Both keep them in local variables of `fit()` and
both call `model.train_function(iterator)` once per step. The adapters
(tf_keras_adapter.py, keras3_adapter.py) use these helpers with their own
classes; each adapter's contract test pins the names.
"""

import sys

import numpy as np
import tensorflow as tf


def fit_frame(has, depth: int = 1):
    """The innermost `fit()` frame on this thread's stack, from `depth`
    frames above the caller on, whose locals satisfy `has(f_locals)`;
    None outside fit(). Its locals are read, never modified."""
    frame = sys._getframe(depth + 1)
    while frame is not None:
        if frame.f_code.co_name == "fit" and has(frame.f_locals):
            return frame
        frame = frame.f_back
    return None


def fit_local(name: str, cls, depth: int = 2):
    """A local variable `name` (an instance of `cls`) of the `fit()` frame on
    this thread's stack, read and never modified; None outside fit()."""
    frame = fit_frame(
        lambda given: isinstance(given.get(name), cls), depth=depth
    )
    return None if frame is None else frame.f_locals[name]


def fit_arguments() -> dict:
    """The arguments of the `fit()` call on this thread's stack that change
    what its training computes or logs, as JSON values; {} outside fit().

    Both flavours' fit() keep them under their parameter names, and have
    replaced `validation_split` by the `validation_data` it split off
    before the first callback hook.
    """
    frame = fit_frame(lambda given: "shuffle" in given)
    if frame is None:
        return {}
    given = frame.f_locals
    shuffle = given.get("shuffle")
    if not shuffle_applies(given.get("x")):
        shuffle = None
    elif not isinstance(shuffle, str):
        shuffle = bool(shuffle)
    freq = given.get("validation_freq", 1)
    return {
        # True, False, "batch", or None where the input ignores it.
        "shuffle": shuffle,
        "steps_per_epoch": _int_or_none(given.get("steps_per_epoch")),
        "class_weight": given.get("class_weight") is not None,
        "sample_weight": given.get("sample_weight") is not None,
        "validation": given.get("validation_data") is not None,
        "validation_freq": (
            [int(f) for f in freq]
            if isinstance(freq, (list, tuple, set))
            else _int_or_none(freq)
        ),
        "validation_steps": _int_or_none(given.get("validation_steps")),
    }


def shuffle_applies(x) -> bool:
    """Whether `fit(x=x, shuffle=...)` changes what fit() trains.

    It does for what both flavours batch themselves (arrays, tensors,
    lists, dicts of them, pandas frames), for a tf-keras `Sequence` and a
    Keras 3 `PyDataset` of known length (their batch order). Each flavour's
    data adapter ignores it for a `tf.data.Dataset` (and a distributed one),
    a Python generator or iterator, a tf-keras `DatasetCreator`, a Keras 3
    `PyDataset` of unknown length, a torch `DataLoader` and a grain dataset.
    Classes are matched by name and module, as Keras's own adapter selection
    does, so that neither flavour is imported here.
    """
    if isinstance(x, (tf.data.Dataset, tf.distribute.DistributedDataset)):
        return False
    for cls in type(x).__mro__:
        module = cls.__module__ or ""
        if module.startswith("tf_keras.") and cls.__name__ == "Sequence":
            return True
        if module.startswith("keras.") and cls.__name__ == "PyDataset":
            return getattr(x, "num_batches", None) is not None
        if module.startswith("tf_keras.") and cls.__name__ == "DatasetCreator":
            return False
        if "torch.utils.data" in module and cls.__name__ == "DataLoader":
            return False
        if "grain" in module and cls.__name__ in (
            "MapDataset",
            "IterDataset",
            "DataLoader",
        ):
            return False
    # tf-keras trains on any iterator as on a generator; Keras 3 accepts
    # generators only.
    iterates = hasattr(x, "__next__") and hasattr(x, "__iter__")
    return not (iterates and not isinstance(x, np.ndarray))


def _int_or_none(value):
    return None if value is None else int(value)


def run_last(callback, callback_list) -> list:
    """Makes `callback` the last of fit()'s callbacks; returns the others."""
    if callback_list is None:
        raise RuntimeError("run_last must be called from inside Model.fit().")
    if callback not in callback_list.callbacks:
        # Wrapped by another callback, which calls our hooks itself: adding
        # us to the list would run every hook twice. Leave the order alone.
        return list(callback_list.callbacks)
    others = [c for c in callback_list.callbacks if c is not callback]
    # A new list: CallbackList is iterating over the old one right now (this
    # runs inside on_train_begin), and must finish it unchanged.
    callback_list.callbacks = [*others, callback]
    return others


class WrappedTrainFunction:
    """`model.train_function` with a wrapper, for the fit() it was made for.

    fit() reuses `model.train_function` across calls. The wrapper must not
    outlive its fit(): when it is called under another fit() (the first one
    raised before on_train_end could unwrap it), it puts the original back
    and steps aside. `current_fit()` names the running fit() (its data
    object), `fit_token` the one the wrapper was made for.
    """

    def __init__(self, model, original, wrapper, *, current_fit, fit_token):
        self._model = model
        self.original = original
        self._wrapper = wrapper
        self._current_fit = current_fit
        self._fit_token = fit_token
        self._iterator = None

    def __call__(self, iterator):
        # fit() passes the same iterator for a whole epoch (or run): which
        # fit() is calling needs checking only when it changes.
        if iterator is not self._iterator:
            if self._current_fit() is not self._fit_token:
                unwrap_train_function(self._model)
                return self.original(iterator)
            self._iterator = iterator
        return self._wrapper(iterator)

    def __getattr__(self, name):  # tf.function attributes, for Keras
        return getattr(self.original, name)


def wrap_train_function(model, make_wrapper, *, current_fit, version) -> None:
    """Replaces `model.train_function` with `make_wrapper(original)`.

    Must be called from `on_train_begin`, after `fit()` created the function.
    The wrapper runs only under this fit(); `unwrap_train_function` (or the
    next fit()) removes it.
    """
    unwrap_train_function(model)
    original = getattr(model, "train_function", None)
    if original is None:
        raise RuntimeError(
            "model.train_function is not set in on_train_begin; this Keras "
            f"version differs from the verified {version}."
        )
    model.train_function = WrappedTrainFunction(
        model,
        original,
        make_wrapper(original),
        current_fit=current_fit,
        fit_token=current_fit(),
    )


def unwrap_train_function(model) -> None:
    """Puts back the train_function that `wrap_train_function` wrapped."""
    current = getattr(model, "train_function", None)
    if isinstance(current, WrappedTrainFunction):
        model.train_function = current.original


def unique(items) -> list:
    """`items` without repeats (by identity), in order."""
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


def batch_shapes(dataset):
    """`global_batch_shapes` of a (distributed) dataset's elements."""
    try:
        spec = dataset.element_spec
    except (AttributeError, TypeError, ValueError):
        return None
    return global_batch_shapes(spec)


def global_batch_shapes(element_spec):
    """[shape, dtype] of each component of a (global) input batch, or None
    when a component is not a dense tensor.

    Under a distribution strategy a dataset's elements are PerReplica: the
    batch dimension is the sum over the replicas, so that a resume on
    another number of devices with the same global batch matches.
    """

    def global_shape(component):
        replicas = getattr(component, "_value_specs", None) or (component,)
        if not all(isinstance(r, tf.TensorSpec) for r in replicas):
            return None  # ragged / sparse / other specs: not recorded
        shape = replicas[0].shape.as_list()
        sizes = [
            r.shape.as_list()[0] if r.shape.rank else None for r in replicas
        ]
        if shape and None not in sizes:
            shape[0] = sum(sizes)
        return [shape, replicas[0].dtype.name]

    shapes = [
        global_shape(c)
        for c in tf.nest.flatten(element_spec, expand_composites=False)
    ]
    return None if None in shapes else shapes


def one_replica_spec(element_spec):
    """A distributed dataset's elements are PerReplica: one replica's spec."""
    return tf.nest.map_structure(
        lambda s: s._value_specs[0] if hasattr(s, "_value_specs") else s,
        element_spec,
    )


def skip_batches(iterator, count: int) -> None:
    """Draws `count` batches from fit()'s data iterator and drops them.

    The iterator of a `tf.data.Dataset` (both fit()s train on one under
    the default strategy) is advanced by its `IteratorGetNext` op alone,
    about a third of `next()`'s cost: the batches are never packed into
    their structure. Any other iterator, or eager execution that is not
    synchronous, takes `next()`. Raises StopIteration where the data runs
    out, as `next()` does.
    """
    resource = getattr(iterator, "_iterator_resource", None)
    types = getattr(iterator, "_flat_output_types", None)
    shapes = getattr(iterator, "_flat_output_shapes", None)
    fast = (
        isinstance(iterator, tf.data.Iterator)
        and resource is not None
        and types is not None
        and shapes is not None
        and tf.executing_eagerly()
        and tf.config.experimental.get_synchronous_execution()
    )
    if not fast:
        for _ in range(count):
            next(iterator)
        return
    get_next = tf.raw_ops.IteratorGetNext
    try:
        for _ in range(count):
            get_next(
                iterator=resource, output_types=types, output_shapes=shapes
            )
    except tf.errors.OutOfRangeError:
        raise StopIteration from None


def skips_fast(iterator) -> bool:
    """Whether skip_batches takes the IteratorGetNext path for `iterator`
    (checked by the adapters' contract tests)."""
    return all(
        getattr(iterator, name, None) is not None
        for name in (
            "_iterator_resource",
            "_flat_output_types",
            "_flat_output_shapes",
        )
    ) and isinstance(iterator, tf.data.Iterator)
