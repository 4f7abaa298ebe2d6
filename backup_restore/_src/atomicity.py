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
corrupt one. A failure in 3 retires the published backup again.

On a filesystem without atomic rename (object stores such as gs://, and TF's
in-memory ram://), the data is written directly into `backup-<seq>` and the
manifest last; a single-object write is atomic there, so the directory only
counts once the manifest exists. A directory without a manifest is an
interrupted write, removed at the next start.

Either way, nothing is committed unless `checkpoint_problem` finds the
checkpoint complete (every file TensorFlow's index implies is there, nothing
of an unfinished write is) after its files are fsync'd; readers apply the
same check to what a manifest lists.

Everything goes through tf.io.gfile so that remote filesystems keep working;
fsync is only possible (and only needed) on local files.
"""

import os
import re
import threading
import uuid

import tensorflow as tf
from tensorflow.core.protobuf import tensor_bundle_pb2

from backup_restore._src import faults
from backup_restore._src import ownership
from backup_restore._src import paths

MANIFEST = "manifest.json"
# An empty file created in a local backup once every fsync of it is done:
# the record that it was durable (an empty file cannot be torn: after a
# power loss it exists or it does not). Its manifest says one is due
# (`marks_durable`); on object stores a completed upload is durable.
DURABLE = "durable"
# The checkpoint of a backup: `ckpt.index` and `ckpt.data-K-of-N`, K < N.
CHECKPOINT_PREFIX = "ckpt"
INDEX = f"{CHECKPOINT_PREFIX}.index"
_COMMITTED_RE = re.compile(r"^backup-(\d{8,})$")
_TEMPORARY_RE = re.compile(r"^\.tmp-backup-(\d{8,})-[0-9a-f]+$")
# The file BackupStore creates and removes to check that it may write.
_PROBE_RE = re.compile(r"^\.tmp-backup-probe-[0-9a-f]+$")
_DATA_RE = re.compile(
    rf"^{re.escape(CHECKPOINT_PREFIX)}\.data-(\d{{5}})-of-(\d{{5}})$"
)


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
    )


def supports_atomic_rename(path: str) -> bool:
    """Whether directories under `path` can be renamed atomically.

    POSIX rename(2) is atomic on local filesystems. Object stores implement
    rename as copy + delete, and ram:// renames single files only, so the
    commit-marker protocol is used there.
    """
    return paths.is_local(path)


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


def publish(work_dir: str, final_dir: str, manifest: bytes) -> None:
    """Commits a backup whose data files in `work_dir` are written.

    With atomic rename, the manifest goes into the temporary `work_dir`, which
    is then renamed to `final_dir`. Without it (`work_dir == final_dir`), the
    manifest write itself is the commit. Nothing is fsync'd here: from now
    on a process kill finds the backup (the kernel keeps the page cache), a
    machine loss may not until `make_durable` returns.
    """
    write_file(os.path.join(work_dir, MANIFEST), manifest, durable=False)
    if work_dir != final_dir:
        faults.point(faults.RENAME, work_dir)
        tf.io.gfile.rename(work_dir, final_dir, overwrite=False)


def make_durable(final_dir: str, names, parent: str) -> None:
    """fsyncs a published backup: its files, manifest, itself and `parent`;
    then records that it is durable (DURABLE, locally).

    The caller retires the backup if this raises (see module docstring).
    """
    for name in [*names, MANIFEST]:
        path = os.path.join(final_dir, name)
        faults.point(faults.FSYNC, path)
        fsync_path(path)
    fsync_path(final_dir)
    fsync_path(parent, follow=True)  # backup_dir: may be a link
    if paths.is_local(final_dir):
        paths.create_file(os.path.join(final_dir, DURABLE), b"", False)
        fsync_path(final_dir)


def marks_durable(directory: str) -> bool:
    """Whether backups written into `directory` record their durability."""
    return paths.is_local(directory)


def was_durable(backup_dir: str, body: dict | None) -> bool:
    """Whether a committed backup is known to have been made durable.

    `body` is its manifest's body, None when that is unreadable. A backup
    whose manifest does not ask for the record (an object store's, or one
    written before the record existed) counts as durable.
    """
    if paths.kind(os.path.join(backup_dir, DURABLE)) == paths.FILE:
        return True
    return body is not None and not body.get("marks_durable", False)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def _index_num_shards(index_path: str) -> int | None:
    """The number of data shards TensorFlow's index declares, if readable.

    The index is a table whose first entry (key "") is a BundleHeaderProto,
    stored uncompressed at the file's start: reading 64 bytes is enough.
    None when that entry is not where expected (then the file names decide).
    """
    with tf.io.gfile.GFile(index_path, "rb") as f:
        head = f.read(64)
    try:
        shared, pos = _varint(head, 0)
        key_length, pos = _varint(head, pos)
        length, pos = _varint(head, pos)
        if shared or key_length or pos + length > len(head):
            return None
        header = tensor_bundle_pb2.BundleHeaderProto.FromString(
            head[pos : pos + length]
        )
    except Exception:  # not a header we know: no opinion
        return None
    return header.num_shards or None


def checkpoint_problem(
    directory: str, names, read_index: bool = False, sizes=None
) -> str | None:
    """The one place that decides whether a backup's checkpoint is complete.

    A complete checkpoint is exactly `ckpt.index` plus every data shard
    `ckpt.data-K-of-N` (K < N) it implies, and nothing else (besides the
    manifest): no leftover of an unfinished TensorFlow write (`ckpt_temp/`,
    `*.tempstate*`), no directory, no other file.

    Args:
      directory: the backup (or work) directory.
      names: the entries of it to judge (a listing, or a manifest's files).
      read_index: also check the index itself: open it with TensorFlow's
        checkpoint reader (it parses the small index only, no tensor bytes;
        about 1 ms for 2,000 variables) and take N from its header.
      sizes: name -> bytes, if known (a manifest's record): an empty index,
        or data files that are all empty, cannot be a checkpoint.

    Returns:
      None if complete, else what is wrong, for an error message.
    """
    names = sorted({n.rstrip("/") for n in names} - {MANIFEST})
    shards, foreign = {}, []
    for name in names:
        m = _DATA_RE.match(name)
        if m:
            shards[name] = (int(m.group(1)), int(m.group(2)))
        elif name != INDEX:
            foreign.append(name)
    if foreign:
        return (
            f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} "
            "not part of a complete checkpoint (left by an unfinished "
            "TensorFlow write)"
        )
    if INDEX not in names:
        return f"{INDEX} is missing"
    if sizes is not None:
        if not sizes.get(INDEX):
            return f"{INDEX} is empty"
        if shards and not any(sizes.get(name) for name in shards):
            return "its data files are empty"
    declared = {n for _, n in shards.values()}
    if read_index:
        prefix = os.path.join(directory, CHECKPOINT_PREFIX)
        try:
            # Not tf.train.load_checkpoint: on ram:// it takes the prefix for
            # a directory. Data shards are opened lazily, not here.
            tf.compat.v1.train.NewCheckpointReader(prefix)
            num_shards = _index_num_shards(os.path.join(directory, INDEX))
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e) else ""
            return f"{INDEX} is not readable ({type(e).__name__}: {first})"
        if num_shards is not None:
            declared.add(num_shards)
    if not declared:
        return f"no data file ({CHECKPOINT_PREFIX}.data-*) exists"
    if len(declared) > 1:
        return (
            "its data files and index disagree on the number of shards "
            f"({sorted(declared)})"
        )
    (num_shards,) = declared
    want = {
        f"{CHECKPOINT_PREFIX}.data-{k:05d}-of-{num_shards:05d}"
        for k in range(num_shards)
    }
    missing = sorted(want - set(shards))
    if missing:
        return f"data file(s) {', '.join(missing)} missing"
    extra = sorted(set(shards) - want)
    if extra:
        return f"{', '.join(extra)} not part of a {num_shards}-shard checkpoint"
    return None


def retire(backup_dir: str) -> None:
    """Deletes a committed backup so that a kill midway leaves no 'committed'.

    The manifest goes first: from then on the directory is an interrupted write
    that the next start cleans up, never a half-deleted committed backup.
    """
    manifest = os.path.join(backup_dir, MANIFEST)
    if not paths.is_local(backup_dir):
        if tf.io.gfile.exists(manifest):
            tf.io.gfile.remove(manifest)
        tf.io.gfile.rmtree(backup_dir)
        return
    # Never through a link: `backup_dir` itself must be a real directory.
    paths.check_kind(backup_dir, paths.DIRECTORY)
    if paths.kind(manifest) is not None:
        os.unlink(paths.local(manifest))  # a link inside goes, not its target
    paths.remove_tree(backup_dir)
