"""The backup engine: writes, finds, verifies, restores and deletes backups.

Knows nothing of Keras: it saves any `tf.train.Checkpoint` plus a JSON
metadata dict. The Keras callback and the custom-loop API are thin layers over
it. The commit protocol lives in atomicity.py, the integrity format in
manifest.py.

Concurrency contract: one writer per backup directory (in multi-worker
training, the chief). Methods are not thread-safe; callers serialise them.
Readers never see a partial backup (see atomicity.py).
"""

import dataclasses
import os
import time

import tensorflow as tf
from absl import logging

from backup_restore._src import atomicity
from backup_restore._src import errors
from backup_restore._src import faults
from backup_restore._src import manifest

CHECKPOINT_PREFIX = "ckpt"


@dataclasses.dataclass(frozen=True)
class BackupInfo:
    """A committed backup.

    Attributes:
      seq: its sequence number (higher is newer).
      path: its directory.
      metadata: the JSON metadata it was written with.
      files: name -> {"size", "crc32"} for every file in it.
    """

    seq: int
    path: str
    metadata: dict
    files: dict

    @property
    def size_bytes(self) -> int:
        return sum(entry["size"] for entry in self.files.values())

    @property
    def checkpoint_prefix(self) -> str:
        return os.path.join(self.path, CHECKPOINT_PREFIX)


def validate_directory(directory) -> str:
    """Checks a user-supplied backup directory; returns it as a str.

    Raises:
      TypeError: not a str or os.PathLike.
      ValueError: empty, an existing regular file, or (locally) not writable.
    """
    if directory is None:
        raise ValueError(
            "backup_dir is None. Pass the directory where backups are kept, "
            "e.g. BackupAndRestore(backup_dir='/tmp/my_job_backup')."
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
            "backup_dir is empty. Pass the directory where backups are kept."
        )
    if tf.io.gfile.exists(directory) and not tf.io.gfile.isdir(directory):
        raise ValueError(
            f"backup_dir {directory!r} is an existing file, not a directory. "
            "Pass a directory path (it is created if missing)."
        )
    if atomicity.is_local(directory):
        local = directory.removeprefix("file://")
        probe = os.path.abspath(local)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(
                f"backup_dir {directory!r} is not writable "
                f"({probe!r} does not allow creating files). Choose a "
                "directory this process can write to, or fix its permissions."
            )
    return directory


