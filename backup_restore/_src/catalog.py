"""The catalog: what a BackupStore knows of the entries of its backup_dir.

One listing of backup_dir sorts its entries by name and by what they are
(`list_entries`). The catalog keeps that listing and, per backup, what was
learned of it once: whether it holds a manifest (is committed) and its
manifest as `manifest.read` parsed it (the body, or the error it raised).
Restoring, the scope filter, the log of other runs' backups and the deletion
of older backups all read from it: at the start of a run backup_dir is
listed once and each manifest is opened at most once. Whether the bytes of a
checkpoint are intact (`manifest.verify`) is never kept: checked each time.

How it stays true to the directory:

- the store's own writes and deletions update it (`added`, `removed`): the
  store owns backup_dir (one job per directory, ownership.py), and a new
  backup's scope is known without reading its manifest;
- a change made by another catalog of this process on the same directory
  (a fit() called again while the last one's backup was in flight) makes it
  list the directory again at its next use;
- `refresh` forgets it, for the next use to list again: the engine calls it
  when a run starts, since another run or job may have changed the directory
  meanwhile; `list_now` lists again at once (what must see every leftover: the
  store's cleanup, its deletion of everything).

The highest sequence number seen or used outlives all of these, so a new
backup never takes the number of an earlier one, a failed write's included.

Thread safety: the store's background writer updates the catalog while the
store's caller may read it; a lock serialises them.
"""

import dataclasses
import os
import threading

import tensorflow as tf
from absl import logging

from backup_restore._src import atomicity
from backup_restore._src import errors
from backup_restore._src import manifest
from backup_restore._src import paths


