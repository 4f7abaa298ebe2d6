"""The Keras callback: fit()'s hooks over the engine (engine.py).

The callback serves both Keras flavours: it finds the flavour from the model
it is attached to (`set_model`) and reaches that flavour's fit() internals
only through its adapter (flavours.py). What it records is flavour-free:
the data position (position.py) and the backup's metadata
(backup_metadata.py).
"""

import collections
import os
import time

import keras
import tensorflow as tf
from absl import logging

from backup_restore._src import backup_metadata
from backup_restore._src import callback_states
from backup_restore._src import engine
from backup_restore._src import errors
from backup_restore._src import flavours
from backup_restore._src import keras_state
from backup_restore._src import policy
from backup_restore._src import position
from backup_restore._src import preemption
from backup_restore._src import tf_keras_adapter

# Every argument BackupAndRestore takes: tf-keras's four, then ours.
_ARGS = (
    "backup_dir",
    "save_freq",
    "delete_checkpoint",
    "save_before_preemption",
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
    engine.reject_near_misses("BackupAndRestore", kwargs, _ARGS)
    if kwargs:
        logging.warning(
            "BackupAndRestore ignores unknown argument(s) %s (accepted for "
            "forward compatibility; it takes %s).",
            ", ".join(sorted(kwargs)),
            ", ".join(_ARGS),
        )


# backup_dir -> how many fit() calls with a BackupAndRestore on it completed
# in this process. A job that calls fit() several times (two phases, say)
# gives each call its own backups: call #k only restores and deletes those
# of call #k. A call interrupted before its training completed does not
# count, so running it again (a notebook cell after Ctrl-C, a retry loop)
# resumes it; one interrupted while deleting its backups counts.
_COMPLETED_FITS = collections.Counter()


def _directory_key(backup_dir: str) -> str:
    if "://" in backup_dir:
        return backup_dir.rstrip("/")
    return os.path.normpath(os.path.abspath(backup_dir))


class BackupAndRestore(
    keras.callbacks.Callback, tf_keras_adapter.CallbackBase, engine.FrontEnd
):
    """Backs up the training state of `Model.fit()` and resumes from it.

    While `fit()` runs, the callback writes the whole training state (model
    weights, optimizer state including slots and `iterations`, the position in
    training, the History) into `backup_dir`. When the job is killed and
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
    the callback; other files there are never touched.

    It serves Keras 3 models with the TensorFlow backend (`tf.keras` in
    TensorFlow 2.21, or `import keras`) and tf-keras models (`import
    tf_keras`), and is a `keras.callbacks.Callback`.

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
      delete_checkpoint: delete the backup when `fit()` completes. The
        backup due at the very end of training is then not written (it
        would be deleted unread at once).
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
        argument is a near miss of one of ours (`asnyc_backup`).
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

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        delete_checkpoint=True,
        save_before_preemption=False,
        *,
        async_backup=True,
        preemption_signals=preemption.DEFAULT_SIGNALS,
        exit_on_preemption=True,
        preemption_exit_code=preemption.RESTART_EXIT_CODE,
        overhead_budget=None,
        **kwargs,
    ):
        super().__init__()
        engine.check_eager("BackupAndRestore", "train with Model.fit()")
        _check_unknown_kwargs(kwargs)
        self._policy = policy.from_arguments(
            save_freq, save_before_preemption, overhead_budget
        )
        self._engine = engine.Engine(
            backup_dir,
            async_backup=async_backup,
            save_before_preemption=save_before_preemption,
            preemption_signals=preemption_signals,
            exit_on_preemption=exit_on_preemption,
            preemption_exit_code=preemption_exit_code,
        )
        self.backup_dir = self._engine.backup_dir
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self.save_before_preemption = save_before_preemption
        self.async_backup = bool(async_backup)
        self._resume = None
        self._adapter = None
        self._in_fit = False
        # From now on a preemption signal ends the process in the restart
        # status: fit() does much before its first hook (its data adapter
        # draws from a generator, say), and nothing is trained until then.
        self._engine.watch_for_preemption_early()

    @property
    def resumed_from(self) -> tuple[int, int] | None:
        """(epoch, batch) the last fit() resumed at; None for a fresh start.

        `batch` counts the batches of that epoch already trained (0: the epoch
        starts from its beginning).
        """
        return self._resume

    def set_model(self, model):
        # Called by fit() (and evaluate/predict) before any other hook.
        self._adapter = flavours.for_model(model)
        super().set_model(model)
        # Again for a later fit() with this callback (each fit() ends by
        # uninstalling the handler).
        self._engine.watch_for_preemption_early()

    # -- fit() hooks --------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        adapter = self._adapter
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
        self._refuse_other_backup_callbacks()
        adapter.check_strategy(model.distribute_strategy)
        # Run after every other callback, so that a backup taken at the end
        # of a batch or an epoch holds their state after that batch or epoch
        # (EarlyStopping's patience, History's new entry, stop_training).
        self._others = adapter.run_last(self)
        self._optimizer_fp = keras_state.optimizer_fingerprint(
            model.optimizer, adapter
        )
        context = adapter.fit_context()
        self._fit_call = {
            "index": _COMPLETED_FITS[_directory_key(self.backup_dir)],
            "epochs": int(self.params.get("epochs", 1)),
            "initial_epoch": adapter.user_initial_epoch(context),
        }
        self._data_geometry = adapter.data_geometry(context)
        adapter.track_iterators(context)
        self._context = context
        self._position = position.Position()
        self._save_at_epoch_end = False
        self._first_epoch = True
        self._first_step_done = False
        self._replay_last_step = False
        self._validation_metrics = None
        self._in_fit = True
        self._resume = None
        self._restored = None  # metadata to apply at the first epoch begin
        self._write_checkpoint = None
        self._write_spec = None
        self._static = None
        # The strategy decides which process commits (see engine.py); each
        # fit() call of the job has backups of its own.
        self._engine.start(
            model.distribute_strategy, scope=f"fit#{self._fit_call['index']}"
        )
        self._warn_about_unsaved_state(model)
        self._random_generators = None
        restored = self._engine.restore(self._prepare_restore)
        if restored is None:
            self._random_generators = adapter.layer_random_generators(model)
        else:
            self._after_restore(*restored)
        adapter.wrap_train_function(model, self._wrap)

    def _refuse_other_backup_callbacks(self):
        others = [
            c
            for c in self._adapter.fit_callback_list().callbacks
            if c is not self
            and (
                isinstance(c, BackupAndRestore)
                or any(
                    a.is_builtin_backup_callback(c) for a in flavours.ADAPTERS
                )
            )
        ]
        if others:
            names = ", ".join(
                f"{type(c).__module__}.{type(c).__name__}"
                f"({getattr(c, 'backup_dir', '?')!r})"
                for c in others
            )
            raise ValueError(
                f"This fit() has more than one backup callback: "
                f"BackupAndRestore({self.backup_dir!r}) and {names}. Each "
                "would restore and skip the trained batches again, so "
                "resuming would go wrong. Pass one BackupAndRestore; to keep "
                "a second copy of the backups, copy its backup_dir (e.g. "
                "after each epoch, or with your storage's replication). "
                "Nothing was restored, written or deleted."
            )

    def on_epoch_begin(self, epoch, logs=None):
        self._position.begin_epoch(epoch)
        if self._first_epoch:
            self._first_epoch = False
            if self._restored is not None:
                # Every on_train_begin has run (resetting their state) and
                # fit() has reset the metrics: now put the state back.
                self._apply_restored_state(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self._position.begin_batch(batch)

    def on_train_batch_end(self, batch, logs=None):
        if self.preempted:
            return  # backed up and stopping; nothing after counts
        if self._replay_last_step:
            # The stand-in for the epoch's last batch (see _wrap): trained
            # before the backup, counted there already.
            self._replay_last_step = False
            return
        if not self._first_step_done:
            self._first_step_done = True
            self._engine.first_step_done()
            if isinstance(self._policy, policy.BudgetPolicy):
                # The optimizer's slots exist now: the whole state does.
                self._policy.set_prior_cost(
                    self._engine.backup_estimate_seconds(
                        self._checkpoint(callback_states.holder(tensors={}))
                    )
                )
        self._position.end_batch(batch)
        self._engine.step_done()
        preempted = self._engine.preemption_agreed()
        if not preempted and not self._policy.save_after_batches(
            self._position.since_save
        ):
            return
        if self._at_last_batch():
            # The epoch's last batch: write the backup at the epoch's end,
            # with its logs, so that resuming starts the next epoch cleanly.
            # A preemption then is acted on at the first validation batch
            # or at the epoch's end, whichever comes first.
            self._save_at_epoch_end = True
            return
        self._write(self._position.epoch, self._position.epoch_batches)
        if preempted:
            self._stop_for_preemption(
                self._position.epoch, self._position.epoch_batches
            )

    def _at_last_batch(self) -> bool:
        steps = self.params.get("steps") if self.params else None
        return steps is not None and self._position.epoch_batches >= steps

    # Validation inside fit(): fit() calls these hooks of its callbacks
    # while it evaluates on validation_data at an epoch's end.

    def on_test_begin(self, logs=None):
        if self._in_fit and self.save_before_preemption:
            # evaluate() is about to reset the compiled metrics, which hold
            # the epoch's training values: keep them for a preemption backup
            # during validation.
            self._validation_metrics = keras_state.metric_states(
                self.model, self._adapter
            )

    def on_test_batch_end(self, batch, logs=None):
        if not self._in_fit or self.preempted:
            return
        if not self._engine.preemption_agreed():
            return
        # Preempted during validation: the epoch's batches are all trained.
        # Back up at that point, with the training metrics of the epoch; the
        # resumed run validates this epoch again and goes on from there.
        epoch, step = self._position.epoch, self._position.epoch_batches
        self._write(
            epoch, step, metrics=self._validation_metrics, epoch_trained=True
        )
        self._stop_for_preemption(epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        if self.preempted:
            # fit() still ends the epoch cut short by the preemption; the
            # backup taken at its last batch is the one to resume from.
            return
        preempted = self._engine.preemption_agreed()
        due = self._policy.at_epoch_end or self._save_at_epoch_end
        self._save_at_epoch_end = False
        final = self._is_final_epoch(epoch)
        if (
            preempted
            # At the end of training only a kept backup is written: running
            # the job again then trains nothing more. One to be deleted
            # would be deleted unread a moment later, after training waited
            # for its commit (tf-keras writes it).
            or (final and not self.delete_checkpoint)
            or (due and not final)
        ):
            self._write(epoch + 1, 0)
        if preempted:
            self._stop_for_preemption(epoch + 1, 0)

    def _is_final_epoch(self, epoch) -> bool:
        """Whether fit() ends after this epoch (another callback, run before
        this one, e.g. EarlyStopping, may have stopped training)."""
        last_epoch = epoch + 1 >= self.params.get("epochs", epoch + 2)
        return last_epoch or bool(self.model.stop_training)

    def on_train_end(self, logs=None):
        self._in_fit = False
        self._adapter.unwrap_train_function(self.model)
        if self._first_epoch and self._restored is not None:
            # Nothing left to train (the backup was taken at the end): fit()
            # still returns the complete History.
            self._apply_restored_state(None)
        try:
            self._engine.finish(
                self.delete_checkpoint, self._write_final_backup
            )
        finally:
            # After the final backup (it reads the data position). The fit
            # context holds fit()'s dataset (arrays included) and the
            # position its iterator: the callback, which outlives fit(),
            # must not keep them alive.
            self._adapter.clear_start(self.model, self._context)
            self._context = None
            self._position.forget_iterator()
            if self._engine.completed:
                # Counted even when the deletion was then interrupted: the
                # next fit() is a new call, not this one again.
                _COMPLETED_FITS[_directory_key(self.backup_dir)] += 1

    def _write_final_backup(self) -> str:
        """A preemption reached the end of training before the deletion:
        backs up the finished state (the restart then trains nothing)."""
        epoch = self.params.get("epochs", self._position.epoch + 1)
        self._write(epoch, 0)
        return f"epoch {epoch}, batch 0 (training complete)"

    # -- backing up ---------------------------------------------------------

    def _stop_for_preemption(self, epoch, step):
        self._engine.stop_for_preemption(f"epoch {epoch}, batch {step}")
        self.model.stop_training = True  # exit_on_preemption=False

    def _wrap(self, train_function):
        def train_function_with_position(iterator):
            skip = self._position.on_iterator(iterator)
            if skip:
                self._skip(iterator, skip)
            if self._replay_last_step:
                # The epoch's last batch, trained before the backup: its
                # logs are the epoch's metrics, restored.
                return self._adapter.metrics_result(self.model)
            return train_function(iterator)

        return train_function_with_position

    def _checkpoint(self, callback_tensors):
        """What a backup holds in tensors."""
        return tf.train.Checkpoint(
            **self._adapter.checkpoint_objects(
                self.model, self._random_generators
            ),
            callback_tensors=callback_tensors,
        )

    def _checkpoint_for(self, tensors):
        """The checkpoint for a backup, the same object while possible.

        TensorFlow's async checkpointing keeps one host copy of the state per
        Checkpoint object: a new object per backup would allocate the whole
        state again every time.
        """
        spec = callback_states.tensor_spec(tensors)
        if self._write_checkpoint is None or spec != self._write_spec:
            self._write_holder = callback_states.holder(tensors=tensors)
            self._write_checkpoint = self._checkpoint(self._write_holder)
            self._write_spec = spec
        else:
            callback_states.assign(self._write_holder, tensors)
        return self._write_checkpoint

    def _static_metadata(self) -> dict:
        if self._static is None:
            adapter = self._adapter
            self._static = {
                **backup_metadata.header(
                    adapter.FLAVOUR,
                    {
                        "tensorflow": tf.__version__,
                        adapter.FLAVOUR: adapter.VERSION,
                    },
                ),
                "fingerprint": self._fingerprint(),
                "build_config": keras_state.build_config(self.model),
            }
        return self._static

    def _fingerprint(self):
        return keras_state.fingerprint(
            self.model,
            self._adapter,
            self._optimizer_fp,
            len(self._random_generators),
        )

    def _write(self, epoch, step, metrics=None, epoch_trained=False):
        started = time.monotonic()  # training waits from here
        history = self.model.history
        states, tensors = callback_states.collect(self._others, self._adapter)
        if metrics is None:
            # Mid-epoch, the metrics hold the epoch's running values.
            metrics = (
                keras_state.metric_states(self.model, self._adapter)
                if step
                else []
            )
        data_position = self._adapter.data_position(
            self._context, self._position, at_epoch_end=step == 0
        )
        metadata = {
            "position": {
                "epoch": epoch,
                "step": step,
                **data_position,
                "stop_training": bool(self.model.stop_training),
                # Every batch of this epoch is trained; its validation and
                # on_epoch_end are still to run (preempted in validation).
                "epoch_trained": epoch_trained,
                # Batches per epoch as fit() counted them at the end of the
                # first epoch, for an input whose size it did not know.
                "counted_steps_per_epoch": (
                    self._adapter.completed_epoch_steps(self._context)
                ),
            },
            # Which fit() call of the job, and what its positions mean.
            "fit_call": self._fit_call,
            "data": self._data_geometry,
            # The model's structure does not change during fit().
            **self._static_metadata(),
            "history": keras_state.to_json_value(
                {
                    "epoch": history.epoch,
                    "history": history.history,
                    # The manifest sorts keys; History keeps its own order.
                    "keys": list(history.history),
                }
            ),
            "metrics": metrics,
            "callbacks": states,
            "callback_tensors": callback_states.tensor_spec(tensors),
            "written_at": time.time(),
        }
        self._engine.write(
            self._checkpoint_for(tensors),
            metadata,
            label=f"epoch {epoch}, batch {step}",
            blocked_since=started,
        )
        self._position.saved()

    # -- restoring ----------------------------------------------------------

    def _warn_about_unsaved_state(self, model):
        """One warning at the start of fit() for state no backup can hold."""
        legacy_rng = self._adapter.legacy_rng_layers(model)
        if legacy_rng:
            logging.warning(
                "Layer(s) %s draw random numbers from tf-keras's legacy "
                "stateful RNG, whose state cannot be backed up: after a "
                "resume they draw different values than an uninterrupted run "
                "would. For an exact resume, call tf_keras.backend."
                "experimental.enable_tf_random_generator() before building "
                "the model.",
                ", ".join(legacy_rng),
            )
        unsaved = self._adapter.layers_with_unsaved_state(model)
        if unsaved:
            logging.warning(
                "Layer(s) %s keep state that tf.train.Checkpoint does not "
                "save (a vocabulary, bin boundaries): backups do not hold it. "
                "A resumed run uses whatever the code gives these layers, so "
                "build them the same way in every run (the same vocabulary= "
                "or adapt() on the same data, before fit()).",
                ", ".join(unsaved),
            )

    def _check_fit_call(self, info):
        """Refuses a backup whose data positions mean something else here.

        Raises:
          BackupMismatchError: naming the argument or data size that differs.
        """
        problems = backup_metadata.fit_call_problems(
            info.metadata, self._fit_call, self._data_geometry
        )
        if problems:
            raise errors.BackupMismatchError(
                f"The backup in {info.path} was written by a fit() call whose "
                "data positions mean something else in this one, so resuming "
                "would continue at the wrong place:\n  "
                + "\n  ".join(problems)
                + "\nNothing was restored or deleted. Call fit() with the "
                "same data and arguments as before to resume, or use another "
                f"backup_dir (or delete {self.backup_dir}) to start afresh."
            )
        backup_epochs = info.metadata.get("fit_call", {}).get("epochs")
        if backup_epochs != self._fit_call["epochs"]:
            logging.warning(
                "The backup in %s was written by fit(epochs=%s); this fit() "
                "has epochs=%s and continues it to that end.",
                info.path,
                backup_epochs,
                self._fit_call["epochs"],
            )

    def _prepare_restore(self, info):
        """Checks a candidate backup; returns the checkpoint to read it into.

        Raises:
          BackupCorruptError: its metadata breaks the schema (the store then
            falls back to an older backup).
          BackupMismatchError: the backup belongs to another model.
        """
        self._restore_start = time.monotonic()
        model = self.model
        metadata = info.metadata
        problem = backup_metadata.problem(metadata, self._data_geometry)
        if problem:
            raise _invalid_metadata(info, problem)
        problem = backup_metadata.flavour_problem(
            metadata, self._adapter.FLAVOUR, flavours.name
        )
        if problem:
            raise errors.BackupMismatchError(
                f"The backup in {info.path} cannot be restored into this "
                f"model: {problem}.\nNothing was restored or deleted. Resume "
                "with the same code as before, or use another backup_dir "
                f"(or delete {self.backup_dir}) to start afresh."
            )
        self._check_fit_call(info)
        if not model.built:
            config = metadata.get("build_config")
            if config is None:
                raise ValueError(
                    f"The model is not built, and the backup {info.path} does "
                    "not record how to build it, so its weights cannot be "
                    "restored. Build the model before fit(): give it an "
                    "Input/input_shape, or call model.build(input_shape)."
                )
            model.build_from_config(config)
        self._random_generators = self._adapter.layer_random_generators(model)
        problems = keras_state.diff(
            metadata["fingerprint"], self._fingerprint()
        )
        if problems:
            raise errors.BackupMismatchError(
                f"The backup in {info.path} was written by a different model "
                "or optimizer, so it cannot be restored into this one:\n  "
                + "\n  ".join(problems)
                + f"\nNothing was restored or deleted. Train the same model "
                f"as before to resume, or use another backup_dir (or delete "
                f"{self.backup_dir}) to start from scratch."
            )
        # Slot variables are made now so that they are restored here, not
        # lazily at the first step.
        self._adapter.build_optimizer(
            model.optimizer, model.trainable_variables
        )
        self._check_callback_tensors(info)
        self._restored_holder = callback_states.holder(
            spec=metadata["callback_tensors"]
        )
        return self._checkpoint(self._restored_holder)

    def _check_callback_tensors(self, info):
        """The callback tensors the metadata lists are those the checkpoint
        holds (shapes, dtypes), before variables of those shapes are made
        to restore them.

        Raises:
          BackupCorruptError: they differ, or the checkpoint's index cannot
            be read.
        """
        listed = sorted(
            (list(shape), dtype)
            for arrays in info.metadata["callback_tensors"].values()
            for shape, dtype in arrays
        )
        try:
            # Not tf.train.load_checkpoint: on ram:// it takes the prefix
            # for a directory. Reads the index only.
            reader = tf.compat.v1.train.NewCheckpointReader(
                info.checkpoint_prefix
            )
            shapes = reader.get_variable_to_shape_map()
            dtypes = reader.get_variable_to_dtype_map()
        except (tf.errors.OpError, ValueError) as e:
            raise errors.BackupCorruptError(
                f"{info.path}: its checkpoint index cannot be read "
                f"({type(e).__name__}: {str(e).strip().splitlines()[0]})"
            ) from e
        stored = sorted(
            (list(shapes[name]), dtypes[name].name)
            for name in shapes
            if name.startswith("callback_tensors/")
        )
        if listed != stored:
            raise _invalid_metadata(
                info,
                f"callback_tensors lists {listed}, the checkpoint holds "
                f"{stored}",
            )

    def _after_restore(self, info, status):
        model = self.model
        adapter = self._adapter
        context = self._context
        metadata = info.metadata
        self._restored_tensors = self._restored_holder.tensors
        self._restored_learning_rate = keras_state.learning_rate(
            model.optimizer, adapter
        )
        position_ = metadata["position"]
        epoch, step = int(position_["epoch"]), int(position_["step"])
        iterators_done, skip = position_["iterators_done"], position_["drawn"]
        epochs_done = epoch - self._fit_call["initial_epoch"]
        if self._engine.role.coordinator is not None:
            # ParameterServerStrategy: each worker iterates over its own copy
            # of the dataset and takes steps as they come, so no record says
            # which examples were trained. The step count, the weights and
            # the optimizer are exact; the data starts afresh.
            logging.info(
                "ParameterServerStrategy: resuming at the backed-up step; "
                "the workers' datasets start from their beginning."
            )
            iterators_done = skip = epochs_done = 0
        # The iterators used up before: made (never read) again, since
        # making one advances its reshuffle seeds; then the batches drawn
        # from the current one are skipped (in _wrap).
        adapter.replay_epochs(context, iterators_done, epochs_done)
        self._position = position.Position(iterators_done, skip)
        if (
            skip
            and not adapter.recreates_iterator_per_epoch(context)
            and adapter.is_python_generator_input(context)
        ):
            logging.warning(
                "The training input is a Python generator, which cannot "
                "be rewound: resuming skips the first %d batches it "
                "yields. That continues exactly where training stopped "
                "only if the generator yields the same batches from its "
                "start as in the interrupted run (deterministic, seeded "
                "code). Otherwise use a tf.data.Dataset or a "
                "keras.utils.Sequence / PyDataset.",
                skip,
            )
        self._resume = (epoch, step)
        start_epoch = epoch
        if position_["stop_training"]:
            # A callback had stopped training (EarlyStopping): nothing to run.
            start_epoch = self.params["epochs"]
        counted = position_.get("counted_steps_per_epoch")
        if (
            adapter.completed_epoch_steps(context) is None
            and counted is not None
            and epoch > self._fit_call["initial_epoch"]
        ):
            # An input of unknown size: the uninterrupted run knew its epoch
            # length from its first epoch on; so does the resumed one.
            adapter.set_counted_epoch_steps(context, counted)
        drawn_before_step = skip
        if position_.get("epoch_trained") and not position_["stop_training"]:
            # fit() cannot start an epoch after its last batch (it wants
            # the logs of one): start at that batch, and let the wrapped
            # train function stand in for it with the restored metrics.
            self._replay_last_step = True
            step -= 1
            drawn_before_step -= 1
        adapter.start_at(model, context, start_epoch, step, drawn_before_step)
        self._restored = metadata
        # History.history survives History.on_train_begin; its epoch list
        # does not and is put back at the first epoch.
        saved = metadata["history"]["history"]
        model.history.history = {
            k: list(saved[k]) for k in metadata["history"].get("keys", saved)
        }
        logging.info(
            "Restored backup %s (written %s): resuming at epoch %d, batch %d; "
            "took %.2f s.",
            info.path,
            time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(metadata["written_at"])
            ),
            epoch,
            step,
            time.monotonic() - self._restore_start,
        )

    def _apply_restored_state(self, epoch):
        metadata, self._restored = self._restored, None
        history = self.model.history
        history.epoch = list(metadata["history"]["epoch"]) + history.epoch
        unmatched = callback_states.restore(
            self._others,
            self._adapter,
            metadata["callbacks"],
            self._restored_tensors,
            metadata["history"],
        )
        if unmatched:
            logging.warning(
                "The backup holds state for callback(s) %s that this fit() "
                "was not given; it is ignored.",
                ", ".join(unmatched),
            )
        if epoch is not None and self._resume[1] > 0:
            # Mid-epoch: fit() ran every on_epoch_begin of this epoch again;
            # a LearningRateScheduler may have applied its schedule to the
            # restored rate a second time. Every other callback has run by
            # now (this one runs last): put the backed-up rate back.
            if self._restored_learning_rate is not None:
                self.model.optimizer.learning_rate = (
                    self._restored_learning_rate
                )
            self._position.epoch_batches = self._resume[1]
            if metadata["metrics"]:
                self._restore_metric_states(metadata["metrics"])

    def _skip(self, iterator, count):
        """Advances a fresh iterator past the batches trained before."""
        start = time.monotonic()
        for _ in range(count):
            next(iterator)
        logging.info(
            "Skipped %d already-trained batches in %.2f s.",
            count,
            time.monotonic() - start,
        )

    def _restore_metric_states(self, states):
        self._adapter.build_compiled_metrics(self.model, self._context)
        missing = keras_state.restore_metric_states(
            self.model, self._adapter, states
        )
        if missing:
            logging.warning(
                "Could not restore the state of metric(s) %s: this epoch's "
                "logged values for them cover only the batches after resuming.",
                ", ".join(missing),
            )


def _invalid_metadata(info, problem: str) -> errors.BackupCorruptError:
    """A backup whose metadata breaks its schema: edited or damaged."""
    return errors.BackupCorruptError(
        f"{info.path} has invalid metadata: {problem}. Its manifest was "
        "edited or damaged, so it is not restored; an older intact backup "
        "is used if there is one (to start afresh instead, delete or move "
        "this backup)."
    )


def callback_backup_and_restore(backup_dir, **kwargs) -> BackupAndRestore:
    """Returns `BackupAndRestore(backup_dir, **kwargs)` (the seed's name)."""
    return BackupAndRestore(backup_dir, **kwargs)
