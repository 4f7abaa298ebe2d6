"""How a backup is committed, and the one place that decides it is complete.

A backup is a directory `backup-<seq>` inside the user's backup_dir that holds
TensorFlow checkpoint files and `manifest.json`. The manifest is the commit
marker: a backup is committed if and only if its directory is named
`backup-<seq>` and contains a manifest (whether the manifest and the files it
lists are intact is checked separately, by manifest.verify).

Writing, on a filesystem with atomic directory rename (the local disk):
  1. write everything into a temporary directory `.tmp-backup-<seq>-<nonce>`;
  2. write the manifest into it, then rename it to `backup-<seq>` (atomic):
     it is published ("kill-safe": a killed process leaves the page cache
     to the kernel, so a restart finds it complete);
  3. fsync every file, the manifest, the directory and backup_dir: durable
     ("machine-safe"); an empty file DURABLE then records it. Only then are
     older backups deleted.
A kill before 2's rename leaves only a temporary directory, which is never
read and is removed at the next start. A machine loss before 3 may leave a
published backup with missing or torn bytes: its manifest, sizes or
TensorFlow's per-tensor checksums then fail, and a restore falls back to the
previous backup, which is still there (it is deleted after 3). Such a
backup has no DURABLE record: it is an unfinished write, skipped, not a
corrupt one. A failure in 3 retires the published backup again. A
deletion renames the backup to a temporary name before removing it, so a
`backup-<seq>` without a manifest is either a published backup a machine
loss tore before 3 (no DURABLE record: removed at the next start, with a
warning) or damage (a DURABLE record: a corrupt committed backup, kept and
reported like any other).

On a filesystem without atomic rename (object stores such as gs://, and TF's
in-memory ram://), the data is written directly into `backup-<seq>` and the
manifest last; a single-object write is atomic there, so the directory only
counts once the manifest exists. A directory without a manifest is an
interrupted write, removed at the next start.

The two are the two `CommitStrategy`s, AtomicRename and CommitMarker, chosen
once per backup_dir (`for_directory`) by the store, as Orbax chooses its
atomicity per path.

Either way, nothing is committed unless checkpoint_format.checkpoint_problem
finds the checkpoint complete (every file TensorFlow's index implies is there,
nothing of an unfinished write is) after its files are fsync'd; readers apply
the same check to what a manifest lists.

Everything goes through tf.io.gfile so that remote filesystems keep working;
fsync is only possible (and only needed) on local files.
"""

import os
import re
import threading
import uuid

import tensorflow as tf

from backup_restore._src import checkpoint_format
from backup_restore._src import faults
from backup_restore._src import ownership
from backup_restore._src import paths

MANIFEST = "manifest.json"
# An empty file created in a local backup once every fsync of it is done:
# the record that it was durable (an empty file cannot be torn: after a
# power loss it exists or it does not). Its manifest says one is due
# (`marks_durable`); on object stores a completed upload is durable.
DURABLE = "durable"
# The checkpoint of a backup (checkpoint_format.py).
CHECKPOINT_PREFIX = checkpoint_format.CHECKPOINT_PREFIX
_COMMITTED_RE = re.compile(r"^backup-(\d{8,})$")
_TEMPORARY_RE = re.compile(r"^\.tmp-backup-(\d{8,})-[0-9a-f]+$")
# The file BackupStore creates and removes to check that it may write.
_PROBE_RE = re.compile(r"^\.tmp-backup-probe-[0-9a-f]+$")
# The empty file that says a run of the job created backup_dir (so the end
# of training may remove it), written into a local backup_dir it creates.
CREATED = ".backup_restore.created"


def committed_name(seq: int) -> str:
    return f"backup-{seq:08d}"


def temporary_name(seq: int) -> str:
    return f".tmp-backup-{seq:08d}-{uuid.uuid4().hex[:12]}"


def probe_name() -> str:
    return f".tmp-backup-probe-{uuid.uuid4().hex[:12]}"


