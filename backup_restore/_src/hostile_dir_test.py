"""A backup_dir holding planted entries: nothing outside it is touched.

Symbolic links named like backup_restore's entries point at a directory and
a file outside backup_dir; a regular file and a FIFO take the names of
backups. Training from scratch, a restart, completion, BackupManager and the
inspect CLI must leave the outside byte-identical and the planted entries
where they are, and a link inside a backup is never read through.
"""

import hashlib
import os
import shutil

import tensorflow as tf
from absl import logging
from absl.testing import absltest

import backup_restore
from backup_restore._src import atomicity
from backup_restore._src import store
from testing import fit_test_case
from testing import keras_callbacks
from testing import procs
from testing import synthetic
from testing import test_case

SAMPLES, BATCH, EPOCHS = 32, 8, 2  # 4 batches per epoch

# Entries planted in backup_dir: name -> what it is.
_LINK_TO_DIR = ("backup-00000099", ".tmp-backup-00000098-abcdefabcdef")
_LINK_TO_FILE = (".tmp-backup-probe-abcdef123456", "backup-00000097")
_REGULAR_FILE = "backup-00000096"
_FIFO = "backup-00000095"


def _tree_digest(root: str) -> dict:
    """path -> SHA-256 of every file and link under `root` (and the listing
    itself), so that a deleted, added, truncated or rewritten file shows."""
    digest = {}
    for parent, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = os.path.join(parent, name)
            if os.path.islink(path):
                digest[path] = "link:" + os.readlink(path)
            elif os.path.isfile(path):
                digest[path] = _file_digest(path)
            else:
                digest[path] = "dir"
    return digest


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class _HostileDir:
    """An outside directory and file, and a backup_dir of planted entries."""

    def __init__(self, test, backup_dir):
        self.backup_dir = backup_dir
        self.outside = os.path.join(test.tmp, "outside")
        os.makedirs(os.path.join(self.outside, "sub"))
        for name in ("precious.txt", "sub/nested.txt", "ckpt.index"):
            with open(os.path.join(self.outside, name), "w") as f:
                f.write(f"user data in {name}\n")
        self.outside_file = os.path.join(test.tmp, "outside_file.txt")
        with open(self.outside_file, "w") as f:
            f.write("a file of the user's, outside backup_dir\n")
        os.makedirs(backup_dir, exist_ok=True)
        for name in _LINK_TO_DIR:
            os.symlink(self.outside, os.path.join(backup_dir, name))
        for name in _LINK_TO_FILE:
            os.symlink(self.outside_file, os.path.join(backup_dir, name))
        with open(os.path.join(backup_dir, _REGULAR_FILE), "w") as f:
            f.write("the user's own file\n")
        os.mkfifo(os.path.join(backup_dir, _FIFO))
        self.planted = sorted(
            [*_LINK_TO_DIR, *_LINK_TO_FILE, _REGULAR_FILE, _FIFO]
        )
        self.before = self.digest()

    def digest(self) -> dict:
        return {
            **_tree_digest(self.outside),
            "file": _file_digest(self.outside_file),
            "planted": {
                n: os.path.islink(os.path.join(self.backup_dir, n))
                for n in os.listdir(self.backup_dir)
                if n in self.planted
            },
        }

    def assert_untouched(self, test):
        test.assertEqual(self.digest(), self.before)


def _fit(keras, backup_dir, *extra_callbacks):
    keras.utils.set_random_seed(5)
    model = synthetic.regression_model("tiny", flavour=_flavour(keras))
    x, y = synthetic.regression_data(SAMPLES, seed=2)
    callback = backup_restore.BackupAndRestore(backup_dir, save_freq=3)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[*extra_callbacks, callback],
    )
    return model


def _flavour(keras):
    return next(f for f, k in synthetic.KERAS.items() if k is keras)


