"""A base class for in-process tests of BackupAndRestore in Model.fit(),
with the small model and data they share."""

import tensorflow as tf

from testing import keras_callbacks
from testing import synthetic
from testing import test_case

SAMPLES = 64
BATCH = 16  # 4 batches per epoch
EPOCHS = 3
MODEL_SEED = 7
DATA_SEED = 3


class FitTestCase(test_case.TestCase):
    """test_case.TestCase (device skip, fresh `self.dir`, `FLAVOUR`), with
    op determinism on and the process made to look like a fresh job.

    `tiny_model()` and `fit_tiny()` are the model and fit() most tests
    need: the same from the same seeds in every test, so that an
    interrupted and a resumed run can be compared with an uninterrupted
    one. `EPOCHS` is fit_tiny's default number of epochs.
    """

    EPOCHS = EPOCHS

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        tf.config.experimental.enable_op_determinism()

    def setUp(self):
        super().setUp()
        keras_callbacks.simulate_restart()

    def tiny_model(self, flavour=None, **kwargs):
        """A compiled tiny MLP of `flavour` (default: `FLAVOUR`) from a
        fixed seed; `kwargs` go to synthetic.regression_model."""
        flavour = flavour or self.FLAVOUR
        synthetic.KERAS[flavour].utils.set_random_seed(MODEL_SEED)
        return synthetic.regression_model("tiny", flavour=flavour, **kwargs)

    def fit_tiny(
        self,
        model,
        callbacks,
        epochs=None,
        *,
        samples=SAMPLES,
        batch=BATCH,
        dataset=None,
        **kwargs,
    ):
        """model.fit() quietly for `epochs` (default `EPOCHS`) on numpy
        arrays of `samples` in batches of `batch`, or on `dataset`."""
        if dataset is not None:
            inputs = dict(x=dataset)
        else:
            x, y = synthetic.regression_data(samples, seed=DATA_SEED)
            inputs = dict(x=x, y=y, batch_size=batch)
        return model.fit(
            **inputs,
            epochs=self.EPOCHS if epochs is None else epochs,
            verbose=0,
            callbacks=callbacks,
            **kwargs,
        )

    @staticmethod
    def weights(model):
        """The model's weights as numpy arrays."""
        return [w.numpy() for w in model.weights]


# The one way to make the tf-keras variant of a test class (test_case.py).
tf_keras_variant = test_case.tf_keras_variant
