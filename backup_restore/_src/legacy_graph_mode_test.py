"""With eager execution disabled (TF1 graph mode) both front ends refuse."""

import tensorflow as tf
from absl.testing import absltest

import backup_restore
from testing import test_case


class LegacyGraphModeTest(test_case.TestCase):
    def test_constructing_raises_a_clear_value_error(self):
        self.assertFalse(tf.executing_eagerly())
        with self.assertRaisesRegex(
            ValueError,
            r"BackupAndRestore needs eager execution.*disabled.*TF2 mode",
        ):
            backup_restore.BackupAndRestore(self.dir)
        with self.assertRaisesRegex(
            ValueError,
            r"BackupManager needs eager execution.*disabled.*TF2 mode",
        ):
            backup_restore.BackupManager(self.dir, step=tf.Variable(0))
        self.assertFalse(tf.io.gfile.exists(self.dir))


if __name__ == "__main__":
    # Process-wide and irreversible: hence a test binary of its own.
    tf.compat.v1.disable_eager_execution()
    absltest.main()
