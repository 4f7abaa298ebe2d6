"""One fit() call with backups: made by the callback's on_train_begin,
dropped at its on_train_end.

The run holds everything that lives as long as the fit() call: the data
position, the fit() context of the flavour's adapter, the checkpoint reused
across backups, and (when it resumed) the restore in progress
(fit_resume.py). The callback (callback.py) only forwards fit()'s hooks.
"""

import collections
import time

import tensorflow as tf
from absl import logging

from backup_restore._src import backup_metadata
from backup_restore._src import callback_states
from backup_restore._src import fit_content
from backup_restore._src import fit_frames
from backup_restore._src import fit_hooks
from backup_restore._src import fit_resume
from backup_restore._src import keras_state
from backup_restore._src import model_fingerprint
from backup_restore._src import paths
from backup_restore._src import policy as policy_lib
from backup_restore._src import position as position_lib
from backup_restore._src import stateful_random
from backup_restore._src import unfilled_slots

# backup_dir -> how many fit() calls with a BackupAndRestore on it completed
# in this process. A job that calls fit() several times (two phases, say)
# gives each call its own backups: call #k only restores and deletes those
# of call #k. A call interrupted before its training completed does not
# count, so running it again (a notebook cell after Ctrl-C, a retry loop)
# resumes it; one interrupted while deleting its backups counts.
COMPLETED_FITS = collections.Counter()


def directory_key(backup_dir: str) -> str:
    return paths.key(backup_dir)


