"""Tests of the store's catalog: one listing and one parse per manifest."""

import errno
import shutil
from unittest import mock

import tensorflow as tf
from absl.testing import absltest

from backup_restore._src import faults
from backup_restore._src import manifest
from backup_restore._src import store
from testing import dirs
from testing import test_case


def _checkpoint(value):
    return tf.train.Checkpoint(v=tf.Variable(value))


def _no_space_to_delete(stage, path):
    if stage == faults.DELETE_OLDER:
        raise OSError(errno.ENOSPC, "No space left on device", path)


class CatalogTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        self.addCleanup(faults.set_hook, None)
        self.backups = dirs.backup_dir(self, "local")

    def _write(self, s, value):
        return s.write(_checkpoint(value), {"value": value})

    def test_a_restart_lists_once_and_opens_each_manifest_once(self):
        s = store.BackupStore(self.backups)
        s.scope = "run-1"
        self._write(s, [1.0])
        s.scope = "run-2"
        self._write(s, [2.0])
        # Backup 2 stays too: its deletion fails.
        faults.set_hook(_no_space_to_delete)
        with self.assertLogs(level="WARNING"):
            self._write(s, [3.0])
        faults.set_hook(None)
        backups = [p for _, p in s.committed()]
        self.assertLen(backups, 3)
        restarted = store.BackupStore(self.backups)
        read = self.enter_context(
            mock.patch.object(manifest, "read", wraps=manifest.read)
        )
        listdir = self.enter_context(
            mock.patch.object(tf.io.gfile, "listdir", wraps=tf.io.gfile.listdir)
        )
        # What Engine.start and Engine.restore do, then the run's first
        # backup (which deletes the older ones of its run).
        restarted.scope = "run-2"
        restarted.refresh()
        restarted.cleanup()
        target = _checkpoint([0.0])
        info, _ = restarted.restore_latest(lambda info: target)
        others = len(restarted.committed()) - len(
            restarted.committed_in_scope()
        )
        self._write(restarted, [4.0])
        self.assertEqual((info.seq, others), (3, 1))
        self.assertEqual(target.v.numpy().tolist(), [3.0])
        self.assertEqual(
            [c.args[0] for c in read.call_args_list], backups, "once each"
        )
        listed = [c.args[0] for c in listdir.call_args_list]
        self.assertEqual(listed.count(self.backups), 1)
        self.assertEqual([seq for seq, _ in restarted.committed()], [1, 4])

    def test_a_backup_of_another_store_of_this_process_is_seen(self):
        first = store.BackupStore(self.backups)
        second = store.BackupStore(self.backups)
        self.assertIsNone(second.latest())
        self._write(first, [1.0])
        self.assertEqual(second.latest().metadata["value"], [1.0])
        self.assertEqual(self._write(second, [2.0]).seq, 2)
        self.assertEqual([seq for seq, _ in first.committed()], [2])

    def test_a_backup_deleted_by_hand_meanwhile_is_not_an_error(self):
        s = store.BackupStore(self.backups)
        shutil.rmtree(self._write(s, [1.0]).path)
        with self.assertNoLogs(level="WARNING"):
            self.assertEqual(self._write(s, [2.0]).seq, 2)
        self.assertEqual([seq for seq, _ in s.committed()], [2])
        self.assertEqual(dirs.entries(self.backups), ["backup-00000002"])


if __name__ == "__main__":
    absltest.main()