@dataclasses.dataclass(frozen=True)
class BackupInfo:
    """A committed backup.

    Attributes:
      seq: its sequence number (higher is newer).
      path: its directory.
      metadata: the JSON metadata it was written with.
      files: name -> {"size": bytes} for every file in it.
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
        return os.path.join(self.path, atomicity.CHECKPOINT_PREFIX)


@dataclasses.dataclass
class Listing:
    """backup_dir's entries of this store's format (see list_entries)."""

    named: list = dataclasses.field(default_factory=list)  # (seq, path)
    temporaries: list = dataclasses.field(default_factory=list)
    probes: list = dataclasses.field(default_factory=list)
    foreign: list = dataclasses.field(default_factory=list)  # (path, kind)
    others: int = 0  # entries not named like ours (the owner's file apart)
    owner_files: int = 0  # the owner's lock or lease file (ownership.py)
    # atomicity.CREATED, a regular file: a run of the job created backup_dir.
    created: bool = False

    def max_seq(self) -> int:
        """The highest sequence number any entry's name holds (foreign ones
        too: a new backup never takes the name of one), else 0."""
        names = [os.path.basename(p) for p in self.temporaries] + [
            os.path.basename(p) for p, _ in self.foreign
        ]
        seqs = [s for s, _ in self.named] + [
            atomicity.parse_committed(n) or atomicity.parse_temporary(n) or 0
            for n in names
        ]
        return max(seqs, default=0)


def list_entries(directory: str) -> Listing:
    """The entries of `directory` that are ours, by name and by what they are.

    Locally, an entry named like ours that is something else (a link, a
    regular file where a directory belongs, a FIFO, ...) is never followed,
    read or deleted: it is listed as foreign.
    """
    listing = Listing()
    local = paths.is_local(directory)
    if local and not tf.io.gfile.isdir(directory):
        return listing
    try:
        # Elsewhere one listing (an object store answers a missing
        # directory with no entries): no isdir() first.
        entries = tf.io.gfile.listdir(directory)
    except tf.errors.NotFoundError:
        return listing
    for entry in entries:
        name = entry.rstrip("/")
        path = os.path.join(directory, name)
        seq = atomicity.parse_committed(name)
        temporary = atomicity.parse_temporary(name)
        if seq is not None or temporary is not None:
            want = paths.DIRECTORY
        elif atomicity.is_probe(name) or name == atomicity.CREATED:
            want = paths.FILE
        else:  # not a backup's by name: never looked at
            if atomicity.is_ours(name):
                listing.owner_files += 1
            else:
                listing.others += 1
            continue
        found = paths.kind(path) if local else want
        if found is None:
            continue  # gone meanwhile (our own cleanup, say)
        if found != want:
            listing.foreign.append((path, found))
        elif seq is not None:
            listing.named.append((seq, path))
        elif temporary is not None:
            listing.temporaries.append(path)
        elif name == atomicity.CREATED:
            listing.created = True
        else:
            listing.probes.append(path)
    listing.named.sort()
    return listing


_UNKNOWN = object()


@dataclasses.dataclass
class _Entry:
    """What is known of one `backup-<seq>` directory."""

    seq: int
    path: str
    committed: bool | None = None  # holds a manifest; None: not looked yet
    body: dict | None = None  # its manifest's body, once parsed ...
    problem: errors.BackupCorruptError | None = None  # ... or why not
    # Its metadata's scope, when known without its manifest (written here).
    scope: object = _UNKNOWN


# Per directory, how many changes the catalogs of this process made to it: a
# catalog that did not make the last one lists the directory again.
_CHANGES = {}
_CHANGES_LOCK = threading.Lock()


def _changes(directory: str) -> int:
    with _CHANGES_LOCK:
        return _CHANGES.get(directory, 0)


def _count_change(directory: str, seen) -> int | None:
    """Counts a change to `directory`; returns the new count if `seen` was
    the count before it (a catalog current before stays current), else
    None."""
    with _CHANGES_LOCK:
        count = _CHANGES.get(directory, 0)
        _CHANGES[directory] = count + 1
        return count + 1 if seen == count else None


class Catalog:
    """The backups of one directory as last listed, and their manifests."""

    def __init__(self, directory: str):
        self._dir = directory
        self._lock = threading.RLock()
        self._entries = None  # path -> _Entry; None: to be listed
        self._seen = None  # the directory's change count it reflects
        self._max_seq = 0
        self._foreign_warned = set()  # paths named in a warning already

    def refresh(self) -> None:
        """Forgets what was listed and parsed: the next use lists again."""
        with self._lock:
            self._entries = None

    def list_now(self) -> Listing:
        """Lists the directory now; the catalog follows the listing.

        A backup still there keeps its parsed manifest (unless another
        catalog changed the directory since); whether it holds a manifest
        is looked at again.
        """
        with self._lock:
            kept = self._entries if self._current() else {}
            seen = _changes(self._dir)
            listing = list_entries(self._dir)
            self._warn_about_foreign(listing.foreign)
            self._entries = {}
            for seq, path in listing.named:
                entry = kept.get(path) or _Entry(seq, path)
                entry.committed = None
                self._entries[path] = entry
            self._seen = seen
            self._max_seq = max(self._max_seq, listing.max_seq())
            return listing

    def _current(self) -> bool:
        return self._entries is not None and self._seen == _changes(self._dir)

    def _known(self) -> dict:
        if not self._current():
            self._entries = None
            self.list_now()
        return self._entries

    def _warn_about_foreign(self, foreign) -> None:
        new = [(p, k) for p, k in foreign if p not in self._foreign_warned]
        if not new:
            return
        self._foreign_warned.update(p for p, _ in new)
        logging.warning(
            "%s holds entries named like backup_restore's own that are not "
            "(never followed, read or deleted; remove them yourself): %s.",
            self._dir,
            "; ".join(f"{p} is a {k}" for p, k in new),
        )

    def _sorted(self) -> list:
        return sorted(self._known().values(), key=lambda e: e.seq)

    def named(self) -> list[tuple[int, str]]:
        """(seq, path) of every `backup-<seq>` directory, oldest first."""
        with self._lock:
            return [(e.seq, e.path) for e in self._sorted()]

    def committed(self) -> list[tuple[int, str]]:
        """(seq, path) of every committed backup, oldest first."""
        with self._lock:
            return [(e.seq, e.path) for e in self._sorted() if self._has(e)]

    def unfinished(self) -> list[str]:
        """The `backup-<seq>` directories that are not committed (see
        `_has`), oldest first."""
        with self._lock:
            return [e.path for e in self._sorted() if not self._has(e)]

    def _has(self, entry: _Entry) -> bool:
        """Whether `entry` is committed, looked at once: it holds a manifest,
        or the record that it was made durable (atomicity.DURABLE, written
        after its manifest was durable: a manifest gone since is damage, a
        corrupt backup that manifest.read reports, never an unfinished
        write to delete)."""
        if entry.committed is None:
            # Whatever it is: manifest.read refuses one that is not a file.
            manifest_path = os.path.join(entry.path, atomicity.MANIFEST)
            durable_path = os.path.join(entry.path, atomicity.DURABLE)
            entry.committed = (
                paths.kind(manifest_path) is not None
                or paths.kind(durable_path) == paths.FILE
            )
        return entry.committed

    def body(self, path: str) -> dict:
        """The body of the manifest of backup `path` (manifest.read), parsed
        once; one this catalog does not list is read, not kept.

        Raises:
          errors.BackupCorruptError: as manifest.read raised it (each time).
        """
        with self._lock:
            entry = self._known().get(path)
            if entry is None:
                return manifest.read(path)
            if entry.body is None and entry.problem is None:
                try:
                    entry.body = manifest.read(path)
                except errors.BackupCorruptError as e:
                    entry.problem = e
            if entry.problem is not None:
                raise entry.problem.with_traceback(None)
            return entry.body

    def in_scope(self, path: str, scope: str | None) -> bool:
        """Whether backup `path` belongs to `scope` (None: every backup does).

        One whose manifest cannot be read, or whose scope is missing or no
        string, is counted in: its corruption is reported (and it falls
        back) like any other's, rather than it being silently ignored.
        """
        if scope is None:
            return True
        with self._lock:
            entry = self._known().get(path)
            written = _UNKNOWN if entry is None else entry.scope
            if written is _UNKNOWN:
                try:
                    written = self.body(path)["metadata"].get("scope")
                except errors.BackupCorruptError:
                    return True
        return not isinstance(written, str) or written == scope

    def next_seq(self) -> int:
        """The sequence number of a new backup: past every one listed or
        used before (a failed write's number is never used again)."""
        with self._lock:
            self._known()
            self._max_seq += 1
            return self._max_seq

    def added(self, seq: int, path: str, scope) -> None:
        """Backup `seq` was published at `path` with metadata scope `scope`
        (None when it has none)."""
        with self._lock:
            self._changed()
            if self._entries is not None:
                entry = _Entry(seq, path, committed=True, scope=scope)
                self._entries[path] = entry
            self._max_seq = max(self._max_seq, seq)

    def removed(self, path: str) -> None:
        """The entry `path` was deleted."""
        with self._lock:
            self._changed()
            if self._entries is not None:
                self._entries.pop(path, None)

    def _changed(self) -> None:
        seen = self._seen if self._entries is not None else None
        self._seen = _count_change(self._dir, seen)
