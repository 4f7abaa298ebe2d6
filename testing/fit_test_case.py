"""A base class for in-process tests of BackupAndRestore in Model.fit()."""

import tensorflow as tf

from testing import keras_callbacks
from testing import synthetic
from testing import test_case


class FitTestCase(test_case.TestCase):
    """test_case.TestCase (device skip, fresh `self.dir`), with op
    determinism on and the process made to look like a fresh job.

    `self.keras` is the Keras flavour under test (`FLAVOUR`: Keras 3 here;
    `tf_keras_variant` makes the same tests for tf-keras)."""

    FLAVOUR = "keras3"

    @property
    def keras(self):
        return synthetic.KERAS[self.FLAVOUR]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        tf.config.experimental.enable_op_determinism()

    def setUp(self):
        super().setUp()
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
