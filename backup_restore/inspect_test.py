"""The inspect CLI, run as a binary on real backup directories."""

import json
import os
import shutil

from absl.testing import absltest

from backup_restore._src import atomicity
from backup_restore._src import manifest
from testing import dirs
from testing import procs
from testing import test_case
from testing import trainers


def _inspect(*args):
    return procs.run(
        procs.runfile("backup_restore/inspect"), args, result_file=False
    )


def _checkpoint_files(backup):
    """The checkpoint's files in `backup` (not the manifest, nor the
    record that the backup was made durable)."""
    return [
        n
        for n in os.listdir(backup)
        if n not in (atomicity.MANIFEST, atomicity.DURABLE)
    ]


class InspectTest(test_case.TestCase):
    def _killed_run(self, binary, *args):
        """Runs `binary` on self.dir until it SIGKILLs itself; returns
        self.dir, with what the run left there."""
        run = procs.run(binary, [f"--backup_dir={self.dir}", *args])
        self.assertEqual(run.killed_by, 9, run.describe())
        return self.dir

    def _fit_backup(self):
        return self._killed_run(
            trainers.fit_trainer(),
            "--epochs=2",
            "--num_samples=64",
            "--save_freq=3",
            "--fail_at_step=7",
        )

    def test_text_report_of_a_fit_backup(self):
        directory = self._fit_backup()
        out = _inspect(directory)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("backup-00000002 (newest)", out.stdout)
        self.assertIn(
            "fit() call #0 of the job (epochs=2, initial_epoch=0)", out.stdout
        )
        self.assertIn("resumes at epoch 1, batch 2", out.stdout)
        self.assertIn(
            "data: steps per epoch 4, batch size 16, num samples 64",
            out.stdout,
        )
        self.assertIn("model weights", out.stdout)
        self.assertIn("optimizer state", out.stdout)
        self.assertIn("mid-epoch metric state", out.stdout)
        self.assertIn("verdict: OK", out.stdout)

    def test_report_names_the_optimizers_and_variables_a_model_holds(self):
        directory = self._killed_run(
            trainers.fit_trainer(),
            "--model=gan",
            "--epochs=2",
            "--num_samples=64",
            "--save_freq=3",
            "--fail_at_step=7",
        )
        out = _inspect(directory)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(
            "optimizers_held=['optimizer', 'd_optimizer', 'g_optimizer']",
            out.stdout,
        )
        self.assertIn("variables_held_outside_the_weights=[]", out.stdout)

    def test_json_and_verify_on_a_corrupt_backup(self):
        directory = self._fit_backup()
        data = dirs.corrupt_data(
            os.path.join(directory, "backup-00000002"), offset=100
        )
        quick = _inspect("--json", directory)
        self.assertEqual(quick.returncode, 0, quick.stderr)
        self.assertFalse(json.loads(quick.stdout)["committed"][0]["corrupt"])
        full = _inspect("--verify", "--json", directory)
        self.assertEqual(full.returncode, 1, full.stderr)
        report = json.loads(full.stdout)
        self.assertTrue(report["committed"][0]["corrupt"])
        self.assertIn("checksum", report["committed"][0]["integrity"])
        self.assertIn("CORRUPT", report["verdict"])
        self.assertTrue(os.path.exists(data))

    def _damaged_copy(self, directory, source, damage):
        """Copies backup `source` to the next number and damages the copy."""
        seq = atomicity.parse_committed(source) + 1
        copy = os.path.join(directory, atomicity.committed_name(seq))
        shutil.copytree(os.path.join(directory, source), copy)
        with open(os.path.join(copy, atomicity.MANIFEST)) as f:
            metadata = json.load(f)["body"]["metadata"]
        names = damage(copy)
        atomicity.write_file_durably(
            os.path.join(copy, atomicity.MANIFEST),
            manifest.build(copy, names, metadata, marks_durable=False),
        )
        return os.path.basename(copy)

    @staticmethod
    def _like_issue_13(path):
        # What a failed asynchronous write on a full disk committed: only
        # the manifest and an empty ckpt_temp/.
        for name in os.listdir(path):
            os.remove(os.path.join(path, name))
        os.mkdir(os.path.join(path, "ckpt_temp"))
        return ["ckpt_temp"]

    @staticmethod
    def _empty_files(path):
        names = _checkpoint_files(path)
        for name in names:
            os.truncate(os.path.join(path, name), 0)
        return names

    @staticmethod
    def _half_data(path):
        # Sizes match the (rebuilt) manifest; the index claims more bytes
        # than the data files hold now.
        names = _checkpoint_files(path)
        for name in names:
            if ".data-" in name:
                full = os.path.join(path, name)
                os.truncate(full, os.path.getsize(full) // 2)
        return names

    def test_verify_fails_on_an_incomplete_or_unreadable_backup(self):
        directory = self._fit_backup()
        # The SIGKILLed trainer also left its (released) lock file.
        (intact,) = [
            n for n in os.listdir(directory) if n.startswith("backup-")
        ]
        for damage, why in [
            (self._like_issue_13, "incomplete checkpoint"),
            (self._empty_files, "incomplete checkpoint"),
            (self._half_data, "more than its data files hold"),
        ]:
            with self.subTest(damage=damage.__name__):
                damaged = self._damaged_copy(directory, intact, damage)
                self.addCleanup(
                    shutil.rmtree, os.path.join(directory, damaged), True
                )
                full = _inspect("--verify", "--json", directory)
                self.assertEqual(full.returncode, 1, full.stdout + full.stderr)
                report = json.loads(full.stdout)
                entry = {b["name"]: b for b in report["committed"]}[damaged]
                self.assertTrue(entry["corrupt"])
                self.assertIn(why, entry["integrity"])
                self.assertIn(
                    "training would resume from the newest intact one",
                    report["verdict"],
                )
                text = _inspect("--verify", directory)
                self.assertEqual(text.returncode, 1)
                self.assertRegex(
                    text.stdout, rf"{damaged}.*\n  integrity: CORRUPT"
                )
                shutil.rmtree(os.path.join(directory, damaged))

    def test_leftovers_are_listed(self):
        directory = self._killed_run(
            trainers.fit_trainer(),
            "--epochs=3",
            "--num_samples=64",
            "--kill_at_backup_stage=data_written",
            "--kill_at_backup_number=2",
        )
        out = _inspect(directory)
        self.assertIn("leftover of an interrupted write", out.stdout)
        self.assertIn(".tmp-backup-00000002-", out.stdout)

    def test_custom_loop_backup(self):
        directory = self._killed_run(
            trainers.custom_loop_trainer(), "--steps=20", "--fail_at_step=12"
        )
        out = _inspect(directory)
        self.assertIn(
            "custom loop (BackupManager); resumes at step 10", out.stdout
        )
        self.assertIn("tf.data iterator position", out.stdout)
        # Every tensor read back, the iterator's (a variant) included.
        full = _inspect("--verify", directory)
        self.assertEqual(full.returncode, 0, full.stdout + full.stderr)
        self.assertIn("verdict: OK", full.stdout)

    def test_bad_paths(self):
        missing = _inspect("/nonexistent/backup_dir")
        self.assertEqual(missing.returncode, 2)
        self.assertIn("does not exist", missing.stderr)
        a_file = self.create_tempfile().full_path
        not_dir = _inspect(a_file)
        self.assertEqual(not_dir.returncode, 2)
        self.assertIn("is not a directory", not_dir.stderr)
        for usage in (
            _inspect(),
            _inspect(a_file, a_file),
            _inspect("--no_such_flag", a_file),
        ):
            self.assertEqual(usage.returncode, 2, usage.stderr)
            self.assertIn("usage: inspect", usage.stderr)
        empty = _inspect(self.tmp)
        self.assertEqual(empty.returncode, 0)
        self.assertIn("no committed backup", empty.stdout)


if __name__ == "__main__":
    absltest.main()
