"""Resuming a fit() call from its backup (fit_run.py owns the call).

A resume happens in three steps, each at the point of fit() where it can:
- `Resume.prepare` (on_train_begin, from the store, per candidate backup):
  checks the backup's schema, flavour, fit() call and model before anything
  is read, and returns the checkpoint to read it into;
- `Resume.after_restore` (on_train_begin, once the checkpoint is read): the
  data position, the epoch and step fit() starts at, History;
- `Resume.apply` (the first on_epoch_begin, after every other callback's
  on_train_begin reset its state): callback states, the epoch's metrics, the
  learning rate a scheduler set again.
"""

import time

import tensorflow as tf
from absl import logging

from backup_restore._src import backup_metadata
from backup_restore._src import callback_states
from backup_restore._src import errors
from backup_restore._src import fit_call_checks
from backup_restore._src import flavours
from backup_restore._src import keras_state
from backup_restore._src import model_fingerprint
from backup_restore._src import position as position_lib
from backup_restore._src import tf_checkpoint_read


def _has_weights(model) -> bool:
    try:
        return bool(model.weights)
    except ValueError:  # an unbuilt tf-keras Sequential
        return False


class Resume:
    """The restore of one backup into a fit_run.FitRun."""

    def __init__(self, run):
        self._run = run
        self._holder = None
        self._tensors = None
        self._learning_rate = None
        self._metadata = None
        self._started = None
        # Optimizer slots prepare() made unfilled (unfilled_slots.py), for
        # the read to fill; zero-filled if the restore fails.
        self.unfilled = []

    def prepare(self, info):
        """Checks a candidate backup; returns the checkpoint to read it into.

        Raises:
          BackupCorruptError: its metadata breaks the schema (the store then
            falls back to an older backup).
          BackupMismatchError: the backup belongs to another model.
        """
        self._started = time.monotonic()
        run = self._run
        model = run.model
        backup_dir = run.callback.backup_dir
        metadata = info.metadata
        problem = backup_metadata.problem(metadata, run.data_geometry)
        if problem:
            raise _invalid_metadata(info, problem)
        problem = backup_metadata.flavour_problem(
            metadata, run.adapter.FLAVOUR, flavours.name
        )
        if problem:
            raise errors.BackupMismatchError(
                f"The backup in {info.path} cannot be restored into this "
                f"model: {problem}.\nNothing was restored or deleted. Resume "
                "with the same code as before, or use another backup_dir "
                f"(or delete {backup_dir}) to start afresh."
            )
        self._check_fit_call(info)
        # Built, but holding none of the weights the backup holds: a model
        # whose `build()` made none of its sublayers' weights (Keras 3 warns
        # then that it has unbuilt state), which Keras makes at the first
        # step. They are made now, as for an unbuilt model.
        weightless = metadata["fingerprint"]["variables"] and not _has_weights(
            model
        )
        if not model.built or weightless:
            config = metadata.get("build_config")
            if config is not None:
                model.build_from_config(config)
            elif not _has_weights(model):
                raise ValueError(
                    f"The model is not built, and the backup {info.path} does "
                    "not record how to build it, so its weights cannot be "
                    "restored. Build the model before fit(): give it an "
                    "Input/input_shape, or call model.build(input_shape)."
                )
            # Else never built itself but made of built parts (a GAN of two
            # built models, with no call()): its weights exist, and the
            # fingerprint below compares them with the backup's.
        run.random_generators = run.adapter.layer_random_generators(model)
        backup_fp = metadata["fingerprint"]
        held = run.held_state()
        self._check_fingerprint(
            info,
            model_fingerprint.diff(backup_fp, run.fingerprint(held), True),
        )
        # Slot variables are made now so that they are restored here, not
        # lazily at the first step: each optimizer the backup holds built
        # is built on the same variables; the others stay unbuilt.
        if "held" in backup_fp:
            self.unfilled += keras_state.build_held_optimizers(
                backup_fp["held"], held, run.adapter
            )
            held = run.held_state()
            self._check_fingerprint(
                info, model_fingerprint.diff(backup_fp, run.fingerprint(held))
            )
        else:
            # Written by an earlier version: the compiled optimizer, built
            # on the trainable variables, is all it holds.
            run.adapter.build_optimizer(
                model.optimizer, model.trainable_variables
            )
        _check_callback_tensors(info)
        self._holder = callback_states.holder(spec=metadata["callback_tensors"])
        return run.checkpoint(self._holder, held)

    def _check_fingerprint(self, info, problems) -> None:
        """Raises BackupMismatchError listing `problems`, if any."""
        if problems:
            raise errors.BackupMismatchError(
                f"The backup in {info.path} was written by a different model, "
                "optimizer or loss, so it cannot be restored into this one:\n  "
                + "\n  ".join(problems)
                + "\nNothing was restored or deleted. Train the same model "
                "as before to resume, or use another backup_dir (or delete "
                f"{self._run.callback.backup_dir}) to start from scratch."
            )

    def _check_fit_call(self, info):
        """Refuses a backup whose data positions mean something else here.

        Raises:
          BackupMismatchError: naming the argument or data size that differs.
        """
        run = self._run
        problems = fit_call_checks.problems(
            info.metadata, run.fit_call, run.data_geometry
        )
        if problems:
            raise errors.BackupMismatchError(
                f"The backup in {info.path} was written by a fit() call whose "
                "data positions mean something else in this one, so resuming "
                "would continue at the wrong place:\n  "
                + "\n  ".join(problems)
                + "\nNothing was restored or deleted. Call fit() with the "
                "same data and arguments as before to resume, or use another "
                f"backup_dir (or delete {run.callback.backup_dir}) to start "
                "afresh."
            )
        changes = fit_call_checks.changes(info.metadata, run.fit_call)
        if changes:
            logging.warning(
                "The backup in %s was written by a fit() call that validated "
                "differently; training resumes as it was, validation follows "
                "this fit()'s arguments from epoch %d on (History's val_* "
                "entries before it follow the backup's):\n  %s",
                info.path,
                info.metadata["position"]["epoch"],
                "\n  ".join(changes),
            )
        backup_epochs = info.metadata.get("fit_call", {}).get("epochs")
        if backup_epochs != run.fit_call["epochs"]:
            logging.warning(
                "The backup in %s was written by fit(epochs=%s); this fit() "
                "has epochs=%s and continues it to that end.",
                info.path,
                backup_epochs,
                run.fit_call["epochs"],
            )

    def after_restore(self, info, status) -> None:
        """The backup is read: sets where fit() starts and History."""
        del status  # unused: the checkpoint's restore status
        run = self._run
        model = run.model
        adapter = run.adapter
        context = run.context
        metadata = info.metadata
        self._tensors = self._holder.tensors
        self._learning_rate = keras_state.learning_rate(
            model.optimizer, adapter
        )
        saved = metadata["position"]
        epoch, step = int(saved["epoch"]), int(saved["step"])
        iterators_done, skip = saved["iterators_done"], saved["drawn"]
        epochs_done = epoch - run.fit_call["initial_epoch"]
        if run.engine.role.coordinator is not None:
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
        # from the current one are skipped, in the input pipeline where the
        # adapter can, else by FitRun's train function.
        adapter.replay_epochs(context, iterators_done, epochs_done)
        skipped = adapter.skip_in_input(context, skip)
        if skipped:
            logging.info(
                "Skipping %d already-trained batches in the input pipeline.",
                skip,
            )
        run.position = position_lib.Position(iterators_done, skip, skipped)
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
        run.resumed_at = (epoch, step)
        adapter.set_train_counter(model, saved.get("train_counter"))
        start_epoch = epoch
        if saved["stop_training"]:
            # A callback had stopped training (EarlyStopping): nothing to run.
            start_epoch = run.params["epochs"]
        counted = saved.get("counted_steps_per_epoch")
        if (
            adapter.completed_epoch_steps(context) is None
            and counted is not None
            and epoch > run.fit_call["initial_epoch"]
        ):
            # An input of unknown size: the uninterrupted run knew its epoch
            # length from its first epoch on; so does the resumed one.
            adapter.set_counted_epoch_steps(context, counted)
        drawn_before_step = skip
        if saved.get("epoch_trained") and not saved["stop_training"]:
            # fit() cannot start an epoch after its last batch (it wants
            # the logs of one): start at that batch, and let the wrapped
            # train function stand in for it with the restored metrics.
            run.replay_last_step = True
            step -= 1
            drawn_before_step -= 1
        adapter.start_at(model, context, start_epoch, step, drawn_before_step)
        self._metadata = metadata
        # History.history survives History.on_train_begin; its epoch list
        # does not and is put back at the first epoch.
        history = metadata["history"]["history"]
        model.history.history = {
            k: list(history[k])
            for k in metadata["history"].get("keys", history)
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
            time.monotonic() - self._started,
        )

    def apply(self, epoch) -> None:
        """Puts back what fit()'s start reset: History's epochs, callback
        states and, mid-epoch, the metrics and the learning rate. `epoch` is
        None when fit() has nothing left to train."""
        run = self._run
        metadata = self._metadata
        history = run.model.history
        history.epoch = list(metadata["history"]["epoch"]) + history.epoch
        unmatched = callback_states.restore(
            run.others,
            run.adapter,
            metadata["callbacks"],
            self._tensors,
            metadata["history"],
        )
        if unmatched:
            logging.warning(
                "The backup holds state for callback(s) %s that this fit() "
                "was not given; it is ignored.",
                ", ".join(unmatched),
            )
        if epoch is not None and run.resumed_at[1] > 0:
            # Mid-epoch: fit() ran every on_epoch_begin of this epoch again;
            # a LearningRateScheduler may have applied its schedule to the
            # restored rate a second time. Every other callback has run by
            # now (this one runs last): put the backed-up rate back.
            if self._learning_rate is not None:
                run.model.optimizer.learning_rate = self._learning_rate
            run.position.epoch_batches = run.resumed_at[1]
            if metadata["metrics"]:
                self._restore_metric_states(metadata["metrics"])

    def _restore_metric_states(self, states):
        run = self._run
        run.adapter.build_compiled_metrics(run.model, run.context)
        missing = keras_state.restore_metric_states(
            run.model, run.adapter, states
        )
        if missing:
            logging.warning(
                "Could not restore the state of metric(s) %s: this epoch's "
                "logged values for them cover only the batches after resuming.",
                ", ".join(missing),
            )


def _check_callback_tensors(info):
    """The callback tensors the metadata lists are those the checkpoint
    holds (shapes, dtypes), before variables of those shapes are made to
    restore them.

    Raises:
      BackupCorruptError: they differ, or the checkpoint's index cannot be
        read.
    """
    listed = sorted(
        (list(shape), dtype)
        for arrays in info.metadata["callback_tensors"].values()
        for shape, dtype in arrays
    )
    try:
        # The index only; the read of the tensors uses it again.
        reader = tf_checkpoint_read.index_reader(info.checkpoint_prefix)
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
            f"callback_tensors lists {listed}, the checkpoint holds {stored}",
        )


def _invalid_metadata(info, problem: str) -> errors.BackupCorruptError:
    """A backup whose metadata breaks its schema: edited or damaged."""
    return errors.BackupCorruptError(
        f"{info.path} has invalid metadata: {problem}. Its manifest was "
        "edited or damaged, so it is not restored; an older intact backup "
        "is used if there is one (to start afresh instead, delete or move "
        "this backup)."
    )
