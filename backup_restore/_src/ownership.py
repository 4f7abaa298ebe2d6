"""Who owns a backup_dir: one training job at a time.

A second job started on the directory of a running one must not clean up
the first one's in-flight backup, restore it, finish its run and delete it.
So the process that commits into backup_dir (the chief) owns it from
`Engine.start()` to `Engine.finish()`; another process that opens it is
refused with `BackupDirInUseError`, which names the owner, before anything
in the directory is touched.

How ownership is held depends on the filesystem:

- Local paths: `flock(LOCK_EX | LOCK_NB)` on `LOCK_FILE` inside backup_dir.
  The kernel drops the lock when the process dies (SIGKILL, crash, OOM), so
  a dead owner never blocks the restart. After locking, the owner writes
  its record (host, pid, since when, command, a random token) into the file;
  a refused process reads it to name the owner. (Note: a child forked
  without exec shares the lock until it exits too.)
- Filesystems without locks (gs://, s3://, hdfs://, ...): a lease in
  `LEASE_FILE`, the owner's record plus an expiry, renewed from a daemon
  thread every TTL/3 (LEASE_TTL_SECONDS). The takeover rule: a process that
  finds another owner's lease watches it; as soon as it sees the lease
  renewed, the owner is alive and the process is refused. It takes the
  lease over once the lease's expiry time has passed (compared with its
  own clock: the owner renews when 2/3 of the TTL are left, so clocks must
  agree to within 2/3 of a TTL), or once it has watched the lease go
  unrenewed for a whole TTL by its own monotonic clock (so a dead owner
  delays a restart by at most one TTL), or at once when the owner ran on
  this host (same boot) and its process is gone. Then it writes its
  own lease and reads it back a moment later: if another process took it
  over at the same time, the last writer wins and the other is refused.
  (Object stores have no compare-and-swap through tf.io.gfile: two takers
  within that moment could both proceed; the owner's renewal thread notices
  a lease that is no longer its own and logs an error.)
  Every lease is written at one fixed size, so that TensorFlow's gs://
  stat cache (a cached length per object) cannot cut or fail its reads
  (`lease.py`).
  Local filesystems whose flock fails (NFS mounted `nolock`, some FUSE
  mounts) use the lease too.
- ram:// is private to the process: only the in-process registry.

Every record read from the directory is checked field by field
(`owner_record.invalid_fields`) before use. A lease that is invalid (not
JSON, a field missing or of the wrong type or range) tells nothing of its
owner but whether it changes: it is watched like any other, refused if
rewritten meanwhile, taken over once unchanged for a whole TTL. An owner
that finds an invalid lease in place of its own rewrites its own at once. Of
a lock file's record, only the valid fields name the owner in a refusal.

The directory may be deleted or replaced under a running owner (`rm -rf
backup_dir`; the owner's next backup would recreate it), and so may its lock
file or lease alone: a job started then would find it free. So before each
backup the owner calls `Ownership.ensure()`: one lstat of the lock file
(does its name still name the file locked?) or one read of the lease (still
this process's token, and not flagged lost by the renewal thread?). If the
claim is gone and nobody else holds the directory, the owner re-establishes
it (the directory, lock file or lease created anew; one warning); if
another process holds it by now, the owner stops with BackupDirInUseError
naming it, writes nothing more there, and no longer owns it. The lease's
renewal thread re-establishes a missing lease by the same rule.

Within one process, ownership is re-entrant: a second acquire on the same
directory (fit() run again after Ctrl-C, with a new callback; a second
store object) succeeds and makes its handle the holder; releasing an older
handle is then a no-op, releasing the holder ends the ownership. The
registry is keyed by the directory's real path.

Thread-safety: acquire and release may be called from any thread.

This module holds the handle (`Ownership`, `acquire`); the owner's record
and its checks are in `owner_record.py`, the flock in `lock_file.py`, the
lease in `lease.py`, the in-process registry in `registry.py`.
"""

import os

from absl import logging

from backup_restore._src import lease
from backup_restore._src import lock_file
from backup_restore._src import paths
from backup_restore._src import registry

LOCK_FILE = lock_file.LOCK_FILE
LEASE_FILE = lease.LEASE_FILE
# The names of backup_dir's entries that ownership writes.
FILES = (LOCK_FILE, LEASE_FILE)

LEASE_TTL_SECONDS = 60.0
# Private, for tests: with a number of seconds, local paths use a lease with
# that TTL instead of flock (so the lease logic runs with real processes).
FORCE_LEASE_ENV = "BACKUP_RESTORE_TESTONLY_LEASE_TTL"