class HostileDirFitTest(fit_test_case.FitTestCase):
    def setUp(self):
        super().setUp()
        self.hostile = _HostileDir(self, self.dir)

    def test_fresh_start_to_completion_touches_nothing_outside(self):
        with self.assertLogs(level=logging.WARNING) as logs:
            _fit(self.keras, self.dir)
        self.hostile.assert_untouched(self)
        # Completion deleted only our own backups; the planted stay.
        self.assertEqual(sorted(os.listdir(self.dir)), self.hostile.planted)
        warnings = [r for r in logs.output if "not (never followed" in r]
        self.assertNotEmpty(warnings, logs.output)
        for name in self.hostile.planted:
            self.assertIn(name, warnings[0])

    def test_restart_resumes_and_touches_nothing_outside(self):
        with self.assertRaises(keras_callbacks.Interrupted):
            _fit(self.keras, self.dir, keras_callbacks.InterruptAt(5))
        self.hostile.assert_untouched(self)
        ours = [n for n in os.listdir(self.dir) if atomicity.parse_committed(n)]
        self.assertNotEqual(sorted(ours), self.hostile.planted)
        keras_callbacks.simulate_restart()
        resumed = keras_callbacks.Recorder()
        _fit(self.keras, self.dir, resumed)
        # Resumed from the backup after batch 3, not from a planted entry.
        self.assertEqual(resumed.batches[0], (0, 3))
        self.hostile.assert_untouched(self)
        self.assertEqual(sorted(os.listdir(self.dir)), self.hostile.planted)

    def test_a_link_inside_a_backup_is_not_read_through(self):
        with self.assertRaises(keras_callbacks.Interrupted):
            _fit(self.keras, self.dir, keras_callbacks.InterruptAt(5))
        # The backup's manifest is swapped for a link to an intact copy
        # outside: were the link followed, the restart would resume.
        (backup,) = [
            n
            for n in os.listdir(self.dir)
            if n not in self.hostile.planted and atomicity.parse_committed(n)
        ]
        manifest = os.path.join(self.dir, backup, "manifest.json")
        copy = os.path.join(self.tmp, "manifest_copy.json")
        shutil.copy(manifest, copy)
        os.remove(manifest)
        os.symlink(copy, manifest)
        keras_callbacks.simulate_restart()
        with self.assertRaisesRegex(
            backup_restore.BackupCorruptError, "symbolic link"
        ):
            _fit(self.keras, self.dir)
        self.hostile.assert_untouched(self)
        self.assertTrue(os.path.islink(manifest))  # nothing was deleted
        self.assertTrue(os.path.exists(copy))

    def test_a_backup_dir_that_is_a_link_is_used(self):
        # backup_dir itself is the directory the user named, link or not.
        real = os.path.join(self.tmp, "real_dir")
        os.mkdir(real)
        link = os.path.join(self.tmp, "link_dir")
        os.symlink(real, link)
        with self.assertRaises(keras_callbacks.Interrupted):
            _fit(self.keras, link, keras_callbacks.InterruptAt(5))
        self.assertTrue(
            any(atomicity.parse_committed(n) for n in os.listdir(real))
        )
        keras_callbacks.simulate_restart()
        resumed = keras_callbacks.Recorder()
        _fit(self.keras, link, resumed)
        self.assertEqual(resumed.batches[0], (0, 3))
        self.assertTrue(os.path.islink(link))

    def test_a_linked_lock_file_is_refused_and_its_target_kept(self):
        os.symlink(
            self.hostile.outside_file,
            os.path.join(self.dir, ".backup_restore.lock"),
        )
        with self.assertRaisesRegex(
            backup_restore.BackupDirUnsafeError, "symbolic link"
        ):
            _fit(self.keras, self.dir)
        self.hostile.assert_untouched(self)


HostileDirFitTfKerasTest = test_case.tf_keras_variant(HostileDirFitTest)


class HostileDirTest(test_case.TestCase):
    """BackupManager and the inspect CLI (no Keras model involved)."""

    def setUp(self):
        super().setUp()
        self.hostile = _HostileDir(self, self.dir)

    def _manager(self, value):
        weights = tf.Variable([value, value])
        manager = backup_restore.BackupManager(
            self.dir, save_freq=1, weights=weights
        )
        return manager, weights

    def test_backup_manager_touches_nothing_outside(self):
        manager, weights = self._manager(0.0)
        self.assertEqual(manager.restore(), 0)
        for step in (1, 2):
            weights.assign_add([1.0, 1.0])
            manager.maybe_backup(step)
        manager.wait_for_backup()
        self.hostile.assert_untouched(self)
        restarted, weights = self._manager(0.0)
        self.assertEqual(restarted.restore(), 2)
        self.assertEqual(weights.numpy().tolist(), [2.0, 2.0])
        restarted.finish()
        self.hostile.assert_untouched(self)
        self.assertEqual(sorted(os.listdir(self.dir)), self.hostile.planted)

    def test_inspect_reads_nothing_outside_and_changes_nothing(self):
        manager, _ = self._manager(1.0)
        manager.restore()
        manager.backup(1, wait=True)
        before = sorted(os.listdir(self.dir))
        out = procs.run(
            procs.runfile("backup_restore/inspect"),
            ["--verify", self.dir],
            result_file=False,
        )
        self.assertEqual(out.returncode, 0, out.describe())
        self.assertIn("verdict: OK", out.stdout)
        for name in self.hostile.planted:
            self.assertIn(
                f"never followed, read or deleted): {name}", out.stdout
            )
        self.assertEqual(sorted(os.listdir(self.dir)), before)
        self.hostile.assert_untouched(self)

    def test_store_never_deletes_a_planted_entry(self):
        s = store.BackupStore(self.dir)
        self.assertEqual(s.cleanup(), [])
        self.assertEqual(
            sorted(os.path.basename(p) for p, _ in s.foreign()),
            self.hostile.planted,
        )
        s.write(tf.train.Checkpoint(v=tf.Variable(1.0)), {})
        # A new backup is numbered past every planted name.
        self.assertEqual(
            [os.path.basename(p) for _, p in s.committed()],
            ["backup-00000100"],
        )
        s.delete_all()
        self.hostile.assert_untouched(self)
        self.assertEqual(sorted(os.listdir(self.dir)), self.hostile.planted)


if __name__ == "__main__":
    absltest.main()
