"""Tests of ownership.py (and its modules owner_record.py, lock_file.py,
lease.py, registry.py) with real processes: flock and lease."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from unittest import mock

from absl.testing import absltest

from backup_restore._src import errors
from backup_restore._src import lease
from backup_restore._src import lock_file
from backup_restore._src import owner_record
from backup_restore._src import ownership
from backup_restore._src import paths
from testing import owner_records
from testing import test_case

# A child that takes the ownership and holds it until told "release" on
# stdin (or killed). With a TTL argument it takes a lease.
_CHILD = """
import json, sys
from backup_restore._src import errors, ownership
ttl = float(sys.argv[2]) if len(sys.argv) > 2 else None
try:
    handle = ownership.acquire(sys.argv[1], _lease_ttl=ttl)
except errors.BackupDirInUseError as e:
    print("REFUSED", json.dumps({"message": str(e), "owner": e.owner}),
          flush=True)
    sys.exit(3)
print("OWNED", json.dumps(handle.record), flush=True)
for line in sys.stdin:
    if line.strip() == "release":
        handle.release(remove_empty_dir=True)
        print("RELEASED", flush=True)
        break
"""


class Child:
    """A real process that owns a directory."""

    def __init__(self, directory, ttl=None):
        args = [sys.executable, "-c", _CHILD, directory]
        if ttl is not None:
            args.append(str(ttl))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        self.status, _, payload = line.partition(" ")
        if self.status not in ("OWNED", "REFUSED"):
            self.proc.kill()
            raise AssertionError(
                f"child failed: {line!r} {self.proc.stderr.read()}"
            )
        self.payload = json.loads(payload)

    @property
    def pid(self):
        return self.proc.pid

    def release(self):
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "RELEASED"

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)

    def end(self):
        """Ends the process; returns its stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
        _, stderr = self.proc.communicate(timeout=30)
        return stderr


def _rmtree(directory):
    """Deletes `directory`, which a lease renewal may write into meanwhile."""
    for attempt in range(10):
        try:
            shutil.rmtree(directory)
            return
        except OSError as e:
            if e.errno != errno.ENOTEMPTY or attempt == 9:
                raise


class _ChildrenTest(test_case.TestCase):
    """Each case's Child processes on self.dir end with it."""

    def setUp(self):
        super().setUp()
        self.children = []

    def tearDown(self):
        for child in self.children:
            child.end()
        super().tearDown()

    def child(self, **kwargs):
        child = Child(self.dir, **kwargs)
        self.children.append(child)
        return child

    def snapshot(self):
        """relative path -> (mtime, bytes) of each file under self.dir."""
        found = {}
        for root, _, files in os.walk(self.dir):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    found[os.path.relpath(path, self.dir)] = (
                        os.stat(path).st_mtime_ns,
                        f.read(),
                    )
        return found

    def assert_reclaimed_then_refuses(
        self, handle, damage, mechanism_file, what
    ):
        """After `damage()`, handle.ensure() re-establishes the claim with
        one warning that says `what`; then another process is refused."""
        with self.assertLogs(level="WARNING") as logs:
            damage()
            handle.ensure()
        # (A lease renewal that the deletion interrupted may warn too.)
        said = [line for line in logs.output if "re-established" in line]
        self.assertLen(said, 1, logs.output)
        self.assertIn(what, said[0])
        with open(os.path.join(self.dir, mechanism_file)) as f:
            self.assertEqual(json.load(f)["token"], handle.record["token"])
        other = self.child()
        self.assertEqual(other.status, "REFUSED")
        self.assertIn(f"pid {os.getpid()}", other.payload["message"])
        with self.assertNoLogs(level="WARNING"):
            handle.ensure()  # intact again: nothing to say
        self.assertTrue(handle.held)

    def assert_taken_over_stops_the_owner(self, handle, other):
        """After another process took the directory, handle.ensure()
        refuses, naming it, and changes nothing; so does every later call."""
        before = self.snapshot()
        for _ in range(2):
            with self.assertRaises(errors.BackupDirInUseError) as cm:
                handle.ensure()
            message = str(cm.exception)
            self.assertIn(f"pid {other.pid}", message)
            self.assertIn("deleted", message)
            self.assertIn("no longer owns it", message)
            self.assertIn("Nothing in the directory was changed", message)
            self.assertEqual(cm.exception.owner["pid"], other.pid)
        self.assertEqual(self.snapshot(), before)
        self.assertFalse(handle.held)
        self.assertTrue(handle.lost)
        handle.release(remove_empty_dir=True)  # not its own any more: no-op
        self.assertEqual(self.snapshot(), before)
        self.assertIsNone(other.proc.poll())


