"""How a backup is committed, and the one place that decides it is complete.

A backup is a directory `backup-<seq>` inside the user's backup_dir that holds
TensorFlow checkpoint files and `manifest.json`. The manifest is the commit
marker: a backup is committed if and only if its directory is named
`backup-<seq>` and contains a manifest (whether the manifest and the files it
lists are intact is checked separately, by manifest.verify).

Writing, on a filesystem with atomic directory rename (the local disk):
  1. write everything into a temporary directory `.tmp-backup-<seq>-<nonce>`;
  2. fsync every file, write the manifest (fsync'd), fsync the directory;
  3. rename it to `backup-<seq>` (atomic), then fsync backup_dir.
A kill before 3 leaves only a temporary directory, which is never read and is
removed at the next start.

On a filesystem without atomic rename (object stores such as gs://, and TF's
in-memory ram://), the data is written directly into `backup-<seq>` and the
manifest last; a single-object write is atomic there, so the directory only
counts once the manifest exists. A directory without a manifest is an
interrupted write, removed at the next start.

Everything goes through tf.io.gfile so that remote filesystems keep working;
fsync is only possible (and only needed) on local files.
"""

import os
import re
import threading
import uuid

import tensorflow as tf

from backup_restore._src import ownership

MANIFEST = "manifest.json"
_COMMITTED_RE = re.compile(r"^backup-(\d{8,})$")
_TEMPORARY_RE = re.compile(r"^\.tmp-backup-(\d{8,})-[0-9a-f]+$")


def committed_name(seq: int) -> str:
    return f"backup-{seq:08d}"


def temporary_name(seq: int) -> str:
    return f".tmp-backup-{seq:08d}-{uuid.uuid4().hex[:12]}"


def parse_committed(name: str) -> int | None:
    """Returns the sequence number of a committed-backup name, else None."""
    m = _COMMITTED_RE.match(name.rstrip("/"))
    return int(m.group(1)) if m else None


def parse_temporary(name: str) -> int | None:
    """Returns the sequence number of a temporary-directory name, else None."""
    m = _TEMPORARY_RE.match(name.rstrip("/"))
    return int(m.group(1)) if m else None


def is_ours(name: str) -> bool:
    """True for the entries of backup_dir that this library writes."""
    return (
        parse_committed(name) is not None
        or parse_temporary(name) is not None
        or name.rstrip("/") in ownership.FILES
    )


def is_local(path: str) -> bool:
    """True for paths on the local filesystem (no scheme, or file://)."""
    path = os.fspath(path)
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def supports_atomic_rename(path: str) -> bool:
    """Whether directories under `path` can be renamed atomically.

    POSIX rename(2) is atomic on local filesystems. Object stores implement
    rename as copy + delete, and ram:// renames single files only, so the
    commit-marker protocol is used there.
    """
    return is_local(path)


def fsync_path(path: str) -> None:
    """fsyncs a local file or directory; a no-op on other filesystems.

    Remote object stores make an object durable when its writer closes.
    """
    if not is_local(path):
        return
    fd = os.open(_local(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WritebackStarter:
    """Has the kernel write a directory's files to disk while they grow.

    Files written into the page cache are only written to disk at the
    fsync that follows, so write and fsync take turns: about twice the time
    the disk needs. Every `interval` seconds this asks the kernel to start
    writing back what is dirty so far (posix_fadvise DONTNEED: asynchronous
    writeback, then the clean pages leave the cache), so the disk works
    while the files are still being written and the final fsync finds
    little left. Durability still rests on that fsync; this only overlaps.
    A no-op off the local filesystem or without posix_fadvise.
    """

    def __init__(self, directory: str, interval: float = 0.02):
        self._dir = _local(directory)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None
        if is_local(directory) and hasattr(os, "posix_fadvise"):
            self._thread = threading.Thread(
                target=self._run, name="backup_restore-writeback", daemon=True
            )
            self._thread.start()

    def _run(self):
        while not self._stop.wait(self._interval):
            self._start_writeback()

    def _start_writeback(self):
        for root, _, files in os.walk(self._dir):
            for name in files:
                try:
                    fd = os.open(os.path.join(root, name), os.O_RDONLY)
                except OSError:
                    continue  # renamed or removed meanwhile
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError:
                    pass
                finally:
                    os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """Stops the thread; the caller fsyncs afterwards."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


def write_file_durably(path: str, data: bytes) -> None:
    """Writes `data` to `path` and makes it durable.

    Locally: write to a sibling temporary file, fsync, rename over `path`, so a
    reader sees the old content or the new, never a prefix. Elsewhere a single
    object write is already all-or-nothing.
    """
    if not is_local(path):
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
        return
    local = _local(path)
    tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, local)


def commit(work_dir: str, final_dir: str, parent: str, manifest: bytes):
    """Commits a backup whose data files in `work_dir` are written and durable.

    With atomic rename, the manifest goes into the temporary `work_dir`, which
    is then renamed to `final_dir`. Without it (`work_dir == final_dir`), the
    manifest write itself is the commit.
    """
    write_file_durably(os.path.join(work_dir, MANIFEST), manifest)
    fsync_path(work_dir)
    if work_dir != final_dir:
        tf.io.gfile.rename(work_dir, final_dir, overwrite=False)
    fsync_path(parent)


def retire(backup_dir: str) -> None:
    """Deletes a committed backup so that a kill midway leaves no 'committed'.

    The manifest goes first: from then on the directory is an interrupted write
    that the next start cleans up, never a half-deleted committed backup.
    """
    manifest = os.path.join(backup_dir, MANIFEST)
    if tf.io.gfile.exists(manifest):
        tf.io.gfile.remove(manifest)
    tf.io.gfile.rmtree(backup_dir)
