"""gs:// for real: TensorFlow's own gs:// client against a local GCS server.

The test re-executes itself inside a private network namespace where the
googleapis names lead to fake-gcs-server behind an HTTPS front
(testing/gcs_server.py); the trainers it starts inherit the namespace. The
front counts requests (printed and bounded here) and injects HTTP errors.
TensorFlow's stat cache is left at its default: the lease must hold under it.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

import backup_restore
from backup_restore._src import errors
from backup_restore._src import lease as lease_lib
from backup_restore._src import owner_record
from backup_restore._src import ownership
from backup_restore._src import tf_checkpoint_read
from testing import gcs_server
from testing import owner_records
from testing import procs
from testing import test_case
from testing import trainers

_SERVER = gcs_server.GcsServer()

# 64 samples / batch 16 = 4 batches per epoch, 3 epochs.
_ARGS = ["--epochs=3", "--num_samples=64", "--batch_size=16", "--seed=5"]

# The requests a BackupManager backup and restore of a small model cost on
# gs://, as audited (docs/design.md, "Requests on object stores"): the first
# backup, each later one (which also deletes the one before it), a restore
# (the owner's lease taken included). Counted with TensorFlow's stat cache
# off, so the same every run (with its default 5 s cache: 28, 33, 21, as
# far as lookups fall within 5 s of each other). The lease's renewals, on
# their own clock, are not counted.
_REQUESTS_FIRST_BACKUP = 30
_REQUESTS_PER_BACKUP = 36
_REQUESTS_PER_RESTORE = 30

# Backs up a 64x64 variable 3 times in gs:// directory argv[1] with a
# BackupManager, then restores it in a new one, collecting the requests of
# each from the front on loopback port argv[2]; prints them as one JSON line.
_COUNTER = """
import json, sys
import tensorflow as tf
import backup_restore
from testing import gcs_server
front = gcs_server.GcsServer.attach(int(sys.argv[2]))
def manager(weights):
    return backup_restore.BackupManager(
        sys.argv[1], async_backup=False, weights=weights)
weights = tf.Variable(tf.zeros([64, 64]))
m = manager(weights)
m.restore()
phases = []
for step in (1, 2, 3):
    weights.assign_add(tf.ones_like(weights))
    front.reset_counts()
    m.backup(step)
    phases.append(front.requests())
m.finish(delete=False)
m = manager(tf.Variable(tf.zeros([64, 64])))
front.reset_counts()
assert m.restore() == 3
phases.append(front.requests())
m.finish()
print("REQUESTS", json.dumps(phases), flush=True)
"""


def _counted(requests, renewals=True):
    """Requests by kind; without the lease's uploads unless `renewals`."""
    return collections.Counter(
        r.split(" /")[0]
        for r in requests
        if renewals
        or not (
            r.startswith(("POST upload", "PUT upload"))
            and ownership.LEASE_FILE in r
        )
    )


def setUpModule():
    if gcs_server.skip_reason() is None:
        _SERVER.start()


def tearDownModule():
    _SERVER.stop()


class GcsCase(test_case.TestCase):
    """A fresh gs:// backup_dir per case (`self.dir`), skipped with the
    reason where the namespace is unavailable."""

    def setUp(self):
        reason = gcs_server.skip_reason()
        if reason is not None:
            self.skipTest(reason)
        super().setUp()
        self.prefix = f"{type(self).__name__}-{uuid.uuid4().hex[:8]}/backups"
        self.dir = _SERVER.path(self.prefix)

    def names(self):
        """The objects under self.dir, relative to it, from the server."""
        return sorted(
            n[len(self.prefix) + 1 :]
            for n in _SERVER.object_names(self.prefix + "/")
        )

    def backup_names(self):
        return sorted(
            {n.split("/")[0] for n in self.names() if n.startswith("backup-")}
        )


