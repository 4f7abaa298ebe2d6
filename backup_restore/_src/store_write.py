"""Writing one backup: the three modes of BackupStore.write_async.

Two points in a backup's life matter: published (committed into the page
cache: a process kill, which leaves the page cache to the kernel, resumes
from it) and durable (fsync'd: a machine loss resumes from it too). Older
backups are deleted only once the new one is durable, so a restore after a
machine loss that tore the newest falls back to the previous (its checks
fail: atomicity.py). A backup is published only when its checkpoint is
complete (checkpoint_format.checkpoint_problem).

- `_synchronous` (`asynchronous=False`): published and durable before
  write_async returns.
- `_published_here` (asynchronous, a state of at most `kill_safe_max_bytes`,
  or one that must be written on the caller's thread): written and
  published before write_async returns (TensorFlow's synchronous write into
  the page cache, as tf-keras's own callback does; no fsync); fsync and the
  deletion of the older backup run on the background thread.
- `_in_background` (asynchronous, larger states): a consistent snapshot
  only (TensorFlow's async checkpointing assigns every variable to a host
  copy before write_async returns; on the host that shares the buffer and
  TensorFlow copies it when the next step first updates the variable);
  writing, publishing and fsync run in the background (at lower priority
  when backups are far apart).

This is the store's own write path: it works on the BackupStore it is given
(its background writer, its timings), publishes through
`BackupStore._publish` and deletes through its methods.
"""

import concurrent.futures
import errno
import json
import os
import threading
import time

import tensorflow as tf
from absl import logging

from backup_restore._src import atomicity
from backup_restore._src import background
from backup_restore._src import catalog
from backup_restore._src import checkpoint_format
from backup_restore._src import errors
from backup_restore._src import faults
from backup_restore._src import manifest
from backup_restore._src import paths
from backup_restore._src import tf_checkpoint


class IncompleteCheckpoint(Exception):
    """The written checkpoint is not complete; see checkpoint_problem."""


# What a failed write raises: the filesystem's or TensorFlow's error, or
# an incomplete checkpoint.
_FAILURES = (tf.errors.OpError, OSError, IncompleteCheckpoint)


def _is_out_of_space(error) -> bool:
    if isinstance(error, OSError) and error.errno in (
        errno.ENOSPC,
        errno.EDQUOT,
    ):
        return True
    return isinstance(
        error, tf.errors.ResourceExhaustedError
    ) or "No space left" in str(error)


def write(
    store,
    checkpoint,
    metadata: dict,
    seq: int,
    *,
    asynchronous: bool,
    async_snapshot: bool,
    expected_interval,
    label,
    blocked_since: float,
) -> background.InFlight:
    """Writes backup `seq` in the mode that fits; returns it in flight
    once write_async may return. See BackupStore.write_async."""
    start = time.monotonic()
    facts = tf_checkpoint.facts(checkpoint)
    if asynchronous:
        store._writer.start(
            background.lower_priority_pays(
                expected_interval, facts.variable_bytes
            )
        )
    backup = _Backup(
        store,
        checkpoint,
        metadata,
        seq,
        facts,
        start=start,
        label=label,
        asynchronous=asynchronous,
        blocked_since=blocked_since,
    )
    if not asynchronous:
        mode = _synchronous
    elif (
        not async_snapshot
        or facts.holds_iterator
        or facts.variable_bytes <= store.kill_safe_max_bytes
    ):
        mode = _published_here
    else:
        mode = _in_background
    future = mode(backup)
    return background.InFlight(future, backup.published, backup.returned_at)


def result(in_flight: background.InFlight, directory: str):
    """Waits for the backup `in_flight` (of backup_dir `directory`);
    returns its catalog.BackupInfo.

    Raises:
      errors.BackupWriteError: its write failed (a filesystem or TensorFlow
        error is wrapped in one); other errors as raised.
    """
    error = in_flight.future.exception()  # waits
    if error is None:
        return in_flight.future.result()
    if isinstance(error, errors.BackupWriteError) or not isinstance(
        error, (tf.errors.OpError, OSError)
    ):
        raise error
    raise errors.BackupWriteError(
        f"Writing a backup in {directory} failed "
        f"({type(error).__name__}: {error}). The previous backup, if "
        "any, is intact."
    ) from error


def _synchronous(backup) -> concurrent.futures.Future:
    """Written, published and made durable on the caller's thread."""
    info = backup.write_here()
    backup.returned(published=True)
    future = concurrent.futures.Future()
    try:
        future.set_result(backup.persist(info))
    except BaseException as e:  # surfaced by wait()
        future.set_exception(e)
    return future


