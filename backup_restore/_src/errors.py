"""Errors raised on purpose by backup_restore."""


class BackupError(Exception):
    """Base class of the errors raised by backup_restore."""


class BackupCorruptError(BackupError, ValueError):
    """A committed backup fails its integrity checks and cannot be restored."""


class BackupMismatchError(BackupError, ValueError):
    """A backup was written by a different model, optimizer or loss, or
    by a fit() call whose data positions mean something else."""


class BackupWriteError(BackupError, RuntimeError):
    """Writing a backup failed; the previous committed backup is intact."""


class BackupDirInUseError(BackupError, RuntimeError):
    """Another training job owns backup_dir; nothing in it was changed.

    Attributes:
      owner: the owner's record (host, pid, since, command, ...), or None
        when it could not be read.
    """

    owner = None


class BackupDirUnsafeError(BackupError, ValueError):
    """backup_dir holds an entry named like one of this library's files that
    is something else (a symbolic link, a FIFO, a file with other hard
    links): it is not followed, read, written or deleted."""
