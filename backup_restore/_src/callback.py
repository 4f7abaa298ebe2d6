"""The Keras callback: its arguments, and fit()'s hooks forwarded to the
run of the current fit() call (fit_run.py) over the engine (engine.py).

The callback serves both Keras flavours: it finds the flavour from the model
it is attached to (`set_model`) and reaches that flavour's fit() internals
only through its adapter (flavours.py).
"""

import keras
from absl import logging

from backup_restore._src import callback_args
from backup_restore._src import engine
from backup_restore._src import fit_call_checks
from backup_restore._src import fit_run
from backup_restore._src import flavours
from backup_restore._src import front_end
from backup_restore._src import preemption
from backup_restore._src import tf_keras_callback

# Every argument BackupAndRestore takes: tf-keras's four, Keras 3's
# double_checkpoint, then ours.
_ARGS = (
    "backup_dir",
    "save_freq",
    "delete_checkpoint",
    "save_before_preemption",
    "double_checkpoint",
    "async_backup",
    "preemption_signals",
    "exit_on_preemption",
    "preemption_exit_code",
    "overhead_budget",
)


def _check_unknown_kwargs(kwargs):
    """A near miss of an argument we take is a typo: a TypeError that names
    the argument. Anything else is accepted (forward compatibility with
    future tf-keras arguments) and named in one warning."""
    front_end.reject_near_misses("BackupAndRestore", kwargs, _ARGS)
    if kwargs:
        logging.warning(
            "BackupAndRestore ignores unknown argument(s) %s (accepted for "
            "forward compatibility; it takes %s).",
            ", ".join(sorted(kwargs)),
            ", ".join(_ARGS),
        )


