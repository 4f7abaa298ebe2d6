"""Callbacks that tests use to interrupt and observe Model.fit()."""

import os

import keras

from backup_restore._src import faults
from backup_restore._src import tf_keras_adapter


class Callback(keras.callbacks.Callback, tf_keras_adapter.CallbackBase):
    """A base for test callbacks that serve both Keras flavours' fit()."""


class Interrupted(Exception):
    """Raised by InterruptAt: stands in for a crash inside fit()."""


class InterruptAt(Callback):
    """Raises Interrupted after `batches` batches of this fit() call.

    BackupAndRestore runs after every other callback (it moves itself last
    when fit() starts) and takes a backup due at that batch even so: the
    resume starts after it.

    With `backup` (the fit()'s BackupAndRestore), it first waits until the
    backups taken so far are committed, as a trainer killed at that batch
    does: where the next fit() resumes then does not depend on timing.
    """

    def __init__(self, batches: int, backup=None):
        super().__init__()
        self._at = batches
        self._seen = 0
        self._backup = backup

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        if self._seen == self._at:
            if self._backup is not None:
                self._backup.wait_for_backup()
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


class BackupPositions(Callback):
    """Records where training was, (epoch, batches of it trained), at each
    backup written in the fit() it is given to.

    Through the write path's first fault point (faults.BEFORE_DATA), which
    the training thread reaches in each backup it starts: no reach into
    the callback. Installs that hook until the end of `test`.
    """

    def __init__(self, test):
        super().__init__()
        self.positions = []
        self._at = (0, 0)
        faults.set_hook(self._reached)
        test.addCleanup(faults.set_hook, None)

    @property
    def epochs(self) -> list:
        return [epoch for epoch, _ in self.positions]

    def _reached(self, stage, path):
        del path
        if stage == faults.BEFORE_DATA:
            self.positions.append(self._at)

    def on_epoch_begin(self, epoch, logs=None):
        self._at = (epoch, 0)

    def on_train_batch_end(self, batch, logs=None):
        self._at = (self._at[0], batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._at = (epoch + 1, 0)


# The fit() hooks that BackupAndRestore implements.
FIT_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
)


def forwarding(base, inner):
    """A subclass of `base` (a flavour's Callback class) whose instances
    wrap the callback `inner` as a user's wrapper would: they give it the
    model and the params, and forward each of FIT_HOOKS to it through
    `forward(name, *args, **kwargs)`, which a subclass may extend (to time
    the hooks, say)."""

    class Forwarding(base):
        def set_model(self, model):
            super().set_model(model)
            inner.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            inner.set_params(params)

        def forward(self, name, *args, **kwargs):
            return getattr(inner, name)(*args, **kwargs)

    for name in FIT_HOOKS:
        setattr(
            Forwarding,
            name,
            lambda self, *a, _name=name, **k: self.forward(_name, *a, **k),
        )
    return Forwarding


def recording(calls):
    """A wrapper for the adapters' wrap_train_function(model, wrapper): the
    wrapped train function appends each iterator it is called with to
    `calls`, then runs."""

    def wrapper(original):
        def wrapped(iterator):
            calls.append(iterator)
            return original(iterator)

        return wrapped

    return wrapper


def simulate_restart():
    """Makes this process look like a restarted job to BackupAndRestore.

    Each fit() call of a job has backups of its own, told apart by how many
    fit() calls on that backup_dir completed in this process; a restarted
    process starts counting from zero. Tests that "restart" a job within
    one process call this in between.
    """
    from backup_restore._src import fit_run

    fit_run.COMPLETED_FITS.clear()


def backup_entries(directory):
    """The entries of `directory` but the owner's lock file: a fit() that
    raised keeps it (held by this process) until the next start."""
    return sorted(
        n for n in os.listdir(directory) if not n.startswith(".backup_restore.")
    )
