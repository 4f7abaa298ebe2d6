"""fit() ending by a raise, and the counters other callbacks read.

In-process, both flavours: another callback raising where a backup is due,
the step a resume replays hidden from the callbacks, no write of ours left
running when fit() raises, TensorBoard's steps continuing after a resume.
"""

import glob
import os
import threading

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import fit_test_case
from testing import keras_callbacks
from testing import synthetic
from testing import test_case

SAMPLES = fit_test_case.SAMPLES
BATCH = fit_test_case.BATCH  # 4 batches per epoch
EPOCHS = fit_test_case.EPOCHS


class RaiseAtEpochEnd(keras_callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self._epoch:
            raise keras_callbacks.Interrupted(f"at the end of epoch {epoch}")


class FailingBatches:
    """Batches of a Python generator that raises at batch `at` (counted
    over the whole run): an error in the input, inside a training step."""

    def __init__(self, at):
        self._at = at

    def __call__(self):
        x, y = synthetic.regression_data(SAMPLES, seed=3)
        drawn = 0
        while True:
            for i in range(0, SAMPLES, BATCH):
                drawn += 1
                if drawn == self._at:
                    raise ValueError("bad record")
                yield x[i : i + BATCH], y[i : i + BATCH]


def _persist_threads():
    return [
        t
        for t in threading.enumerate()
        if t.name == "backup_restore-persist" and t.is_alive()
    ]


class FitHooksTest(fit_test_case.FitTestCase, parameterized.TestCase):
    def _fit(self, model, callbacks, **kwargs):
        return self.fit_tiny(model, callbacks, shuffle=False, **kwargs)

    def _uninterrupted(self):
        model = self.tiny_model()
        self._fit(model, [])
        return [w.numpy() for w in model.weights]

    def _resume(self, **callback_kwargs):
        """Runs fit() again on the same model code; returns (model,
        callback, recorder)."""
        keras_callbacks.simulate_restart()
        model = self.tiny_model()
        callback = backup_restore.BackupAndRestore(self.dir, **callback_kwargs)
        recorder = keras_callbacks.Recorder()
        self._fit(model, [callback, recorder])
        return model, callback, recorder

    def _assert_same_weights(self, model, expected):
        for got, want in zip(model.weights, expected, strict=True):
            np.testing.assert_array_equal(got.numpy(), want)

    @parameterized.named_parameters(
        # The 6th batch: epoch 1, after its 2nd batch.
        ("mid_epoch", 6, (1, 2)),
        # The epoch's last batch: the epoch's end never comes.
        ("last_batch_of_an_epoch", 4, (0, 4)),
    )
    def test_a_backup_due_where_another_callback_raises_is_taken(
        self, batches, resumed_from
    ):
        expected = self._uninterrupted()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        with self.assertRaises(keras_callbacks.Interrupted):
            # Listed after the backup callback, as the originals' tests do.
            self._fit(
                self.tiny_model(),
                [callback, keras_callbacks.InterruptAt(batches)],
            )
        model, callback, recorder = self._resume(save_freq=2)
        self.assertEqual(callback.resumed_from, resumed_from)
        epoch, batch = resumed_from
        # Each batch is trained once over both runs, the resumed run's
        # callbacks see only the batches it trains: at the epoch's last
        # batch, the step that stands in for it to give the epoch's logs is
        # hidden from their batch hooks.
        first = epoch * 4 + batch
        self.assertEqual(
            [e * 4 + b for e, b in recorder.batches],
            list(range(first, EPOCHS * 4)),
        )
        self._assert_same_weights(model, expected)

    def test_a_backup_due_at_an_epoch_end_where_a_callback_raises(self):
        expected = self._uninterrupted()
        callback = backup_restore.BackupAndRestore(self.dir)
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(self.tiny_model(), [callback, RaiseAtEpochEnd(1)])
        model, callback, recorder = self._resume()
        self.assertEqual(callback.resumed_from, (2, 0))
        self.assertEqual(recorder.epochs, [2])
        self.assertEqual(model.history.epoch, [0, 1, 2])
        self._assert_same_weights(model, expected)

    def test_a_raise_at_the_last_epochs_end_leaves_nothing_to_train(self):
        callback = backup_restore.BackupAndRestore(self.dir)
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                self.tiny_model(), [callback, RaiseAtEpochEnd(EPOCHS - 1)]
            )
        model, callback, recorder = self._resume()
        self.assertEqual(callback.resumed_from, (EPOCHS, 0))
        self.assertEqual(recorder.batches, [])
        self.assertEqual(model.history.epoch, list(range(EPOCHS)))
        self.assertFalse(os.path.exists(self.dir))  # created by the callback

    def test_when_fit_raises_no_write_of_ours_is_left_running(self):
        # Three runs interrupted after 3 more batches each.
        for _ in range(3):
            callback = backup_restore.BackupAndRestore(
                self.dir, save_freq=1, async_backup=True
            )
            with self.assertRaises(keras_callbacks.Interrupted):
                self._fit(
                    self.tiny_model(),
                    [callback, keras_callbacks.InterruptAt(3)],
                )
            # The backup of the batch where fit() raised is committed, and
            # the background writer has ended.
            self.assertEqual(_persist_threads(), [])
            keras_callbacks.simulate_restart()
        _, callback, _ = self._resume()
        self.assertEqual(callback.resumed_from, (2, 1))

    def test_when_a_training_step_raises_no_write_of_ours_is_left_running(
        self,
    ):
        dataset = tf.data.Dataset.from_generator(
            FailingBatches(at=6),
            output_signature=(
                tf.TensorSpec((None, synthetic.INPUT_DIM), tf.float32),
                tf.TensorSpec((None, 1), tf.float32),
            ),
        )
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq=1, async_backup=True
        )
        with self.assertRaisesRegex(Exception, "bad record"):
            self.tiny_model().fit(
                dataset,
                epochs=EPOCHS,
                steps_per_epoch=4,
                verbose=0,
                callbacks=[callback],
            )
        self.assertEqual(_persist_threads(), [])
        self.assertLen(keras_callbacks.backup_entries(self.dir), 1)

    def test_when_a_validation_step_raises_the_backup_is_committed_first(
        self,
    ):
        from backup_restore._src import faults

        # The backup after batch 2 is held on its way to durable until
        # something lets it go: the test, once fit() raised, or the wait's
        # end. Committed before fit() raises means the run waited for it.
        events, release = [], threading.Event()

        def hold(stage, path):
            if stage == faults.PUBLISHED:
                release.wait(timeout=2)
            elif stage == faults.COMMITTED:
                events.append("committed")

        faults.set_hook(hold)
        self.addCleanup(faults.set_hook, None)
        validation = tf.data.Dataset.from_generator(
            FailingBatches(at=1),
            output_signature=(
                tf.TensorSpec((None, synthetic.INPUT_DIM), tf.float32),
                tf.TensorSpec((None, 1), tf.float32),
            ),
        )
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq=2, async_backup=True
        )
        model = self.tiny_model()
        try:
            self._fit(
                model,
                [callback],
                validation_data=validation,
                validation_steps=2,
            )
        except Exception as e:  # the flavour's error for the input's raise
            self.assertIn("bad record", str(e))
            events.append("fit() raised")
        finally:
            release.set()
        self.assertEqual(events, ["committed", "fit() raised"])
        self.assertEqual(_persist_threads(), [])
        # The model's own step functions are back: evaluate() runs.
        self.assertNotIn("make_test_function", vars(model))
        x, y = synthetic.regression_data(SAMPLES, seed=3)
        model.evaluate(x, y, verbose=0)

    def test_tensorboard_steps_go_on_after_a_resume(self):
        logs = self.create_tempdir().full_path

        def tensorboard(run):
            return self.keras.callbacks.TensorBoard(
                os.path.join(logs, run), update_freq=1
            )

        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                self.tiny_model(),
                [callback, tensorboard("1"), keras_callbacks.InterruptAt(6)],
            )
        keras_callbacks.simulate_restart()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        self._fit(self.tiny_model(), [callback, tensorboard("2")])
        # The resumed run's batch summaries go on at the steps of one
        # uninterrupted run (the interrupted run wrote up to step 6; what
        # it had not flushed when it raised is lost, as in a crash).
        self.assertEqual(
            _summary_steps(os.path.join(logs, "2"), "batch_loss"),
            list(range(7, EPOCHS * 4 + 1)),
        )


def _summary_steps(log_dir, tag):
    steps = []
    for path in sorted(glob.glob(os.path.join(log_dir, "train", "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            steps.extend(
                event.step for v in event.summary.value if v.tag == tag
            )
    return steps


FitHooksTfKerasTest = test_case.tf_keras_variant(FitHooksTest)

if __name__ == "__main__":
    absltest.main()