class BackupStore:
    """The committed backups kept in one directory.

    Only entries named `backup-<seq>` and `.tmp-backup-<seq>-<nonce>` belong
    to this store; anything else in the directory is left alone.
    """

    def __init__(self, directory):
        self._dir = validate_directory(directory)
        # Decided once: removing the directory at the end is only right when
        # it held nothing but ours to begin with.
        self._dir_was_ours = not tf.io.gfile.exists(self._dir) or all(
            atomicity.is_ours(name) for name in tf.io.gfile.listdir(self._dir)
        )

    @property
    def directory(self) -> str:
        return self._dir

    def _entries(self) -> tuple[list[tuple[int, str]], list[str]]:
        """Returns ((seq, path) of backup-* dirs ascending, temporaries)."""
        if not tf.io.gfile.isdir(self._dir):
            return [], []
        named, temporaries = [], []
        for entry in tf.io.gfile.listdir(self._dir):
            name = entry.rstrip("/")
            path = os.path.join(self._dir, name)
            seq = atomicity.parse_committed(name)
            if seq is not None:
                named.append((seq, path))
            elif atomicity.parse_temporary(name) is not None:
                temporaries.append(path)
        return sorted(named), temporaries

    def _has_manifest(self, path: str) -> bool:
        return tf.io.gfile.exists(os.path.join(path, atomicity.MANIFEST))

    def committed(self) -> list[tuple[int, str]]:
        """(seq, path) of every committed backup, oldest first (unverified)."""
        named, _ = self._entries()
        return [(s, p) for s, p in named if self._has_manifest(p)]

    def leftovers(self) -> list[str]:
        """Directories left by interrupted writes or deletions."""
        named, temporaries = self._entries()
        return temporaries + [p for _, p in named if not self._has_manifest(p)]

    def cleanup(self) -> list[str]:
        """Removes what interrupted writes left behind; returns the paths."""
        removed = self.leftovers()
        for path in removed:
            logging.info("Removing an interrupted backup write: %s", path)
            tf.io.gfile.rmtree(path)
        return removed

    def load(self, path: str, full_verify: bool = True) -> BackupInfo:
        """Reads and verifies one committed backup.

        Raises:
          errors.BackupCorruptError: when it fails any integrity check.
        """
        body = manifest.read(path)
        manifest.verify(path, body, full=full_verify)
        seq = atomicity.parse_committed(os.path.basename(path))
        return BackupInfo(seq, path, body["metadata"], body["files"])

    def latest(self, full_verify: bool = True) -> BackupInfo | None:
        """The newest committed backup that passes verification, or None.

        A corrupt newer backup is skipped (with a warning) in favour of an
        older intact one. Nothing is deleted here.

        Raises:
          errors.BackupCorruptError: committed backups exist but none is intact.
        """
        failures = []
        for _, path in reversed(self.committed()):
            try:
                info = self.load(path, full_verify=full_verify)
            except errors.BackupCorruptError as e:
                logging.warning("Skipping corrupt backup %s: %s", path, e)
                failures.append(str(e))
                continue
            if failures:
                logging.warning(
                    "Falling back to the older intact backup %s.", path
                )
            return info
        if failures:
            raise errors.BackupCorruptError(
                f"Every backup in {self._dir} fails its integrity checks, so "
                "training cannot resume from it:\n  "
                + "\n  ".join(failures)
                + "\nNothing was deleted. To start training from scratch, "
                "delete or move the backup-* directories listed above; to "
                "resume, restore them from a copy."
            )
        return None

    def write(self, checkpoint: tf.train.Checkpoint, metadata: dict):
        """Writes `checkpoint` and `metadata` as a new committed backup.

        Older backups are deleted only after the new one is committed.

        Returns:
          The committed BackupInfo.

        Raises:
          errors.BackupWriteError: writing failed; earlier backups are intact.
        """
        start = time.monotonic()
        named, temporaries = self._entries()
        seqs = [s for s, _ in named] + [
            atomicity.parse_temporary(os.path.basename(p)) for p in temporaries
        ]
        seq = max(seqs, default=0) + 1
        final = os.path.join(self._dir, atomicity.committed_name(seq))
        if atomicity.supports_atomic_rename(self._dir):
            work = os.path.join(self._dir, atomicity.temporary_name(seq))
        else:
            work = final
        try:
            tf.io.gfile.makedirs(work)
            faults.point(faults.BEFORE_DATA, work)
            checkpoint.write(os.path.join(work, CHECKPOINT_PREFIX))
            faults.point(faults.DATA_WRITTEN, work)
            names = [n.rstrip("/") for n in tf.io.gfile.listdir(work)]
            for name in names:
                atomicity.fsync_path(os.path.join(work, name))
            body = manifest.build(work, names, metadata)
            faults.point(faults.BEFORE_COMMIT, work)
            atomicity.commit(work, final, self._dir, body)
        except (tf.errors.OpError, OSError) as e:
            raise errors.BackupWriteError(
                f"Writing backup {final} failed ({type(e).__name__}: {e}). "
                "The previous backup, if any, is intact."
            ) from e
        faults.point(faults.COMMITTED, final)
        info = self.load(final, full_verify=False)
        self.delete_older_than(seq)
        logging.info(
            "Backup %s written: %d bytes in %.3f s.",
            final,
            info.size_bytes,
            time.monotonic() - start,
        )
        return info

    def restore(self, checkpoint: tf.train.Checkpoint, info: BackupInfo):
        """Reads `info`'s tensors into `checkpoint`; returns the load status."""
        return checkpoint.read(info.checkpoint_prefix)

    def delete_older_than(self, seq: int) -> None:
        """Deletes every committed backup older than `seq`."""
        for s, path in self._entries()[0]:
            if s < seq:
                atomicity.retire(path)

    def delete_all(self) -> None:
        """Deletes every backup and leftover of this store, nothing else.

        The directory itself is removed only when it is then empty and held
        nothing but this store's entries when the store was created.
        """
        named, temporaries = self._entries()
        for _, path in named:
            atomicity.retire(path)
        for path in temporaries:
            tf.io.gfile.rmtree(path)
        if (
            self._dir_was_ours
            and tf.io.gfile.isdir(self._dir)
            and not tf.io.gfile.listdir(self._dir)
        ):
            tf.io.gfile.rmtree(self._dir)
