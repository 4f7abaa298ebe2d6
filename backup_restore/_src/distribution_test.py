"""Which strategies are supported, and what each process does under them.

Exact resume under OneDeviceStrategy, MirroredStrategy, CentralStorageStrategy
and TPUStrategy is tested end to end in exact_resume_test.py; multi-worker
strategies in multi_worker_test.py and parameter_server_test.py.
"""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import absltest

import backup_restore
from backup_restore._src import distribution
from testing import device
from testing import dirs
from testing import procs
from testing import test_case
from testing import trainers


class RoleTest(test_case.TestCase):
    def test_single_process_strategies_are_their_own_chief(self):
        for strategy in (
            tf.distribute.get_strategy(),
            tf.distribute.OneDeviceStrategy("/cpu:0"),
            tf.distribute.MirroredStrategy(["/cpu:0"]),
            tf.distribute.experimental.CentralStorageStrategy(["/cpu:0"]),
            # Without TF_CONFIG: a cluster of one.
            tf.distribute.MultiWorkerMirroredStrategy(),
        ):
            with self.subTest(type(strategy).__name__):
                role = distribution.role(strategy)
                self.assertTrue(role.is_chief)
                self.assertFalse(role.collective_saves)
                self.assertIsNone(role.coordinator)

    def test_default_strategy_is_recognised_inside_another_scope(self):
        # fit() calls the callback inside the model's strategy scope, where
        # tf.distribute.get_strategy() is that strategy, not the default.
        default = tf.distribute.get_strategy()
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            self.assertTrue(distribution.role(default).is_chief)

    def test_plain_variables_only_with_no_strategy_or_the_default(self):
        default = tf.distribute.get_strategy()
        self.assertTrue(distribution.plain_variables(None))
        self.assertTrue(distribution.plain_variables(default))
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
        self.assertFalse(distribution.plain_variables(mirrored))
        with mirrored.scope():
            # A custom loop restoring inside a strategy's scope.
            self.assertFalse(distribution.plain_variables(None))

    def test_tf1_strategy_is_refused_naming_the_tf2_alternative(self):
        strategy = tf.compat.v1.distribute.OneDeviceStrategy("/cpu:0")
        with self.assertRaisesRegex(ValueError, "TF2 counterpart"):
            distribution.role(strategy)

    def test_fit_with_an_unsupported_strategy_fails_before_writing(self):
        strategy = tf.compat.v1.distribute.OneDeviceStrategy("/cpu:0")
        with strategy.scope():
            model = tf_keras.Sequential(
                [tf_keras.layers.Dense(1, input_shape=(4,))]
            )
            model.compile(optimizer="adam", loss="mse")
        x = np.ones((8, 4), np.float32)
        with self.assertRaisesRegex(ValueError, "OneDeviceStrategyV1"):
            model.fit(
                x,
                x[:, :1],
                epochs=1,
                verbose=0,
                callbacks=[backup_restore.BackupAndRestore(self.dir)],
            )
        # The constructor created it (with the record of that) and checked
        # it is writable.
        self.assertEqual(dirs.entries(self.dir), [], "nothing written")


class TrainerFlagsTest(test_case.TestCase):
    def _trainer(self, *args):
        return procs.run(
            trainers.fit_trainer(), [f"--backup_dir={self.dir}", *args]
        )

    def test_tpu_strategy_without_a_tpu_says_so_without_probing(self):
        if device.requested_device() == "tpu":
            self.skipTest("this machine has a TPU")
        run = self._trainer("--strategy=tpu")
        self.assertEqual(run.returncode, 1, run.stderr[-2000:])
        self.assertIn("this machine has no TPU", run.stderr)

    def test_parameter_server_needs_steps_per_epoch(self):
        run = self._trainer("--strategy=parameter_server")
        self.assertEqual(run.returncode, 1, run.stderr[-2000:])
        self.assertIn("needs --steps_per_epoch", run.stderr)


if __name__ == "__main__":
    absltest.main()
