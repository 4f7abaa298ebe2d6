"""BackupManager: crash-safe, exact backups for custom training loops.

The same engine as the Keras callback (engine.py over the store: atomic and
durable commits, checksums, asynchronous persist; preemption.py: back up on
SIGTERM) and the same "every N" policy (policy.py), over any trackable
objects: models, optimizers, tf.data iterators, tf.random.Generator, counters.
Its arguments and methods carry the callback's names.

The README's "Custom training loops" section has a complete example.
"""

import operator
import time

import numpy as np
import tensorflow as tf
from absl import logging

from backup_restore._src import engine
from backup_restore._src import errors
from backup_restore._src import flavours
from backup_restore._src import front_end
from backup_restore._src import manager_metadata
from backup_restore._src import policy
from backup_restore._src import preemption
from backup_restore._src import schema_fields

FORMAT = manager_metadata.FORMAT
# BackupManager's backups in a backup_dir (the callback's are per fit() call).
SCOPE = "custom_loop"
# The name under which the Keras layers' random generators are saved.
_LAYER_RNGS = "backup_restore_layer_random_generators"


def variable_paths(root) -> dict:
    """path -> [shape, dtype] of every variable reachable from `root`.

    Paths are the checkpoint's object-graph paths (e.g.
    "model/layer_with_weights-0/kernel"), found through the public
    tf.train.TrackableView. Variables not created yet (optimizer slots before
    the first step) are simply absent.
    """
    paths, seen, queue = {}, set(), [("", root)]
    while queue:
        path, obj = queue.pop(0)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, tf.Variable):
            paths[path] = [[int(d) for d in obj.shape], obj.dtype.name]
            continue
        for name, child in tf.train.TrackableView.children(obj).items():
            queue.append((f"{path}/{name}" if path else name, child))
    return paths


def diff_variables(backup: dict, current: dict) -> list[str]:
    """What makes a backup unfit for the current objects (empty: fits)."""
    problems = []
    for path, spec in sorted(current.items()):
        if path not in backup:
            problems.append(f"{path}: not in the backup")
        elif backup[path] != spec:
            problems.append(
                f"{path}: backup {backup[path][1]}{backup[path][0]}, "
                f"now {spec[1]}{spec[0]}"
            )
    return problems


# The arguments of BackupManager(): any other keyword is a trackable.
_ARGS = (
    "backup_dir",
    "save_freq",
    "delete_checkpoint",
    "double_checkpoint",
    "async_backup",
    "save_before_preemption",
    "preemption_signals",
    "exit_on_preemption",
    "preemption_exit_code",
    "save_every_n_steps",
)


