"""backup_dir itself: a user's path checked, created durably, probed, removed.

What `BackupStore` does with the path it is given before it keeps anything
there: `prepare_directory` turns it into an absolute str, refuses what can
never hold backups (nothing, a regular file), records which levels of the
path do not exist yet and, for a local directory, creates them (each new
level fsync'd into its parent), records in a local backup_dir it created
that a run of the job made it (atomicity.CREATED, for the run that resumes
the job after a kill), and checks for real that a file can be created in
it. `remove_created` takes away again, when training completes, only those
levels, each only if it is empty: a directory that existed before is never
removed.
"""

import contextlib
import errno
import os

import tensorflow as tf

from backup_restore._src import atomicity
from backup_restore._src import paths


def prepare_directory(
    directory, writable: bool = True
) -> tuple[str, tuple[str, ...]]:
    """Checks a user-supplied backup directory; returns it as a str, and
    the levels of it that did not exist before this call, deepest first
    (`backup_dir` itself first; empty when it existed).

    Those levels are found before anything creates them: `remove_created`
    takes away only them. With `writable`, a local directory is then
    created if missing and checked for real: a file is
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
    if paths.is_local(directory):
        is_file = tf.io.gfile.exists(directory) and not tf.io.gfile.isdir(
            directory
        )
    else:
        found = paths.kind(directory)  # one look on an object store
        is_file = found == paths.FILE
    if is_file:
        raise ValueError(
            f"backup_dir {directory!r} is an existing file, not a directory. "
            "Pass a directory path (it is created if missing)."
        )
    if paths.is_local(directory):
        missing = _missing_local(paths.local(directory))
    else:
        # On an object store (gs://) or ram://, only `directory` itself:
        # its parents are prefixes that exist while something is below them.
        missing = () if found else (directory,)
    if writable and paths.is_local(directory):
        _check_writable(directory)
        if missing:
            record_created(directory)
    return directory, missing


def record_created(directory: str) -> None:
    """Creates atomicity.CREATED in the local backup_dir a run of the job
    made, at best: without it (not synced and lost with a power loss, or
    not created: the disk full) the directory is only left in place at the
    end. One there already (a worker of the job made the directory at the
    same moment), or anything else of that name, is left as it is."""
    if not paths.is_local(directory):
        return
    with contextlib.suppress(OSError):
        paths.create_file(
            os.path.join(paths.local(directory), atomicity.CREATED),
            b"",
            durable=False,
        )


def _missing_local(path: str) -> tuple[str, ...]:
    """The levels of the local `path` that do not exist, deepest first."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return tuple(missing)


def _make_dirs_durably(local: str) -> None:
    """`os.makedirs(local)`, each directory it creates fsync'd into its
    parent: a power loss must not take the directory (and the backups
    committed in it) away."""
    missing = _missing_local(local)
    paths.make_dirs(local)
    for created in missing:
        paths.fsync(os.path.dirname(created), follow=True)


def _broken_link(local: str):
    """(level, looped) for the deepest level of `local` (itself or a
    parent) that is a symbolic link leading nowhere: to a path that does
    not exist (looped False) or round a loop of links (looped True); None
    when there is none."""
    level = local
    while True:
        if os.path.islink(level):
            try:
                os.stat(level)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP):
                    return level, e.errno == errno.ELOOP
        parent = os.path.dirname(level)
        if parent == level:
            return None
        level = parent


def _check_writable(directory: str) -> None:
    """Creates `directory` if missing, and a probe file in it, removed again.

    The directory stays: removing it again would race with another process
    (a worker of the same job) probing it at the same moment.
    """
    local = paths.local(directory)
    broken = _broken_link(local)
    if broken is not None:
        level, looped = broken
        what = (
            "a symbolic link in a loop of symbolic links"
            if looped
            else f"a symbolic link to {os.readlink(level)!r}, which does "
            "not exist"
        )
        where = "is" if level == local else f"is under {level!r},"
        fix = (
            "Replace the link with a directory"
            if looped
            else "Create the directory it points to"
        )
        raise ValueError(
            f"backup_dir {directory!r} {where} {what}. {fix}, or give this "
            "job another backup_dir."
        )
    probe = os.path.join(local, atomicity.probe_name())
    try:
        # Made again if removed since: by its owner, ending (it removes
        # the empty directories it created).
        paths.in_made_dirs(
            lambda: _make_dirs_durably(local),
            lambda: paths.create_file(probe, b"", durable=False),
        )
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


def remove_created(levels) -> None:
    """Removes the directories `levels` (deepest first, as
    `prepare_directory` returns them) while each is empty; stops at the
    first that is not (it, and every level above it, is left as it is).
    One already gone counts as removed."""
    for level, directory in enumerate(levels):
        if paths.is_local(directory):
            if level == 0:  # backup_dir itself: the only one with a record
                _remove_created_record(paths.local(directory))
            try:
                os.rmdir(paths.local(directory))
            except FileNotFoundError:
                continue
            except OSError:  # not empty (or not ours to remove any more)
                return
        elif not tf.io.gfile.isdir(directory):
            continue
        elif not tf.io.gfile.listdir(directory):
            tf.io.gfile.rmtree(directory)
        else:
            return


def removable(directory: str, missing, listing, keep_directory: bool):
    """The directories the end of training may remove (each only if empty
    then), decided from what was there before the store created anything.

    Those the store created (`missing`); else `directory` when an earlier
    run of the job, killed, created it, so that a resumed job leaves what
    an uninterrupted one leaves: locally its atomicity.CREATED file says so
    (`listing.created`); on an object store, where a directory is a prefix
    that exists while something is below it, when it holds nothing but
    this library's entries. Any other directory that existed (the user's,
    empty or not) is never removed, nor any with `keep_directory`.
    """
    if keep_directory:
        return ()
    if missing:
        return missing
    if paths.is_local(directory):
        return (directory,) if listing.created else ()
    left_by_a_run = (
        (
            listing.named
            or listing.temporaries
            or listing.probes
            or listing.owner_files
        )
        and not listing.others
        and not listing.foreign
    )
    return (directory,) if left_by_a_run else ()


def _remove_created_record(local: str) -> None:
    """Removes atomicity.CREATED from `local` when it is the only entry
    there and a regular file, so that `local` can go: while anything else
    is there (the backups of the job's next fit() call, say) the record
    stays, for the run that empties the directory."""
    try:
        if os.listdir(local) != [atomicity.CREATED]:
            return
    except OSError:
        return  # gone, or not a directory any more
    record = os.path.join(local, atomicity.CREATED)
    if paths.kind(record) == paths.FILE:
        with contextlib.suppress(FileNotFoundError):
            os.remove(record)
