"""The store: writes, finds, verifies, restores and deletes backups.

Knows nothing of Keras: it saves any `tf.train.Checkpoint` plus a JSON
metadata dict. Its one user is engine.py, which both front ends (the Keras
callback, BackupManager) share. The commit protocol lives in atomicity.py,
the integrity format in manifest.py, what the store knows of backup_dir's
entries (listed once, each manifest parsed once) in catalog.py, the checks
of backup_dir itself in store_dir.py, the background writer and its priority
rule in background.py, what TensorFlow's checkpoint writer needs in
tf_checkpoint.py.

Concurrency contract: one writer per backup directory (in multi-worker
training, the chief). Methods are not thread-safe; callers serialise them.
`write_async` hands the persist step to one background thread ("at most one
in flight"); every other method first waits for it. Readers never see a
partial backup (see atomicity.py).
"""

import concurrent.futures
import contextlib
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
from backup_restore._src import errors
from backup_restore._src import faults
from backup_restore._src import manifest
from backup_restore._src import paths
from backup_restore._src import store_dir
from backup_restore._src import tf_checkpoint

CHECKPOINT_PREFIX = atomicity.CHECKPOINT_PREFIX

# Asynchronous backups of states up to this size are written and published
# before write_async returns (see there). The target: the 1M-param
# MLP with Adam of the benchmark (12.7 MB of variables) is kill-safe when the
# backup hook returns, at no more blocking than tf-keras's synchronous write.
KILL_SAFE_MAX_BYTES = 16 << 20

# A larger state's backup that is still not published this long after
# write_async returned makes training wait, at its next step, until it is
# (see enforce_kill_safe_deadline): the bound on how long a process kill can
# lose it. Below training's priority the write can otherwise take about ten
# times its solo time on busy cores: the benchmark measured the
# 604 MB state published 7.7 s (p50) and 11.6 s (p95) after the hook
# returned at one backup per epoch on 2 shared cores.
KILL_SAFE_DEADLINE_SECONDS = 10.0


class _IncompleteCheckpoint(Exception):
    """The written checkpoint is not complete; see checkpoint_problem."""


def _is_out_of_space(error) -> bool:
    if isinstance(error, OSError) and error.errno in (
        errno.ENOSPC,
        errno.EDQUOT,
    ):
        return True
    return isinstance(
        error, tf.errors.ResourceExhaustedError
    ) or "No space left" in str(error)


