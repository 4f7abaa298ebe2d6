"""The Keras callback: a thin layer over the backup engine (store.py)."""

import time

import tensorflow as tf
import tf_keras
from absl import logging

from backup_restore._src import callback_states
from backup_restore._src import engine
from backup_restore._src import errors
from backup_restore._src import keras_adapter
from backup_restore._src import keras_state
from backup_restore._src import policy
from backup_restore._src import preemption

_SIGNATURE_ARGS = (
    "backup_dir",
    "save_freq",
    "delete_checkpoint",
    "save_before_preemption",
)


def _check_eager():
    if not tf.executing_eagerly():
        raise ValueError(
            "backup_restore.BackupAndRestore needs eager execution (TF2), but "
            "eager execution is disabled (tf.compat.v1."
            "disable_eager_execution() was called). Remove that call and "
            "train with Model.fit() in TF2 mode; legacy graph-mode (TF1) "
            "training has no backup support."
        )


class BackupAndRestore(tf_keras.callbacks.Callback):
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

    Example:

    ```python
    import numpy as np
    import tf_keras
    import backup_restore

    x = np.random.rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(4,))])
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
      **kwargs: accepted for forward compatibility with future tf-keras
        arguments; named in one warning and otherwise ignored.

    Raises:
      ValueError: eager execution is disabled; `backup_dir` is empty, an
        existing file or not writable; `save_freq` is invalid.
      TypeError: `backup_dir` is not a str or os.PathLike.
      RuntimeError: `save_before_preemption=True` outside the main thread.

    During `fit()`:
      BackupMismatchError: the backup was written by a different model or
        optimizer configuration.
      BackupCorruptError: every backup in `backup_dir` fails its integrity
        checks (nothing is deleted).
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
        **kwargs,
    ):
        super().__init__()
        _check_eager()
        keras_adapter.accept_tensor_logs(self)
        if kwargs:
            logging.warning(
                "BackupAndRestore ignores unknown argument(s) %s (accepted "
                "for forward compatibility; it takes %s).",
                ", ".join(sorted(kwargs)),
                ", ".join(_SIGNATURE_ARGS),
            )
        self._policy = policy.from_save_freq(save_freq, save_before_preemption)
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

    def wait_for_backup(self):
        """Blocks until the last backup is committed (async_backup=True).

        Raises:
          BackupWriteError: writing it failed; the previous one is intact.
        """
        self._engine.wait()

    @property
    def preemption_requested(self) -> bool:
        """Whether a preemption signal reached this process in this fit()."""
        return self._engine.preemption_requested

    @property
    def preempted(self) -> bool:
        """Whether this fit() stopped for a preemption (after its backup)."""
        return self._engine.preempted

    @property
    def resumed_from(self) -> tuple[int, int] | None:
        """(epoch, batch) the last fit() resumed at; None for a fresh start.

        `batch` counts the batches of that epoch already trained (0: the epoch
        starts from its beginning).
        """
        return self._resume

    # -- fit() hooks --------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        if getattr(model, "optimizer", None) is None:
            raise ValueError(
                "BackupAndRestore needs a compiled model: call model.compile() "
                "before model.fit()."
            )
        # Run after every other callback, so that a backup taken at the end
        # of a batch or an epoch holds their state after that batch or epoch
        # (EarlyStopping's patience, History's new entry, stop_training).
        self._others = keras_adapter.run_last(self)
        self._optimizer_fp = keras_state.optimizer_fingerprint(model.optimizer)
        self._epoch = 0
        self._epoch_batches = 0
        self._batch_start = 0
        self._since_save = 0
        self._save_at_epoch_end = False
        self._iterator = None
        self._iterator_batches = 0
        self._first_epoch = True
        self._first_step_done = False
        self._pending_skip = 0
        self._resume = None
        self._restored = None  # metadata to apply at the first epoch begin
        self._write_checkpoint = None
        self._write_spec = None
        self._static = None
        # The strategy decides which process commits (see engine.py).
        self._engine.start(model.distribute_strategy)
        self._warn_about_legacy_rng(model)
        self._random_generators = None
        restored = self._engine.restore(self._prepare_restore)
        if restored is None:
            self._random_generators = keras_adapter.layer_random_generators(
                model
            )
        else:
            self._after_restore(*restored)
        keras_adapter.wrap_train_function(model, self._wrap)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_batches = 0
        if self._first_epoch:
            self._first_epoch = False
            if self._restored is not None:
                # Every on_train_begin has run (resetting their state) and
                # fit() has reset the metrics: now put the state back.
                self._apply_restored_state(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = batch

    def on_train_batch_end(self, batch, logs=None):
        if self.preempted:
            return  # backed up and stopping; nothing after counts
        if not self._first_step_done:
            self._first_step_done = True
            self._engine.first_step_done()
        trained = batch - self._batch_start + 1  # > 1 with steps_per_execution
        self._epoch_batches = batch + 1
        self._iterator_batches += trained
        self._since_save += trained
        preempted = self._engine.preemption_agreed()
        if not preempted and not self._policy.save_after_batches(
            self._since_save
        ):
            return
        steps = self.params.get("steps") if self.params else None
        if steps is not None and self._epoch_batches >= steps:
            # The epoch's last batch: write the backup at the epoch's end,
            # with its logs, so that resuming starts the next epoch cleanly.
            self._save_at_epoch_end = True
            return
        self._write(self._epoch, self._epoch_batches)
        if preempted:
            self._stop_for_preemption(self._epoch, self._epoch_batches)

    def on_epoch_end(self, epoch, logs=None):
        if self.preempted:
            # fit() still ends the epoch cut short by the preemption; the
            # backup taken at its last batch is the one to resume from.
            return
        preempted = self._engine.preemption_agreed()
        due = self._policy.at_epoch_end or self._save_at_epoch_end
        self._save_at_epoch_end = False
        if preempted or (due and not self._backup_would_be_deleted(epoch)):
            self._write(epoch + 1, 0)
        if preempted:
            self._stop_for_preemption(epoch + 1, 0)

    def _backup_would_be_deleted(self, epoch) -> bool:
        """Whether fit() ends after this epoch and deletes the backups.

        A backup written now would be deleted unread a moment later, after
        training waited for its commit (tf-keras writes it anyway). Skipping
        it leaves the previous backup as the last one until the deletion.
        """
        if not self.delete_checkpoint:
            return False
        last_epoch = epoch + 1 >= self.params.get("epochs", epoch + 2)
        # Another callback (EarlyStopping, run before this one) may have
        # stopped training at this epoch.
        return last_epoch or bool(self.model.stop_training)

    def on_train_end(self, logs=None):
        keras_adapter.clear_initial_counters(self.model)
        if self._first_epoch and self._restored is not None:
            # Nothing left to train (the backup was taken at the end): fit()
            # still returns the complete History.
            self._apply_restored_state(None)
        self._engine.finish(self.delete_checkpoint)

    # -- backing up ---------------------------------------------------------

    def _stop_for_preemption(self, epoch, step):
        self._engine.stop_for_preemption(f"epoch {epoch}, batch {step}")
        self.model.stop_training = True  # exit_on_preemption=False

    def _wrap(self, train_function):
        def train_function_with_position(iterator):
            if iterator is not self._iterator:
                self._iterator = iterator
                self._iterator_batches = 0
                if self._pending_skip:
                    self._skip(iterator, self._pending_skip)
            return train_function(iterator)

        return train_function_with_position

    def _checkpoint(self, callback_tensors):
        """What a backup holds in tensors."""
        return tf.train.Checkpoint(
            model=self.model,
            optimizer=self.model.optimizer,
            layer_random_generators=self._random_generators,
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
            self._static = {
                "fingerprint": self._fingerprint(),
                "build_config": keras_state.build_config(self.model),
            }
        return self._static

    def _fingerprint(self):
        return keras_state.fingerprint(
            self.model, self._optimizer_fp, len(self._random_generators)
        )

    def _write(self, epoch, step):
        history = self.model.history
        states, tensors = callback_states.collect(self._others)
        metadata = {
            "position": {
                "epoch": epoch,
                "step": step,
                # Batches drawn from fit()'s current data iterator. A resumed
                # run skips them in its own iterator, except at an epoch
                # boundary when fit() starts every epoch with a new iterator.
                "iterator_batches": self._iterator_batches,
                "stop_training": bool(self.model.stop_training),
            },
            # The model's structure does not change during fit().
            **self._static_metadata(),
            "history": keras_state.to_json_value(
                {"epoch": history.epoch, "history": history.history}
            ),
            # Mid-epoch, the metrics hold the epoch's running values.
            "metrics": keras_state.metric_states(self.model) if step else [],
            "callbacks": states,
            "callback_tensors": callback_states.tensor_spec(tensors),
            "written_at": time.time(),
            "versions": {
                "tensorflow": tf.__version__,
                "tf_keras": tf_keras.__version__,
            },
        }
        self._engine.write(self._checkpoint_for(tensors), metadata)
        self._since_save = 0
        if self._engine.role.is_chief:
            logging.info(
                "Backing up epoch %d, batch %d (training waited %.3f s).",
                epoch,
                step,
                self._engine.last_snapshot_seconds,
            )

    # -- restoring ----------------------------------------------------------

    def _warn_about_legacy_rng(self, model):
        legacy_rng = keras_adapter.legacy_rng_layers(model)
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

    def _prepare_restore(self, info):
        """Checks a candidate backup; returns the checkpoint to read it into.

        Raises:
          BackupMismatchError: the backup belongs to another model.
        """
        self._restore_start = time.monotonic()
        model = self.model
        metadata = info.metadata
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
        self._random_generators = keras_adapter.layer_random_generators(model)
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
        optimizer = model.optimizer
        if hasattr(optimizer, "build"):
            # Create slot variables now so that they are restored here, not
            # lazily at the first step.
            optimizer.build(model.trainable_variables)
        self._restored_holder = callback_states.holder(
            spec=metadata["callback_tensors"]
        )
        return self._checkpoint(self._restored_holder)

    def _after_restore(self, info, status):
        model = self.model
        metadata = info.metadata
        self._restored_tensors = self._restored_holder.tensors
        self._restored_learning_rate = keras_state.learning_rate(
            model.optimizer
        )
        position = metadata["position"]
        epoch, step = int(position["epoch"]), int(position["step"])
        handler = keras_adapter.fit_data_handler()
        if self._engine.role.coordinator is not None:
            # ParameterServerStrategy: each worker iterates over its own copy
            # of the dataset and takes steps as they come, so no record says
            # which examples were trained. The step count, the weights and
            # the optimizer are exact; the data starts afresh.
            logging.info(
                "ParameterServerStrategy: resuming at the backed-up step; "
                "the workers' datasets start from their beginning."
            )
        elif keras_adapter.recreates_iterator_per_epoch(handler):
            # A new iterator every epoch: bring the pipeline to epoch `epoch`,
            # then skip the batches of that epoch already trained.
            keras_adapter.replay_epochs(
                handler, epoch - keras_adapter.user_initial_epoch(handler)
            )
            self._pending_skip = step
        else:
            # One iterator for all epochs: skip everything drawn from it.
            self._pending_skip = int(position["iterator_batches"])
            if keras_adapter.is_python_generator_input(handler):
                logging.warning(
                    "The training input is a Python generator, which cannot "
                    "be rewound: resuming skips the first %d batches it "
                    "yields. That continues exactly where training stopped "
                    "only if the generator yields the same batches from its "
                    "start as in the interrupted run (deterministic, seeded "
                    "code). Otherwise use a tf.data.Dataset or a "
                    "keras.utils.Sequence.",
                    self._pending_skip,
                )
        self._resume = (epoch, step)
        start_epoch = epoch
        if position["stop_training"]:
            # A callback had stopped training (EarlyStopping): nothing to run.
            start_epoch = self.params["epochs"]
        keras_adapter.set_initial_counters(model, start_epoch, step)
        self._restored = metadata
        # History.history survives History.on_train_begin; its epoch list
        # does not and is put back at the first epoch.
        model.history.history = {
            k: list(v) for k, v in metadata["history"]["history"].items()
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
            self._epoch_batches = self._resume[1]
            if metadata["metrics"]:
                self._restore_metric_states(metadata["metrics"])

    def _skip(self, iterator, count):
        """Advances a fresh iterator past the batches trained before."""
        start = time.monotonic()
        for _ in range(count):
            next(iterator)
        self._iterator_batches = count
        self._pending_skip = 0
        logging.info(
            "Skipped %d already-trained batches in %.2f s.",
            count,
            time.monotonic() - start,
        )

    def _restore_metric_states(self, states):
        handler = keras_adapter.fit_data_handler()
        keras_adapter.build_compiled_metrics(self.model, handler)
        missing = keras_state.restore_metric_states(self.model, states)
        if missing:
            logging.warning(
                "Could not restore the state of metric(s) %s: this epoch's "
                "logged values for them cover only the batches after resuming.",
                ", ".join(missing),
            )


def callback_backup_and_restore(backup_dir, **kwargs) -> BackupAndRestore:
    """Returns `BackupAndRestore(backup_dir, **kwargs)` (the seed's name)."""
    return BackupAndRestore(backup_dir, **kwargs)