class FlockTest(_ChildrenTest):
    def test_acquire_creates_only_the_lock_file_and_release_removes_it(self):
        handle = ownership.acquire(self.dir)
        self.assertEqual(os.listdir(self.dir), [ownership.LOCK_FILE])
        with open(os.path.join(self.dir, ownership.LOCK_FILE)) as f:
            record = json.load(f)
        self.assertEqual(record["pid"], os.getpid())
        self.assertEqual(record, handle.record)
        handle.release(remove_empty_dir=False)
        self.assertEqual(os.listdir(self.dir), [])
        ownership.acquire(self.dir).release(remove_empty_dir=True)
        self.assertFalse(os.path.exists(self.dir))

    def test_second_process_is_refused_naming_the_owner_and_changes_nothing(
        self,
    ):
        owner = self.child()
        self.assertEqual(owner.status, "OWNED")
        os.makedirs(os.path.join(self.dir, ".tmp-backup-00000001-abcdef"))
        before = {
            name: os.stat(os.path.join(self.dir, name)).st_mtime_ns
            for name in os.listdir(self.dir)
        }
        with open(os.path.join(self.dir, ownership.LOCK_FILE), "rb") as f:
            lock_bytes = f.read()
        with self.assertRaises(errors.BackupDirInUseError) as cm:
            ownership.acquire(self.dir)
        message = str(cm.exception)
        self.assertIn(self.dir, message)
        self.assertIn(f"pid {owner.pid}", message)
        self.assertIn(socket.gethostname(), message)
        self.assertIn(owner.payload["since"], message)
        self.assertIn("Nothing in the directory was changed", message)
        self.assertEqual(cm.exception.owner["pid"], owner.pid)
        self.assertIsInstance(cm.exception, errors.BackupError)
        after = {
            name: os.stat(os.path.join(self.dir, name)).st_mtime_ns
            for name in os.listdir(self.dir)
        }
        self.assertEqual(before, after)
        with open(os.path.join(self.dir, ownership.LOCK_FILE), "rb") as f:
            self.assertEqual(f.read(), lock_bytes)
        # Another process is refused the same way.
        other = self.child()
        self.assertEqual(other.status, "REFUSED")
        self.assertIn(f"pid {owner.pid}", other.payload["message"])

    def test_owner_killed_does_not_block_the_restart(self):
        owner = self.child()
        owner.kill(signal.SIGKILL)
        owner.proc.wait()
        # Its lock file stays behind, with its record; the lock died with it.
        with open(os.path.join(self.dir, ownership.LOCK_FILE)) as f:
            self.assertEqual(json.load(f)["pid"], owner.pid)
        handle = ownership.acquire(self.dir)
        self.assertEqual(handle.record["pid"], os.getpid())
        with open(os.path.join(self.dir, ownership.LOCK_FILE)) as f:
            self.assertEqual(json.load(f)["pid"], os.getpid())
        self.assertEqual(self.child().status, "REFUSED")
        handle.release()

    def test_same_process_reacquires(self):
        first = ownership.acquire(self.dir)
        # A second start in this process (fit() again after Ctrl-C, another
        # store object) succeeds, also through another spelling of the path.
        second = ownership.acquire(os.path.join(self.dir, "x", ".."))
        self.assertTrue(second.held)
        self.assertFalse(first.held)
        first.release()  # an older handle: no-op
        self.assertEqual(self.child().status, "REFUSED")
        second.release()
        self.assertEqual(self.child().status, "OWNED")

    def test_ram_filesystem_is_per_process(self):
        first = ownership.acquire("ram://ownership_test")
        second = ownership.acquire("ram://ownership_test")
        self.assertTrue(second.held)
        first.release()
        second.release()
        self.assertFalse(second.held)

    def test_unlink_race_locks_the_file_that_the_path_names(self):
        owner = self.child()
        real_flock = lock_file.fcntl.flock
        calls = []

        def flock_after_the_owner_released(fd, op):
            # This process has opened the owner's lock file; the owner now
            # deletes it (and the empty directory) and unlocks it.
            if not calls:
                owner.release()
            calls.append(fd)
            return real_flock(fd, op)

        lock_file.fcntl.flock = flock_after_the_owner_released
        try:
            handle = ownership.acquire(self.dir)
        finally:
            lock_file.fcntl.flock = real_flock
        self.assertLen(calls, 2)  # the deleted file, then the new one
        with open(os.path.join(self.dir, ownership.LOCK_FILE)) as f:
            self.assertEqual(json.load(f)["pid"], os.getpid())
        # The lock is on the file that the path names: others are refused.
        self.assertEqual(self.child().status, "REFUSED")
        handle.release()

    def test_lock_file_deleted_between_open_and_check_is_opened_again(self):
        owner = self.child()
        real_kind_of_fd = paths.kind_of_fd
        calls = []

        def kind_of_fd_after_the_owner_released(fd):
            # This process has opened the owner's lock file; the owner
            # deletes it before this process looks at what it opened.
            if not calls:
                owner.release()
            calls.append(fd)
            return real_kind_of_fd(fd)

        with mock.patch.object(
            paths, "kind_of_fd", kind_of_fd_after_the_owner_released
        ):
            handle = ownership.acquire(self.dir)
        self.assertLen(calls, 2)  # the deleted file, then the new one
        self.assertEqual(self.child().status, "REFUSED")
        handle.release()

    def test_directory_removed_while_it_is_locked_is_locked_again(self):
        local = self.dir
        real_stat = os.stat
        removed = []

        def stat_after_a_removal(path, *args, **kwargs):
            # A user's `rm -rf` between this process's lock and its look
            # at the directory.
            if path == local and not removed:
                removed.append(path)
                shutil.rmtree(local)
            return real_stat(path, *args, **kwargs)

        with mock.patch.object(os, "stat", stat_after_a_removal):
            handle = ownership.acquire(self.dir)
        self.assertEqual(removed, [local])
        self.assertTrue(handle.held)
        self.assertEqual(self.child().status, "REFUSED")
        handle.release()

    def test_filesystem_without_locks_uses_a_lease(self):
        def no_locks(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")

        real_flock = lock_file.fcntl.flock
        lock_file.fcntl.flock = no_locks
        try:
            handle = ownership.acquire(self.dir)
        finally:
            lock_file.fcntl.flock = real_flock
        self.assertIn(ownership.LEASE_FILE, os.listdir(self.dir))
        self.assertEqual(handle.record["mechanism"], "lease")
        handle.release()
        self.assertEqual(os.listdir(self.dir), [])

    def test_deleted_directory_is_reclaimed_then_a_second_process_refused(
        self,
    ):
        for recreated in (False, True):
            with self.subTest(recreated=recreated):
                handle = ownership.acquire(self.dir)

                def damage(recreated=recreated):
                    shutil.rmtree(self.dir)
                    if recreated:  # as the store's next write would
                        os.makedirs(self.dir)

                self.assert_reclaimed_then_refuses(
                    handle,
                    damage,
                    ownership.LOCK_FILE,
                    "the directory was deleted or replaced",
                )
                handle.release(remove_empty_dir=True)
                self.assertFalse(os.path.exists(self.dir))

    def test_replaced_directory_is_reclaimed(self):
        handle = ownership.acquire(self.dir)

        def damage():
            os.rename(self.dir, self.dir + "-old")
            os.makedirs(self.dir)

        self.assert_reclaimed_then_refuses(
            handle,
            damage,
            ownership.LOCK_FILE,
            "the directory was deleted or replaced",
        )
        handle.release()

    def test_deleted_or_replaced_lock_file_is_reclaimed(self):
        path = os.path.join(self.dir, ownership.LOCK_FILE)
        for replaced in (False, True):
            with self.subTest(replaced=replaced):
                handle = ownership.acquire(self.dir)

                def damage(replaced=replaced):
                    os.remove(path)
                    if replaced:
                        with open(path, "w") as f:
                            f.write("{}")

                self.assert_reclaimed_then_refuses(
                    handle, damage, ownership.LOCK_FILE, "its lock file"
                )
                handle.release()

    def test_deleted_directory_taken_by_another_process_stops_the_owner(
        self,
    ):
        handle = ownership.acquire(self.dir)
        shutil.rmtree(self.dir)
        other = self.child()
        self.assertEqual(other.status, "OWNED")
        self.assert_taken_over_stops_the_owner(handle, other)
        # This process is no owner any more: a new acquire is refused too.
        with self.assertRaises(errors.BackupDirInUseError):
            ownership.acquire(self.dir)

    def test_ensure_after_a_newer_handle_released_takes_it_again(self):
        first = ownership.acquire(self.dir)
        second = ownership.acquire(self.dir)
        second.release()
        first.ensure()
        self.assertTrue(first.held)
        self.assertEqual(self.child().status, "REFUSED")
        first.release()
        with self.assertRaises(RuntimeError):
            first.ensure()

    def test_invalid_fields_of_the_owner_record_are_left_out_of_the_refusal(
        self,
    ):
        owner = self.child()
        path = os.path.join(self.dir, ownership.LOCK_FILE)
        for record, shown, hidden in (
            ([1, 2], [], []),
            ("a string", [], []),
            ({"pid": True, "host": 7, "since": "noon"}, ["noon"], ["pid True"]),
            ({"pid": -4, "host": "elsewhere"}, ["'elsewhere'"], ["pid -4"]),
            ({"pid": 12, "host": ["h"], "command": 3}, ["pid 12"], ["['h']"]),
        ):
            with self.subTest(record=record):
                # Rewritten in place: the owner's lock stays on the file.
                with open(path, "r+") as f:
                    f.truncate()
                    json.dump(record, f)
                with self.assertRaises(errors.BackupDirInUseError) as cm:
                    ownership.acquire(self.dir)
                message = str(cm.exception)
                self.assertIn("Nothing in the directory was changed", message)
                for text in shown:
                    self.assertIn(text, message)
                for text in hidden:
                    self.assertNotIn(text, message)
        self.assertEqual(owner.proc.poll(), None)

    def test_lock_files_are_ours(self):
        from backup_restore._src import atomicity

        for name in ownership.FILES:
            self.assertTrue(atomicity.is_ours(name))


def _without(*names):
    return {
        k: v for k, v in owner_records.foreign_lease().items() if k not in names
    }


# Lease records, each invalid, as JSON text; their invalid field (or "record").
_INVALID_LEASES = {
    "string_expiry": (
        json.dumps(owner_records.foreign_lease(expires_epoch="soon")),
        "expires_epoch",
    ),
    "list": (json.dumps([owner_records.foreign_lease()]), "record"),
    "missing_keys": (json.dumps(_without("token", "expires_epoch")), "token"),
    "bool_pid": (json.dumps(owner_records.foreign_lease(pid=True)), "pid"),
    "nan_expiry": (
        json.dumps(owner_records.foreign_lease(expires_epoch=float("nan"))),
        "expires_epoch",
    ),
    "infinite_ttl": (
        json.dumps(owner_records.foreign_lease(ttl=float("inf"))),
        "ttl",
    ),
    "huge_pid": (json.dumps(owner_records.foreign_lease(pid=10**30)), "pid"),
    "null": ("null", "record"),
    "not_json": ("{'pid': 1", "record"),
}


class RecordValidationTest(test_case.TestCase):
    def test_records_written_by_this_release_are_valid(self):
        self.assertEqual(
            owner_record.invalid_fields(
                owner_record.now_record("flock"), False
            ),
            {},
        )
        lease = dict(
            owner_record.now_record("lease"),
            ttl=60.0,
            renewed_epoch=1.0,
            expires_epoch=61,
        )
        self.assertEqual(owner_record.invalid_fields(lease, lease=True), {})
        self.assertEqual(
            owner_record.invalid_fields(owner_records.foreign_lease(), True), {}
        )
        # Fields of a later release are allowed.
        self.assertEqual(
            owner_record.invalid_fields(
                owner_records.foreign_lease(new_field=[1]), True
            ),
            {},
        )

    def test_each_invalid_field_is_named(self):
        for name, (text, field) in _INVALID_LEASES.items():
            if name == "not_json":
                continue
            with self.subTest(name):
                invalid = owner_record.invalid_fields(json.loads(text), True)
                self.assertIn(field, invalid)
        self.assertEqual(
            set(owner_record.invalid_fields({}, lease=True)),
            set(owner_records.foreign_lease()),
        )
        self.assertIn("since", owner_record.invalid_fields({"since": 3}, False))
        self.assertNotIn("ttl", owner_record.invalid_fields({}, lease=False))


class LeaseTest(_ChildrenTest):
    TTL = 1.5

    def setUp(self):
        super().setUp()
        self.lease = os.path.join(self.dir, ownership.LEASE_FILE)

    def write_lease(self, text, path=None):
        path = path or self.lease
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".test"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    def rewrite_invalid_lease(self, text):
        """Rewrites `text` (and a counter) into the lease every TTL/4, as a
        live owner whose records this release finds invalid would; until
        the case ends."""
        stop = threading.Event()
        path = self.lease
        self.write_lease(text, path)

        def rewrite():
            n = 0
            while True:
                self.write_lease(f"{text} {' ' * (n % 2)}", path)
                n += 1
                if stop.wait(self.TTL / 4):
                    return

        thread = threading.Thread(target=rewrite, daemon=True)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(stop.set)

    def child(self, ttl=TTL):
        return super().child(ttl=ttl)

    def read_lease(self):
        with open(self.lease) as f:
            return json.load(f)

    def test_renewal_keeps_another_process_out(self):
        owner = self.child()
        self.assertEqual(owner.status, "OWNED")
        first = self.read_lease()
        time.sleep(2 * self.TTL)  # longer than a TTL: renewed meanwhile
        renewed = self.read_lease()
        self.assertEqual(renewed["token"], first["token"])
        self.assertGreater(renewed["expires_epoch"], first["expires_epoch"])
        # Refused as soon as it sees a renewal: "renewed", not a TTL of
        # watching an unrenewed lease, which would have taken it over.
        with self.assertRaises(errors.BackupDirInUseError) as cm:
            ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertIn(f"pid {owner.pid}", str(cm.exception))
        self.assertIn("is being renewed", str(cm.exception))
        self.assertEqual(self.read_lease()["token"], first["token"])
        self.assertEqual(self.child().status, "REFUSED")

    def test_release_removes_the_lease(self):
        owner = self.child()
        owner.release()
        self.assertFalse(os.path.exists(self.dir))
        handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertEqual(self.read_lease()["pid"], os.getpid())
        handle.release(remove_empty_dir=True)
        self.assertFalse(os.path.exists(self.dir))

    def test_expired_lease_of_a_stalled_owner_is_taken_over(self):
        owner = self.child()
        owner.kill(signal.SIGSTOP)  # alive, but renews no more
        handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertEqual(self.read_lease()["token"], handle.record["token"])
        # The owner, woken up, finds its lease taken and says so.
        owner.kill(signal.SIGCONT)
        time.sleep(self.TTL)
        owner.kill(signal.SIGKILL)
        self.assertIn("Lost the ownership", owner.end())
        self.assertEqual(self.read_lease()["token"], handle.record["token"])
        handle.release()

    def test_dead_owner_on_this_host_is_taken_over_at_once(self):
        owner = self.child(ttl=60)
        owner.kill(signal.SIGKILL)
        owner.proc.wait()
        # Taken because its process is gone, not after a TTL of watching.
        with self.assertLogs(level="WARNING") as logs:
            handle = ownership.acquire(self.dir, _lease_ttl=60)
        self.assertIn(f"pid {owner.pid}, gone", "\n".join(logs.output))
        self.assertEqual(self.read_lease()["pid"], os.getpid())
        handle.release()

    def test_unrenewed_lease_is_taken_over_after_a_ttl_whatever_its_clock(
        self,
    ):
        # Another host's lease, expiring in an hour by its (skewed) clock,
        # that nobody renews: taken over after one TTL of watching it.
        self.write_lease(json.dumps(owner_records.foreign_lease()))
        start = time.monotonic()
        handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertGreaterEqual(time.monotonic() - start, self.TTL)
        self.assertEqual(self.read_lease()["token"], handle.record["token"])
        handle.release()

    def test_invalid_lease_rewritten_by_a_live_writer_is_refused(self):
        for name, (text, field) in _INVALID_LEASES.items():
            with self.subTest(name):
                self.dir = os.path.join(self.tmp, name)
                self.lease = os.path.join(self.dir, ownership.LEASE_FILE)
                self.rewrite_invalid_lease(text)
                with self.assertRaises(errors.BackupDirInUseError) as cm:
                    ownership.acquire(self.dir, _lease_ttl=self.TTL)
                message = str(cm.exception)
                self.assertIn("is invalid", message)
                self.assertIn(field, message)
                self.assertIn("Nothing in the directory was changed", message)
        # And in a process of its own: refused, no traceback.
        other = self.child()
        self.assertEqual(other.status, "REFUSED")
        self.assertNotIn("Traceback", other.end())

    def test_lease_replaced_while_being_read_is_watched(self):
        owner = self.child()
        real_kind_of_fd = paths.kind_of_fd
        replaced = []

        def kind_of_fd_after_a_renewal(fd):
            # The owner renews (replaces) its lease between this process's
            # open and its look at what it opened.
            if not replaced:
                with open(self.lease) as f:
                    self.write_lease(f.read())
                replaced.append(fd)
            return real_kind_of_fd(fd)

        with mock.patch.object(paths, "kind_of_fd", kind_of_fd_after_a_renewal):
            with self.assertRaises(errors.BackupDirInUseError) as cm:
                ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertLen(replaced, 1)
        self.assertIn(f"pid {owner.pid}", str(cm.exception))
        self.assertEqual(self.read_lease()["token"], owner.payload["token"])

    def test_lease_taken_while_a_taker_writes_is_not_overwritten(self):
        # Another process takes the free lease while this one writes its
        # own (a pause in its fsync): this one is refused.
        real_stage = lease._stage
        taken = []

        def stage_then_another_takes_it(path, record):
            staged = real_stage(path, record)
            if not taken:
                taken.append(path)
                self.write_lease(json.dumps(owner_records.foreign_lease()))
            return staged

        with mock.patch.object(lease, "_stage", stage_then_another_takes_it):
            with self.assertRaises(errors.BackupDirInUseError) as cm:
                ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertIn("another-host", str(cm.exception))
        self.assertEqual(self.read_lease()["token"], "theirs")
        self.assertEqual(os.listdir(self.dir), [ownership.LEASE_FILE])

    def test_renewal_paused_after_a_takeover_does_not_overwrite_it(self):
        handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        real_stage = lease._stage
        taken = threading.Event()

        def stage_then_another_takes_it(path, record):
            staged = real_stage(path, record)
            if threading.current_thread().name == "backup_restore-lease":
                # This process paused longer than a TTL: another took the
                # lease over meanwhile.
                if not taken.is_set():
                    self.write_lease(json.dumps(owner_records.foreign_lease()))
                    taken.set()
            return staged

        with mock.patch.object(lease, "_stage", stage_then_another_takes_it):
            self.assertTrue(taken.wait(30))
            with self.assertRaises(errors.BackupDirInUseError) as cm:
                handle.ensure()
        self.assertIn("another-host", str(cm.exception))
        self.assertEqual(self.read_lease()["token"], "theirs")
        handle.release()
        self.assertEqual(self.read_lease()["token"], "theirs")

    def test_directory_removed_while_a_lease_is_written_is_made_again(self):
        # Removed between the lease's staging and its rename (its last
        # owner ending, a user's rm -rf): the taker makes it again.
        real_stage = lease._stage
        removed = []

        def stage_then_a_removal(path, record):
            staged = real_stage(path, record)
            if not removed:
                removed.append(path)
                _rmtree(self.dir)
            return staged

        with mock.patch.object(lease, "_stage", stage_then_a_removal):
            handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertLen(removed, 1)
        self.assertEqual(self.read_lease()["token"], handle.record["token"])
        self.assertEqual(os.listdir(self.dir), [ownership.LEASE_FILE])
        handle.release()

    def test_directory_removed_as_an_invalid_lease_is_rewritten(self):
        handle = ownership.acquire(self.dir, _lease_ttl=60)
        self.write_lease("null")
        real_stage = lease._stage
        removed = []

        def stage_after_a_removal(path, record):
            if not removed:
                removed.append(path)
                _rmtree(self.dir)
            return real_stage(path, record)

        with mock.patch.object(lease, "_stage", stage_after_a_removal):
            with self.assertLogs(level="WARNING") as logs:
                handle.ensure()
        self.assertLen(removed, 1)
        self.assertIn("re-established", "\n".join(logs.output))
        self.assertEqual(self.read_lease()["token"], handle.record["token"])
        handle.release()

    def test_tampered_lease_of_a_renewing_owner_is_refused(self):
        owner = self.child()
        self.assertEqual(owner.status, "OWNED")
        for name, (text, _) in _INVALID_LEASES.items():
            with self.subTest(name):
                # Found invalid at once, then rewritten by the owner.
                self.write_lease(text)
                with self.assertRaises(errors.BackupDirInUseError):
                    ownership.acquire(self.dir, _lease_ttl=self.TTL)
                # The owner has put its own lease back.
                self.assertEqual(
                    self.read_lease()["token"], owner.payload["token"]
                )
        self.assertIsNone(owner.proc.poll())
        owner.release()

    def test_unrenewed_invalid_lease_is_taken_over_after_a_ttl(self):
        for name, (text, field) in _INVALID_LEASES.items():
            with self.subTest(name):
                self.write_lease(text)
                with self.assertLogs(level="WARNING") as logs:
                    handle = ownership.acquire(self.dir, _lease_ttl=1.0)
                self.assertEqual(
                    self.read_lease()["token"], handle.record["token"]
                )
                warning = "\n".join(logs.output)
                self.assertIn("is invalid", warning)
                self.assertIn(field, warning)
                handle.release()

    def test_deleted_directory_is_reclaimed_then_a_second_process_refused(
        self,
    ):
        handle = ownership.acquire(self.dir, _lease_ttl=2)
        # Re-established once, by ensure() or by the renewal thread if that
        # comes first.
        self.assert_reclaimed_then_refuses(
            handle,
            lambda: _rmtree(self.dir),
            ownership.LEASE_FILE,
            "was deleted or replaced",
        )
        handle.release(remove_empty_dir=True)
        self.assertFalse(os.path.exists(self.dir))

    def test_lease_renewal_reclaims_a_deleted_directory(self):
        handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        _rmtree(self.dir)
        # The renewal thread (every TTL/3) puts the lease back by itself.
        deadline = time.monotonic() + 30
        while not os.path.exists(self.lease):
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertEqual(self.child().status, "REFUSED")
        with self.assertNoLogs(level="WARNING"):
            handle.ensure()
        handle.release()

    def test_deleted_directory_taken_by_another_process_stops_the_owner(
        self,
    ):
        # Renewed every 20 s: the other process takes the missing lease
        # before this one's renewal would put it back.
        handle = ownership.acquire(self.dir, _lease_ttl=60)
        shutil.rmtree(self.dir)
        other = self.child()
        self.assertEqual(other.status, "OWNED")
        self.assert_taken_over_stops_the_owner(handle, other)

    def test_forced_by_the_environment(self):
        os.environ[ownership.FORCE_LEASE_ENV] = str(self.TTL)
        try:
            handle = ownership.acquire(self.dir)
        finally:
            del os.environ[ownership.FORCE_LEASE_ENV]
        self.assertEqual(os.listdir(self.dir), [ownership.LEASE_FILE])
        self.assertEqual(self.child().status, "REFUSED")
        handle.release()


class EngineTest(_ChildrenTest):
    def test_write_after_another_job_took_the_deleted_directory(self):
        import tensorflow as tf

        from backup_restore._src import engine as engine_lib

        engine = engine_lib.Engine(self.dir, async_backup=False)
        engine.start()
        checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
        engine.write(checkpoint, {"step": 1})
        (name,) = [n for n in os.listdir(self.dir) if n.startswith("backup-")]
        first_backup = os.path.join(self.tmp, "copy")
        shutil.copytree(os.path.join(self.dir, name), first_backup)
        shutil.rmtree(self.dir)
        other = self.child()
        self.assertEqual(other.status, "OWNED")
        before = self.snapshot()
        with self.assertRaises(errors.BackupDirInUseError) as cm:
            engine.write(checkpoint, {"step": 2})
        self.assertIn(f"pid {other.pid}", str(cm.exception))
        self.assertEqual(self.snapshot(), before)  # nothing written
        # Nor deleted: the directory is the other job's now.
        other_backup = os.path.join(self.dir, name)
        shutil.copytree(first_backup, other_backup)
        before = self.snapshot()
        engine.finish(delete=True)
        self.assertEqual(self.snapshot(), before)
        self.assertTrue(os.path.isdir(other_backup))


if __name__ == "__main__":
    absltest.main()
