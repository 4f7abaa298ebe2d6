"""Which Keras built a model, and the adapter that serves it.

Each adapter module holds every private API of one Keras flavour
(tf_keras_adapter.py: tf-keras 2.21; keras3_adapter.py: Keras 3.15 with the
TensorFlow backend, `tf.keras` in TensorFlow 2.21) behind the same functions.
The rest of the package never imports a flavour's internals.
"""

from backup_restore._src import keras3_adapter
from backup_restore._src import tf_keras_adapter

ADAPTERS = (keras3_adapter, tf_keras_adapter)
BY_NAME = {adapter.FLAVOUR: adapter for adapter in ADAPTERS}


def for_model(model):
    """The adapter module for `model`.

    Raises:
      TypeError: `model` is no Keras model of a supported flavour.
      ValueError: a Keras 3 model on another backend than TensorFlow.
    """
    for adapter in ADAPTERS:
        if adapter.owns(model):
            adapter.check_backend()
            return adapter
    raise TypeError(
        f"BackupAndRestore serves Keras models (Keras 3 with the TensorFlow "
        f"backend, i.e. tf.keras in TensorFlow 2.21, and tf-keras); this is "
        f"a {type(model).__module__}.{type(model).__name__}. Nothing was "
        "read, written or deleted."
    )


def name(flavour: str) -> str:
    """A reader's name for a flavour tag found in a backup."""
    adapter = BY_NAME.get(flavour)
    return adapter.NAME if adapter is not None else repr(flavour)