def _published_here(backup) -> concurrent.futures.Future:
    """Written and published on the caller's thread; made durable (and the
    older backups deleted) on the background thread."""
    info = backup.write_here()
    backup.returned(published=True)
    return backup.store._writer.submit(lambda: backup.persist(info))


def _in_background(backup) -> concurrent.futures.Future:
    """A snapshot by TensorFlow's asynchronous checkpointing here; written,
    published and made durable on the background thread."""
    writer = backup.store._writer
    try:
        if writer.low_priority:
            # Taken on the background thread while this one waits (a
            # copy-on-write snapshot: milliseconds), so that the writer
            # thread TensorFlow starts for it has that thread's priority.
            writer.submit(lambda: backup.snapshot(in_caller=False)).result()
        else:
            backup.snapshot(in_caller=False)
    except _FAILURES as e:
        raise backup.failed(e) from e
    backup.returned(published=False)

    def finish():
        try:
            # The disk writes while TensorFlow still writes the files.
            with atomicity.WritebackStarter(backup.work):
                tf_checkpoint.sync(backup.checkpoint)
            info = backup.publish()
        except _FAILURES as e:
            raise backup.failed(e) from e
        backup.store.last_kill_safe_seconds = max(
            0.0, time.monotonic() - backup.returned_at
        )
        backup.published.set()
        return backup.persist(info)

    return writer.submit(finish)


class _Backup:
    """One backup being written: where, and the steps every mode takes."""

    def __init__(
        self,
        store,
        checkpoint,
        metadata,
        seq,
        facts,
        *,
        start,
        label,
        asynchronous,
        blocked_since,
    ):
        self.store = store
        self.checkpoint = checkpoint
        self.metadata = metadata
        self.seq = seq
        self.facts = facts
        self.start = start  # when the write began (after the previous one)
        self.label = label
        self.asynchronous = asynchronous
        self.blocked_since = blocked_since  # since when training waits
        directory = store.directory
        self.final = os.path.join(directory, atomicity.committed_name(seq))
        self.work = store.commit.work_dir(directory, seq)
        self.returned_at = None  # when write_async returned
        self.published = threading.Event()  # set once published

    def _data_write(self, save_path):
        # On TensorFlow's writer thread when asynchronous.
        del save_path
        faults.point(faults.DATA_WRITE, self.work)

    def snapshot(self, in_caller: bool) -> None:
        """Writes the checkpoint into a new work directory: on this thread
        (`in_caller`), or as TensorFlow's asynchronous snapshot."""
        store = self.store
        store.commit.prepare(store.directory, self.work)
        faults.point(faults.BEFORE_DATA, self.work)
        prefix = os.path.join(self.work, atomicity.CHECKPOINT_PREFIX)
        # On this thread: one SaveV2 where the checkpoint allows it
        # (a fraction of TensorFlow's time for many small variables).
        if (
            in_caller
            and store._single_shard_writes
            and tf_checkpoint.write_single_shard(self.checkpoint, prefix)
        ):
            self._data_write(prefix)
            return
        # What made it fall back (another task's devices, registered
        # savers) does not change within a job: not gathered again.
        store._single_shard_writes &= not in_caller
        options = tf.train.CheckpointOptions(
            experimental_enable_async_checkpoint=not in_caller,
            experimental_write_callbacks=[self._data_write],
        )
        self.checkpoint.write(prefix, options)

    def write_here(self) -> catalog.BackupInfo:
        """Writes the checkpoint on this thread and publishes it."""
        try:
            if self.facts.variable_bytes > self.store.kill_safe_max_bytes:
                # Large and written here: the disk writes while TensorFlow
                # still writes the files, so the fsync finds little left.
                with atomicity.WritebackStarter(self.work):
                    self.snapshot(in_caller=True)
            else:
                self.snapshot(in_caller=True)
            return self.publish()
        except _FAILURES as e:
            raise self.failed(e) from e

    def publish(self) -> catalog.BackupInfo:
        return self.store._publish(
            self.seq, self.work, self.final, self.metadata
        )

    def failed(self, error) -> errors.BackupWriteError:
        return failed(self.store, self.seq, self.work, self.final, error)

    def returned(self, published: bool) -> None:
        """write_async returns now; the backup is published already or
        not yet."""
        self.returned_at = time.monotonic()
        if published:
            self.published.set()
        self.store.last_kill_safe_seconds = 0.0 if published else None

    def persist(self, info: catalog.BackupInfo) -> catalog.BackupInfo:
        """Makes the published backup durable, then deletes the older ones;
        logs the one line per backup."""
        try:
            faults.point(faults.PUBLISHED, self.final)
            self.store.commit.make_durable(
                self.final, info.files, self.store.directory
            )
        except _FAILURES as e:
            raise self.failed(e) from e
        after_commit(self.store, info)
        # The one line per backup, once it is durable. Training waited
        # until write_async returned; when synchronous, for this too.
        now = time.monotonic()
        if self.label is not None:
            logging.info(
                "Backup %s (%s) committed: %d bytes; training waited "
                "%.3f s; durable %.3f s after its snapshot began.",
                self.final,
                self.label,
                info.size_bytes,
                (self.returned_at if self.asynchronous else now)
                - self.blocked_since,
                now - self.start,
            )
        return info