def is_probe(name: str) -> bool:
    return _PROBE_RE.match(name.rstrip("/")) is not None


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
        or is_probe(name)
        or name.rstrip("/") in ownership.FILES
        or name.rstrip("/") == CREATED
    )


def fsync_path(path: str, follow: bool = False) -> None:
    """fsyncs a local file or directory; a no-op on other filesystems.

    Remote object stores make an object durable when its writer closes.
    The name is not followed unless `follow` (see paths.fsync).
    """
    paths.fsync(path, follow)


# How often WritebackStarter asks the kernel to write back what is dirty.
# Not a measurement: at the 1-2 GB/s TensorFlow writes a checkpoint on the
# benchmark's machine (docs/benchmark.md), 20 ms leaves at most 20-40 MB
# dirty for the final fsync, and 50 scans of the directory per second cost
# nothing measurable there (store_test's WritebackStarterTest checks the
# mechanism).
WRITEBACK_POLL_SECONDS = 0.02


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

    def __init__(
        self, directory: str, interval: float = WRITEBACK_POLL_SECONDS
    ):
        self._dir = paths.local(directory)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None
        if paths.is_local(directory) and hasattr(os, "posix_fadvise"):
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
                    fd = os.open(
                        os.path.join(root, name),
                        os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                    )
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


def write_file(path: str, data: bytes, durable: bool = True) -> None:
    """Writes `data` to `path`, all or nothing; fsync'd if `durable`.

    Locally: write to a sibling temporary file (fsync'd if `durable`),
    rename over `path`, so a reader sees the old content or the new, never a
    prefix. Elsewhere a single object write is already all-or-nothing and
    durable when closed.
    """
    if not paths.is_local(path):
        with tf.io.gfile.GFile(path, "wb") as f:
            faults.point(faults.MANIFEST_WRITE, path)
            f.write(data)
        return
    local = paths.local(path)
    tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        paths.create_file(
            tmp,
            data,
            durable,
            written=lambda: faults.point(faults.MANIFEST_WRITE, path),
        )
        os.replace(tmp, local)
    except BaseException:
        # A full disk fails the write, and must not keep what it wrote.
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write_file_durably(path: str, data: bytes) -> None:
    """`write_file(path, data)`, fsync'd."""
    write_file(path, data, durable=True)


def was_durable(backup_dir: str, body: dict | None) -> bool:
    """Whether a committed backup is known to have been made durable.

    `body` is its manifest's body, None when that is unreadable. A backup
    whose manifest does not ask for the record (an object store's, or one
    written before the record existed) counts as durable.
    """
    if paths.kind(os.path.join(backup_dir, DURABLE)) == paths.FILE:
        return True
    return body is not None and not body.get("marks_durable", False)


class CommitStrategy:
    """How a written backup becomes committed in one backup_dir, and how a
    committed one is deleted; chosen once per backup_dir (`for_directory`).

    The backup's data files are written into `work_dir(...)`; `publish`
    commits them with the manifest; `make_durable` makes the published
    backup durable. `discard` removes what a failed write left in its work
    directory, `retire` deletes a committed backup.
    """

    # Whether a backup records its durability (DURABLE) once made durable.
    marks_durable = False

    def work_dir(self, directory: str, seq: int) -> str:
        raise NotImplementedError

    def prepare(self, directory: str, work: str) -> None:
        """Makes `work` ready to receive the data files."""
        raise NotImplementedError

    def publish(self, work: str, final: str, manifest: bytes) -> None:
        """Commits a backup whose data files in `work` are written. Nothing
        is fsync'd here: from now on a process kill finds the backup (the
        kernel keeps the page cache), a machine loss may not until
        `make_durable` returns."""
        raise NotImplementedError

    def make_durable(self, final: str, names, parent: str) -> None:
        """Makes the published backup `final` durable (the caller retires
        it if this raises): fsyncs its files, manifest, itself and `parent`
        (no-ops where a completed upload is durable)."""
        for name in [*names, MANIFEST]:
            path = os.path.join(final, name)
            faults.point(faults.FSYNC, path)
            fsync_path(path)
        fsync_path(final)
        fsync_path(parent, follow=True)  # backup_dir: may be a link

    def discard(self, work: str) -> None:
        """Removes the work directory of a write that failed."""
        raise NotImplementedError

    def retire(self, path: str) -> None:
        """Deletes a committed backup so that a kill midway leaves no
        'committed' one: its commit goes first (the manifest, or the
        committed name), from then on what is left is an interrupted write
        that the next start cleans up, never a half-deleted committed
        backup."""
        raise NotImplementedError


