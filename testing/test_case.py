"""The base of this project's tests: the device skip, a fresh temp dir, and
the Keras flavour under test."""

import os

from absl.testing import parameterized

from testing import device

FLAVOURS = ("keras3", "tf_keras")


class TestCase(parameterized.TestCase):
    """Skips every case without this variant's device (testing/device.py).

    Each case gets `self.tmp`, a fresh temporary directory, and `self.dir`,
    a backup_dir in it that does not exist yet: each test is a job of its
    own.

    `FLAVOUR` is the Keras flavour under test, Keras 3 here;
    `tf_keras_variant(cls)` makes the same tests for tf-keras, the one way
    to run a test in both flavours: in process (`self.keras`) and in child
    trainers (`self.flavour_flag`).
    """

    FLAVOUR = "keras3"

    @property
    def keras(self):
        """The Keras module of `FLAVOUR` (keras or tf_keras)."""
        from testing import synthetic  # imports TensorFlow

        return synthetic.KERAS[self.FLAVOUR]

    @property
    def flavour_flag(self) -> str:
        """The test trainers' flag for `FLAVOUR`."""
        return f"--keras={self.FLAVOUR}"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        device.skip_if_device_absent()

    def setUp(self):
        super().setUp()
        self.tmp = self.create_tempdir().full_path
        self.dir = os.path.join(self.tmp, "backup")


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
