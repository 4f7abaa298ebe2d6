"""tf-keras's own BackupAndRestore tests, in our words, against our class.

tf-keras 2.21's tests of its BackupAndRestore (`tf_keras/callbacks_test.py`,
not in its wheel) interrupt fit() by raising from another callback listed
after the backup callback, then call fit() again in the same process. The
same scenarios here, with what they check, plus the exact end:

- `test_backup_restore_train_counter`: `test_the_train_counter_goes_on`;
- `test_backup_and_restore_steps` (its 3 sub-cases) and
  `test_backup_and_restore_steps_last_batch`:
  `test_interrupted_at_a_step_resumes_after_the_last_backup`;
- `test_backup_and_restore_steps_clean_up`:
  `test_completion_empties_the_directory_or_keeps_the_backup`.

One intended difference: interrupted at an epoch's last batch, tf-keras
resumes at the next epoch without ending the interrupted one (no
`on_epoch_end`, no History entry for it); ours ends that epoch first (its
validation, History, callbacks), as an uninterrupted run does, training no
batch twice.
"""

import os

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import fit_test_case
from testing import keras_callbacks

STEPS_PER_EPOCH = 5
EPOCHS = 20


class Interrupt(tf_keras.callbacks.Callback):
    """Raises at the end of epoch `epoch` or of the `step`th batch."""

    def __init__(self, epoch=None, step=None):
        super().__init__()
        self._epoch, self._step, self._steps = epoch, step, 0

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self._epoch:
            raise keras_callbacks.Interrupted(f"epoch {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._steps == self._step:
            raise keras_callbacks.Interrupted(f"step {self._steps}")


def _model():
    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential([tf_keras.layers.Dense(10)])
    model.compile(tf_keras.optimizers.SGD(), loss="mse")
    return model


def _dataset():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(24, 10)).astype("float32")
    y = rng.uniform(size=(24,)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(2)


class TfKerasCompatTest(fit_test_case.FitTestCase, parameterized.TestCase):
    FLAVOUR = "tf_keras"

    def _fit(self, model, callbacks):
        model.fit(
            _dataset(),
            epochs=EPOCHS,
            steps_per_epoch=STEPS_PER_EPOCH,
            verbose=0,
            callbacks=callbacks,
        )

    def test_the_train_counter_goes_on(self):
        model = tf_keras.Sequential([tf_keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        callback = backup_restore.BackupAndRestore(self.dir)

        def fit(interrupt_at):
            with self.assertRaises(keras_callbacks.Interrupted):
                model.fit(
                    np.ones((10, 1)),
                    np.ones((10, 1)),
                    epochs=20,
                    verbose=0,
                    callbacks=[callback, Interrupt(epoch=interrupt_at)],
                )

        self.assertEqual(model._train_counter.numpy(), 0)
        fit(5)
        self.assertEqual(model._train_counter.numpy(), 6)
        # The same process runs fit() again: it resumes after epoch 5.
        fit(12)
        self.assertEqual(callback.resumed_from, (6, 0))
        self.assertEqual(model._train_counter.numpy(), 13)

    @parameterized.named_parameters(
        # (interrupted at, save_freq, resumed from: (epoch, batches done))
        ("step_3_before_any_backup", dict(step=3), 7, None),
        ("step_8_after_the_backup_of_step_7", dict(step=8), 7, (1, 2)),
        ("epoch_1_with_epoch_backups", dict(epoch=1, step=12), "epoch", (2, 0)),
        ("step_35_the_last_batch_of_epoch_7", dict(step=35), 7, (6, 5)),
    )
    def test_interrupted_at_a_step_resumes_after_the_last_backup(
        self, interrupt, save_freq, resumed_from
    ):
        uninterrupted = _model()
        self._fit(uninterrupted, [])
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq=save_freq
        )
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(_model(), [callback, Interrupt(**interrupt)])
        model = _model()
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq=save_freq
        )
        recorder = keras_callbacks.Recorder()
        self._fit(model, [callback, recorder])
        self.assertEqual(callback.resumed_from, resumed_from)
        epoch, done = resumed_from or (0, 0)
        first = epoch * STEPS_PER_EPOCH + done
        self.assertEqual(
            [e * STEPS_PER_EPOCH + b for e, b in recorder.batches],
            list(range(first, EPOCHS * STEPS_PER_EPOCH)),
            "each batch trained once",
        )
        self.assertEqual(recorder.epochs[0], epoch)
        for got, want in zip(model.weights, uninterrupted.weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy())

    def test_completion_empties_the_directory_or_keeps_the_backup(self):
        os.makedirs(self.dir)
        dataset = _dataset().take(12)
        model = _model()
        callback = backup_restore.BackupAndRestore(
            self.dir, delete_checkpoint=True
        )
        model.fit(dataset, epochs=1, verbose=0, callbacks=[callback])
        self.assertEmpty(os.listdir(self.dir))
        callback = backup_restore.BackupAndRestore(
            self.dir, delete_checkpoint=False
        )
        model.fit(dataset, epochs=1, verbose=0, callbacks=[callback])
        self.assertNotEmpty(os.listdir(self.dir))


if __name__ == "__main__":
    absltest.main()