class AtomicRename(CommitStrategy):
    """A local POSIX filesystem: written into `.tmp-backup-<seq>-<nonce>`,
    committed by renaming it to `backup-<seq>` (rename(2) is atomic), made
    durable by fsync and the DURABLE record."""

    marks_durable = True

    def work_dir(self, directory: str, seq: int) -> str:
        return os.path.join(directory, temporary_name(seq))

    def prepare(self, directory: str, work: str) -> None:
        # A new directory of our own (never one that exists: a planted
        # link), so TensorFlow writes nowhere else.
        paths.make_dirs(paths.local(directory))
        paths.make_dir(work)

    def publish(self, work: str, final: str, manifest: bytes) -> None:
        write_file(os.path.join(work, MANIFEST), manifest, durable=False)
        faults.point(faults.RENAME, work)
        tf.io.gfile.rename(work, final, overwrite=False)

    def make_durable(self, final: str, names, parent: str) -> None:
        super().make_durable(final, names, parent)
        paths.create_file(os.path.join(final, DURABLE), b"", False)
        fsync_path(final)

    def discard(self, work: str) -> None:
        paths.remove_tree(work)  # never named: nothing was committed

    def retire(self, path: str) -> None:
        # Never through a link: `path` itself must be a real directory.
        paths.check_kind(path, paths.DIRECTORY)
        # Out of the committed names first, whole (rename(2) is atomic): a
        # kill midway leaves a temporary directory, which the next start
        # removes. A `backup-<seq>` here never loses its manifest to a
        # deletion of ours, so one without it that records being durable
        # was damaged (catalog.py).
        seq = parse_committed(os.path.basename(path))
        doomed = os.path.join(os.path.dirname(path), temporary_name(seq))
        os.rename(paths.local(path), paths.local(doomed))
        paths.remove_tree(doomed)


class CommitMarker(CommitStrategy):
    """An object store (gs://, s3://) or ram://, where a directory cannot be
    renamed atomically (an object store copies and deletes each object;
    ram:// renames single files only) but one object's write is: the data is
    written straight into `backup-<seq>` and the manifest, written last, is
    the commit. A completed upload is durable."""

    def __init__(self, make_dirs: bool):
        # Whether directories are made before files are written into them:
        # not on an object store, where a "directory" is a prefix of object
        # names (TensorFlow's checkpoint writer makes the marker object it
        # wants); ram:// and other filesystems have directory entries.
        self._make_dirs = make_dirs

    def work_dir(self, directory: str, seq: int) -> str:
        return os.path.join(directory, committed_name(seq))

    def prepare(self, directory: str, work: str) -> None:
        del directory
        if self._make_dirs:
            paths.make_dir(work)

    def publish(self, work: str, final: str, manifest: bytes) -> None:
        del final  # the same directory
        write_file(os.path.join(work, MANIFEST), manifest, durable=False)

    def discard(self, work: str) -> None:
        # Named like a committed backup: its manifest may be written.
        self.retire(work)

    def retire(self, path: str) -> None:
        try:
            tf.io.gfile.remove(os.path.join(path, MANIFEST))
        except tf.errors.NotFoundError:
            pass
        tf.io.gfile.rmtree(path)


def for_directory(directory: str) -> CommitStrategy:
    """The commit strategy of backup_dir `directory`: AtomicRename on the
    local filesystem, CommitMarker elsewhere."""
    if paths.is_local(directory):
        return AtomicRename()
    return CommitMarker(make_dirs=not paths.is_object_store(directory))