class GcsKillTest(procs.FlavouredRuns, GcsCase):
    """A trainer SIGKILLed mid-run on gs://, then restarted (Keras 3);
    GcsKillTfKerasTest: the same with tf-keras."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.reference = None

    def _reference(self):
        # Uninterrupted, backing up on the local disk: backups do not change
        # training, and the comparison is with the gs:// run.
        if type(self).reference is None:
            run = self.run_child(
                trainers.fit_trainer(),
                [*_ARGS, f"--backup_dir={self.tmp}/reference"],
            )
            self.assertEqual(run.returncode, 0, run.describe())
            type(self).reference = run.result
        return type(self).reference

    def _args(self, save_freq, *extra):
        return [
            *_ARGS,
            f"--backup_dir={self.dir}",
            f"--save_freq={save_freq}",
            *extra,
        ]

    @parameterized.named_parameters(
        ("mid_epoch", "3", 7, [1, 2]),
        ("epoch_level", "epoch", 6, [1, 0]),
    )
    def test_sigkill_then_restart_resumes_exactly(self, save_freq, kill, at):
        # Not ours: completion must leave it.
        _SERVER.write_object(f"{self.prefix}/notes.txt", b"the user's")
        run = self.run_child(
            trainers.fit_trainer(),
            self._args(save_freq, f"--fail_at_step={kill}"),
        )
        self.assertEqual(run.killed_by, signal.SIGKILL, run.describe())
        self.assertNotEqual(self.backup_names(), [])
        run = self.run_child(trainers.fit_trainer(), self._args(save_freq))
        self.assertEqual(run.returncode, 0, run.describe())
        reference = self._reference()
        self.assertEqual(run.result["resumed_from"], at, run.describe())
        self.assertEqual(
            run.result["weights_sha256"], reference["weights_sha256"]
        )
        self.assertEqual(run.result["history"], reference["history"])
        self.assertEqual(
            run.result["optimizer_iterations"],
            reference["optimizer_iterations"],
        )
        # Completion deleted every object it wrote, the lease included.
        self.assertEqual(self.names(), ["notes.txt"])


class GcsKillTfKerasTest(GcsKillTest):
    FLAVOUR = "tf_keras"


class GcsBackupFaultsTest(GcsCase):
    """Half-written and corrupt backups on gs://, left by real kills (the
    store is flavour-free: Keras 3 trainers only)."""

    def _run(self, *extra):
        return procs.run(
            trainers.fit_trainer(),
            [*_ARGS, f"--backup_dir={self.dir}", "--save_freq=epoch", *extra],
        )

    def test_unfinished_backup_is_skipped(self):
        # Written but not committed. (The trainer's half_written stage
        # truncates a local file: it has no gs:// form.)
        run = self._run(
            "--kill_at_backup_stage=before_commit", "--kill_at_backup_number=2"
        )
        self.assertEqual(run.killed_by, signal.SIGKILL, run.describe())
        self.assertTrue(
            any("backup-00000002" in n for n in self.names()), self.names()
        )
        run = self._run()
        self.assertEqual(run.returncode, 0, run.describe())
        self.assertEqual(run.result["resumed_from"], [1, 0])
        self.assertEqual(self.names(), [])

    def test_corrupt_newest_falls_back(self):
        run = self._run(
            "--kill_at_backup_stage=committed", "--kill_at_backup_number=2"
        )
        self.assertEqual(run.killed_by, signal.SIGKILL, run.describe())
        self.assertEqual(
            self.backup_names(), ["backup-00000001", "backup-00000002"]
        )
        # A bad bit in the newest backup's data, the object's size kept.
        (shard,) = [
            n
            for n in self.names()
            if n.startswith("backup-00000002/") and ".data-" in n
        ]
        data = bytearray(_SERVER.read_object(f"{self.prefix}/{shard}"))
        data[len(data) // 2] ^= 0xFF
        _SERVER.write_object(f"{self.prefix}/{shard}", bytes(data))
        run = self._run("--epochs=2")
        self.assertEqual(run.returncode, 0, run.describe())
        self.assertEqual(run.result["resumed_from"], [1, 0], run.describe())
        self.assertIn("backup-00000002", run.stderr)  # named as skipped

    def test_corrupt_only_backup_is_refused_and_kept(self):
        weights = tf.Variable(tf.range(1000, dtype=tf.float32))
        manager = backup_restore.BackupManager(
            self.dir, async_backup=False, weights=weights
        )
        self.assertEqual(manager.restore(), 0)
        manager.backup(1)
        manager.finish(delete=False)
        names = self.names()
        (shard,) = [n for n in names if ".data-" in n]
        data = bytearray(_SERVER.read_object(f"{self.prefix}/{shard}"))
        data[-5] ^= 0xFF
        _SERVER.write_object(f"{self.prefix}/{shard}", bytes(data))
        manager = backup_restore.BackupManager(
            self.dir, async_backup=False, weights=weights
        )
        with self.assertRaisesRegex(
            errors.BackupCorruptError, "Nothing was deleted"
        ):
            manager.restore()
        manager.finish(delete=False)
        self.assertEqual(self.names(), names)


class GcsManagerTest(GcsCase):
    """BackupManager on gs:// in this process: round trip, request counts,
    failing writes, and the inspect CLI."""

    def _manager(self, weights, **kwargs):
        return backup_restore.BackupManager(
            self.dir, async_backup=False, weights=weights, **kwargs
        )

    def test_round_trip_and_requests_per_backup_and_restore(self):
        # In this process, with TensorFlow's default stat cache: the counts
        # a job pays (printed); the bounds hold a fortiori.
        weights = tf.Variable(tf.zeros([64, 64]))
        manager = self._manager(weights)
        self.assertEqual(manager.restore(), 0)
        per_backup = []
        for step in (1, 2, 3):
            weights.assign_add(tf.ones_like(weights))
            _SERVER.reset_counts()
            manager.backup(step)
            per_backup.append(_counted(_SERVER.requests(), renewals=False))
        manager.finish(delete=False)
        self.assertEqual(self.backup_names(), ["backup-00000003"])

        restored = tf.Variable(tf.zeros([64, 64]))
        manager = self._manager(restored)
        _SERVER.reset_counts()
        self.assertEqual(manager.restore(), 3)
        per_restore = _counted(_SERVER.requests())
        np.testing.assert_array_equal(restored.numpy(), weights.numpy())
        manager.finish()
        self.assertEqual(self.names(), [])
        self._check_counts(per_backup, per_restore, "default stat cache")

    def test_a_restore_in_parts_reads_each_part_once(self):
        # Four 16 KB variables, read as if large: four RestoreV2 ops at
        # once, each reading its own run of the data object.
        def manager(variables):
            return backup_restore.BackupManager(
                self.dir,
                async_backup=False,
                **{f"w{i}": v for i, v in enumerate(variables)},
            )

        source = manager(
            [tf.Variable(tf.fill([64, 64], float(i))) for i in range(4)]
        )
        self.assertEqual(source.restore(), 0)
        source.backup(1)
        source.finish(delete=False)
        restored = [tf.Variable(tf.fill([64, 64], -1.0)) for _ in range(4)]
        target = manager(restored)
        threads = []
        real = tf_checkpoint_read.io_ops.restore_v2

        def counted(*args, **kwargs):
            threads.append(threading.current_thread().name)
            return real(*args, **kwargs)

        with (
            mock.patch.object(tf_checkpoint_read, "_MIN_PART_BYTES", 16 << 10),
            mock.patch.object(tf_checkpoint_read, "_usable_cpus", lambda: 4),
            mock.patch.object(tf_checkpoint_read.io_ops, "restore_v2", counted),
        ):
            _SERVER.reset_counts()
            self.assertEqual(target.restore(), 1)
        requests = _SERVER.requests()
        data_reads = [
            r for r in requests if r.startswith("GET") and ".data-" in r
        ]
        index_reads = [
            r
            for r in requests
            if r.startswith("GET media") and r.endswith(".index")
        ]
        print(
            "gs:// reads of a restore in 4 parts: data object "
            f"{len(data_reads)}, index {len(index_reads)}"
        )
        self.assertLen(set(threads), 4)
        self.assertLen(data_reads, 4)
        for i, variable in enumerate(restored):
            np.testing.assert_array_equal(variable.numpy(), float(i))
        target.finish()
        self.assertEqual(self.names(), [])

    def test_requests_per_backup_and_restore_without_the_stat_cache(self):
        # In a child process with the stat cache off: every lookup is sent,
        # so the counts do not depend on timing.
        proc = _python(
            _COUNTER,
            self.dir,
            _SERVER.control_port,
            # A lease renewed every 20 min: no renewal's read falls into
            # a phase however slow the machine is.
            env={
                "GCS_STAT_CACHE_MAX_AGE": "0",
                ownership.FORCE_LEASE_ENV: "3600",
            },
        )
        stdout, stderr = proc.communicate(timeout=600)
        line = [x for x in stdout.splitlines() if x.startswith("REQUESTS ")]
        self.assertLen(line, 1, f"{stdout}\n{stderr[-5000:]}")
        *backups, restore = json.loads(line[0][len("REQUESTS ") :])
        self._check_counts(
            [_counted(r, renewals=False) for r in backups],
            _counted(restore),
            "stat cache off",
        )
        self.assertEqual(self.names(), [])

    def _check_counts(self, per_backup, per_restore, how):
        named = [f"backup {n}" for n in range(1, len(per_backup) + 1)]
        for name, counts in zip(
            [*named, "restore"], [*per_backup, per_restore], strict=True
        ):
            total = sum(counts.values())
            kinds = dict(sorted(counts.items()))
            print(f"gs:// requests ({how}), {name}: {total} {kinds}")
        bounds = [_REQUESTS_FIRST_BACKUP] + [_REQUESTS_PER_BACKUP] * 2
        for counts, bound in zip(per_backup, bounds, strict=True):
            self.assertLessEqual(sum(counts.values()), bound, counts)
        self.assertLessEqual(
            sum(per_restore.values()), _REQUESTS_PER_RESTORE, per_restore
        )
        # A restore reads, but for the owner's lease (one resumable upload).
        self.assertEqual(
            {k: n for k, n in per_restore.items() if not k.startswith("GET")},
            {"POST upload": 1, "PUT upload": 1},
        )

    # A 403 is refused at once; a 429 or 503 after TensorFlow's retries,
    # which gcs_server.RETRY_ENVIRONMENT bounds to seconds.
    @parameterized.named_parameters(
        ("denied_403", 403), ("throttled_429", 429), ("unavailable_503", 503)
    )
    def test_failing_write_raises_and_keeps_the_previous_backup(self, status):
        weights = tf.Variable(tf.zeros([8]))
        manager = self._manager(weights)
        manager.restore()
        weights.assign_add(tf.ones([8]))
        manager.backup(1)
        weights.assign_add(tf.ones([8]))
        _SERVER.fail(status, method="POST", path_contains="/upload/")
        try:
            with self.assertRaises(errors.BackupWriteError) as cm:
                manager.backup(2)
        finally:
            injected = _SERVER.clear_faults()
        self.assertGreater(injected, 0)
        self.assertIn(str(status), str(cm.exception))
        manager.finish(delete=False)
        self.assertEqual(self.backup_names(), ["backup-00000001"])
        restored = tf.Variable(tf.zeros([8]))
        manager = self._manager(restored)
        self.assertEqual(manager.restore(), 1)
        np.testing.assert_array_equal(restored.numpy(), np.ones([8]))
        manager.finish()

    def test_inspect_cli_is_read_only(self):
        weights = tf.Variable(tf.zeros([8]))
        manager = self._manager(weights)
        manager.restore()
        manager.backup(4)
        manager.finish(delete=False)
        names = self.names()
        _SERVER.reset_counts()
        run = procs.run(
            procs.runfile("backup_restore/inspect"),
            ["--verify", self.dir],
            result_file=False,
        )
        self.assertEqual(run.returncode, 0, run.describe())
        self.assertIn("backup-00000001 (newest)", run.stdout)
        self.assertEqual(_SERVER.writes(), 0, _SERVER.counts())
        self.assertEqual(self.names(), names)


# A contender: tries to take the ownership of argv[1] (lease TTL argv[2])
# argv[3] times in this one process (TensorFlow's stat cache lives as long as
# the process); prints one JSON line of outcomes.
_CONTENDER = """
import json, sys
from backup_restore._src import errors, ownership
outcomes = []
for _ in range(int(sys.argv[3])):
    try:
        handle = ownership.acquire(sys.argv[1], _lease_ttl=float(sys.argv[2]))
    except errors.BackupDirInUseError as e:
        outcomes.append("refused" if "in use by" in str(e) else str(e))
    except Exception as e:
        outcomes.append(f"{type(e).__name__}: {e}")
    else:
        outcomes.append("ACQUIRED")
        handle.release()
