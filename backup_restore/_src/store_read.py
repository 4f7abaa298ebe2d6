"""Reading backups back: loading one, and the newest intact one of a run.

A backup is loaded from its manifest (parsed once, by the catalog) and
checked by `manifest.verify` every time: the files it lists present at their
recorded sizes and a complete checkpoint, with a full verification every
tensor's checksum too. `first_intact` tries a run's committed backups newest
first and falls back past one that fails: a backup never made durable
(atomicity.was_durable) is an unfinished write, skipped with a warning; any
other is corrupt, skipped with a warning, and when none is intact the error
lists every failure. Nothing is deleted here.
"""

import os

import tensorflow as tf
from absl import logging

from backup_restore._src import atomicity
from backup_restore._src import catalog
from backup_restore._src import checkpoint_format
from backup_restore._src import errors
from backup_restore._src import manifest
from backup_restore._src import tf_checkpoint_read


def load(known: catalog.Catalog, path: str, full_verify: bool):
    """The committed backup `path`, verified (see BackupStore.load)."""
    body = known.body(path)
    manifest.verify(path, body, full=full_verify)
    seq = atomicity.parse_committed(os.path.basename(path))
    return catalog.BackupInfo(seq, path, body["metadata"], body["files"])


def read(info: catalog.BackupInfo, prepare, ahead: bool = False):
    """Reads backup `info` into the checkpoint `prepare(info)` returns;
    returns the read's status.

    In one RestoreV2 where every object is a plain variable
    (tf_checkpoint_read: every tensor read before any variable is
    assigned), else by `checkpoint.read`. Either way TensorFlow checks each
    tensor's CRC-32C as it reads it. `ahead`: that RestoreV2 begins before
    `prepare` (tf_checkpoint_read.ReadAhead), for a caller whose variables
    are plain (no distribution strategy); if `prepare` raises, the read is
    waited for and dropped.

    Raises:
      errors.BackupCorruptError: its bytes fail TensorFlow's own checks.
      Whatever `prepare` raises.
    """
    prefix = info.checkpoint_prefix
    reader = _index(info)
    pending = tf_checkpoint_read.read_ahead(prefix, reader) if ahead else None
    try:
        checkpoint = prepare(info)
        try:
            status = tf_checkpoint_read.read_single_shard(
                checkpoint, prefix, reader, pending
            )
            if status is not None:
                return status
            if pending is not None:
                pending.close()  # its tensors freed before the read below
            return checkpoint.read(prefix)
        except (tf.errors.OpError, IndexError) as e:
            # IndexError: TensorFlow's "Read less bytes than requested"
            # for a data file shorter than its index says.
            raise errors.BackupCorruptError(
                f"{info.path} fails TensorFlow's checks while being read "
                f"({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from e
    finally:
        if pending is not None:
            pending.close()


def _index(info: catalog.BackupInfo):
    """The index of backup `info`'s checkpoint, once it is known to claim no
    more than the backup's data files hold.

    Raises:
      errors.BackupCorruptError: it cannot be read, or it claims more.
    """
    try:
        reader = tf_checkpoint_read.index_reader(info.checkpoint_prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise errors.BackupCorruptError(
            f"{info.path}: its checkpoint index cannot be read "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0]})"
        ) from e
    problem = checkpoint_format.claims_problem(
        reader, {name: entry["size"] for name, entry in info.files.items()}
    )
    if problem is not None:
        raise errors.BackupCorruptError(
            f"{info.path}: {problem}; nothing was read from it"
        )
    return reader


def first_intact(known: catalog.Catalog, directory: str, candidates, attempt):
    """`attempt(path)` on `candidates` ((seq, path) of committed backups,
    oldest first), newest first, until one works; returns what it returned,
    or None when there is no candidate.

    A backup for which `attempt` raises BackupCorruptError is skipped
    (with a warning) in favour of the next older one. Nothing is deleted.

    Raises:
      errors.BackupCorruptError: committed backups exist but none is intact.
    """
    failures = []
    for _, path in reversed(candidates):
        try:
            result = attempt(path)
        except errors.BackupCorruptError as e:
            if not _was_durable(known, path):
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
            logging.warning("Falling back to the older intact backup %s.", path)
        return result
    if failures:
        raise errors.BackupCorruptError(
            f"Every backup in {directory} fails its integrity checks, so "
            "training cannot resume from it:\n  "
            + "\n  ".join(failures)
            + "\nNothing was deleted. To start training from scratch, "
            "delete or move the backup-* directories listed above; to "
            "resume, restore them from a copy."
        )
    return None


def _was_durable(known: catalog.Catalog, path: str) -> bool:
    try:
        body = known.body(path)
    except errors.BackupCorruptError:
        body = None
    return atomicity.was_durable(path, body)
