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
  Local filesystems whose flock fails (NFS mounted `nolock`, some FUSE
  mounts) use the lease too.
- ram:// is private to the process: only the in-process registry below.

Every record read from the directory is checked field by field
(`invalid_fields`) before use. A lease that is invalid (not JSON, a field
missing or of the wrong type or range) tells nothing of its owner but
whether it changes: it is watched like any other, refused if rewritten
meanwhile, taken over once unchanged for a whole TTL. An owner that finds
an invalid lease in place of its own rewrites its own at once. Of a lock
file's record, only the valid fields name the owner in a refusal.

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
"""

import contextlib
import datetime
import errno
import fcntl
import json
import math
import os
import socket
import sys
import threading
import time
import uuid

from absl import logging

from backup_restore._src import errors
from backup_restore._src import paths

LOCK_FILE = ".backup_restore.lock"
LEASE_FILE = ".backup_restore.lease"
# The names of backup_dir's entries that this module writes.
FILES = (LOCK_FILE, LEASE_FILE)

LEASE_TTL_SECONDS = 60.0
# Private, for tests: with a number of seconds, local paths use a lease with
# that TTL instead of flock (so the lease logic runs with real processes).
FORCE_LEASE_ENV = "BACKUP_RESTORE_TESTONLY_LEASE_TTL"

_REGISTRY_LOCK = threading.Lock()
_HELD = {}  # key -> _Held


def _now_record(mechanism: str) -> dict:
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.fromtimestamp(now)
        .astimezone()
        .isoformat(timespec="seconds"),
        "since_epoch": now,
        "command": " ".join(sys.argv)[:300],
        "boot_id": _boot_id(),
        "token": uuid.uuid4().hex,
        "mechanism": mechanism,
    }


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _is_number(value) -> bool:
    # bool is an int in Python, but true is no time and no pid.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value)
    )


# The fields of an owner record (flock and lease), each with what it must
# be; a lease adds _LEASE_FIELDS.
_FIELDS = {
    "host": ("a string", lambda v: isinstance(v, str)),
    # Up to the largest pid_t: os.kill overflows beyond.
    "pid": (
        "a positive integer",
        lambda v: _is_number(v) and isinstance(v, int) and 0 < v < 2**31,
    ),
    "since": ("a string", lambda v: isinstance(v, str)),
    "since_epoch": ("a finite number", _is_number),
    "command": ("a string", lambda v: isinstance(v, str)),
    "boot_id": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "token": ("a non-empty string", lambda v: isinstance(v, str) and v != ""),
    "mechanism": ("a string", lambda v: isinstance(v, str)),
}
_LEASE_FIELDS = {
    "ttl": ("a positive finite number", lambda v: _is_number(v) and v > 0),
    "renewed_epoch": ("a finite number", _is_number),
    "expires_epoch": ("a finite number", _is_number),
}


def invalid_fields(record, lease: bool) -> dict:
    """What is wrong with an owner record read from backup_dir, by field.

    Args:
      record: the record as parsed from JSON (anything JSON holds).
      lease: check the fields of a lease too.

    Returns:
      {field: what it should be} for each field that is missing or of the
      wrong type or range; {} for a valid record. A record that is not a
      JSON object gives {"record": ...}. Fields this release does not know
      are allowed (a later release may add some).
    """
    if not isinstance(record, dict):
        return {"record": f"a JSON object, not {type(record).__name__}"}
    fields = dict(_FIELDS, **_LEASE_FIELDS) if lease else _FIELDS
    invalid = {}
    for name, (want, check) in fields.items():
        if name not in record:
            invalid[name] = f"missing (should be {want})"
        elif not check(record[name]):
            invalid[name] = f"{repr(record[name])[:40]} (should be {want})"
    return invalid


def _describe(invalid: dict) -> str:
    return "; ".join(f"{name}: {what}" for name, what in invalid.items())


def _valid_part(record) -> dict | None:
    """The valid fields of `record` (a flock record, read only to name its
    owner); None when none is."""
    invalid = invalid_fields(record, lease=False)
    if "record" in invalid:
        return None
    return {
        k: v for k, v in record.items() if k in _FIELDS and k not in invalid
    } or None


def _in_use_error(directory: str, owner: dict | None, extra: str = ""):
    """The refusal naming `owner`, a record whose fields are all valid (or
    only the valid ones of it).

    Args:
      directory: the backup_dir.
      owner: the other owner's record.
      extra: sentences to add after the owner's name.
    """
    owner = owner or {}
    pid, host, since, command = (
        owner.get(k) for k in ("pid", "host", "since", "command")
    )
    if any(v is not None for v in (pid, host, since, command)):
        who = "a process" if pid is None else f"pid {pid}"
        if host is not None:
            who += f" on host {host!r}"
        if since is not None:
            who += f", which has owned it since {since}"
        if command:
            who += f" (command: {command})"
        kill = "stop it"
        if pid is not None and host is not None:
            kill += f" (kill {pid} on {host})"
    else:
        who = (
            "a process that has not written its record yet (or whose record "
            "is invalid)"
        )
        kill = "stop it"
        owner = None
    error = errors.BackupDirInUseError(
        f"backup_dir {directory!r} is in use by another training job: "
        f"{who}.{extra} Nothing in the directory was changed. Wait for that "
        f"job to finish, {kill}, or give this job another backup_dir."
    )
    error.owner = owner
    return error


class Ownership:
    """A handle on the ownership of one backup_dir; see `acquire`."""

    def __init__(self, directory: str, key: str, lease_ttl=None):
        self.directory = directory
        self._key = key
        self._lease_ttl = lease_ttl
        self._released = False
        self._held = None  # the _Held this handle joined

    @property
    def record(self) -> dict | None:
        """The owner record written for this process (None for ram://)."""
        with _REGISTRY_LOCK:
            held = _HELD.get(self._key)
            return held.record if held is not None else None

    @property
    def lost(self) -> bool:
        """Whether another process took backup_dir from this one (see
        `ensure`)."""
        with _REGISTRY_LOCK:
            return self._held is not None and self._held.lost is not None

    @property
    def held(self) -> bool:
        """Whether this handle is the holder of a live ownership."""
        with _REGISTRY_LOCK:
            held = _HELD.get(self._key)
            return held is not None and held.holder is self

    def release(self, remove_empty_dir: bool = False) -> None:
        """Ends the ownership if this handle holds it; else a no-op.

        Args:
          remove_empty_dir: then remove backup_dir if it is empty (the
            owner file was the last entry).
        """
        with _REGISTRY_LOCK:
            if self._released:
                return
            self._released = True
            held = _HELD.get(self._key)
            if held is None or held.holder is not self:
                return
            del _HELD[self._key]
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
        released takes it again.

        Raises:
          BackupDirInUseError: another process owns backup_dir now; this
            process no longer does and nothing in it was changed. Raised
            again by every later call.
          BackupDirUnsafeError: the lock file's name now holds something
            else (a link, ...): not followed or changed.
          RuntimeError: this handle was released.
        """
        with _REGISTRY_LOCK:
            if self._released:
                raise RuntimeError(
                    f"The ownership of {self.directory!r} was released by "
                    "this handle: acquire it again to write backups there."
                )
            held = _HELD.get(self._key)
        if held is None and self._held.lost is None:
            # Released by a newer handle of this process: take it again.
            other = acquire(self.directory, _lease_ttl=self._lease_ttl)
            with _REGISTRY_LOCK:
                held = other._held
                held.holder = self
                self._held = held
                other._released = True
        if held is not None and held is not self._held:
            self._held = held  # re-acquired by another handle meanwhile
        self._held.ensure()


class _Held:
    """What one process holds for one directory (ram://: only this)."""

    record = None

    def __init__(self, directory, key):
        self.directory = directory
        self.key = key
        self.holder = None
        # (owner record, what happened) once another process took the
        # directory over: this process then no longer holds it.
        self.lost = None
        # Serializes checking, re-establishing and renewing.
        self._guard = threading.Lock()

    def ensure(self):
        if self.lost is not None:
            raise _in_use_error(self.directory, *self.lost)

    def _lose(self, owner, what):
        """Records that `owner` took the directory; forgets it here."""
        self.lost = (owner, _lost_text(what))
        with _REGISTRY_LOCK:
            if _HELD.get(self.key) is self:
                del _HELD[self.key]

    def close(self, remove_empty_dir):
        pass


def _lost_text(what: str) -> str:
    return (
        f" This job owned it until {what}; that process has taken it since, "
        "so this job no longer owns it and writes no more backups there."
    )


# flock's errors on filesystems without locks (NFS mounted nolock, FUSE).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class _LocksUnsupported(Exception):
    pass


def _unsafe_entry_error(path: str, found: str) -> errors.BackupDirUnsafeError:
    return errors.BackupDirUnsafeError(
        f"{path} is a {found}, not the file backup_restore keeps there: it "
        "was not followed, read, written or deleted. Remove it (or give "
        "this job another backup_dir); nothing else in the directory was "
        "changed."
    )


def _open_lock_file(path: str) -> int:
    """Opens (creating, mode 0644) the lock file, never through a link; a
    FIFO, a directory or a file with other hard links is refused.

    Raises:
      errors.BackupDirUnsafeError: `path` is not a regular file of one link.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP (a link), EISDIR, ENXIO, ...
        found = paths.kind(path)
        if found not in (None, paths.FILE):
            raise _unsafe_entry_error(path, found) from e
        raise
    found = paths.kind_of_fd(fd)
    if found != paths.FILE:
        os.close(fd)
        raise _unsafe_entry_error(path, found)
    return fd


def _record_write_error(directory, path, error) -> errors.BackupWriteError:
    return errors.BackupWriteError(
        f"Could not write the owner's record {path} into backup_dir "
        f"{directory!r} ({error.strerror or error}): training cannot start "
        "backing up there. Nothing else in the directory was changed. Free "
        "space there (or fix its permissions), or pass another backup_dir."
    )


class _Flock(_Held):
    """A flock on LOCK_FILE, held through an open file descriptor."""

    def __init__(self, directory, key):
        super().__init__(directory, key)
        self._local = paths.local(directory)
        self._path = os.path.join(self._local, LOCK_FILE)
        self._fd, self._id, self._dir_id = self._lock()
        self.record = _now_record("flock")
        try:
            self._write_record()
        except OSError as e:  # a full disk: the lock is not kept
            if self.intact():
                os.unlink(self._path)
            os.close(self._fd)
            raise _record_write_error(directory, self._path, e) from e

    def _lock(self):
        """Locks the file that LOCK_FILE names: (fd, its (st_dev, st_ino),
        the directory's).

        Raises:
          BackupDirInUseError: another process holds the lock.
          _LocksUnsupported: the filesystem has no locks.
        """
        # The owner deletes its lock file at the end; a process that opened
        # it just before then locks a deleted file: open again.
        for _ in range(100):
            os.makedirs(self._local, exist_ok=True)
            try:
                fd = _open_lock_file(self._path)
            except FileNotFoundError:  # the owner removed the directory
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    if e.errno in _NO_LOCKS:
                        with contextlib.suppress(OSError):
                            os.unlink(self._path)  # useless here
                        raise _LocksUnsupported(e) from e
                    raise
                owner = _valid_part(_read_record_fd(fd))
                os.close(fd)
                raise _in_use_error(self.directory, owner) from None
            try:
                current = os.lstat(self._path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is None or (current.st_dev, current.st_ino) != (
                mine.st_dev,
                mine.st_ino,
            ):
                os.close(fd)
                continue
            folder = os.stat(self._local)
            return (
                fd,
                (mine.st_dev, mine.st_ino),
                (folder.st_dev, folder.st_ino),
            )
        raise RuntimeError(f"Could not lock {self._path}: it keeps changing.")

    def _write_record(self):
        data = json.dumps(self.record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def intact(self) -> bool:
        """Whether the lock file's name still names the file locked."""
        try:
            current = os.lstat(self._path)
        except FileNotFoundError:
            return False
        return (current.st_dev, current.st_ino) == self._id

    def ensure(self):
        with self._guard:
            super().ensure()
            if self.intact():  # the one lstat per backup
                return
            try:
                folder = os.stat(self._local)
                moved = (folder.st_dev, folder.st_ino) != self._dir_id
            except FileNotFoundError:
                moved = True
            what = (
                "the directory was deleted or replaced"
                if moved
                else f"its lock file {LOCK_FILE} was deleted or replaced"
            )
            try:
                fd, self._id, self._dir_id = self._lock()
            except errors.BackupDirInUseError as e:
                os.close(self._fd)
                self._lose(e.owner, what)
                raise _in_use_error(self.directory, *self.lost) from None
            except _LocksUnsupported as e:
                raise e.__cause__ from None
            old, self._fd = self._fd, fd
            self._write_record()
            os.close(old)  # its lock is on a file no longer named
        logging.warning(
            "While this job owned backup_dir %s, %s. Nobody else had taken "
            "it: this job has re-established its claim with a new %s and "
            "goes on backing up there.%s",
            self.directory,
            what,
            LOCK_FILE,
            " Backups that were in the old directory are not there any more."
            if moved
            else "",
        )

    def close(self, remove_empty_dir):
        # Unlink while still locked: a process that locks the file after
        # this finds it deleted and opens a new one. Only the file this
        # process locked: the name may have been replaced meanwhile.
        if self.intact():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
        os.close(self._fd)
        if remove_empty_dir:
            try:
                os.rmdir(self._local)
            except OSError:  # not empty (another job's lock file, say)
                pass


def _read_record_fd(fd, patience=2.0):
    """The record in a locked lock file; None if never written in time."""
    deadline = time.monotonic() + patience
    while True:
        try:
            raw = os.pread(fd, 65536, 0)
            record = json.loads(raw) if raw else None
        except (OSError, ValueError):
            record = None
        if record is not None or time.monotonic() >= deadline:
            return record
        time.sleep(0.02)  # the owner locked it and is writing its record


# -- leases -------------------------------------------------------------------


def _gfile():
    import tensorflow as tf  # only for remote filesystems

    return tf.io.gfile


def _read_lease(path):
    """The lease at `path`: (raw, record, invalid).

    raw is its bytes, None when there is none; record what they parse to
    (None if nothing); invalid the `invalid_fields` of the record, {} when
    there is none or it is valid. A record is used only when valid.
    """
    raw = _read_lease_bytes(path)
    if raw is None:
        return None, None, {}
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8)
        return raw, None, {"record": "not JSON"}
    return raw, record, invalid_fields(record, lease=True)


def _read_lease_bytes(path):
    try:
        if paths.is_local(path):
            try:
                raw = paths.read_bytes(path)
            except paths.NotOursError as e:
                raise _unsafe_entry_error(path, paths.kind(path)) from e
        else:
            gfile = _gfile()
            if not gfile.exists(path):
                return None
            with gfile.GFile(path, "rb") as f:
                raw = f.read()
    except FileNotFoundError:
        return None
    except Exception as e:  # tf.errors.NotFoundError etc.
        if type(e).__name__ == "NotFoundError":
            return None
        raise
    return raw


def _write_lease(path, lease):
    data = json.dumps(lease).encode()
    if paths.is_local(path):
        local = paths.local(path)
        found = paths.kind(local)
        if found not in (None, paths.FILE):  # replacing it would delete it
            raise _unsafe_entry_error(local, found)
        tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
        paths.create_file(tmp, data, durable=True)
        os.replace(tmp, local)  # readers see the old lease or the new
    else:
        with _gfile().GFile(path, "wb") as f:  # one object: all or nothing
            f.write(data)


def _remove(path):
    try:
        if paths.is_local(path):
            paths.remove_file(path)
        else:
            _gfile().remove(path)
    except Exception as e:
        logging.warning("Could not remove the lease %s: %s", path, e)


def _process_gone(lease) -> bool:
    """The lease's owner ran on this machine (this boot) and has exited."""
    if lease.get("host") != socket.gethostname():
        return False
    if lease.get("boot_id") is None or lease.get("boot_id") != _boot_id():
        return False
    try:
        os.kill(lease["pid"], 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False


def _renewed_error(directory, lease, invalid):
    """The refusal by a lease seen rewritten while watched."""
    if invalid:
        return _in_use_error(
            directory,
            _valid_part(lease),
            f" Its lease is invalid ({_describe(invalid)}) but is being "
            "rewritten: its writer is alive.",
        )
    return _in_use_error(
        directory,
        lease,
        f" Its lease (renewed every {lease['ttl']} s / 3) is being renewed.",
    )


class _Lease(_Held):
    """A lease in LEASE_FILE, renewed every ttl/3 by a daemon thread."""

    def __init__(self, directory, key, ttl):
        super().__init__(directory, key)
        self._ttl = float(ttl)
        self._path = os.path.join(directory, LEASE_FILE)
        self._stop = threading.Event()
        try:
            self._take(directory)
        except OSError as e:  # a full local disk (NFS without locks)
            raise _record_write_error(directory, self._path, e) from e
        self._thread = threading.Thread(
            target=self._renew_loop, name="backup_restore-lease", daemon=True
        )
        self._thread.start()

    def _lease(self):
        now = time.time()
        return dict(
            self.record, renewed_epoch=now, expires_epoch=now + self._ttl
        )

    def _take(self, directory):
        poll = min(1.0, self._ttl / 10)
        seen, seen_at = None, None
        while True:
            raw, lease, invalid = _read_lease(self._path)
            if raw is None:
                break  # free
            if not invalid:
                if lease["pid"] == os.getpid() and (
                    lease["host"] == socket.gethostname()
                ):
                    break  # this process's own, left by a crash
                if time.time() > lease["expires_epoch"]:
                    logging.warning("Taking over the expired lease %s", lease)
                    break
                if _process_gone(lease):
                    logging.warning(
                        "Taking over the lease of pid %s, gone: %s",
                        lease["pid"],
                        lease,
                    )
                    break
            # An invalid lease tells nothing of its owner's liveness but
            # this: a live owner rewrites it every TTL/3. So every lease is
            # watched by its bytes.
            if seen is None:
                seen, seen_at = raw, time.monotonic()
            elif raw != seen:
                # Renewed (or newly taken) while we watched: a live owner.
                raise _renewed_error(directory, lease, invalid)
            elif time.monotonic() - seen_at >= self._ttl:
                if invalid:
                    logging.warning(
                        "Taking over the lease %s: it is invalid (%s) and "
                        "was not rewritten for %.1f s.",
                        self._path,
                        _describe(invalid),
                        self._ttl,
                    )
                else:
                    logging.warning("Taking over the unrenewed lease %s", lease)
                break
            time.sleep(poll)
        self.record = dict(_now_record("lease"), ttl=self._ttl)
        self._write_and_confirm(
            lambda lease: _in_use_error(
                directory,
                _valid_part(lease),
                " It took the lease over at the same time.",
            )
        )

    def _write_and_confirm(self, refusal):
        """Creates the directory if missing, writes this process's lease and
        reads it back a moment later: another process may have written its
        lease at the same moment; the last writer wins.

        Raises:
          BackupDirInUseError: `refusal(the other's lease)`.
        """
        if paths.is_local(self.directory):
            os.makedirs(paths.local(self.directory), exist_ok=True)
        else:
            _gfile().makedirs(self.directory)
        _write_lease(self._path, self._lease())
        time.sleep(min(1.0, self._ttl / 10))
        raw, lease, invalid = _read_lease(self._path)
        if raw is None or invalid or lease["token"] != self.record["token"]:
            raise refusal(lease)

    def ensure(self):
        with self._guard:
            self._check()

    def _check(self):
        """Checks that the lease is this process's own; re-establishes a
        missing one (with a warning). Holds self._guard.

        Raises:
          BackupDirInUseError: another process holds a valid lease; this
            one no longer owns the directory (self.lost).
        """
        super().ensure()
        raw, lease, invalid = _read_lease(self._path)
        if raw is not None and not invalid:
            if lease["token"] == self.record["token"]:
                return
            self._lose(
                lease,
                f"its lease was deleted, or went unrenewed for {self._ttl:g} s",
            )
            self._stop.set()
            raise _in_use_error(self.directory, *self.lost)
        if invalid:
            # Rewritten at once: a job that watches this lease then sees it
            # change and is refused, as it must be while this owner lives.
            logging.warning(
                "The lease %s was replaced by an invalid one (%s): "
                "rewriting this job's lease.",
                self._path,
                _describe(invalid),
            )
            _write_lease(self._path, self._lease())
            return

        def refusal(lease):
            self._lose(
                _valid_part(lease),
                "the directory (or its lease) was deleted or replaced",
            )
            self._stop.set()
            return _in_use_error(self.directory, *self.lost)

        self._write_and_confirm(refusal)
        logging.warning(
            "While this job owned backup_dir %s, the directory (or its "
            "lease %s) was deleted or replaced. Nobody else had taken it: "
            "this job has re-established its claim (a new lease, the "
            "directory recreated if missing) and goes on backing up there. "
            "If the directory itself was deleted or replaced, the backups "
            "that were in it are not there any more.",
            self.directory,
            LEASE_FILE,
        )

    def _renew_loop(self):
        while not self._stop.wait(self._ttl / 3):
            try:
                with self._guard:
                    self._check()
                    _write_lease(self._path, self._lease())
            except errors.BackupDirInUseError as e:
                logging.error("Lost the ownership of %s: %s", self.directory, e)
                return
            except Exception as e:  # retried at the next tick
                logging.warning(
                    "Renewing the lease %s failed: %s", self._path, e
                )

    def close(self, remove_empty_dir):
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        raw, lease, invalid = _read_lease(self._path)
        if raw is not None and not invalid:
            if lease["token"] == self.record["token"]:
                _remove(self._path)
        if remove_empty_dir:
            try:
                if paths.is_local(self.directory):
                    os.rmdir(paths.local(self.directory))
                else:
                    gfile = _gfile()
                    if gfile.isdir(self.directory) and not gfile.listdir(
                        self.directory
                    ):
                        gfile.rmtree(self.directory)
            except Exception:  # not empty: left as is
                pass


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
    with _REGISTRY_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held.holder = handle  # re-entrant within the process
            handle._held = held
            return handle
        if directory.startswith("ram://"):
            held = _Held(directory, key)
        elif paths.is_local(directory) and _lease_ttl is None:
            try:
                held = _Flock(directory, key)
            except _LocksUnsupported as e:
                logging.warning(
                    "%s has no file locks (%s): its owner holds a lease.",
                    directory,
                    e,
                )
                held = _Lease(directory, key, LEASE_TTL_SECONDS)
        else:
            held = _Lease(
                directory,
                key,
                LEASE_TTL_SECONDS if _lease_ttl is None else _lease_ttl,
            )
        held.holder = handle
        handle._held = held
        _HELD[key] = held
    return handle
