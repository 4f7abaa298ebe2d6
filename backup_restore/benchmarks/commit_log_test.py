"""The benchmark reads our backups' figures from their log lines: the lines
must keep the shape commit_log.py parses."""

import os

import tensorflow as tf
from absl import logging
from absl.testing import absltest

import backup_restore
from backup_restore.benchmarks import commit_log


class CommitLogTest(absltest.TestCase):
    def test_a_backups_commit_line_is_parsed(self):
        directory = os.path.join(self.create_tempdir().full_path, "b")
        weights = tf.Variable([1.0, 2.0])
        manager = backup_restore.BackupManager(
            directory, delete_checkpoint=False, weights=weights
        )
        manager.restore()
        with commit_log.CommitLog() as log:
            manager.backup(3, wait=True)
        manager.finish()
        ((label, name, durable),) = log.committed
        self.assertEqual(label, "step 3")
        self.assertIn(name, os.listdir(directory))
        self.assertGreaterEqual(durable, 0.0)

    def test_kill_safe_is_measured_from_the_hook_that_started_it(self):
        log = commit_log.CommitLog()
        log.committed = [
            ("epoch 0, batch 5", "backup-00000001", 0.5),
            ("epoch 1, batch 0", "backup-00000002", 0.5),
            ("step 9", "backup-00000003", 0.5),  # no hook of ours: left out
        ]
        hook_ends = {"epoch 0, batch 5": 10.0, "epoch 1, batch 0": 20.0}
        first_seen = {"backup-00000001": 10.25, "backup-00000002": 20.004}
        # The second one was in backup_dir when its hook returned.
        listed = {"epoch 1, batch 0": {"backup-00000002"}}
        self.assertEqual(
            log.kill_safe_after_hook_ms(hook_ends, first_seen, listed),
            [250.0, 0.0],
        )

    def test_the_loggers_levels_are_put_back(self):
        logger = logging.get_absl_logger()
        before = logger.level, logging.get_absl_handler().level
        with commit_log.CommitLog():
            self.assertEqual(logger.level, logging.converter.STANDARD_INFO)
        self.assertEqual(
            (logger.level, logging.get_absl_handler().level), before
        )


if __name__ == "__main__":
    absltest.main()