class BackupManager(front_end.FrontEnd):
    """Backs up and restores the state of a custom training loop.

    Example:

    ```python
    import tensorflow as tf
    import backup_restore

    weights = tf.Variable(tf.zeros([3]))
    manager = backup_restore.BackupManager(
        "/tmp/backup_manager_docstring_example",
        save_freq=5,
        weights=weights,
    )
    step = manager.restore()  # 0 on a fresh start
    while step < 20:
        weights.assign_add(tf.ones([3]))  # one "training step"
        step += 1
        manager.maybe_backup(step)
    manager.finish()
    ```

    Single-process training only (no strategy, or a single-process one such
    as MirroredStrategy): with several workers each would commit into
    `backup_dir`.

    Concurrency: use from one thread (the training loop). With
    `async_backup=True` files are written by one background thread, one
    backup at a time. With `save_before_preemption=True`, construct and call
    `restore()` on the main thread (signal handlers).

    The names are the callback's (`save_freq`, `delete_checkpoint`,
    `wait_for_backup()`, `resumed_from`); a loop has steps, not epochs, so
    `save_freq` is a number of steps and `resumed_from` a step. The earlier
    names still work: `save_every_n_steps=` for `save_freq=`, `wait()` for
    `wait_for_backup()`, `finish(delete=...)` for `delete_checkpoint`.

    Args:
      backup_dir: where backups live (local path or any tf.io.gfile
        filesystem). One directory per training job.
      save_freq: back up in `maybe_backup(step)` once this many steps have
        passed since the last backup (or the restored one), the callback's
        batch-level rule (policy.py). None: only on preemption or
        `backup()`.
      delete_checkpoint: `finish()` deletes the backups (default).
        `backup_dir` itself, and the parents created for it, go too only
        if this manager created them; a directory that existed is kept.
      double_checkpoint: keep the previous intact backup beside the newest
        (twice the space), for a restore to fall back to when the newest
        fails its checks; `False` (default) deletes it once the new one is
        durable (the callback's argument).
      async_backup: persist backups on a background thread.
      save_before_preemption: on a signal in `preemption_signals`, the next
        `maybe_backup(step)` backs up at `step`, waits until it is committed,
        then exits with `preemption_exit_code` (or, with
        `exit_on_preemption=False`, returns True: stop training).
      preemption_signals: the signals announcing a preemption.
      exit_on_preemption: exit the process after the preemption backup.
      preemption_exit_code: the exit status then (TensorFlow's default, 42).
      save_every_n_steps: the earlier name of `save_freq`.
      **trackables: what to back up: any objects tf.train.Checkpoint accepts.

    Raises:
      ValueError / TypeError: invalid arguments (nothing is created).
    """

    def __init__(
        self,
        backup_dir,
        *,
        save_freq=None,
        delete_checkpoint=True,
        double_checkpoint=False,
        save_every_n_steps=None,
        async_backup=True,
        save_before_preemption=False,
        preemption_signals=preemption.DEFAULT_SIGNALS,
        exit_on_preemption=True,
        preemption_exit_code=preemption.RESTART_EXIT_CODE,
        **trackables,
    ):
        front_end.check_eager("BackupManager", "run the training loop")
        front_end.reject_near_misses("BackupManager", trackables, _ARGS)
        for name, value in trackables.items():
            if not isinstance(value, tf.__internal__.tracking.Trackable):
                raise TypeError(
                    f"BackupManager backs up objects tf.train.Checkpoint "
                    f"accepts (a model, an optimizer, a tf.Variable, a "
                    f"tf.data iterator...); {name}={value!r} is none (a "
                    f"misspelled argument? It takes {', '.join(_ARGS)})."
                )
        if _LAYER_RNGS in trackables:
            raise ValueError(f"{_LAYER_RNGS} is a name BackupManager uses.")
        if not trackables:
            raise ValueError(
                "BackupManager needs the objects to back up, e.g. "
                "BackupManager(dir, model=model, optimizer=optimizer)."
            )
        if save_every_n_steps is not None:
            if save_freq is not None:
                raise ValueError(
                    "Give save_freq or its earlier name save_every_n_steps, "
                    "not both."
                )
            save_freq = save_every_n_steps
        if save_freq is not None and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, int)
            or save_freq < 1
        ):
            raise ValueError(
                f"Invalid value for argument `save_freq` (save_every_n_steps)"
                f": {save_freq!r}. Pass a positive int (a number of steps) or "
                "None (only on preemption or backup())."
            )
        # The same engine as the Keras callback: commits, async persist,
        # preemption handling.
        self._engine = engine.Engine(
            backup_dir,
            async_backup=async_backup,
            save_before_preemption=save_before_preemption,
            preemption_signals=preemption_signals,
            exit_on_preemption=exit_on_preemption,
            preemption_exit_code=preemption_exit_code,
            double_checkpoint=double_checkpoint,
        )
        self._trackables = trackables
        self._checkpoint_object = None
        # The callback's rule for batch-level backups, counted in steps.
        self._policy = policy.SavePolicy(
            every_n_batches=save_freq, at_epoch_end=False
        )
        self._delete_checkpoint = delete_checkpoint
        self._last_backup_step = 0  # the restored step, or the last backup's
        self._first_step_seen = False
        self._owned = False  # from restore() to finish()
        self.resumed_from = None  # the step restore() returned, if resumed
        self.metadata = None  # the user metadata of the restored backup
        # Until restore(), a preemption signal ends the process in the
        # restart status (nothing trained yet to back up).
        self._engine.watch_for_preemption_early()

    @property
    def backup_dir(self) -> str:
        return self._engine.backup_dir

    def restore(self) -> int:
        """Restores the newest intact backup; returns the step to go on from.

        Returns 0 when there is no backup. Also removes leftovers of
        interrupted writes and installs the preemption handler.

        Raises:
          BackupMismatchError: the backup holds other variables (paths,
            shapes, dtypes) than the objects given.
          BackupCorruptError: every backup fails its integrity checks, its
            metadata's schema included (the message names the field).
          BackupDirInUseError: another training job owns backup_dir (this
            one owns it from restore() to finish()); nothing was changed.
        """
        self._engine.start(scope=SCOPE)
        self._owned = True
        start = time.monotonic()
        restored = self._engine.restore(self._prepare)
        if restored is None:
            return 0
        info, _ = restored
        step = int(info.metadata["step"])
        self.resumed_from = step
        self._last_backup_step = step
        self.metadata = info.metadata.get("user")
        logging.info(
            "Restored backup %s: resuming at step %d; took %.2f s.",
            info.path,
            step,
            time.monotonic() - start,
        )
        return step

    def _prepare(self, info):
        """Checks a candidate backup; returns the checkpoint to read it into.

        Raises:
          BackupCorruptError: its metadata breaks the schema
            (manager_metadata.problem; the store then falls back to
            an older backup).
          BackupMismatchError: another format, or other variables.
        """
        problem = manager_metadata.problem(info.metadata)
        if problem:
            raise errors.BackupCorruptError(
                f"{info.path} has invalid metadata: {problem}. Its manifest "
                "was edited or damaged, so it is not restored; an older "
                "intact backup is used if there is one (to start afresh "
                "instead, delete or move this backup)."
            )
        if info.metadata["format"] != FORMAT:
            raise errors.BackupMismatchError(
                f"{info.path} was not written by a BackupManager (format "
                f"{info.metadata.get('format')!r})."
            )
        problems = diff_variables(
            info.metadata["variables"], variable_paths(self._checkpoint())
        )
        if problems:
            raise errors.BackupMismatchError(
                f"The backup in {info.path} does not fit the objects given:"
                "\n  " + "\n  ".join(problems) + "\nNothing was restored or "
                "deleted. Use the same model and optimizer as before to "
                "resume, or another backup_dir to start from scratch."
            )
        return self._checkpoint()

    def _checkpoint(self):
        """What a backup holds: the objects given, plus the random
        generators of Keras layers among them (Dropout, ...), which Keras
        leaves out of checkpoints. Made at first use, when the layers are
        built."""
        if self._checkpoint_object is None:
            generators = [
                generator
                for adapter in flavours.loaded()
                for generator in adapter.random_generators_of(
                    self._trackables.values()
                )
            ]
            extra = {_LAYER_RNGS: generators} if generators else {}
            self._checkpoint_object = tf.train.Checkpoint(
                **self._trackables, **extra
            )
        return self._checkpoint_object

    def backup(self, step: int, metadata=None, wait: bool = False) -> None:
        """Backs up now, as the state after `step` steps.

        Args:
          step: the number of steps done; restore() returns it.
          metadata: optional JSON-serializable data, given back as
            `self.metadata` after restore().
          wait: block until the backup is committed.

        Raises:
          BackupDirInUseError: backup_dir was deleted or replaced during
            training and another job has owned it since; nothing was
            written.
          RuntimeError: called before restore() or after finish(): the
            job does not own backup_dir then; nothing was written.
          TypeError, ValueError: `step` is no count of steps (see
            `_steps_done`); nothing was written.
        """
        step = _steps_done(step)
        self._check_owned("backup()")
        started = time.monotonic()
        self._engine.write(
            self._checkpoint(),
            {
                "format": FORMAT,
                "step": step,
                "variables": variable_paths(self._checkpoint()),
                "user": metadata,
                "written_at": time.time(),
            },
            label=f"step {step}",
            blocked_since=started,
        )
        self._last_backup_step = step  # a refused backup counts for nothing
        if wait:
            self._engine.wait()

    def maybe_backup(self, step: int, metadata=None) -> bool:
        """Backs up if due at `step` or if a preemption was announced.

        Returns:
          True when training must stop (preempted, exit_on_preemption=False).
        """
        step = _steps_done(step)
        self._check_owned("maybe_backup()")
        if not self._first_step_seen:
            self._first_step_seen = True
            self._engine.first_step_done()
        self._engine.step_done()
        if self._engine.preemption_agreed():
            self.backup(step, metadata)
            self._engine.stop_for_preemption(f"step {step}")
            return True
        if self._policy.save_after_batches(step - self._last_backup_step):
            self.backup(step, metadata)
        return False

    def wait(self) -> None:
        """The earlier name of `wait_for_backup()`."""
        self.wait_for_backup()

    def finish(self, delete: bool | None = None) -> None:
        """Ends training: waits for the last backup, deletes the backups.

        Deletes them with `delete_checkpoint=True` (the default), never after
        a preemption (the next run resumes from them).

        Args:
          delete: the earlier way to say `delete_checkpoint`; None: the
            constructor's `delete_checkpoint`.
        """
        self._owned = False
        self._engine.finish(
            self._delete_checkpoint if delete is None else delete
        )

    def _check_owned(self, call: str) -> None:
        if not self._owned:
            raise RuntimeError(
                f"BackupManager.{call} before restore() (or after finish()): "
                "call restore() first, which takes ownership of "
                f"{self.backup_dir} and returns the step to go on from (0 on "
                "a fresh start). Nothing was written."
            )


def _steps_done(step) -> int:
    """`step` as the count of steps done a backup records: an int, a numpy
    integer or a scalar integer tensor (`optimizer.iterations`), from 0 to
    2**63 - 1.

    Raises:
      TypeError: anything else (a float, a bool): it would be recorded as
        another step than the one meant.
      ValueError: below 0 or beyond 2**63 - 1: no backup could hold it.
    """
    value = step.numpy() if hasattr(step, "numpy") else step
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    try:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise TypeError(
            "step must be an integer, the number of steps done (restore() "
            f"returns it), not {type(step).__name__}: {step!r}. Nothing was "
            "written."
        ) from None
    if not 0 <= count <= schema_fields.MAX_INT:
        raise ValueError(
            f"step must be from 0 to 2**63 - 1, the number of steps done "
            f"(restore() returns it), not {count}. Nothing was written."
        )
    return count
