"""A base class for in-process tests of BackupAndRestore in Model.fit()."""

import os

import tensorflow as tf
from absl.testing import parameterized

from testing import device
from testing import keras_callbacks


class FitTestCase(parameterized.TestCase):
    """Skips without this variant's device; op determinism on; each test a
    job of its own, with `self.dir` a fresh backup_dir (not yet created)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        device.skip_if_device_absent()
        tf.config.experimental.enable_op_determinism()

    def setUp(self):
        super().setUp()
        self.dir = os.path.join(self.create_tempdir().full_path, "backup")
        keras_callbacks.simulate_restart()
