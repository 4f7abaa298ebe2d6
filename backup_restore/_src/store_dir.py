"""backup_dir itself: a user's path checked, created durably, probed, removed.

What `BackupStore` does with the path it is given before it keeps anything
there: `validate_directory` turns it into an absolute str, refuses what can
never hold backups (nothing, a regular file) and, for a local directory,
creates it if missing (each new level fsync'd into its parent) and checks
for real that a file can be created in it. `remove_if_empty` takes it away
again when training completes.
"""

import contextlib
import os

import tensorflow as tf

from backup_restore._src import atomicity
from backup_restore._src import paths


def validate_directory(directory, writable: bool = True) -> str:
    """Checks a user-supplied backup directory; returns it as a str.

    A local directory is created if missing and checked for real: a file is
    created in it and removed again (named like this store's own entries,
    so that a crash midway leaves nothing foreign: the next cleanup removes
    it). Permission bits alone say nothing for root, nor for read-only or
    special filesystems (/proc).

    Raises:
      TypeError: not a str or os.PathLike.
      ValueError: empty, an existing regular file, or (locally) a directory
        that cannot be created or written to.
    """
    if directory is None:
        raise ValueError(
            "Empty `backup_dir` argument passed: backup_dir is None. Pass the "
            "directory where backups are kept, e.g. "
            "BackupAndRestore(backup_dir='/tmp/my_job_backup')."
        )
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(
            f"backup_dir must be a str or os.PathLike, got "
            f"{type(directory).__name__}: {directory!r}."
        )
    directory = os.fspath(directory)
    if isinstance(directory, bytes):
        raise TypeError("backup_dir must be a text path, not bytes.")
    if not directory.strip():
        raise ValueError(
            f"Empty `backup_dir` argument passed: {directory!r}. Pass the "
            "directory where backups are kept, e.g. "
            "BackupAndRestore(backup_dir='/tmp/my_job_backup')."
        )
    directory = paths.absolute(directory)
    if tf.io.gfile.exists(directory) and not tf.io.gfile.isdir(directory):
        raise ValueError(
            f"backup_dir {directory!r} is an existing file, not a directory. "
            "Pass a directory path (it is created if missing)."
        )
    if writable and paths.is_local(directory):
        _check_writable(directory)
    return directory


def _make_dirs_durably(local: str) -> None:
    """`os.makedirs(local)`, each directory it creates fsync'd into its
    parent: a power loss must not take the directory (and the backups
    committed in it) away."""
    missing = []
    path = local
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    os.makedirs(local, exist_ok=True)
    for created in missing:
        paths.fsync(os.path.dirname(created), follow=True)


def _check_writable(directory: str) -> None:
    """Creates `directory` if missing, and a probe file in it, removed again.

    The directory stays: removing it again would race with another process
    (a worker of the same job) probing it at the same moment.
    """
    local = paths.local(directory)
    probe = os.path.join(local, atomicity.probe_name())
    try:
        _make_dirs_durably(local)
        paths.create_file(probe, b"", durable=False)
        try:
            os.remove(probe)
        except FileNotFoundError:
            pass  # the owner's cleanup of leftovers was quicker: it worked
    except OSError as e:
        raise ValueError(
            f"backup_dir {directory!r} is not writable: "
            f"{e.strerror or e} ({e.filename or local}). Choose a directory "
            "this process can create files in, or fix its permissions."
        ) from e


def remove_if_empty(directory: str) -> None:
    """Removes `directory` if it exists and is empty; else leaves it."""
    if paths.is_local(directory):
        with contextlib.suppress(OSError):  # not empty: left as it is
            os.rmdir(paths.local(directory))
    elif tf.io.gfile.isdir(directory) and not tf.io.gfile.listdir(directory):
        tf.io.gfile.rmtree(directory)
