"""A base class for in-process tests of BackupAndRestore in Model.fit()."""

import os

import tensorflow as tf
from absl.testing import parameterized

from backup_restore.examples import synthetic
from testing import device
from testing import keras_callbacks


class FitTestCase(parameterized.TestCase):
    """Skips without this variant's device; op determinism on; each test a
    job of its own, with `self.dir` a fresh backup_dir (not yet created).

    `self.keras` is the Keras flavour under test (`FLAVOUR`: Keras 3 here;
    `tf_keras_variant` makes the same tests for tf-keras)."""

    FLAVOUR = "keras3"

    @property
    def keras(self):
        return synthetic.KERAS[self.FLAVOUR]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        device.skip_if_device_absent()
        tf.config.experimental.enable_op_determinism()

    def setUp(self):
        super().setUp()
        self.dir = os.path.join(self.create_tempdir().full_path, "backup")
        keras_callbacks.simulate_restart()


def tf_keras_variant(test_class):
    """`test_class` again, for tf-keras: the same tests, the other flavour.

    Assign it to a module-level name so that absltest finds it.
    """
    name = test_class.__name__.removesuffix("Test") + "TfKerasTest"
    return type(
        name,
        (test_class,),
        {"FLAVOUR": "tf_keras", "__module__": test_class.__module__},
    )