class BackupStore:
    """The committed backups kept in one directory.

    Only entries named `backup-<seq>`, `.tmp-backup-<seq>-<nonce>` and
    `.tmp-backup-probe-<nonce>` belong to this store; anything else in the
    directory is left alone.
    """

    def __init__(
        self,
        directory,
        *,
        kill_safe_max_bytes=None,
        writable=True,
        keep_directory=False,
    ):
        """A store of `directory`; `writable=False` (for reading only)
        neither creates it nor probes it; `keep_directory`: `delete_all`
        never removes the directory itself."""
        self._dir = store_dir.validate_directory(directory, writable)
        if self._dir.startswith("ram://"):
            logging.warning(
                "backup_dir %s is in memory (ram://): its backups are lost "
                "when this process exits, so a restarted job trains from "
                "scratch. Use a directory on disk or in a bucket to survive "
                "a restart.",
                self._dir,
            )
        # What the store knows of backup_dir's entries (catalog.py); its
        # first listing also gives the highest sequence number so far.
        self._catalog = catalog.Catalog(self._dir)
        # Decided once: removing the directory at the end is only right when
        # it held nothing but ours to begin with.
        listing = self._catalog.list_now()  # empty if it does not exist
        self._dir_was_ours = (
            not keep_directory and not listing.others and not listing.foreign
        )
        # Its priority is decided at the first asynchronous backup.
        self._writer = background.Writer()
        self._pending = None  # the Future of the persist in flight, if any
        # Which run of the job writes now (set by the engine per run): a
        # run finds, replaces and deletes only the backups of its own
        # scope. None: every backup.
        self.scope = None
        # Whether in-caller writes try tf_checkpoint.write_single_shard:
        # until it first falls back to TensorFlow's writer.
        self._single_shard_writes = True
        # How long the last backup took to commit (the benchmark reads it).
        self.last_persist_seconds = None
        # How long after write_async returned the last backup was published
        # (0.0: before it returned); None until known.
        self.last_kill_safe_seconds = None
        self.kill_safe_max_bytes = (
            KILL_SAFE_MAX_BYTES
            if kill_safe_max_bytes is None
            else kill_safe_max_bytes
        )
        self.kill_safe_deadline_seconds = KILL_SAFE_DEADLINE_SECONDS
        # Set once the backup in flight is published (kill-safe), and when
        # write_async returned.
        self._published = threading.Event()
        self._published.set()
        self._returned_at = None
        background.register(self)

    @property
    def directory(self) -> str:
        return self._dir

    def refresh(self) -> None:
        """Forgets what the store listed and parsed of backup_dir: the next
        call lists it again. For the start of a run: another run or job may
        have changed the directory since the store last looked."""
        self._catalog.refresh()

    def committed(self) -> list[tuple[int, str]]:
        """(seq, path) of every committed backup, oldest first (unverified)."""
        return self._catalog.committed()

    def _in_scope(self, path: str) -> bool:
        """Whether a committed backup belongs to this store's scope (see
        catalog.Catalog.in_scope)."""
        return self._catalog.in_scope(path, self.scope)

    def committed_in_scope(self) -> list[tuple[int, str]]:
        """Like `committed`, only the backups of this store's scope."""
        return [(s, p) for s, p in self.committed() if self._in_scope(p)]

    def foreign(self) -> list[tuple[str, str]]:
        """(path, what it is) of the entries named like ours that are not."""
        return self._catalog.list_now().foreign

    def leftovers(self) -> list[str]:
        """What interrupted writes, deletions or writability checks left."""
        listing = self._catalog.list_now()
        unfinished = self._catalog.unfinished()
        return listing.temporaries + unfinished + listing.probes

    def cleanup(self) -> list[str]:
        """Removes what interrupted writes left behind; returns the paths."""
        self.wait()
        removed = self.leftovers()
        for path in removed:
            logging.info("Removing an interrupted backup write: %s", path)
            self._remove(path)
        return removed

    def _remove(self, path: str) -> None:
        """Deletes one of our leftovers (a directory, or a probe file)."""
        if atomicity.is_probe(os.path.basename(path)):
            paths.remove_file(path)
        else:
            paths.remove_tree(path)
        self._catalog.removed(path)

    def _retire(self, path: str) -> None:
        """Deletes a committed backup (atomicity.retire).

        One that is gone already counts as deleted; one a failure left
        half deleted makes the catalog list the directory again.
        """
        try:
            atomicity.retire(path)
        except (tf.errors.OpError, OSError):
            if paths.kind(path) is not None:
                self._catalog.refresh()
                raise
        self._catalog.removed(path)

    def load(self, path: str, full_verify: bool = True) -> catalog.BackupInfo:
        """Reads and verifies one committed backup.

        Raises:
          errors.BackupCorruptError: when it fails any integrity check.
        """
        body = self._catalog.body(path)
        manifest.verify(path, body, full=full_verify)
        seq = atomicity.parse_committed(os.path.basename(path))
        return catalog.BackupInfo(seq, path, body["metadata"], body["files"])

    def _first_intact(self, attempt):
        """`attempt(path)` on committed backups, newest first, until one works.

        A backup for which `attempt` raises BackupCorruptError is skipped
        (with a warning) in favour of the next older one. Nothing is deleted.

        Raises:
          errors.BackupCorruptError: committed backups exist but none is intact.
        """
        failures = []
        for _, path in reversed(self.committed_in_scope()):
            try:
                result = attempt(path)
            except errors.BackupCorruptError as e:
                if not self._was_durable(path):
                    # Not corruption, but the user loses that backup's
                    # progress: said at the default log level.
                    logging.warning(
                        "Skipping backup %s: an unfinished write (published, "
                        "but the process or machine stopped before it was "
                        "made durable), not a corrupt one; nothing was "
                        "deleted: %s",
                        path,
                        e,
                    )
                    continue
                logging.warning("Skipping corrupt backup %s: %s", path, e)
                failures.append(str(e))
                continue
            if failures:
                logging.warning(
                    "Falling back to the older intact backup %s.", path
                )
            return result
        if failures:
            raise self._all_corrupt(failures)
        return None

    def _was_durable(self, path: str) -> bool:
        try:
            body = self._catalog.body(path)
        except errors.BackupCorruptError:
            body = None
        return atomicity.was_durable(path, body)

    def latest(self, full_verify: bool = True) -> catalog.BackupInfo | None:
        """The newest committed backup that passes verification, or None.

        Raises:
          errors.BackupCorruptError: committed backups exist but none is intact.
        """
        return self._first_intact(lambda path: self.load(path, full_verify))

    def write(self, checkpoint: tf.train.Checkpoint, metadata: dict):
        """Writes a backup and waits until it is committed; returns it.

        Raises:
          errors.BackupWriteError: writing failed; earlier backups are intact.
        """
        self.write_async(checkpoint, metadata, asynchronous=False)
        return self.wait()

    def write_async(
        self,
        checkpoint: tf.train.Checkpoint,
        metadata: dict,
        *,
        asynchronous: bool = True,
        async_snapshot: bool = True,
        expected_interval: float | None = None,
        label: str | None = None,
        blocked_since: float | None = None,
    ) -> None:
        """Writes a backup of `checkpoint`; makes it durable in background.

        Two points in a backup's life matter: published (committed into
        the page cache: a process kill, which leaves the page cache to the
        kernel, resumes from it) and durable (fsync'd: a machine loss
        resumes from it too). Older backups are deleted only once the new
        one is durable, so a restore after a machine loss that tore the
        newest falls back to the previous (its checks fail: atomicity.py).

        - `asynchronous=False`: published and durable before this returns.
        - `asynchronous=True`, a state of at most `kill_safe_max_bytes`:
          written and published before this returns (TensorFlow's
          synchronous write into the page cache, as tf-keras's own
          callback does; no fsync); fsync and the deletion of the older
          backup run on a background thread.
        - `asynchronous=True`, larger states: a consistent snapshot only
          (TensorFlow's async checkpointing assigns every variable to a
          host copy before this returns; on the host that shares the
          buffer and TensorFlow copies it when the next step first updates
          the variable); writing, publishing and fsync run in the
          background (at lower priority when backups are far apart, see
          `expected_interval`). `last_kill_safe_seconds` then says how long
          after this returned the backup was published.

        At most one backup is in flight: this first waits for the previous
        one to be durable. A backup is published only when its checkpoint
        is complete (atomicity.checkpoint_problem).

        Args:
          checkpoint: what to back up.
          metadata: JSON metadata stored in the manifest.
          asynchronous: fsync (and, for large states, write) in background.
          async_snapshot: take the snapshot with TensorFlow's asynchronous
            checkpointing. False writes the files on the calling thread
            (needed with multi-worker strategies, whose workers must issue
            the same collective ops in the same order); fsync and the commit
            still run in the background.
          expected_interval: seconds until the next backup is expected, if
            known. At this store's first asynchronous backup it decides the
            background thread's priority for good: lower than training's
            when backups are far enough apart (background.LOW_PRIORITY_SLACK).
          label: what the backup holds ("epoch 2, batch 0"), for the one
            line logged per backup when it is durable; without a label
            (a worker's scratch write) nothing is logged.
          blocked_since: `time.monotonic()` when the caller's training
            began to wait for this backup (default: this call); that line
            reports how long training waited from there.

        Raises:
          errors.BackupWriteError: the previous background write failed, or
            this snapshot could not be written. It names the backup that
            failed and carries the filesystem's or TensorFlow's error
            (including one from TensorFlow's asynchronous writer thread).
            Nothing of that backup was committed, its partial files are
            removed, and no earlier backup was deleted; the store stays
            usable.
        """
        if blocked_since is None:
            blocked_since = time.monotonic()
        self.wait()
        start = time.monotonic()
        if self.scope is not None:
            metadata = {**metadata, "scope": self.scope}
        seq = self._catalog.next_seq()
        facts = tf_checkpoint.facts(checkpoint)
        if asynchronous:
            self._writer.start(
                background.lower_priority_pays(
                    expected_interval, facts.variable_bytes
                )
            )
        final = os.path.join(self._dir, atomicity.committed_name(seq))
        if atomicity.supports_atomic_rename(self._dir):
            work = os.path.join(self._dir, atomicity.temporary_name(seq))
        else:
            work = final
        # Written and published here, before returning (see above)?
        in_caller = (
            not asynchronous
            or not async_snapshot
            or facts.holds_iterator
            or facts.variable_bytes <= self.kill_safe_max_bytes
        )

        def data_write(save_path):
            # On TensorFlow's writer thread when asynchronous.
            del save_path
            faults.point(faults.DATA_WRITE, work)

        options = tf.train.CheckpointOptions(
            experimental_enable_async_checkpoint=not in_caller,
            experimental_write_callbacks=[data_write],
        )

        def snapshot():
            # A new directory of our own (never one that exists: a planted
            # link), so TensorFlow writes nowhere else.
            if paths.is_local(work):
                os.makedirs(paths.local(self._dir), exist_ok=True)
            paths.make_dir(work)
            faults.point(faults.BEFORE_DATA, work)
            prefix = os.path.join(work, CHECKPOINT_PREFIX)
            # On this thread: one SaveV2 where the checkpoint allows it
            # (a fraction of TensorFlow's time for many small variables).
            if (
                in_caller
                and self._single_shard_writes
                and tf_checkpoint.write_single_shard(checkpoint, prefix)
            ):
                data_write(prefix)
            else:
                # What made it fall back (another task's devices, registered
                # savers) does not change within a job: not gathered again.
                self._single_shard_writes &= not in_caller
                checkpoint.write(prefix, options)

        published = None
        try:
            if not in_caller and self._writer.low_priority:
                # Taken on the background thread while this one waits (a
                # copy-on-write snapshot: milliseconds), so that the writer
                # thread TensorFlow starts for it has that thread's priority.
                self._writer.submit(snapshot).result()
            elif not in_caller:
                snapshot()
            elif facts.variable_bytes > self.kill_safe_max_bytes:
                # Large and written here: the disk writes while TensorFlow
                # still writes the files, so the fsync finds little left.
                with atomicity.WritebackStarter(work):
                    snapshot()
                published = self._publish(seq, work, final, metadata)
            else:
                snapshot()
                published = self._publish(seq, work, final, metadata)
        except (tf.errors.OpError, OSError, _IncompleteCheckpoint) as e:
            raise self._write_failed(seq, work, final, e) from e
        returned = time.monotonic()
        self._returned_at = returned
        published_event = self._published = threading.Event()
        if published is not None:
            published_event.set()
        self.last_kill_safe_seconds = 0.0 if published is not None else None

        def persist():
            info = published
            try:
                if info is None:
                    # The disk writes while TensorFlow still writes the files.
                    with atomicity.WritebackStarter(work):
                        tf_checkpoint.sync(checkpoint)
                    info = self._publish(seq, work, final, metadata)
                    self.last_kill_safe_seconds = max(
                        0.0, time.monotonic() - returned
                    )
                    published_event.set()
                faults.point(faults.PUBLISHED, final)
                atomicity.make_durable(final, info.files, self._dir)
            except (tf.errors.OpError, OSError, _IncompleteCheckpoint) as e:
                raise self._write_failed(seq, work, final, e) from e
            self.last_persist_seconds = time.monotonic() - start
            self._after_commit(info)
            # The one line per backup, once it is durable. Training waited
            # until write_async returned; when synchronous, for this too.
            now = time.monotonic()
            if label is not None:
                logging.info(
                    "Backup %s (%s) committed: %d bytes; training waited "
                    "%.3f s; durable %.3f s after its snapshot began.",
                    final,
                    label,
                    info.size_bytes,
                    (returned if asynchronous else now) - blocked_since,
                    now - start,
                )
            return info

        if asynchronous:
            self._pending = self._writer.submit(persist)
        else:
            self._pending = concurrent.futures.Future()
            try:
                self._pending.set_result(persist())
            except BaseException as e:  # surfaced by wait()
                self._pending.set_exception(e)

    def close(self) -> None:
        """Waits for the backup in flight (raising its error), then ends the
        background thread; a later asynchronous write starts a new one."""
        try:
            self.wait()
        finally:
            self._writer.shutdown()

    def _publish(self, seq, work, final, metadata) -> catalog.BackupInfo:
        """Checks the written files of backup `seq` and publishes them
        (atomicity.publish: not yet durable).

        Raises:
          _IncompleteCheckpoint: what TensorFlow wrote is not a complete
            checkpoint (atomicity.checkpoint_problem): nothing is published.
          OSError, tf.errors.OpError: as the filesystem raised them.
        """
        faults.point(faults.DATA_WRITTEN, work)
        names = [n.rstrip("/") for n in tf.io.gfile.listdir(work)]
        problem = atomicity.checkpoint_problem(work, names, read_index=True)
        if problem is not None:
            raise _IncompleteCheckpoint(f"incomplete checkpoint: {problem}")
        body = manifest.build(
            work, names, metadata, atomicity.marks_durable(self._dir)
        )
        faults.point(faults.BEFORE_COMMIT, work)
        atomicity.publish(work, final, body)
        self._catalog.added(seq, final, metadata.get("scope"))
        files = json.loads(body)["body"]["files"]
        return catalog.BackupInfo(seq, final, metadata, files)

    def _after_commit(self, info: catalog.BackupInfo) -> None:
        """Deletes the backups older than the one just committed.

        A failure here (an I/O error) leaves an older backup behind, which
        the next backup deletes: the new one is committed, so it is logged,
        not raised.
        """
        try:
            faults.point(faults.COMMITTED, info.path)
            self.delete_older_than(info.seq)
        except (tf.errors.OpError, OSError) as e:
            logging.warning(
                "Backup %s is committed, but deleting the older backups "
                "failed (%s: %s); they are deleted after the next backup.",
                info.path,
                type(e).__name__,
                e,
            )

    def _write_failed(self, seq, work, final, error) -> errors.BackupWriteError:
        """Removes what a failed write of backup `seq` left; the error."""
        detail = str(error).strip().splitlines()[0] if str(error) else ""
        try:
            if paths.kind(work) == paths.DIRECTORY:
                if work == final:  # no atomic rename: never leave it named
                    self._retire(work)
                else:
                    paths.remove_tree(work)
            elif paths.kind(final) == paths.DIRECTORY:  # published only
                self._retire(final)
            removed = "its partial files were removed"
        except (tf.errors.OpError, OSError) as e:
            logging.warning("Could not remove %s: %s", work, e)
            removed = f"its partial files in {work} are removed at next start"
        try:
            # Of this run: another run's backup is not where it resumes.
            older = [p for s, p in self.committed_in_scope() if s < seq]
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
                f"The filesystem of {self._dir} is full: free space there, "
                "or pass another backup_dir."
            )
        else:
            advice = (
                f"Check that {self._dir} is writable and has free space, or "
                "pass another backup_dir."
            )
        return errors.BackupWriteError(
            f"Writing backup {final} (number {seq}) failed "
            f"({type(error).__name__}: {detail}). Nothing of it was "
            f"committed; {removed}. {kept} {advice}"
        )

    def enforce_kill_safe_deadline(self) -> float:
        """Called between training steps; returns the seconds it waited.

        When the backup in flight is still not published (kill-safe)
        `kill_safe_deadline_seconds` after write_async returned, waits until
        it is (or its write fails: `wait()` raises that later): with
        training paused the background writer gets the cores. Costs a clock
        read otherwise.
        """
        event, pending = self._published, self._pending
        if event.is_set() or pending is None:
            return 0.0
        late = time.monotonic() - self._returned_at
        if late < self.kill_safe_deadline_seconds:
            return 0.0
        started = time.monotonic()
        while not event.wait(0.05) and not pending.done():
            pass
        waited = time.monotonic() - started
        logging.info(
            "The backup in flight was still not kill-safe %.1f s after "
            "training resumed: training waited %.3f s until it was "
            "published.",
            late,
            waited,
        )
        return waited

    @property
    def pending(self) -> bool:
        """Whether a background write is still in flight."""
        return self._pending is not None and not self._pending.done()

    def _wait_for_other_writers(self) -> None:
        """Waits for other stores of this process writing to this directory.

        After an exception escapes fit() (Ctrl-C in a notebook, say), that
        callback's backup may still be in flight when the next fit() starts
        with a new callback on the same directory: it must not clean up (or
        miss) the backup being committed.
        """
        for other in background.others_on(self):
            try:
                other._join()
            except errors.BackupError as e:
                logging.warning("An earlier backup failed: %s", e)

    def wait(self) -> catalog.BackupInfo | None:
        """Blocks until the in-flight backup is committed; returns it.

        Returns None when nothing was in flight. Also waits for other
        BackupStores of this process on the same directory.

        Raises:
          errors.BackupWriteError: the background write failed (see
            `write_async`). The earlier committed backup is intact; the
            partial one is removed (else by the next cleanup).
        """
        self._wait_for_other_writers()
        return self._join()

    def _join(self) -> catalog.BackupInfo | None:
        """Waits for this store's own background write; see `wait`."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        error = pending.exception()  # waits
        if error is None:
            return pending.result()
        if isinstance(error, errors.BackupWriteError):
            raise error
        if not isinstance(error, (tf.errors.OpError, OSError)):
            raise error
        raise errors.BackupWriteError(
            f"Writing a backup in {self._dir} failed "
            f"({type(error).__name__}: {error}). The previous backup, if "
            "any, is intact."
        ) from error

    def restore_latest(self, prepare):
        """Restores the newest intact backup; returns (info, status) or None.

        `prepare(info)` gets each candidate, newest first; it may check the
        metadata (raising to refuse the backup outright) and returns the
        tf.train.Checkpoint to read into. A candidate whose bytes fail
        TensorFlow's own checksums while being read is skipped for the next
        older one, so only the manifest and file sizes are checked upfront
        and every byte is read once.

        Raises:
          errors.BackupCorruptError: backups exist but none is intact.
        """
        self.wait()

        def attempt(path):
            info = self.load(path, full_verify=False)
            checkpoint = prepare(info)
            try:
                return info, checkpoint.read(info.checkpoint_prefix)
            except (tf.errors.OpError, IndexError) as e:
                # IndexError: TensorFlow's "Read less bytes than requested"
                # for a data file shorter than its index says.
                raise errors.BackupCorruptError(
                    f"{path} fails TensorFlow's checks while being read "
                    f"({type(e).__name__}: {str(e).splitlines()[0]})"
                ) from e

        return self._first_intact(attempt)

    def _all_corrupt(self, failures):
        return errors.BackupCorruptError(
            f"Every backup in {self._dir} fails its integrity checks, so "
            "training cannot resume from it:\n  "
            + "\n  ".join(failures)
            + "\nNothing was deleted. To start training from scratch, "
            "delete or move the backup-* directories listed above; to "
            "resume, restore them from a copy."
        )

    def delete_older_than(self, seq: int) -> None:
        """Deletes every committed backup of this scope older than `seq`."""
        for s, path in self._catalog.named():
            if s < seq and self._in_scope(path):
                faults.point(faults.DELETE_OLDER, path)
                self._retire(path)

    def delete_all(self) -> None:
        """Deletes every backup of this scope and every leftover of this
        store, nothing else.

        Waits for a backup in flight first (and raises its error).

        The directory itself is removed only when it is then empty and held
        nothing but this store's entries when the store was created.
        """
        self.wait()
        listing = self._catalog.list_now()
        for path in listing.temporaries + listing.probes:
            self._remove(path)
        # Newest last: a kill midway leaves it, and a restart resumes there.
        for _, path in listing.named:
            if self._in_scope(path):
                self._retire(path)
        if not self._dir_was_ours:
            return
        if paths.is_local(self._dir):
            with contextlib.suppress(OSError):  # not empty: left as it is
                os.rmdir(paths.local(self._dir))
        elif tf.io.gfile.isdir(self._dir) and not tf.io.gfile.listdir(
            self._dir
        ):
            tf.io.gfile.rmtree(self._dir)
