"""One job per backup_dir, with real training processes.

Job A trains in a child process and owns its backup_dir. Job B, the same
trainer started on the same directory, must be refused with
BackupDirInUseError naming A, and change nothing; A must finish (or, once
killed, B must resume A's backup at once).
"""

import os
import shutil
import signal

from absl.testing import absltest
from absl.testing import parameterized

from testing import procs
from testing import test_case
from testing import trainers

# 64 samples / batch 16 = 4 batches per epoch, 3 epochs; a backup per epoch.
_ARGS = ["--epochs=3", "--num_samples=64", "--batch_size=16", "--seed=5"]
# ownership.FORCE_LEASE_ENV (not imported: the test needs only the trainer).
_FORCE_LEASE_ENV = "BACKUP_RESTORE_TESTONLY_LEASE_TTL"


def _snapshot(directory):
    """relative path -> (size, mtime) of everything under `directory`."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.stat(path)
            found[os.path.relpath(path, directory)] = (
                st.st_size if name in files else None,
                st.st_mtime_ns,
            )
    return found


class InUseTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        self.args = [*_ARGS, f"--backup_dir={self.dir}"]

    def _start(self, *extra):
        job = procs.start(trainers.fit_trainer(), [*self.args, *extra])
        self.addCleanup(job.kill)
        return job

    def _assert_refused(self, run, owner_pid):
        self.assertNotEqual(run.returncode, 0, run.describe())
        self.assertIsNone(run.result, run.describe())
        self.assertIn("BackupDirInUseError", run.stderr, run.describe())
        self.assertIn(f"pid {owner_pid} on host", run.stderr, run.describe())
        self.assertIn("Nothing in the directory was changed", run.stderr)

    def test_refused_while_the_owner_has_a_backup_in_flight(self):
        # A second job B on A's backup_dir: B's start-up must not remove
        # A's in-flight backup (A would fail with BackupWriteError).
        owner = self._start("--persist_delay_seconds=3")
        line = owner.wait_for_line("PERSIST DELAYED in ")
        # Frozen while the persist of its first backup waits: published
        # (renamed into place), its fsync and the deletion of older backups
        # still to come.
        owner.signal(signal.SIGSTOP)
        in_flight = line.removeprefix("PERSIST DELAYED in ")
        self.assertStartsWith(os.path.basename(in_flight), "backup-")
        self.assertNotEmpty(os.listdir(in_flight))
        before = _snapshot(self.dir)

        self._assert_refused(
            procs.run(trainers.fit_trainer(), self.args), owner.pid
        )
        self.assertEqual(_snapshot(self.dir), before)

        owner.signal(signal.SIGCONT)
        run = owner.finish()
        self.assertEqual(run.returncode, 0, run.describe())
        self.assertNotIn("BackupWriteError", run.stderr)
        self.assertEqual(run.result["epochs_run"], 3)
        self.assertIsNone(run.result["resumed_from"])
        self.assertFalse(os.path.exists(self.dir), "deleted on completion")

    @parameterized.named_parameters(
        ("flock", None, ".backup_restore.lock"),
        # A lease renewed every TTL/3, as on gs://; forced on a local path.
        ("lease", "2", ".backup_restore.lease"),
    )
    def test_killed_owner_does_not_block_the_next_job(self, lease_ttl, name):
        if lease_ttl is not None:
            os.environ[_FORCE_LEASE_ENV] = lease_ttl
            self.addCleanup(os.environ.pop, _FORCE_LEASE_ENV)
        # A pauses at batch 6 (epoch 1), its epoch-0 backup committed.
        owner = self._start("--fail_at_step=6", "--fail_with=pause")
        owner.wait_for_line("PAUSED")
        self.assertIn(name, os.listdir(self.dir))
        before = _snapshot(self.dir)
        self._assert_refused(
            procs.run(trainers.fit_trainer(), self.args), owner.pid
        )
        after = _snapshot(self.dir)
        if lease_ttl is not None:
            # Renewed meanwhile by the owner (a temporary, then a rename).
            before, after = (
                {k: v for k, v in d.items() if not k.startswith(name)}
                for d in (before, after)
            )
        self.assertEqual(after, before)

        owner.signal(signal.SIGKILL)
        self.assertEqual(owner.finish().killed_by, signal.SIGKILL)
        # Started at once: the dead owner's lock (or lease, whose process is
        # gone from this host) does not stand in the way.
        run = procs.run(trainers.fit_trainer(), self.args)
        self.assertEqual(run.returncode, 0, run.describe())
        self.assertEqual(run.result["resumed_from"], [1, 0], run.describe())
        self.assertEqual(run.result["history_epochs"], [0, 1, 2])
        self.assertFalse(os.path.exists(self.dir), "deleted on completion")

    def test_owner_stops_when_another_job_took_its_deleted_directory(self):
        # A pauses at batch 6 (epoch 1), its epoch-0 backup committed; a
        # SIGTERM then makes it back up at that batch.
        owner = self._start(
            "--fail_at_step=6",
            "--fail_with=pause",
            "--fail_after_backup_committed",
            "--save_before_preemption",
        )
        owner.wait_for_line("PAUSED")
        shutil.rmtree(self.dir)  # the user deletes A's backup_dir
        # B, started on it, finds it free and owns it; it pauses at batch 2.
        other = self._start("--fail_at_step=2", "--fail_with=pause")
        other.wait_for_line("PAUSED")
        before = _snapshot(self.dir)

        owner.signal(signal.SIGTERM)
        run = owner.finish()
        # A's next backup is refused before anything is written.
        self.assertNotEqual(run.returncode, 0, run.describe())
        self.assertIn("BackupDirInUseError", run.stderr, run.describe())
        self.assertIn(f"pid {other.pid} on host", run.stderr)
        self.assertIn("deleted or replaced", run.stderr)
        self.assertEqual(_snapshot(self.dir), before)
        self.assertIsNone(other.proc.poll())


if __name__ == "__main__":
    absltest.main()
