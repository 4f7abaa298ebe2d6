"""The inspect CLI, run as a binary on real backup directories."""

import json
import os
import subprocess
import sys

from absl.testing import absltest

from testing import device
from testing import procs


def _inspect(*args):
    return subprocess.run(
        [sys.executable, procs.runfile("backup_restore/inspect"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


class InspectTest(absltest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        device.skip_if_device_absent()

    def _fit_backup(self, *extra):
        directory = os.path.join(self.create_tempdir().full_path, "b")
        run = procs.run(
            procs.runfile("backup_restore/examples/fit_trainer"),
            [
                f"--backup_dir={directory}",
                "--epochs=2",
                "--num_samples=64",
                "--save_freq=3",
                "--fail_at_step=7",
                *extra,
            ],
        )
        self.assertEqual(run.killed_by, 9, run.describe())
        return directory

    def test_text_report_of_a_fit_backup(self):
        directory = self._fit_backup()
        out = _inspect(directory)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("backup-00000002 (newest: resumed from)", out.stdout)
        self.assertIn("resumes at epoch 1, batch 2", out.stdout)
        self.assertIn("model weights", out.stdout)
        self.assertIn("optimizer state", out.stdout)
        self.assertIn("mid-epoch metric state", out.stdout)
        self.assertIn("verdict: OK", out.stdout)

    def test_json_and_verify_on_a_corrupt_backup(self):
        directory = self._fit_backup()
        backup = os.path.join(directory, "backup-00000002")
        data = next(n for n in os.listdir(backup) if ".data-" in n)
        with open(os.path.join(backup, data), "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))
        quick = _inspect("--json", directory)
        self.assertEqual(quick.returncode, 0, quick.stderr)
        self.assertFalse(json.loads(quick.stdout)["committed"][0]["corrupt"])
        full = _inspect("--verify", "--json", directory)
        self.assertEqual(full.returncode, 1, full.stderr)
        report = json.loads(full.stdout)
        self.assertTrue(report["committed"][0]["corrupt"])
        self.assertIn("checksum", report["committed"][0]["integrity"])
        self.assertIn("CORRUPT", report["verdict"])
        self.assertTrue(os.path.exists(os.path.join(backup, data)))

    def test_leftovers_are_listed(self):
        directory = os.path.join(self.create_tempdir().full_path, "b")
        run = procs.run(
            procs.runfile("backup_restore/examples/fit_trainer"),
            [
                f"--backup_dir={directory}",
                "--epochs=3",
                "--num_samples=64",
                "--kill_at_backup_stage=data_written",
                "--kill_at_backup_number=2",
            ],
        )
        self.assertEqual(run.killed_by, 9, run.describe())
        out = _inspect(directory)
        self.assertIn("leftover of an interrupted write", out.stdout)
        self.assertIn(".tmp-backup-00000002-", out.stdout)

    def test_custom_loop_backup(self):
        directory = os.path.join(self.create_tempdir().full_path, "b")
        run = procs.run(
            procs.runfile("backup_restore/examples/custom_loop_trainer"),
            [f"--backup_dir={directory}", "--steps=20", "--fail_at_step=12"],
        )
        self.assertEqual(run.killed_by, 9, run.describe())
        out = _inspect(directory)
        self.assertIn(
            "custom loop (BackupManager); resumes at step 10", out.stdout
        )
        self.assertIn("tf.data iterator position", out.stdout)

    def test_bad_paths(self):
        missing = _inspect("/nonexistent/backup_dir")
        self.assertEqual(missing.returncode, 2)
        self.assertIn("does not exist", missing.stderr)
        a_file = self.create_tempfile().full_path
        not_dir = _inspect(a_file)
        self.assertEqual(not_dir.returncode, 2)
        self.assertIn("is not a directory", not_dir.stderr)
        usage = _inspect()
        self.assertNotEqual(usage.returncode, 0)
        empty = _inspect(self.create_tempdir().full_path)
        self.assertEqual(empty.returncode, 0)
        self.assertIn("no committed backup", empty.stdout)


if __name__ == "__main__":
    absltest.main()
