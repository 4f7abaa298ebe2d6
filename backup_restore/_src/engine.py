"""The engine both front ends share: the Keras callback and BackupManager.

It ties together, once, what makes backups safe and identical in behaviour
whichever front end drives them:

- the store (store.py): atomic, durable, verified commits; async persist;
- the role of this process under its tf.distribute strategy
  (distribution.py): only the chief commits into backup_dir; other
  workers write their (collective) copy into a private scratch directory
  and delete it at once;
- preemption (preemption.py): a signal is turned into "back up at this
  step, wait until committed, then exit (or stop)", agreed on by every
  worker of a MultiWorkerMirroredStrategy cluster.

A front end decides what to back up (a tf.train.Checkpoint plus JSON
metadata) and when; the engine does the rest.
"""

import contextlib
import os
import signal
import sys
import threading
import time

from absl import logging

from backup_restore._src import background
from backup_restore._src import distribution
from backup_restore._src import faults
from backup_restore._src import ownership
from backup_restore._src import preemption
from backup_restore._src import store
from backup_restore._src import tf_checkpoint
from backup_restore._src import tf_logs


class Engine:
    """Backups of one training job in `backup_dir`.

    Args:
      backup_dir: where backups live; validated now.
      async_backup: persist backups on a background thread.
      save_before_preemption: watch `preemption_signals`.
      preemption_signals: the signals announcing a preemption.
      exit_on_preemption: exit the process after the preemption backup;
        else `stop_for_preemption` returns and training should stop.
      preemption_exit_code: the exit status then.
      double_checkpoint: keep the previous backup beside the newest
        (store.BackupStore's `keep_previous`).
    """

    def __init__(
        self,
        backup_dir,
        *,
        async_backup=True,
        save_before_preemption=False,
        preemption_signals=preemption.DEFAULT_SIGNALS,
        exit_on_preemption=True,
        preemption_exit_code=preemption.RESTART_EXIT_CODE,
        double_checkpoint=False,
    ):
        self.store = store.BackupStore(
            backup_dir, keep_previous=double_checkpoint
        )
        tf_logs.quiet_checkpoint_chatter()
        self.async_backup = bool(async_backup)
        # Made (its signals validated) even when not watching yet:
        # `configure` may turn watching on later.
        self._preemption_watcher = preemption.PreemptionWatcher(
            preemption_signals,
            preemption_exit_code if exit_on_preemption else None,
        )
        self._watcher = (
            self._preemption_watcher if save_before_preemption else None
        )
        self._exit_on_preemption = exit_on_preemption
        self._exit_code = preemption_exit_code
        self._role = distribution.Role(True, 0, False, None)
        self._strategy = None
        self._scratch = None
        self.preempted = False
        self.completed = False  # finish() reached the end of training
        # When training started (or its first step ended) or last backed up:
        # the interval to the next backup is about the one that led up to
        # this backup.
        self._last_mark = None
        self._ownership = None  # held by the chief from start() to finish()

    def configure(self, *, double_checkpoint, save_before_preemption):
        """Sets `double_checkpoint` and `save_before_preemption` after the
        engine was made (a front end learns them late), between runs."""
        self.store.keep_previous = bool(double_checkpoint)
        if not save_before_preemption and self._watcher is not None:
            self._watcher.uninstall()
        self._watcher = (
            self._preemption_watcher if save_before_preemption else None
        )

    @property
    def backup_dir(self) -> str:
        return self.store.directory

    @property
    def role(self) -> distribution.Role:
        return self._role

    @property
    def preemption_requested(self) -> bool:
        """Whether a preemption signal reached this process."""
        return self._watcher is not None and self._watcher.requested

    def start(self, strategy=None, scope=None) -> None:
        """Begins a training run: role, preemption handler, leftovers.

        Args:
          strategy: the tf.distribute strategy training runs under.
          scope: which run of the job this is (e.g. its fit() call): the
            run restores, replaces and deletes only backups of its scope.

        Raises:
          BackupDirInUseError: another job owns backup_dir (nothing in it
            was changed).
          ValueError: the strategy is not supported.
          RuntimeError: save_before_preemption outside the main thread.
        """
        self.store.scope = scope
        # Another run or job may have changed backup_dir since the store
        # last looked: this run lists it anew (once).
        self.store.refresh()
        self._strategy = strategy
        if strategy is not None:
            self._role = distribution.role(strategy)
        if self._role.is_chief:
            # Before anything touches backup_dir: a job refused here (another
            # one owns it) changes nothing. Other workers only read the
            # chief's backups: the workers of one job are one owner.
            self._ownership = ownership.acquire(self.backup_dir)
            self.store.record_created()
        self.preempted = False
        self._scratch = None
        if not self._role.is_chief:
            self._scratch = store.BackupStore(
                distribution.worker_scratch_dir(
                    self.backup_dir, self._role.task_id
                ),
                keep_directory=True,
            )
            self._scratch.delete_all()
        if self._watcher is not None:
            self._watcher.install()
            self._watcher.armed = True
        if self._role.is_chief:
            self.store.cleanup()
        self._last_mark = time.monotonic()

    def watch_for_preemption_early(self) -> None:
        """Installs the preemption handler before `start` (when the front
        end is made, and at the first hook fit() calls): a signal until
        `start` exits at once (nothing trained yet to back up). Off the main
        thread, left to `start`."""
        if (
            self._watcher is not None
            and threading.current_thread() is threading.main_thread()
        ):
            self._watcher.install()

    def restore(self, prepare):
        """Restores the newest intact backup; (info, status) or None.

        `prepare(info)` checks a candidate (raising to refuse it) and returns
        the tf.train.Checkpoint to read into. Every worker reads the chief's
        committed backup.
        """
        restored = self.store.restore_latest(
            prepare, ahead=distribution.plain_variables(self._strategy)
        )
        others = len(self.store.committed()) - len(
            self.store.committed_in_scope()
        )
        if others:
            logging.info(
                "%s holds %d backup(s) of another run of this job (another "
                "fit() call): this run leaves them alone.",
                self.backup_dir,
                others,
            )
        if restored is not None:
            # Every object given was restored; entries of the checkpoint with
            # no object here (its save_counter) are fine, not worth a warning.
            restored[1].assert_existing_objects_matched().expect_partial()
        return restored

    def first_step_done(self) -> None:
        """Training's first step, with its one-time tracing, is done.

        The interval that leads up to the first backup counts from here.
        """
        self._last_mark = time.monotonic()

    def backup_estimate_seconds(self, checkpoint) -> float:
        """About what a backup of `checkpoint` costs, before one was taken
        (its size and number of variables, at this machine's measured
        rates: background.backup_estimate_seconds)."""
        facts = tf_checkpoint.facts(checkpoint)
        return background.backup_estimate_seconds(
            facts.variable_bytes, facts.variables
        )

    def step_done(self) -> None:
        """Between training steps: a backup that is late to become
        kill-safe is waited for (store.enforce_kill_safe_deadline)."""
        self.store.enforce_kill_safe_deadline()

    def write(self, checkpoint, metadata, label=None, blocked_since=None):
        """Backs up `checkpoint` with `metadata` (chief: commits it).

        `label` (what the backup holds, e.g. "epoch 2, batch 0") and
        `blocked_since` (when training began to wait for it) go into the
        one line the store logs per backup.

        Raises:
          BackupDirInUseError: another job has taken backup_dir over (it
            was deleted or replaced meanwhile); nothing was written.
        """
        if self._role.coordinator is not None:
            # ParameterServerStrategy: steps scheduled may still be running
            # on the workers; the backup must hold exactly those counted.
            self._role.coordinator.join()
        now = time.monotonic()
        interval = None if self._last_mark is None else now - self._last_mark
        self._last_mark = now
        if self._scratch is not None:
            # Saving may issue collective ops: write as the chief does.
            self._scratch.write(checkpoint, metadata)
            self._scratch.delete_all()
            return
        # backup_dir may have been deleted or replaced since start(), and
        # another job started on it: raises then, before writing anything.
        if self._ownership is not None:
            self._ownership.ensure()
        self.store.write_async(
            checkpoint,
            metadata,
            asynchronous=self.async_backup,
            # TensorFlow's async snapshot issues collective ops of its own:
            # with several workers, snapshot synchronously like the others.
            # Under ParameterServerStrategy the variables live on remote
            # parameter servers: read them synchronously, once.
            async_snapshot=not self._role.collective_saves
            and self._role.coordinator is None,
            expected_interval=interval,
            label=label,
            blocked_since=blocked_since,
        )

    def preemption_agreed(self) -> bool:
        """Whether to back up and stop now, the same answer on every worker.

        With several MultiWorkerMirroredStrategy workers, a signal reaches
        one of them (or several, at different steps); one all-reduce per
        call through the strategy tells every worker at the same step, so
        all of them take the same backup (their saves issue collective ops
        in step) and stop. Every worker must call this at the same steps.
        """
        if self._watcher is None:
            return False
        requested = self._watcher.requested
        if self._role.collective_saves:
            requested = distribution.any_worker(self._strategy, requested)
        return requested

    def stop_for_preemption(self, where: str) -> None:
        """After the preemption backup at `where`: waits until committed,
        then exits (exit_on_preemption) or returns."""
        self.store.wait()  # committed, durable
        self.preempted = True
        logging.warning(
            "Preemption (%s): %s %s to %s; %s.",
            signal.Signals(self._watcher.received).name
            if self._watcher.received
            else "signalled to another worker",
            "backed up" if self._role.is_chief else "the chief backed up",
            where,
            self.backup_dir,
            f"exiting with status {self._exit_code}"
            if self._exit_on_preemption
            else "stopping training",
        )
        self._watcher.uninstall()
        if self._exit_on_preemption:
            self._release_ownership(remove_empty_dir=False)
            sys.exit(self._exit_code)

    def wait(self) -> None:
        """Blocks until the last backup is committed (raises its error)."""
        self.store.wait()

    def settle(self) -> None:
        """The front end is raising: waits for the backup in flight and
        ends the background thread (a later write starts one anew); raises
        that backup's error. Ownership is kept (see ownership.py)."""
        self.store.close()

    def finish(self, delete: bool, final_backup=None) -> None:
        """Ends the run: waits for the last backup, deletes the backups
        (chief; not after a preemption), uninstalls the handler and lets
        backup_dir go.

        The preemption handler stays until the end: a preemption that
        arrives before the deletion starts calls `final_backup()` (which
        writes the backup of the finished run and returns where it is) and
        exits (or stops) as at any other step, so the restart has nothing
        left to train. Once the deletion has started the run is complete;
        a signal then is logged, and fit() returns normally.
        """
        deleted = False
        self.completed = False
        try:
            # A failed last backup raises here. The background thread ends;
            # the next run starts one anew (and decides its priority anew).
            self.store.close()
            faults.point(faults.FINISH_WAITED, self.backup_dir)
            if (
                final_backup is not None
                and not self.preempted
                and self.preemption_agreed()
            ):
                where = final_backup()
                self.stop_for_preemption(where)
                return
            if not self.preempted:
                # Training is complete; an interrupt from here on (Ctrl-C
                # during the deletion) does not undo that.
                self.completed = True
            # Whatever is in backup_dir now is another owner's when this
            # one lost it or was taken over: its backups are not deleted.
            owner = self._other_owner()
            if delete and not self.preempted and self._role.is_chief and owner:
                logging.warning(
                    "Training completed, but %s has owned %s since: its "
                    "backups are not deleted.",
                    owner,
                    self.backup_dir,
                )
            elif delete and not self.preempted and self._role.is_chief:
                faults.point(faults.DELETING, self.backup_dir)
                self.store.delete_all()
                deleted = True
                logging.info(
                    "Training completed; deleted the backups in %s.",
                    self.backup_dir,
                )
        finally:
            if self._watcher is not None:
                late = self._watcher.requested and not self.preempted
                self._watcher.uninstall()
                if late:
                    logging.warning(
                        "A preemption signal arrived after training had "
                        "completed and its backups were being deleted: "
                        "nothing is left to back up, so it is not acted on."
                    )
            # The owner's file goes first; then backup_dir and the parents
            # the store created, each if empty (the store's own rule).
            self._release_ownership(remove_empty_dir=False)
            if deleted:
                self.store.remove_created_dirs()
            if self._scratch is not None:
                with contextlib.suppress(OSError):  # not empty: kept
                    os.rmdir(self._scratch.directory)

    def _other_owner(self) -> str | None:
        """Who owns backup_dir instead of this engine since it started, if
        anyone: another job (the directory was deleted or replaced), or a
        newer BackupManager or fit() of this process."""
        if self._ownership is None:
            return None
        if self._ownership.lost:
            return "another job (it was deleted or replaced)"
        if self._ownership.superseded:
            return "another BackupManager or fit() of this process"
        return None

    def _release_ownership(self, remove_empty_dir: bool) -> None:
        """Lets another job use backup_dir (after the deletion, if any)."""
        if self._ownership is not None:
            self._ownership.release(remove_empty_dir=remove_empty_dir)
            self._ownership = None