class Ownership:
    """A handle on the ownership of one backup_dir; see `acquire`."""

    def __init__(self, directory: str, key: str, lease_ttl=None):
        self.directory = directory
        self._key = key
        self._lease_ttl = lease_ttl
        self._released = False
        self._held = None  # the registry.Held this handle joined

    @property
    def record(self) -> dict | None:
        """The owner record written for this process (None for ram://)."""
        with registry.LOCK:
            held = registry.HELD.get(self._key)
            return held.record if held is not None else None

    @property
    def lost(self) -> bool:
        """Whether another process took backup_dir from this one (see
        `ensure`)."""
        with registry.LOCK:
            return self._held is not None and self._held.lost is not None

    @property
    def held(self) -> bool:
        """Whether this handle is the holder of a live ownership."""
        with registry.LOCK:
            held = registry.HELD.get(self._key)
            return held is not None and held.holder is self

    @property
    def superseded(self) -> bool:
        """Whether a newer handle of this process holds backup_dir now
        (another BackupManager or fit() started on it since this one)."""
        with registry.LOCK:
            held = registry.HELD.get(self._key)
            return (
                not self._released
                and held is not None
                and held.holder is not self
            )

    def release(self, remove_empty_dir: bool = False) -> None:
        """Ends the ownership if this handle holds it; else a no-op.

        Args:
          remove_empty_dir: then remove backup_dir if it is empty (the
            owner file was the last entry).
        """
        with registry.LOCK:
            if self._released:
                return
            self._released = True
            held = registry.HELD.get(self._key)
            if held is None or held.holder is not self:
                return
            del registry.HELD[self._key]
        held.close(remove_empty_dir)

    def ensure(self) -> None:
        """Checks that this process still owns backup_dir; call it before
        each backup is written.

        The directory (or only its lock file or lease) may have been
        deleted or replaced since `acquire`: `rm -rf backup_dir` while the
        job trains, after which the job's next backup would recreate it.
        Then the claim is re-established (the directory and the lock file or
        lease created anew, and one warning logged), unless another process
        holds the directory by now: then BackupDirInUseError. Costs one
        lstat with a file lock, one read of the lease with a lease.

        Within this process, a handle whose ownership a newer handle has
        released takes it again; while a newer handle holds it, this one
        writes nothing there.

        Raises:
          BackupDirInUseError: another process owns backup_dir now; this
            process no longer does and nothing in it was changed. Raised
            again by every later call.
          BackupDirUnsafeError: the lock file's name now holds something
            else (a link, ...): not followed or changed.
          RuntimeError: this handle was released, or a newer handle of
            this process holds backup_dir (nothing was changed).
        """
        with registry.LOCK:
            if self._released:
                raise RuntimeError(
                    f"The ownership of {self.directory!r} was released by "
                    "this handle: acquire it again to write backups there."
                )
            held = registry.HELD.get(self._key)
            if held is not None and held.holder is not self:
                raise RuntimeError(
                    f"backup_dir {self.directory!r} has been taken over by "
                    "another BackupManager or fit() of this process, started "
                    "on it after this one: this one writes nothing more "
                    "there. Give each training its own backup_dir."
                )
        if held is None and self._held.lost is None:
            # Released by a newer handle of this process: take it again.
            other = acquire(self.directory, _lease_ttl=self._lease_ttl)
            with registry.LOCK:
                held = other._held
                held.holder = self
                self._held = held
                other._released = True
        self._held.ensure()


def acquire(directory: str, *, _lease_ttl=None) -> Ownership:
    """Makes this process the owner of `directory`; returns the handle.

    Creates the directory if missing, and in it only LOCK_FILE (local) or
    LEASE_FILE (other filesystems); nothing on ram://.

    Args:
      directory: the backup_dir.
      _lease_ttl: private, for tests: use a lease with this TTL (seconds),
        on local paths too.

    Raises:
      BackupDirInUseError: another process owns it; nothing was changed.
      BackupDirUnsafeError: the lock or lease file's name holds something
        else (a link, a FIFO, ...); nothing was changed.
      BackupWriteError: the owner's record could not be written (a full
        disk); no lock is kept.
    """
    directory = os.fspath(directory)
    if _lease_ttl is None and os.environ.get(FORCE_LEASE_ENV):
        _lease_ttl = float(os.environ[FORCE_LEASE_ENV])
    key = paths.key(directory)
    handle = Ownership(directory, key, _lease_ttl)
    with registry.LOCK:
        held = registry.HELD.get(key)
        if held is not None:
            held.holder = handle  # re-entrant within the process
            handle._held = held
            return handle
        if directory.startswith("ram://"):
            held = registry.Held(directory, key)
        elif paths.is_local(directory) and _lease_ttl is None:
            try:
                held = lock_file.Flock(directory, key)
            except lock_file.LocksUnsupported as e:
                logging.warning(
                    "%s has no file locks (%s): its owner holds a lease.",
                    directory,
                    e,
                )
                held = lease.Lease(directory, key, LEASE_TTL_SECONDS)
        else:
            held = lease.Lease(
                directory,
                key,
                LEASE_TTL_SECONDS if _lease_ttl is None else _lease_ttl,
            )
        held.holder = handle
        handle._held = held
        registry.HELD[key] = held
    return handle