print("OUTCOMES", json.dumps(outcomes), flush=True)
"""

# An owner that holds argv[1] with lease TTL argv[2] until killed.
_OWNER = """
import sys, time
from backup_restore._src import ownership
handle = ownership.acquire(sys.argv[1], _lease_ttl=float(sys.argv[2]))
print("OWNED", flush=True)
time.sleep(3600)
"""


def _python(code, *args, env=None, **kwargs):
    """Runs `code` in a child Python process (this one's environment plus
    `env`)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **(env or {}))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


class GcsLeaseTest(GcsCase):
    """The lease on gs:// under TensorFlow's default stat cache."""

    TTL = 1.5
    ATTEMPTS = 25

    def _contend(self, attempts=ATTEMPTS):
        proc = _python(_CONTENDER, self.dir, self.TTL, attempts)
        stdout, stderr = proc.communicate(timeout=600)
        line = [x for x in stdout.splitlines() if x.startswith("OUTCOMES ")]
        self.assertLen(line, 1, f"{stdout}\n{stderr[-5000:]}")
        return json.loads(line[0][len("OUTCOMES ") :]), stderr

    def test_second_job_refused_every_time_while_the_owner_renews(self):
        handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.addCleanup(handle.release)
        outcomes, stderr = self._contend()
        self.assertEqual(outcomes, ["refused"] * self.ATTEMPTS, stderr[-5000:])
        handle.ensure()  # still the owner
        self.assertFalse(handle.lost)

    def test_dead_owner_on_this_host_is_taken_over(self):
        owner = _python(_OWNER, self.dir, self.TTL)
        self.assertEqual(owner.stdout.readline().strip(), "OWNED")
        owner.kill()
        owner.communicate()
        handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertEqual(handle.record["pid"], os.getpid())
        handle.release()
        # Only the directory's placeholder object is left: no lease.
        self.assertEqual([n for n in self.names() if n], [])

    def _foreign_lease(self, **changes):
        return owner_records.foreign_lease(
            ttl=self.TTL, expires_in=self.TTL, **changes
        )

    def test_unrenewed_lease_of_another_host_is_taken_over_after_expiry(self):
        _SERVER.write_object(
            f"{self.prefix}/{ownership.LEASE_FILE}",
            lease_lib.encode(self._foreign_lease()),
        )
        with self.assertLogs(level="WARNING") as logs:
            handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertIn("Taking over", "\n".join(logs.output))
        record = json.loads(
            _SERVER.read_object(f"{self.prefix}/{ownership.LEASE_FILE}")
        )
        self.assertEqual(record["token"], handle.record["token"])
        handle.release()

    def _renew_old_format(self, stop):
        """Rewrites an earlier release's lease (unpadded JSON, its length
        changing) every TTL/3 until `stop` is set, as a live owner of that
        release on another host would."""
        n = 0
        while not stop.is_set():
            record = self._foreign_lease(command="train.py" + "x" * (n % 7))
            _SERVER.write_object(
                f"{self.prefix}/{ownership.LEASE_FILE}",
                json.dumps(record).encode(),
            )
            n += 1
            stop.wait(self.TTL / 3)

    def test_renewed_lease_of_an_earlier_release_is_refused(self):
        stop = threading.Event()
        thread = threading.Thread(
            target=self._renew_old_format, args=(stop,), daemon=True
        )
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(stop.set)
        outcomes, stderr = self._contend(attempts=10)
        self.assertEqual(outcomes, ["refused"] * 10, stderr[-5000:])

    def test_expired_lease_of_an_earlier_release_is_taken_over(self):
        _SERVER.write_object(
            f"{self.prefix}/{ownership.LEASE_FILE}",
            json.dumps(self._foreign_lease()).encode(),
        )
        with self.assertLogs(level="WARNING") as logs:
            handle = ownership.acquire(self.dir, _lease_ttl=self.TTL)
        self.assertIn("earlier release", "\n".join(logs.output))
        raw = _SERVER.read_object(f"{self.prefix}/{ownership.LEASE_FILE}")
        self.assertLen(raw, lease_lib.LEASE_SIZE)
        self.assertEqual(json.loads(raw)["token"], handle.record["token"])
        self.assertEqual(
            owner_record.invalid_fields(json.loads(raw), lease=True), {}
        )
        handle.release()


if __name__ == "__main__":
    gcs_server.main()
