"""Keras 3.15's own keras.callbacks.BackupAndRestore beside ours.

The same interrupted training runs with Keras's callback and with ours, on a
Keras 3 model; the resumed runs show where each resumes and what it kept.
"""

import os
import warnings

import keras
from absl.testing import absltest

import backup_restore
from testing import fit_test_case
from testing import keras_callbacks
from testing import synthetic

EPOCHS = 4
X, Y = synthetic.regression_data(64)  # batch 16: 4 batches per epoch


def _model(optimizer="adam"):
    keras.utils.set_random_seed(1)
    model = synthetic.regression_model("tiny", flavour="keras3")
    if optimizer != "adam":
        model.compile(optimizer=optimizer, loss="mse")
    return model


def _fit(model, callbacks):
    return model.fit(
        X, Y, batch_size=16, epochs=EPOCHS, verbose=0, callbacks=callbacks
    )


class Keras3ParityTest(fit_test_case.FitTestCase):
    def _interrupted_then_resumed(self, make, interrupt_at, optimizer="adam"):
        with self.assertRaises(keras_callbacks.Interrupted):
            _fit(_model(), [make(), keras_callbacks.InterruptAt(interrupt_at)])
        keras_callbacks.simulate_restart()
        recorder = keras_callbacks.Recorder()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = _fit(_model(optimizer), [make(), recorder])
        return recorder, history, [str(w.message) for w in caught]

    def _keras(self, **kwargs):
        directory = os.path.join(self.dir, "keras")
        return lambda: keras.callbacks.BackupAndRestore(directory, **kwargs)

    def _ours(self, **kwargs):
        directory = os.path.join(self.dir, "ours")
        return lambda: backup_restore.BackupAndRestore(directory, **kwargs)

    def test_mid_epoch_backup_keras_reruns_the_epoch_ours_goes_on(self):
        # Backups every 3 batches; interrupted after batch 7 (epoch 1, batch
        # 2): the last backup is at (1, 2).
        theirs, their_history, _ = self._interrupted_then_resumed(
            self._keras(save_freq=3), 7
        )
        ours, our_history, _ = self._interrupted_then_resumed(
            self._ours(save_freq=3), 7
        )
        self.assertEqual(theirs.batches[0], (1, 0))  # epoch 1 from its start
        self.assertEqual(ours.batches[0], (1, 2))  # the next unseen batch
        # Keras's History holds only the epochs after resuming; ours all.
        self.assertEqual(their_history.epoch, [1, 2, 3])
        self.assertEqual(our_history.epoch, list(range(EPOCHS)))

    def test_another_optimizer_keras_drops_its_state_ours_refuses(self):
        # Keras restores the weights into an SGD model whose backup was
        # written with Adam: the optimizer state is dropped, with a warning
        # only. Ours refuses, naming the difference.
        theirs, _, caught = self._interrupted_then_resumed(
            self._keras(save_freq="epoch"), 6, optimizer="sgd"
        )
        self.assertEqual(theirs.epochs[0], 1)  # it resumed
        self.assertTrue(any("optimizer" in m.lower() for m in caught), caught)
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError, "optimizer class"
        ):
            self._interrupted_then_resumed(
                self._ours(save_freq="epoch"), 6, optimizer="sgd"
            )


if __name__ == "__main__":
    absltest.main()
