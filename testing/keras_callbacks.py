"""Callbacks that tests use to interrupt and observe Model.fit()."""

import os

import keras

from backup_restore._src import tf_keras_adapter


class Callback(keras.callbacks.Callback, tf_keras_adapter.CallbackBase):
    """A base for test callbacks that serve both Keras flavours' fit()."""


class Interrupted(Exception):
    """Raised by InterruptAt: stands in for a crash inside fit()."""


class InterruptAt(Callback):
    """Raises Interrupted after `batches` batches of this fit() call, before
    a backup due at that batch (BackupAndRestore runs last): a crash at
    the end of that batch."""

    def __init__(self, batches: int):
        super().__init__()
        self._at = batches
        self._seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen == self._at:
            raise Interrupted(f"interrupted after {self._seen} batches")


class Recorder(Callback):
    """Records the epochs and (epoch, batch) steps fit() runs."""

    def __init__(self):
        super().__init__()
        self.epochs = []
        self.batches = []
        self._epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.epochs.append(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self.batches.append((self._epoch, batch))


def simulate_restart():
    """Makes this process look like a restarted job to BackupAndRestore.

    Each fit() call of a job has backups of its own, told apart by how many
    fit() calls on that backup_dir completed in this process; a restarted
    process starts counting from zero. Tests that "restart" a job within
    one process call this in between.
    """
    from backup_restore._src import callback

    callback._COMPLETED_FITS.clear()


def backup_entries(directory):
    """The entries of `directory` but the owner's lock file: a fit() that
    raised keeps it (held by this process) until the next start."""
    return sorted(
        n for n in os.listdir(directory) if not n.startswith(".backup_restore.")
    )
