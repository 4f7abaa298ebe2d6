"""Which Keras built a model, and the adapter that serves it.

Each adapter module offers every private API of one Keras flavour
(tf_keras_adapter.py: tf-keras 2.21; keras3_adapter.py: Keras 3.15 with the
TensorFlow backend, `tf.keras` in TensorFlow 2.21) behind the same functions,
with its `*_data.py` and `*_state.py` modules. The rest of the package never
imports a flavour's internals.

tf-keras is an optional dependency (`pip install backup_restore[tf_keras]`):
its adapter, and tf-keras with it, is imported only once the process has
imported tf-keras itself (a tf-keras model, callback or optimizer exists
only then).
"""

import sys

from absl import logging

from backup_restore._src import keras3_adapter

# A reader's name of each flavour tag a backup may carry.
_NAMES = {"keras3": "Keras", "tf_keras": "tf-keras"}


def loaded() -> tuple:
    """The adapters of the Keras flavours this process has imported:
    Keras 3's, and tf-keras's once `tf_keras` is imported."""
    if sys.modules.get("tf_keras") is None:
        return (keras3_adapter,)
    from backup_restore._src import tf_keras_adapter

    return (keras3_adapter, tf_keras_adapter)


def for_model(model):
    """The adapter module for `model`.

    Raises:
      TypeError: `model` is no Keras model of a supported flavour.
      ValueError: a Keras 3 model on another backend than TensorFlow.
    """
    for adapter in loaded():
        if adapter.owns(model):
            adapter.check_backend()
            warn_if_unverified(adapter)
            return adapter
    raise TypeError(
        f"BackupAndRestore serves Keras models (Keras 3 with the TensorFlow "
        f"backend, i.e. tf.keras in TensorFlow 2.21, and tf-keras); this is "
        f"a {type(model).__module__}.{type(model).__name__}. Nothing was "
        "read, written or deleted."
    )


_WARNED = set()  # the adapters whose version was warned about


def _minor(version: str) -> tuple:
    return tuple(version.split(".")[:2])


def warn_if_unverified(adapter) -> bool:
    """Warns once per process when the installed Keras of `adapter` is of
    another minor release than the one its private APIs were verified with
    (the adapter's contract test); returns whether it warned."""
    if _minor(adapter.VERSION) == _minor(adapter.VERIFIED_VERSION):
        return False
    if adapter.FLAVOUR in _WARNED:
        return False
    _WARNED.add(adapter.FLAVOUR)
    logging.warning(
        "backup_restore was verified with %s %s; %s is installed. It reaches "
        "into that Keras's fit() loop (where to resume, which batches to "
        "skip): exact resume, and possibly resuming at all, may break. Use "
        "%s %s.x, or check a kill and restart of your job before relying "
        "on it.",
        adapter.NAME.split(" ")[0],
        adapter.VERIFIED_VERSION,
        adapter.NAME,
        adapter.NAME.split(" ")[0],
        ".".join(_minor(adapter.VERIFIED_VERSION)),
    )
    return True


def name(flavour: str) -> str:
    """A reader's name for a flavour tag found in a backup."""
    for adapter in loaded():
        if adapter.FLAVOUR == flavour:
            return adapter.NAME
    return _NAMES.get(flavour, repr(flavour))
