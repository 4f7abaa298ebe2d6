"""The ownership of a local backup_dir: a flock on its lock file.

`flock(LOCK_EX | LOCK_NB)` on LOCK_FILE inside backup_dir, held through an
open file descriptor: the kernel drops it when the process dies. The file
is opened without following links and holds the owner's record, which a
refused process reads to name the owner. Where flock fails for want of
locks, `LocksUnsupported` is raised and the owner holds a lease instead
(`lease.py`); `ownership.py` describes both.
"""

import contextlib
import errno
import fcntl
import json
import os
import time

from absl import logging

from backup_restore._src import errors
from backup_restore._src import owner_record
from backup_restore._src import paths
from backup_restore._src import registry

LOCK_FILE = ".backup_restore.lock"

# flock's errors on filesystems without locks (NFS mounted nolock, FUSE).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class LocksUnsupported(Exception):
    pass


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
            raise owner_record.unsafe_entry_error(path, found) from e
        raise
    found = paths.kind_of_fd(fd)
    if found != paths.FILE:
        os.close(fd)
        raise owner_record.unsafe_entry_error(path, found)
    return fd


class Flock(registry.Held):
    """A flock on LOCK_FILE, held through an open file descriptor."""

    def __init__(self, directory, key):
        super().__init__(directory, key)
        self._local = paths.local(directory)
        self._path = os.path.join(self._local, LOCK_FILE)
        self._fd, self._id, self._dir_id = self._lock()
        self.record = owner_record.now_record("flock")
        try:
            self._write_record()
        except OSError as e:  # a full disk: the lock is not kept
            if self.intact():
                os.unlink(self._path)
            os.close(self._fd)
            raise owner_record.record_write_error(
                directory, self._path, e
            ) from e

    def _lock(self):
        """Locks the file that LOCK_FILE names: (fd, its (st_dev, st_ino),
        the directory's).

        Raises:
          BackupDirInUseError: another process holds the lock.
          LocksUnsupported: the filesystem has no locks.
        """
        # The owner deletes its lock file at the end; a process that opened
        # it just before then locks a deleted file: open again.
        for _ in range(100):
            paths.make_dirs(self._local)
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
                        raise LocksUnsupported(e) from e
                    raise
                owner = owner_record.valid_part(_read_record_fd(fd))
                os.close(fd)
                raise owner_record.in_use_error(self.directory, owner) from None
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
            try:
                folder = os.stat(self._local)
            except FileNotFoundError:  # removed since: locked in vain
                os.close(fd)
                continue
            return (
                fd,
                (mine.st_dev, mine.st_ino),
                (folder.st_dev, folder.st_ino),
            )
        raise RuntimeError(f"Could not lock {self._path}: it keeps changing.")

    def _write_record(self):
        # Not synced: a refused process reads the record while its owner
        # runs (from the page cache); after a crash the flock is gone with
        # the owner, and a record cut short is read as "unknown owner".
        data = json.dumps(self.record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

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
                raise owner_record.in_use_error(
                    self.directory, *self.lost
                ) from None
            except LocksUnsupported as e:
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