class BackupAndRestore(
    keras.callbacks.Callback, tf_keras_callback.Hooks, front_end.FrontEnd
):
    """Backs up the training state of `Model.fit()` and resumes from it.

    While `fit()` runs, the callback writes the whole training state (model
    weights, the state of every optimizer the model holds including slots and
    `iterations`, the tf.Variables it holds, the position in training, the
    History) into `backup_dir`. When the job is killed and
    started again with the same code, the next `fit()` restores that state into
    the given model and continues from the first unfinished epoch (epoch
    backups) or the next unseen batch (batch backups). When `fit()` completes,
    the backup is deleted.

    A backup is committed atomically and durably (see atomicity.py): a kill at
    any instant leaves either the previous backup or the new one, never a
    partial one. Each backup carries checksums, verified before restoring, and
    a fingerprint of the model and optimizer: a backup written by a different
    model is refused with a `BackupMismatchError` that names what differs.
    Nothing in a backup is unpickled or executed.

    Only entries named `backup-*` and `.tmp-backup-*` in `backup_dir` belong to
    the callback; other files there are never touched. `backup_dir` itself,
    and the parent directories created for it, are removed when `fit()`
    completes only if the callback created them (and they are empty then): a
    directory that existed before, even empty, is kept.

    It serves Keras 3 models with the TensorFlow backend (`tf.keras` in
    TensorFlow 2.21, or `import keras`) and tf-keras models (`import
    tf_keras`), and is a `keras.callbacks.Callback`; made once tf-keras is
    imported, a `tf_keras.callbacks.Callback` too. It never imports tf-keras
    itself.

    Example:

    ```python
    import numpy as np
    import tensorflow as tf
    import backup_restore

    x = np.random.rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = tf.keras.Sequential(
        [tf.keras.Input((4,)), tf.keras.layers.Dense(1)]
    )
    model.compile(optimizer="adam", loss="mse")
    backup_dir = "/tmp/backup_restore_docstring_example"
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[backup_restore.BackupAndRestore(backup_dir)],
    )
    # Had the job been killed, running the same code again would resume it.
    ```

    Concurrency: one training job per `backup_dir`. Callback methods run on
    the training thread.

    Args:
      backup_dir: directory for the backups: a local path or any filesystem
        tf.io.gfile supports (gs://, ram://, ...). Created if missing. Use a
        different directory for every training job.
      save_freq: `"epoch"` to back up at the end of every epoch, or a positive
        int to back up every that many batches. `False` (never) is only valid
        with `save_before_preemption=True`.
      *flavoured: the third and fourth positional arguments, in the order
        of the model's Keras, bound when `fit()` (or `set_model`) gives the
        model: Keras 3's `double_checkpoint, delete_checkpoint`, tf-keras's
        `delete_checkpoint, save_before_preemption`. Until then, attributes
        read them in tf-keras's order once tf-keras is imported, else in
        Keras 3's. Keywords bind at once.
      delete_checkpoint: delete the backup when `fit()` completes. The
        backup due at the very end of training is then not written (it
        would be deleted unread at once).
      double_checkpoint: (Keras 3's argument) `True` keeps the previous
        intact backup beside the newest at all times (about twice the disk
        space): when the newest one fails its checks at the restart (a
        corrupted file), the restore falls back to the previous one and
        retrains from its position, to the same result. `False` (the
        default) keeps only the newest backup once it is
        durable: the previous one is deleted only after the new one is
        committed and fsync'd, so a kill or a failed write at any instant
        still leaves an intact backup, but damage to the newest one after
        that has no fallback (`BackupCorruptError`, nothing deleted).
      save_before_preemption: on SIGTERM (or `preemption_signals`), finish
        the current batch, back up at that exact batch, wait until the
        backup is committed, then exit the process with
        `preemption_exit_code` (42, as TensorFlow's failure handling). No
        cloud metadata probe. With MultiWorkerMirroredStrategy, a signal to
        any worker stops all of them at the same batch, after one backup
        (an all-reduce of a flag per batch tells every worker); under
        ParameterServerStrategy, signal the chief. The next run resumes at
        that batch: no work lost.
      async_backup: (not in tf-keras) write backups in the background: the
        training step only waits for a snapshot of the state in host memory;
        files are written, fsync'd, checksummed and committed on a background
        thread, one backup at a time. `False` writes synchronously.
      overhead_budget: (not in tf-keras) the share of training time granted
        to backups, e.g. `0.03`: back up as often as that allows, measured
        while training runs (policy.BudgetPolicy; the interval chosen is
        logged). Replaces `save_freq`, which must then be left at its
        default; combines with `save_before_preemption`.
      **kwargs: accepted for forward compatibility with future tf-keras
        arguments; named in one warning and otherwise ignored.

    Raises:
      ValueError: eager execution is disabled; `backup_dir` is empty, an
        existing file or not writable; `save_freq` is invalid.
      TypeError: `backup_dir` is not a str or os.PathLike; a keyword
        argument is a near miss of one of ours (`asnyc_backup`); more than
        4 positional arguments; an argument given both positionally and by
        keyword in both flavours' orders (in the model's order only: at
        `fit()`).
      RuntimeError: `save_before_preemption=True` outside the main thread.

    During `fit()`:
      TypeError: the model is no Keras 3 or tf-keras model.
      ValueError: a Keras 3 model on the JAX or PyTorch backend.
      ValueError: `fit()` has another backup callback (nothing changed).
      BackupMismatchError: the backup was written by a different model or
        optimizer configuration, by the other Keras flavour, or for other
        data (batch size, samples, batches per epoch, batch shapes) or
        `fit()` arguments
        (`initial_epoch`, fewer `epochs` than the backup's position).
      BackupCorruptError: every backup in `backup_dir` fails its integrity
        checks, its metadata's schema included (an edited manifest: the
        message names the field); nothing is deleted.
      BackupWriteError: a backup could not be written (the previous one is
        intact).
      BackupDirInUseError: another training job owns `backup_dir`.
    """

    def __new__(cls, *args, **kwargs):
        del args, kwargs  # for __init__
        return super().__new__(tf_keras_callback.with_tf_keras_base(cls))

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        *flavoured,
        double_checkpoint=callback_args.DOUBLE_CHECKPOINT,
        delete_checkpoint=callback_args.DELETE_CHECKPOINT,
        save_before_preemption=callback_args.SAVE_BEFORE_PREEMPTION,
        async_backup=True,
        preemption_signals=preemption.DEFAULT_SIGNALS,
        exit_on_preemption=True,
        preemption_exit_code=preemption.RESTART_EXIT_CODE,
        overhead_budget=None,
        **kwargs,
    ):
        super().__init__()
        front_end.check_eager("BackupAndRestore", "train with Model.fit()")
        _check_unknown_kwargs(kwargs)
        self._args = callback_args.Arguments(
            flavoured,
            double_checkpoint=double_checkpoint,
            delete_checkpoint=delete_checkpoint,
            save_before_preemption=save_before_preemption,
        )
        self.save_freq = save_freq
        self._overhead_budget = overhead_budget
        values, self._policy = callback_args.first_binding(
            self._args, save_freq, overhead_budget
        )
        # Positional values are bound for good by set_model, in the order
        # of the model's flavour; until then in the likelier one's.
        self._bound_flavour = None if self._args.pending else "any"
        self._engine = engine.Engine(
            backup_dir,
            async_backup=async_backup,
            save_before_preemption=values["save_before_preemption"],
            preemption_signals=preemption_signals,
            exit_on_preemption=exit_on_preemption,
            preemption_exit_code=preemption_exit_code,
            double_checkpoint=values["double_checkpoint"],
        )
        self.backup_dir = self._engine.backup_dir
        self._set_values(values)
        self.async_backup = bool(async_backup)
        self._resumed_from = None
        self._adapter = None
        self._run = None  # the fit() call running, from its start to its end
        # From now on a preemption signal ends the process in the restart
        # status: fit() does much before its first hook (its data adapter
        # draws from a generator, say), and nothing is trained until then.
        # Positional values may still change meaning: set_model installs.
        if not self._args.pending:
            self._engine.watch_for_preemption_early()

    def _set_values(self, values):
        self.double_checkpoint = bool(values["double_checkpoint"])
        self.delete_checkpoint = values["delete_checkpoint"]
        self.save_before_preemption = values["save_before_preemption"]

    def _bind(self, flavour):
        """Gives positional arguments the meaning of `flavour`'s order.

        Raises:
          TypeError: a value given both positionally and by keyword there.
          ValueError: `save_freq=False` without save_before_preemption there.
        """
        values, self._policy = callback_args.values_and_policy(
            self._args, flavour, self.save_freq, self._overhead_budget
        )
        self._engine.configure(
            double_checkpoint=values["double_checkpoint"],
            save_before_preemption=values["save_before_preemption"],
        )
        self._set_values(values)
        self._bound_flavour = flavour

    @property
    def resumed_from(self) -> tuple[int, int] | None:
        """(epoch, batch) the last fit() resumed at; None for a fresh start.

        `batch` counts the batches of that epoch already trained (0: the epoch
        starts from its beginning).
        """
        return self._resumed_from

    def set_model(self, model):
        # Called by fit() (and evaluate/predict) before any other hook.
        self._adapter = flavours.for_model(model)
        if self._args.pending and self._adapter.FLAVOUR != self._bound_flavour:
            self._bind(self._adapter.FLAVOUR)
        super().set_model(model)
        # Again for a later fit() with this callback (each fit() ends by
        # uninstalling the handler).
        self._engine.watch_for_preemption_early()

    # -- fit() hooks --------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        adapter = self._adapter
        self._run = None
        self._resumed_from = None
        # A start position set by an earlier fit() that raised before fit()
        # read it must not move this one.
        adapter.clear_start(model, None)
        if getattr(model, "optimizer", None) is None:
            raise ValueError(
                "BackupAndRestore needs a compiled model: call model.compile() "
                "before model.fit()."
            )
        # Checked before anything is changed: two backup callbacks in one
        # fit() would each restore and each skip the trained batches again.
        fit_call_checks.refuse_other_backup_callbacks(
            self, adapter.fit_callback_list().callbacks, BackupAndRestore
        )
        adapter.check_strategy(model.distribute_strategy)
        run = fit_run.FitRun(self, adapter, self._engine, self._policy)
        run.start()
        self._run = run
        self._resumed_from = run.resumed_at

    def on_epoch_begin(self, epoch, logs=None):
        self._run.epoch_begin(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self._run.position.begin_batch(batch)

    def on_train_batch_end(self, batch, logs=None):
        self._run.batch_end(batch)

    # Validation inside fit(): fit() calls these hooks of its callbacks
    # while it evaluates on validation_data at an epoch's end; evaluate()
    # outside fit() calls them with no run.

    def on_test_begin(self, logs=None):
        if self._run is not None:
            self._run.test_begin()

    def on_test_batch_end(self, batch, logs=None):
        if self._run is not None:
            self._run.test_batch_end()

    def on_epoch_end(self, epoch, logs=None):
        self._run.epoch_end(epoch)

    def on_train_end(self, logs=None):
        run, self._run = self._run, None
        run.end()


def callback_backup_and_restore(backup_dir, **kwargs) -> BackupAndRestore:
    """Returns `BackupAndRestore(backup_dir, **kwargs)` (the seed's name)."""
    return BackupAndRestore(backup_dir, **kwargs)