class FitRun:
    """The backups of one fit() call.

    Args:
      callback: the BackupAndRestore fit() was given (its model, params and
        arguments).
      adapter: the model's flavour adapter (flavours.py).
      engine: the callback's engine (engine.py).
      policy: when to back up (policy.py).
    """

    def __init__(self, callback, adapter, engine, policy):
        self.callback = callback
        self.model = callback.model
        self.adapter = adapter
        self.engine = engine
        self.policy = policy
        model = self.model
        # Run after every other callback, so that a backup taken at the end
        # of a batch or an epoch holds their state after that batch or epoch
        # (EarlyStopping's patience, History's new entry, stop_training).
        self.others = adapter.run_last(callback)
        self.hook_calls = 0  # the callback's batch and epoch ends so far
        callback_list = adapter.fit_callback_list()
        self._guard = (
            fit_hooks.Guard(callback_list, self)
            if callback in callback_list.callbacks
            else None  # wrapped by another callback, which calls our hooks
        )
        self.content = fit_content.Content(model, adapter)
        context = adapter.fit_context()
        self.fit_call = {
            "index": COMPLETED_FITS[directory_key(callback.backup_dir)],
            "epochs": int(self.params.get("epochs", 1)),
            "initial_epoch": adapter.user_initial_epoch(context),
            "arguments": adapter.fit_arguments(),
        }
        self.data_geometry = adapter.data_geometry(context)
        adapter.track_iterators(context)
        self.context = context
        self.position = position_lib.Position()
        self.resume = None  # a fit_resume.Resume until its state is applied
        self.resumed_at = None  # (epoch, batch) when it resumed
        self.replay_last_step = False
        self._save_at_epoch_end = False
        self._first_epoch = True
        self._first_step_done = False
        self._random_ops_watched = False
        self._validation_metrics = None

    @property
    def params(self) -> dict:
        return self.callback.params or {}

    def start(self) -> None:
        """Takes backup_dir and restores the newest backup of this call."""
        model = self.model
        # The strategy decides which process commits (see engine.py); each
        # fit() call of the job has backups of its own.
        self.engine.start(
            model.distribute_strategy, scope=f"fit#{self.fit_call['index']}"
        )
        self.content.warn_about_unsaved(
            keras_state.held_state(model, self.adapter), at_start=True
        )
        resume = fit_resume.Resume(self)
        try:
            restored = self.engine.restore(resume.prepare)
        except BaseException:
            # The optimizer is left as a build with zeros would leave it.
            unfilled_slots.zero_fill(resume.unfilled)
            raise
        if restored is None:
            self.random_generators = self.adapter.layer_random_generators(model)
        else:
            resume.after_restore(*restored)
            self.resume = resume
            # The run that wrote the backup watched its step and warned; a
            # resume does not pay for the watch (its first step is downtime).
            self._random_ops_watched = True
        self.adapter.wrap_train_function(model, self._wrap)

    # -- fit() hooks, forwarded by the callback -----------------------------

    def epoch_begin(self, epoch) -> None:
        self.position.begin_epoch(epoch)
        if self._first_epoch:
            self._first_epoch = False
            if self.resume is not None:
                # Every on_train_begin has run (resetting their state) and
                # fit() has reset the metrics: now put the state back.
                self.resume, resume = None, self.resume
                resume.apply(epoch)

    def batch_end(self, batch) -> None:
        self.hook_calls += 1
        if self.engine.preempted:
            return  # backed up and stopping; nothing after counts
        if self.replay_last_step:
            # The stand-in for the epoch's last batch (see _wrap): trained
            # before the backup, counted there already.
            self.replay_last_step = False
            return
        if not self._first_step_done:
            self._first_step_done = True
            self.engine.first_step_done()
            self.content.warn_after_first_step()
            if isinstance(self.policy, policy_lib.BudgetPolicy):
                # The optimizer's slots exist now: the whole state does.
                self.policy.set_prior_cost(
                    self.engine.backup_estimate_seconds(
                        self.checkpoint(callback_states.holder(tensors={}))
                    )
                )
        self.position.end_batch(batch)
        self.engine.step_done()
        preempted = self.engine.preemption_agreed()
        if not preempted and not self.policy.save_after_batches(
            self.position.since_save
        ):
            return
        if self._at_last_batch():
            # The epoch's last batch: write the backup at the epoch's end,
            # with its logs, so that resuming starts the next epoch cleanly.
            # A preemption then is acted on at the first validation batch
            # or at the epoch's end, whichever comes first.
            self._save_at_epoch_end = True
            return
        self.write(self.position.epoch, self.position.epoch_batches)
        if preempted:
            self._stop_for_preemption(
                self.position.epoch, self.position.epoch_batches
            )

    def _at_last_batch(self) -> bool:
        steps = self.params.get("steps")
        return steps is not None and self.position.epoch_batches >= steps

    def test_begin(self) -> None:
        if self.callback.save_before_preemption:
            # evaluate() is about to reset the compiled metrics, which hold
            # the epoch's training values: keep them for a preemption backup
            # during validation.
            self._validation_metrics = keras_state.metric_states(
                self.model, self.adapter
            )

    def test_batch_end(self) -> None:
        if self.engine.preempted or not self.engine.preemption_agreed():
            return
        # Preempted during validation: the epoch's batches are all trained.
        # Back up at that point, with the training metrics of the epoch; the
        # resumed run validates this epoch again and goes on from there.
        epoch, step = self.position.epoch, self.position.epoch_batches
        self.write(
            epoch, step, metrics=self._validation_metrics, epoch_trained=True
        )
        self._stop_for_preemption(epoch, step)

    def epoch_end(self, epoch, raised=False) -> None:
        self.hook_calls += 1
        if self.engine.preempted:
            # fit() still ends the epoch cut short by the preemption; the
            # backup taken at its last batch is the one to resume from.
            return
        preempted = self.engine.preemption_agreed()
        due = self.policy.at_epoch_end or self._save_at_epoch_end
        self._save_at_epoch_end = False
        final = self._is_final_epoch(epoch)
        if (
            preempted
            # At the end of training only a kept backup is written: running
            # the job again then trains nothing more. One to be deleted
            # would be deleted unread a moment later, after training waited
            # for its commit (tf-keras writes it).
            or (final and not self.callback.delete_checkpoint)
            # A raise ends fit() before it completes: a restart resumes.
            or (due and (not final or raised))
        ):
            self.write(epoch + 1, 0)
        if preempted:
            self._stop_for_preemption(epoch + 1, 0)

    def _is_final_epoch(self, epoch) -> bool:
        """Whether fit() ends after this epoch (another callback, run before
        this one, e.g. EarlyStopping, may have stopped training)."""
        last_epoch = epoch + 1 >= self.params.get("epochs", epoch + 2)
        return last_epoch or bool(self.model.stop_training)

    def backup_after_raise(self, hook, args) -> None:
        """Another callback raised in fit()'s `hook` before this one ran
        there (fit_hooks.py): takes the backup due at that point."""
        if hook == "on_epoch_end":
            epoch, logs = args[0], (args[1] if len(args) > 1 else None)
            history = self.model.history
            if history in self.others and epoch not in history.epoch:
                # fit()'s own record of the epoch, which it trained: kept
                # with the backup like every epoch before it.
                history.on_epoch_end(epoch, logs)
            self.epoch_end(epoch, raised=True)
            return
        self.batch_end(args[0])
        if self._save_at_epoch_end:
            # The epoch's last batch, whose end never comes: back up with
            # the epoch trained, as a preemption during validation does.
            self._save_at_epoch_end = False
            self.write(
                self.position.epoch,
                self.position.epoch_batches,
                epoch_trained=True,
            )

    def settle(self) -> None:
        """fit() is raising: the backup in flight is committed before the
        exception leaves fit() (its error is logged: the raise is the one
        fit() reports), and no hook of fit()'s list stays wrapped."""
        if self._guard is not None:
            self._guard.remove()
        try:
            self.engine.settle()
        except Exception as e:
            logging.error(
                "fit() raised, and the backup being written then failed: %s", e
            )

    def end(self) -> None:
        """fit() ends: the final backup or the deletion, then the run lets
        go of fit()'s data."""
        if self._guard is not None:
            self._guard.remove()
        self.adapter.unwrap_train_function(self.model)
        if self._first_epoch and self.resume is not None:
            # Nothing left to train (the backup was taken at the end): fit()
            # still returns the complete History.
            self.resume, resume = None, self.resume
            resume.apply(None)
        try:
            self.engine.finish(
                self.callback.delete_checkpoint, self._write_final_backup
            )
        finally:
            # After the final backup (it reads the data position). The fit
            # context holds fit()'s dataset (arrays included) and the
            # position its iterator: the callback, which outlives fit(),
            # must not keep them alive.
            self.adapter.clear_start(self.model, self.context)
            self.context = None
            self.position.forget_iterator()
            if self.engine.completed:
                # Counted even when the deletion was then interrupted: the
                # next fit() is a new call, not this one again.
                COMPLETED_FITS[directory_key(self.callback.backup_dir)] += 1

    def _write_final_backup(self) -> str:
        """A preemption reached the end of training before the deletion:
        backs up the finished state (the restart then trains nothing)."""
        epoch = self.params.get("epochs", self.position.epoch + 1)
        self.write(epoch, 0)
        return f"epoch {epoch}, batch 0 (training complete)"

    # -- backing up ---------------------------------------------------------

    def _stop_for_preemption(self, epoch, step):
        self.engine.stop_for_preemption(f"epoch {epoch}, batch {step}")
        self.model.stop_training = True  # exit_on_preemption=False

    def _wrap(self, train_function):
        def train_function_with_position(iterator):
            try:
                skip = self.position.on_iterator(iterator)
                if skip:
                    _skip(iterator, skip)
                if self.replay_last_step:
                    # The epoch's last batch, trained before the backup: its
                    # logs are the epoch's metrics, restored.
                    return self.adapter.metrics_result(self.model)
                if self._random_ops_watched:
                    return train_function(iterator)
                # The first call of a fit() that starts afresh traces the
                # step: look at what it draws.
                self._random_ops_watched = True
                with stateful_random.watch() as found:
                    logs = train_function(iterator)
                self.content.warn_about_stateful_random(found)
                return logs
            except (StopIteration, tf.errors.OutOfRangeError):
                raise  # the end of the data: fit() ends the epoch
            except BaseException:
                self.settle()  # fit() raises
                raise

        return train_function_with_position

    # What a backup holds (fit_content.py), as the resume needs it too.

    @property
    def random_generators(self):
        return self.content.random_generators

    @random_generators.setter
    def random_generators(self, generators):
        self.content.random_generators = generators

    def held_state(self):
        return self.content.held_state()

    def checkpoint(self, callback_tensors, held=None):
        return self.content.checkpoint(callback_tensors, held)

    def fingerprint(self, held=None) -> dict:
        return self.content.fingerprint(held)

    def write(self, epoch, step, metrics=None, epoch_trained=False):
        started = time.monotonic()  # training waits from here
        states, tensors = callback_states.collect(self.others, self.adapter)
        checkpoint = self.content.checkpoint_for(tensors)  # before metadata
        if metrics is None:
            # Mid-epoch, the metrics hold the epoch's running values.
            metrics = (
                keras_state.metric_states(self.model, self.adapter)
                if step
                else []
            )
        history = self.model.history
        metadata = backup_metadata.fit_backup(
            position={
                "epoch": epoch,
                "step": step,
                **self.adapter.data_position(
                    self.context, self.position, at_epoch_end=step == 0
                ),
                "stop_training": bool(self.model.stop_training),
                "epoch_trained": epoch_trained,
                "counted_steps_per_epoch": (
                    self.adapter.completed_epoch_steps(self.context)
                ),
                "train_counter": self.adapter.train_counter(self.model),
            },
            fit_call=self.fit_call,
            data=self.data_geometry,
            static=self.content.static_metadata(),
            history=model_fingerprint.to_json_value(
                {
                    "epoch": history.epoch,
                    "history": history.history,
                    # The manifest sorts keys; History keeps its own order.
                    "keys": list(history.history),
                }
            ),
            metrics=metrics,
            callbacks=states,
            callback_tensors=callback_states.tensor_spec(tensors),
        )
        self.engine.write(
            checkpoint,
            metadata,
            label=f"epoch {epoch}, batch {step}",
            blocked_since=started,
        )
        self.position.saved()


def _skip(iterator, count):
    """Advances a fresh iterator past the batches trained before."""
    start = time.monotonic()
    fit_frames.skip_batches(iterator, count)
    logging.info(
        "Skipped %d already-trained batches in %.3f s.",
        count,
        time.monotonic() - start,
    )