def publish(commit, seq, work, final, metadata) -> catalog.BackupInfo:
    """Checks the written files of backup `seq` and publishes them
    (`commit.publish`: not yet durable).

    Raises:
      IncompleteCheckpoint: what TensorFlow wrote is not a complete
        checkpoint (checkpoint_format.checkpoint_problem): nothing is
        published.
      OSError, tf.errors.OpError: as the filesystem raised them.
    """
    faults.point(faults.DATA_WRITTEN, work)
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(work)]
    problem = checkpoint_format.checkpoint_problem(work, names, read_index=True)
    if problem is not None:
        raise IncompleteCheckpoint(f"incomplete checkpoint: {problem}")
    body = manifest.build(work, names, metadata, commit.marks_durable)
    faults.point(faults.BEFORE_COMMIT, work)
    commit.publish(work, final, body)
    files = json.loads(body)["body"]["files"]
    return catalog.BackupInfo(seq, final, metadata, files)


def after_commit(store, info: catalog.BackupInfo) -> None:
    """Deletes the backups older than the one just committed.

    A failure here (an I/O error) leaves an older backup behind, which
    the next backup deletes: the new one is committed, so it is logged,
    not raised.
    """
    try:
        faults.point(faults.COMMITTED, info.path)
        store.delete_older_than(info.seq)
    except (tf.errors.OpError, OSError) as e:
        logging.warning(
            "Backup %s is committed, but deleting the older backups "
            "failed (%s: %s); they are deleted after the next backup.",
            info.path,
            type(e).__name__,
            e,
        )


def _in_the_way(work, final) -> str | None:
    """What is at `final` while the failed write's `work` directory is not
    yet published there, or None. Something put in the directory while
    training ran (the store numbers its backups past every name there at
    its start): a rename onto it fails (AlreadyExistsError; NotADirectory
    for a dangling link). Called before `work` is removed."""
    try:
        if work == final or paths.kind(work) != paths.DIRECTORY:
            return None  # published, or written in place
        return paths.kind(final)
    except (tf.errors.OpError, OSError):
        return None


def failed(store, seq, work, final, error) -> errors.BackupWriteError:
    """Removes what a failed write of backup `seq` left; the error."""
    directory = store.directory
    detail = str(error).strip().splitlines()[0] if str(error) else ""
    in_the_way = _in_the_way(work, final)
    try:
        if paths.kind(work) == paths.DIRECTORY:
            store._discard(work)
        elif paths.kind(final) == paths.DIRECTORY:  # published only
            store._retire(final)
        removed = "its partial files were removed"
    except (tf.errors.OpError, OSError) as e:
        logging.warning("Could not remove %s: %s", work, e)
        removed = f"its partial files in {work} are removed at next start"
    try:
        # Of this run: another run's backup is not where it resumes.
        older = [p for s, p in store.committed_in_scope() if s < seq]
    except (tf.errors.OpError, OSError):
        older = None
    if older:
        kept = (
            f"The previous backup {older[-1]} was kept: training "
            "resumes from it."
        )
    elif older is None:
        kept = "Earlier backups were not deleted."
    else:
        kept = (
            "No earlier backup exists: a restart would begin training "
            "from scratch."
        )
    if _is_out_of_space(error):
        advice = (
            f"The filesystem of {directory} is full: free space there, "
            "or pass another backup_dir."
        )
    elif in_the_way is not None:
        advice = (
            f"A {in_the_way} that no backup wrote is in the way at {final}: "
            f"move it out of {directory} (nothing else may write there), "
            "or pass another backup_dir."
        )
    else:
        advice = (
            f"Check that {directory} is writable and has free space, or "
            "pass another backup_dir."
        )
    return errors.BackupWriteError(
        f"Writing backup {final} (number {seq}) failed "
        f"({type(error).__name__}: {detail}). Nothing of it was "
        f"committed; {removed}. {kept} {advice}"
    )
