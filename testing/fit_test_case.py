"""A base class for in-process tests of BackupAndRestore in Model.fit()."""

import tensorflow as tf

from testing import keras_callbacks
from testing import test_case


class FitTestCase(test_case.TestCase):
    """test_case.TestCase (device skip, fresh `self.dir`), with op
    determinism on and the process made to look like a fresh job."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        tf.config.experimental.enable_op_determinism()

    def setUp(self):
        super().setUp()
        keras_callbacks.simulate_restart()
