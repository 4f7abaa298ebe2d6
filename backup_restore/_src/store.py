"""The store: writes, finds, verifies, restores and deletes backups.

Knows nothing of Keras: it saves any `tf.train.Checkpoint` plus a JSON
metadata dict. Its one user is engine.py, which both front ends (the Keras
callback, BackupManager) share. The commit protocol lives in atomicity.py,
the integrity format in manifest.py, what the store knows of backup_dir's
entries (listed once, each manifest parsed once) in catalog.py, the checks
of backup_dir itself in store_dir.py, what is deleted and what kept in
store_delete.py, the three ways one backup is written in
store_write.py, loading and the fallback past corrupt backups in
store_read.py, the background writer, its priority rule and the backup in
flight in background.py, what TensorFlow's checkpoint writer needs in
tf_checkpoint.py.

Concurrency contract: one writer per backup directory (in multi-worker
training, the chief). Methods are not thread-safe; callers serialise them.
`write_async` hands the persist step to one background thread ("at most one
in flight"); every other method first waits for it. Readers never see a
partial backup (see atomicity.py).
"""

import time

import tensorflow as tf
from absl import logging

from backup_restore._src import atomicity
from backup_restore._src import background
from backup_restore._src import catalog
from backup_restore._src import errors
from backup_restore._src import store_delete
from backup_restore._src import store_dir
from backup_restore._src import store_read
from backup_restore._src import store_write

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
        keep_previous=False,
    ):
        """A store of `directory`; `writable=False` (for reading only)
        neither creates it nor probes it; `keep_directory`: `delete_all`
        never removes the directory itself; `keep_previous`: a committed
        backup deletes the older ones except the one just before it (else
        all of them, once it is durable)."""
        self._dir, missing = store_dir.prepare_directory(directory, writable)
        if self._dir.startswith("ram://"):
            logging.warning(
                "backup_dir %s is in memory (ram://): its backups are lost "
                "when this process exits, so a restarted job trains from "
                "scratch. Use a directory on disk or in a bucket to survive "
                "a restart.",
                self._dir,
            )
        # How a backup is committed and deleted here (atomicity.py).
        self.commit = atomicity.for_directory(self._dir)
        # What the store knows of backup_dir's entries (catalog.py); its
        # first listing also gives the highest sequence number so far.
        self._catalog = catalog.Catalog(self._dir)
        # Decided once, from what was there before this store created
        # anything: the directories the end of training may remove
        # (store_dir.removable).
        self.created_dirs = store_dir.removable(
            self._dir,
            missing,
            self._catalog.list_now(),  # empty if it does not exist
            keep_directory,
        )
        # Its priority is decided at the first asynchronous backup.
        self._writer = background.Writer()
        self.keep_previous = bool(keep_previous)
        # Backups that failed their checks when read: never the one kept.
        self._failed_checks = set()
        self._in_flight = None  # the last backup, until waited for
        # Which run of the job writes now (set by the engine per run): a
        # run finds, replaces and deletes only the backups of its own
        # scope. None: every backup.
        self.scope = None
        # Whether in-caller writes try tf_checkpoint.write_single_shard:
        # until it first falls back to TensorFlow's writer.
        self._single_shard_writes = True
        # How long after write_async returned the last backup was published
        # (0.0: before it returned); None until known.
        self.last_kill_safe_seconds = None
        self.kill_safe_max_bytes = (
            KILL_SAFE_MAX_BYTES
            if kill_safe_max_bytes is None
            else kill_safe_max_bytes
        )
        self.kill_safe_deadline_seconds = KILL_SAFE_DEADLINE_SECONDS
        background.register(self)

    @property
    def directory(self) -> str:
        return self._dir

    def refresh(self) -> None:
        """Forgets what the store listed and parsed of backup_dir: the next
        call lists it again. For the start of a run: another run or job may
        have changed the directory since the store last looked."""
        self._catalog.refresh()

    def record_created(self) -> None:
        """Writes again the record that a run of the job created backup_dir
        (store_dir.py) if this store decided so and the directory is back
        without it: the end of a fit() removed it, and the next fit() of
        the job made it again (taking ownership). For the owner, at the
        start of a run."""
        if self._dir in self.created_dirs:
            store_dir.record_created(self._dir)

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
        return store_delete.leftovers(self._catalog)

    def cleanup(self) -> list[str]:
        """Removes what interrupted writes left behind; returns the paths."""
        self.wait()
        return store_delete.remove_leftovers(self._catalog, self.commit)

    def _discard(self, work: str) -> None:
        """Removes the work directory of a failed write."""
        self.commit.discard(work)
        self._catalog.removed(work)

    def _retire(self, path: str) -> None:
        """Deletes a committed backup (store_delete.retire)."""
        store_delete.retire(self.commit, self._catalog, path)

    def load(self, path: str, full_verify: bool = True) -> catalog.BackupInfo:
        """Reads and verifies one committed backup.

        Raises:
          errors.BackupCorruptError: when it fails any integrity check.
        """
        return store_read.load(self._catalog, path, full_verify)

    def latest(self, full_verify: bool = True) -> catalog.BackupInfo | None:
        """The newest committed backup that passes verification, or None.

        Raises:
          errors.BackupCorruptError: committed backups exist but none is intact.
        """
        return self._first_intact(lambda path: self.load(path, full_verify))

    def _first_intact(self, attempt):
        """store_read.first_intact over the backups of this scope; the ones
        it skips are remembered (never kept as the previous backup)."""

        def remembering(path):
            try:
                return attempt(path)
            except errors.BackupCorruptError:
                self._failed_checks.add(path)
                raise

        return store_read.first_intact(
            self._catalog, self._dir, self.committed_in_scope(), remembering
        )

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

        Published (a process kill resumes from it) before this returns
        unless the state is larger than `kill_safe_max_bytes` and written
        asynchronously; durable before this returns only when not
        `asynchronous` (the three modes and why: store_write.py). At most
        one backup is in flight: this first waits for the previous one.

        Args:
          checkpoint: what to back up.
          metadata: JSON metadata stored in the manifest.
          asynchronous: fsync (and, for large states, write) in background.
          async_snapshot: take the snapshot with TensorFlow's asynchronous
            checkpointing; False writes the files on the calling thread
            (multi-worker strategies need it: their workers must issue the
            same collective ops in the same order).
          expected_interval: seconds until the next backup, if known: at
            the first asynchronous backup it decides the background
            thread's priority for good (background.LOW_PRIORITY_SLACK).
          label: what the backup holds ("epoch 2, batch 0") for the one line
            logged once it is durable; None logs nothing.
          blocked_since: `time.monotonic()` when training began to wait for
            this backup (default: now), for that line.

        Raises:
          errors.BackupWriteError: the previous background write failed, or
            this snapshot could not be written; it names the backup and
            carries the filesystem's or TensorFlow's error. Nothing of that
            backup was committed, its partial files are removed, no earlier
            backup was deleted; the store stays usable.
        """
        if blocked_since is None:
            blocked_since = time.monotonic()
        self.wait()
        if self.scope is not None:
            metadata = {**metadata, "scope": self.scope}
        self._in_flight = store_write.write(
            self,
            checkpoint,
            metadata,
            self._catalog.next_seq(),
            asynchronous=asynchronous,
            async_snapshot=async_snapshot,
            expected_interval=expected_interval,
            label=label,
            blocked_since=blocked_since,
        )

    def close(self) -> None:
        """Waits for the backup in flight (raising its error), then ends the
        background thread; a later asynchronous write starts a new one."""
        try:
            self.wait()
        finally:
            self._writer.shutdown()

    def _publish(self, seq, work, final, metadata) -> catalog.BackupInfo:
        """Publishes the written backup `seq` (store_write.publish) and
        records it in the catalog."""
        info = store_write.publish(self.commit, seq, work, final, metadata)
        self._catalog.added(seq, final, metadata.get("scope"))
        return info

    def enforce_kill_safe_deadline(self) -> float:
        """Called between training steps; returns the seconds it waited.

        When the backup in flight is still not published (kill-safe)
        `kill_safe_deadline_seconds` after write_async returned, waits until
        it is (or its write fails: `wait()` raises that later); see
        background.InFlight.wait_if_late.
        """
        in_flight = self._in_flight
        if in_flight is None:
            return 0.0
        return in_flight.wait_if_late(self.kill_safe_deadline_seconds)

    @property
    def pending(self) -> bool:
        """Whether a background write is still in flight."""
        return self._in_flight is not None and not self._in_flight.future.done()

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
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return None
        return store_write.result(in_flight, self._dir)

    def restore_latest(self, prepare, ahead: bool = False):
        """Restores the newest intact backup; returns (info, status) or None.

        `prepare(info)` gets each candidate, newest first; it may check the
        metadata (raising to refuse the backup outright) and returns the
        tf.train.Checkpoint to read into. `ahead`: the read begins before
        `prepare`, to overlap it (store_read.read). A candidate whose bytes fail
        TensorFlow's own checksums while being read is skipped for the next
        older one, so only the manifest and file sizes are checked upfront
        and every byte is read once.

        Raises:
          errors.BackupCorruptError: backups exist but none is intact.
        """
        self.wait()

        def attempt(path):
            info = self.load(path, full_verify=False)
            return info, store_read.read(info, prepare, ahead)

        return self._first_intact(attempt)

    def delete_older_than(self, seq: int) -> None:
        """Deletes the committed backups of this scope older than `seq`,
        except, with `keep_previous`, the newest of them not known to fail
        its checks: the previous intact backup stays beside backup `seq`,
        for a restore to fall back to should `seq` fail its checks later."""
        kept = None
        if self.keep_previous:
            kept = store_delete.previous_kept(
                self._catalog, seq, self._in_scope, self._failed_checks
            )
        store_delete.delete_older_than(
            self.commit, self._catalog, seq, self._in_scope, kept
        )

    def delete_all(self) -> None:
        """Deletes every backup of this scope and every leftover of this
        store, nothing else.

        Waits for a backup in flight first (and raises its error).

        Then removes `created_dirs` (remove_created_dirs).
        """
        self.wait()
        store_delete.delete_all(self.commit, self._catalog, self._in_scope)
        self.remove_created_dirs()

    def remove_created_dirs(self) -> None:
        """Removes `created_dirs`, deepest first, each only while it is
        empty (store_dir.remove_created)."""
        store_dir.remove_created(self.created_dirs)
