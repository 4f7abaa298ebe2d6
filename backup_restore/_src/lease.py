"""The ownership of a backup_dir without file locks: a renewed lease.

LEASE_FILE in backup_dir holds the owner's record plus an expiry; a daemon
thread renews it every TTL/3. It is written as one object through
tf.io.gfile, or on a local disk as a new file renamed over the old one.
The takeover rule, by which another process refuses or takes a lease, is
described in `ownership.py`.

Every lease this release writes is exactly LEASE_SIZE bytes (its JSON
padded with spaces). TensorFlow's gs:// client caches an object's length
per process for seconds; a read of an object rewritten since then returns
it cut to the cached length, or fails with "File contents are
inconsistent". Of a lease that never changes length, a cached length is
always the current one, so every read returns the current lease. A lease of
an earlier release (unpadded, its length changing as it is renewed) read
through a stale length comes out cut (it then differs from the one seen
before: renewed) or raises that error, which also proves it was rewritten:
either way its writer is alive.
"""

import json
import os
import socket
import threading
import time
import typing
import uuid

from absl import logging

from backup_restore._src import errors
from backup_restore._src import owner_record
from backup_restore._src import paths
from backup_restore._src import registry

LEASE_FILE = ".backup_restore.lease"
# The size of every lease this release writes.
LEASE_SIZE = 4096
# What a read returns for a lease rewritten since this process cached its
# length (TensorFlow's stat cache): a live writer.
REWRITTEN = b"<rewritten while being read>"


def encode(lease: dict) -> bytes:
    """`lease` as JSON, padded with spaces to LEASE_SIZE bytes (a very long
    command is cut to fit)."""
    lease = dict(lease)
    data = json.dumps(lease).encode()
    if len(data) > LEASE_SIZE:
        lease["command"] = str(lease.get("command", ""))[:40]
        data = json.dumps(lease).encode()
    return data.ljust(LEASE_SIZE, b" ")


def _gfile():
    import tensorflow as tf  # only for remote filesystems

    return tf.io.gfile


def _read_lease(path):
    """The lease at `path`: (raw, record, invalid).

    raw is its bytes, None when there is none; record what they parse to
    (None if nothing); invalid the `owner_record.invalid_fields` of the
    record, {} when there is none or it is valid. A record is used only when
    valid.
    """
    raw = _read_lease_bytes(path)
    if raw is None:
        return None, None, {}
    if raw is REWRITTEN:
        return raw, None, {"record": "rewritten while being read"}
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8)
        return raw, None, {"record": "not JSON"}
    return raw, record, owner_record.invalid_fields(record, lease=True)


def _read_lease_bytes(path):
    try:
        if paths.is_local(path):
            try:
                raw = paths.read_bytes(path)
            except paths.NotOursError as e:
                raise owner_record.unsafe_entry_error(
                    path, paths.kind(path)
                ) from e
        else:
            # A missing lease raises NotFoundError (below): no exists()
            # first, which costs an object store one more request.
            with _gfile().GFile(path, "rb") as f:
                raw = f.read()
    except FileNotFoundError:
        return None
    except Exception as e:  # tf.errors.NotFoundError etc.
        if type(e).__name__ == "NotFoundError":
            return None
        if type(e).__name__ == "InternalError" and "inconsistent" in str(e):
            return REWRITTEN  # its length changed since this process read it
        raise
    return raw


class _Staged(typing.NamedTuple):
    path: str
    tmp: str | None  # the local temporary file; None on an object store
    data: bytes


def _stage(path, lease) -> _Staged:
    """The slow part of writing `lease` to `path`, done before the check
    that decides to publish it (`_publish`): locally, a temporary file
    beside it, written and fsync'd. A pause between that check and the
    publication (a stopped process, a paused VM) would put the lease back
    over the one of a process that took the directory meanwhile: kept to
    a rename.

    Raises:
      FileNotFoundError: the directory does not exist (any more).
    """
    data = encode(lease)
    if not paths.is_local(path):
        return _Staged(path, None, data)
    tmp = f"{paths.local(path)}.tmp-{uuid.uuid4().hex[:8]}"
    paths.create_file(tmp, data, durable=True)
    return _Staged(path, tmp, data)


def _publish(staged):
    path, tmp, data = staged
    if tmp is None:
        with _gfile().GFile(path, "wb") as f:  # one object: all or nothing
            f.write(data)
        return
    local = paths.local(path)
    found = paths.kind(local)
    if found not in (None, paths.FILE):  # replacing it would delete it
        raise owner_record.unsafe_entry_error(local, found)
    os.replace(tmp, local)  # readers see the old lease or the new


