"""The third and fourth positional arguments mean what they mean in the
model's Keras flavour: Keras 3's (backup_dir, save_freq, double_checkpoint,
delete_checkpoint), tf-keras's (backup_dir, save_freq, delete_checkpoint,
save_before_preemption). Checked through behaviour: is the previous backup
kept, is the backup deleted at the end, is a preemption backup taken.
"""

import os
import signal

from absl.testing import absltest

import backup_restore
from testing import fit_test_case
from testing import keras_callbacks
from testing import tamper


def _committed(directory):
    return tamper.committed(directory) if os.path.isdir(directory) else []


class PositionalArgumentsTest(fit_test_case.FitTestCase):
    EPOCHS = 3

    def _interrupted_in_epoch_2(self, callback):
        """Epoch backups after epochs 0 and 1, then a raise in epoch 2."""
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                self.tiny_model(),
                [callback, keras_callbacks.InterruptAt(9, backup=callback)],
            )

    def test_third_positional_true(self):
        # Keras 3: double_checkpoint=True (the previous backup is kept);
        # tf-keras: delete_checkpoint=True (one backup, as the default).
        callback = backup_restore.BackupAndRestore(self.dir, "epoch", True)
        self._interrupted_in_epoch_2(callback)
        keeps_previous = self.FLAVOUR == "keras3"
        self.assertLen(_committed(self.dir), 2 if keeps_previous else 1)
        self.assertEqual(callback.double_checkpoint, keeps_previous)
        self.assertTrue(callback.delete_checkpoint)

    def test_fourth_positional_false(self):
        # Keras 3: double_checkpoint=True, delete_checkpoint=False (the
        # backup stays); tf-keras: delete_checkpoint=True,
        # save_before_preemption=False (the backup is deleted).
        callback = backup_restore.BackupAndRestore(
            self.dir, "epoch", True, False
        )
        self.fit_tiny(self.tiny_model(), [callback])
        callback.wait_for_backup()
        kept = self.FLAVOUR == "keras3"
        self.assertEqual(bool(_committed(self.dir)), kept)
        self.assertEqual(callback.delete_checkpoint, not kept)
        self.assertFalse(callback.save_before_preemption)

    def test_third_positional_false_keeps_the_backup_in_both(self):
        # (d, "epoch", False, False): delete_checkpoint=False either way.
        callback = backup_restore.BackupAndRestore(
            self.dir, "epoch", False, False
        )
        self.fit_tiny(self.tiny_model(), [callback])
        callback.wait_for_backup()
        self.assertLen(_committed(self.dir), 1)

    def test_fourth_positional_true(self):
        # tf-keras: save_before_preemption=True (a signal at a batch backs
        # up there and stops fit()); Keras 3: double_checkpoint=True,
        # delete_checkpoint=True (the signal goes to the handler before).
        received = []
        previous = signal.signal(
            signal.SIGTERM, lambda s, f: received.append(s)
        )
        self.addCleanup(signal.signal, signal.SIGTERM, previous)

        class SignalAt(keras_callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if self.model.optimizer.iterations.numpy() == 6:
                    os.kill(os.getpid(), signal.SIGTERM)

        callback = backup_restore.BackupAndRestore(
            self.dir, 2, True, True, exit_on_preemption=False
        )
        history = self.fit_tiny(self.tiny_model(), [callback, SignalAt()])
        self.assertEqual(received, [signal.SIGTERM])  # chained in tf-keras
        preempts = self.FLAVOUR == "tf_keras"
        self.assertEqual(callback.preempted, preempts)
        self.assertEqual(history.epoch, [0, 1] if preempts else [0, 1, 2])
        self.assertEqual(callback.save_before_preemption, preempts)
        self.assertEqual(callback.double_checkpoint, not preempts)

    def test_a_value_given_twice_in_the_models_order_is_a_type_error(self):
        # Keras 3: double_checkpoint=True, delete_checkpoint=False; in
        # tf-keras's order delete_checkpoint is given twice.
        callback = backup_restore.BackupAndRestore(
            self.dir, "epoch", True, delete_checkpoint=False
        )
        if self.FLAVOUR == "keras3":
            self.fit_tiny(self.tiny_model(), [callback])
            callback.wait_for_backup()
            self.assertLen(_committed(self.dir), 2)  # the previous kept
        else:
            with self.assertRaisesRegex(TypeError, "multiple values"):
                self.fit_tiny(self.tiny_model(), [callback])
            self.assertEqual(_committed(self.dir), [])

    def test_invalid_in_both_orders_raises_at_once(self):
        with self.assertRaisesRegex(TypeError, "at most 4 positional"):
            backup_restore.BackupAndRestore(self.dir, "epoch", 1, 2, 3)
        with self.assertRaisesRegex(ValueError, "save_before_preemption"):
            # save_freq=False needs save_before_preemption=True: neither
            # order gives it.
            backup_restore.BackupAndRestore(self.dir, False, True, False)
        with self.assertRaisesRegex(TypeError, "multiple values"):
            backup_restore.BackupAndRestore(
                self.dir, "epoch", True, False, delete_checkpoint=True
            )


PositionalArgumentsTfKerasTest = fit_test_case.tf_keras_variant(
    PositionalArgumentsTest
)


if __name__ == "__main__":
    absltest.main()