def _discard(staged):
    """Removes a staged lease's temporary file if it was not published."""
    if staged is not None and staged.tmp is not None:
        try:
            os.unlink(staged.tmp)
        except FileNotFoundError:
            pass  # published


def _write_lease(path, lease):
    staged = _stage(path, lease)
    try:
        _publish(staged)
    finally:
        _discard(staged)


def _remove(path):
    try:
        if paths.is_local(path):
            paths.remove_file(path)
        else:
            _gfile().remove(path)
    except Exception as e:
        logging.warning("Could not remove the lease %s: %s", path, e)


def _process_gone(lease) -> bool:
    """The lease's owner ran on this machine (this boot) and has exited."""
    if lease.get("host") != socket.gethostname():
        return False
    if (
        lease.get("boot_id") is None
        or lease.get("boot_id") != owner_record.boot_id()
    ):
        return False
    try:
        os.kill(lease["pid"], 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False
    return False


def _release_note(raw) -> str:
    if raw is None or len(raw) == LEASE_SIZE:
        return ""
    return " (a lease of an earlier release of backup_restore: not padded)"


def _renewed_error(directory, lease, invalid):
    """The refusal by a lease seen rewritten while watched."""
    if lease is None and "record" in invalid:
        return owner_record.in_use_error(
            directory,
            None,
            f" Its lease ({invalid['record']}) is being renewed: its "
            "writer is alive.",
        )
    if invalid:
        return owner_record.in_use_error(
            directory,
            owner_record.valid_part(lease),
            f" Its lease is invalid ({owner_record.describe(invalid)}) but is "
            "being rewritten: its writer is alive.",
        )
    return owner_record.in_use_error(
        directory,
        lease,
        f" Its lease (renewed every {lease['ttl']} s / 3) is being renewed.",
    )


class Lease(registry.Held):
    """A lease in LEASE_FILE, renewed every ttl/3 by a daemon thread."""

    def __init__(self, directory, key, ttl):
        super().__init__(directory, key)
        self._ttl = float(ttl)
        self._path = os.path.join(directory, LEASE_FILE)
        self._stop = threading.Event()
        try:
            self._take(directory)
        except OSError as e:  # a full local disk (NFS without locks)
            raise owner_record.record_write_error(
                directory, self._path, e
            ) from e
        self._thread = threading.Thread(
            target=self._renew_loop, name="backup_restore-lease", daemon=True
        )
        self._thread.start()

    def _lease(self):
        now = time.time()
        return dict(
            self.record, renewed_epoch=now, expires_epoch=now + self._ttl
        )

    def _take(self, directory):
        poll = min(1.0, self._ttl / 10)
        seen, seen_at = None, None
        while True:
            raw, lease, invalid = _read_lease(self._path)
            if raw is None:
                break  # free
            if not invalid:
                if lease["pid"] == os.getpid() and (
                    lease["host"] == socket.gethostname()
                ):
                    break  # this process's own, left by a crash
                if time.time() > lease["expires_epoch"]:
                    logging.warning(
                        "Taking over the expired lease %s%s",
                        lease,
                        _release_note(raw),
                    )
                    break
                if _process_gone(lease):
                    logging.warning(
                        "Taking over the lease of pid %s, gone: %s",
                        lease["pid"],
                        lease,
                    )
                    break
            # An invalid lease tells nothing of its owner's liveness but
            # this: a live owner rewrites it every TTL/3. So every lease is
            # watched by its bytes.
            if raw is REWRITTEN or (seen is not None and raw != seen):
                # Renewed (or newly taken) while we watched: a live owner.
                raise _renewed_error(directory, lease, invalid)
            if seen is None:
                seen, seen_at = raw, time.monotonic()
            elif time.monotonic() - seen_at >= self._ttl:
                if invalid:
                    logging.warning(
                        "Taking over the lease %s: it is invalid (%s) and "
                        "was not rewritten for %.1f s.",
                        self._path,
                        owner_record.describe(invalid),
                        self._ttl,
                    )
                else:
                    logging.warning(
                        "Taking over the unrenewed lease %s%s",
                        lease,
                        _release_note(raw),
                    )
                break
            time.sleep(poll)
        self.record = dict(owner_record.now_record("lease"), ttl=self._ttl)
        self._write_and_confirm(
            raw,
            lambda lease: owner_record.in_use_error(
                directory,
                owner_record.valid_part(lease),
                " It took the lease over at the same time.",
            ),
        )

    def _make_directory(self):
        if paths.is_local(self.directory):
            paths.make_dirs(paths.local(self.directory))
        else:
            _gfile().makedirs(self.directory)

    def _write_and_confirm(self, expected, refusal):
        """Creates the directory if missing, writes this process's lease if
        the lease still is `expected` (the bytes the decision to write was
        made on; None: no lease) and reads it back a moment later: another
        process may have written its lease at the same moment; the last
        writer wins.

        A directory removed meanwhile (by its last owner, ending, or a
        user's `rm -rf`) is made again and the lease written there: no
        lease is there to refuse it.

        Raises:
          BackupDirInUseError: `refusal(the other's lease)`.
        """

        def write():
            staged = _stage(self._path, self._lease())
            try:
                if staged.tmp is not None:
                    # Locally the staging took an fsync: the decision may
                    # be stale. (Elsewhere it took nothing; a read costs a
                    # request.)
                    raw, lease, _ = _read_lease(self._path)
                    if raw is not None and raw != expected:
                        raise refusal(lease)
                _publish(staged)
            finally:
                _discard(staged)

        paths.in_made_dirs(self._make_directory, write)
        time.sleep(min(1.0, self._ttl / 10))
        raw, lease, invalid = _read_lease(self._path)
        if raw is None or invalid or lease["token"] != self.record["token"]:
            raise refusal(lease)

    def ensure(self):
        with self._guard:
            self._check()

    def _check(self):
        """Checks that the lease is this process's own; re-establishes a
        missing one (with a warning). Holds self._guard.

        Raises:
          BackupDirInUseError: another process holds a valid lease; this
            one no longer owns the directory (self.lost).
        """
        super().ensure()
        raw, lease, invalid = _read_lease(self._path)
        if raw is not None and not invalid:
            if lease["token"] == self.record["token"]:
                return
            self._lose(
                lease,
                f"its lease was deleted, or went unrenewed for {self._ttl:g} s",
            )
            self._stop.set()
            raise owner_record.in_use_error(self.directory, *self.lost)
        if invalid:
            # Rewritten at once: a job that watches this lease then sees it
            # change and is refused, as it must be while this owner lives.
            logging.warning(
                "The lease %s was replaced by an invalid one (%s): "
                "rewriting this job's lease.",
                self._path,
                owner_record.describe(invalid),
            )
            try:
                _write_lease(self._path, self._lease())
                return
            except FileNotFoundError:
                pass  # the directory is gone since: re-established below

        def refusal(lease):
            self._lose(
                owner_record.valid_part(lease),
                "the directory (or its lease) was deleted or replaced",
            )
            self._stop.set()
            return owner_record.in_use_error(self.directory, *self.lost)

        self._write_and_confirm(None, refusal)
        logging.warning(
            "While this job owned backup_dir %s, the directory (or its "
            "lease %s) was deleted or replaced. Nobody else had taken it: "
            "this job has re-established its claim (a new lease, the "
            "directory recreated if missing) and goes on backing up there. "
            "If the directory itself was deleted or replaced, the backups "
            "that were in it are not there any more.",
            self.directory,
            LEASE_FILE,
        )

    def _renew_loop(self):
        while not self._stop.wait(self._ttl / 3):
            staged = None
            try:
                try:
                    staged = _stage(self._path, self._lease())
                except FileNotFoundError:
                    pass  # the directory is gone: _check reclaims it
                with self._guard:
                    self._check()
                    if staged is not None:
                        _publish(staged)
            except errors.BackupDirInUseError as e:
                logging.error("Lost the ownership of %s: %s", self.directory, e)
                return
            except Exception as e:  # retried at the next tick
                logging.warning(
                    "Renewing the lease %s failed: %s", self._path, e
                )
            finally:
                _discard(staged)

    def close(self, remove_empty_dir):
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        raw, lease, invalid = _read_lease(self._path)
        if raw is not None and not invalid:
            if lease["token"] == self.record["token"]:
                _remove(self._path)
        if remove_empty_dir:
            try:
                if paths.is_local(self.directory):
                    os.rmdir(paths.local(self.directory))
                else:
                    gfile = _gfile()
                    if gfile.isdir(self.directory) and not gfile.listdir(
                        self.directory
                    ):
                        gfile.rmtree(self.directory)
            except Exception:  # not empty: left as is
                pass
