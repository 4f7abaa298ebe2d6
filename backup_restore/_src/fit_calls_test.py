"""Which fit() a backup belongs to, and what its data position means.

In-process: several fit() calls of one job, a changed batch size or data
size, two backup callbacks in one fit(), a fit() that raised.
"""

import os

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import dirs
from testing import fit_test_case
from testing import keras_callbacks
from testing import synthetic
from testing import test_case

SAMPLES = fit_test_case.SAMPLES
BATCH = fit_test_case.BATCH  # 4 batches per epoch


def _iterations(model):
    return int(model.optimizer.iterations.numpy())


class FitCallsTest(fit_test_case.FitTestCase):
    EPOCHS = 2

    def _interrupted(self, model=None, **fit_kwargs):
        """Leaves the backup of a run interrupted in epoch 1, after its 6th
        batch (the backup at that batch: epoch 1, batch 2)."""
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                model or self.tiny_model(),
                [callback, keras_callbacks.InterruptAt(6)],
                epochs=3,
                **fit_kwargs,
            )
        callback.wait_for_backup()
        keras_callbacks.simulate_restart()
        return keras_callbacks.backup_entries(self.dir)

    # -- several fit() calls ------------------------------------------------

    def test_a_second_fit_trains_and_a_third_without_callback_is_untouched(
        self,
    ):
        model = self.tiny_model()
        for _ in range(2):
            self.fit_tiny(
                model,
                [
                    backup_restore.BackupAndRestore(
                        self.dir, delete_checkpoint=False
                    )
                ],
            )
        # The second call is another call of the job: it trains its epochs
        # (as fit() does when called again), it does not restore the first.
        self.assertEqual(_iterations(model), 2 * 2 * 4)
        history = self.fit_tiny(model, [], epochs=3)
        self.assertEqual(history.epoch, [0, 1, 2])
        self.assertEqual(_iterations(model), 2 * 2 * 4 + 3 * 4)

    def test_a_fit_interrupted_while_deleting_its_backups_has_completed(self):
        # Ctrl-C once the deletion begins: training was complete, so the
        # next fit() is a new call; it leaves the first call's backups
        # alone (they are another call's) and trains its own epochs.
        from backup_restore._src import faults

        def interrupt(stage, path):
            del path
            if stage == faults.DELETING:
                raise KeyboardInterrupt

        faults.set_hook(interrupt)
        self.addCleanup(faults.set_hook, None)
        model = self.tiny_model()
        with self.assertRaises(KeyboardInterrupt):
            self.fit_tiny(model, [backup_restore.BackupAndRestore(self.dir)])
        faults.set_hook(None)
        self.assertNotEmpty(keras_callbacks.backup_entries(self.dir))
        callback = backup_restore.BackupAndRestore(self.dir)
        history = self.fit_tiny(model, [callback])
        self.assertIsNone(callback.resumed_from)
        self.assertEqual(history.epoch, [0, 1])
        self.assertEqual(_iterations(model), 2 * 2 * 4)

    def test_a_rerun_job_restores_each_fit_call_its_own_backup(self):
        def job():
            model = self.tiny_model()
            callback = backup_restore.BackupAndRestore(
                self.dir, delete_checkpoint=False
            )
            resumed = []
            for _ in range(2):
                self.fit_tiny(model, [callback])
                resumed.append(callback.resumed_from)
            return model, resumed

        first, resumed = job()
        self.assertEqual(resumed, [None, None])
        keras_callbacks.simulate_restart()
        again, resumed = job()
        # Each call finds its own final backup: nothing is trained again.
        self.assertEqual(resumed, [(2, 0), (2, 0)])
        self.assertEqual(_iterations(again), _iterations(first))
        for got, want in zip(
            self.weights(again), self.weights(first), strict=True
        ):
            np.testing.assert_array_equal(got, want)

    def test_nothing_outlives_a_fit_that_raised(self):
        model = self.tiny_model()
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                model,
                [
                    backup_restore.BackupAndRestore(self.dir, save_freq=1),
                    keras_callbacks.InterruptAt(3),
                ],
            )
        keras_callbacks.simulate_restart()

        class RaiseAtFirstBatch(self.keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                raise keras_callbacks.Interrupted("before the first step")

        # This fit() restores (a start epoch/batch and batches to skip for
        # fit), then raises before its first step...
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(model, [callback, RaiseAtFirstBatch()])
        self.assertEqual(callback.resumed_from, (0, 3))
        before = _iterations(model)
        # ...and a plain fit() afterwards starts at its own beginning and
        # trains every batch: nothing of the callback was left behind.
        recorder = keras_callbacks.Recorder()
        history = self.fit_tiny(model, [recorder], epochs=2)
        self.assertEqual(recorder.epochs, [0, 1])
        self.assertEqual(recorder.batches[0], (0, 0))
        self.assertEqual(history.epoch, [0, 1])
        self.assertEqual(_iterations(model), before + 2 * 4)

    def test_an_earlier_fit_call_leaves_a_later_calls_backup_alone(self):
        # A two-phase job, killed in phase 2 (fit call #1): when it runs
        # again, phase 1 (call #0) trains and completes without touching
        # phase 2's backup, which phase 2 then resumes.
        model = self.tiny_model()
        self.fit_tiny(
            model, [backup_restore.BackupAndRestore(self.dir)], epochs=2
        )
        phase2 = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                model,
                [phase2, keras_callbacks.InterruptAt(6)],
                epochs=4,
                initial_epoch=2,
            )
        phase2.wait_for_backup()
        phase2_backups = keras_callbacks.backup_entries(self.dir)
        keras_callbacks.simulate_restart()
        model = self.tiny_model()
        phase1 = backup_restore.BackupAndRestore(self.dir)
        self.fit_tiny(model, [phase1], epochs=2)
        self.assertIsNone(phase1.resumed_from)
        self.assertEqual(
            keras_callbacks.backup_entries(self.dir), phase2_backups
        )
        phase2 = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        self.fit_tiny(model, [phase2], epochs=4, initial_epoch=2)
        # The backup of batch 6, where InterruptAt raised.
        self.assertEqual(phase2.resumed_from, (3, 2))
        self.assertEqual(_iterations(model), 4 * 4)
        self.assertFalse(os.path.exists(self.dir))

    # -- what a position means ----------------------------------------------

    @parameterized.named_parameters(
        ("batch_size", dict(batch=32), r"batch size: backup 16, now 32"),
        (
            "num_samples",
            dict(samples=128),
            r"number of training samples: backup 64, now 128",
        ),
        (
            "initial_epoch",
            dict(initial_epoch=1),
            r"initial_epoch=...\): backup 0, now 1",
        ),
        (
            "shuffle",
            dict(shuffle=False),
            r"fit\(shuffle=...\): backup True, now False",
        ),
        (
            "class_weight",
            dict(class_weight={0: 2.0}),
            r"fit\(class_weight=...\) given: backup False, now True",
        ),
        (
            "sample_weight",
            dict(sample_weight=np.full(SAMPLES, 0.5, "float32")),
            r"fit\(sample_weight=...\) given: backup False, now True",
        ),
        (
            # The same 4 batches per epoch, only the argument differs.
            "steps_per_epoch",
            dict(steps_per_epoch=SAMPLES // BATCH),
            r"fit\(steps_per_epoch=...\): backup None, now 4",
        ),
    )
    def test_a_resume_with_other_data_or_arguments_is_refused(
        self, change, pattern
    ):
        before = self._interrupted()
        model = self.tiny_model()
        weights = self.weights(model)
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError, pattern
        ):
            self.fit_tiny(
                model,
                [backup_restore.BackupAndRestore(self.dir, save_freq=2)],
                epochs=3,
                **change,
            )
        self.assertEqual(
            keras_callbacks.backup_entries(self.dir), before, "nothing lost"
        )
        self.assertEqual(_iterations(model), 0, "no step ran")
        for got, want in zip(self.weights(model), weights, strict=True):
            np.testing.assert_array_equal(got, want)

    @parameterized.named_parameters(
        ("dataset", "dataset"),
        ("generator", "generator"),
    )
    def test_shuffle_changed_where_the_input_ignores_it_resumes(self, kind):
        # fit() ignores `shuffle` for a tf.data.Dataset or a generator: the
        # batches are the same, so the position means the same.
        def inputs():
            if kind == "dataset":
                return dict(
                    dataset=synthetic.regression_dataset(SAMPLES, BATCH, seed=3)
                )
            return dict(
                dataset=synthetic.regression_generator(SAMPLES, BATCH, seed=3),
                steps_per_epoch=SAMPLES // BATCH,
            )

        self._interrupted(shuffle=True, **inputs())
        model = self.tiny_model()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        self.fit_tiny(model, [callback], epochs=3, shuffle=False, **inputs())
        self.assertEqual(callback.resumed_from, (1, 2))
        self.assertEqual(_iterations(model), 3 * 4)

    def test_shuffle_changed_on_a_sequence_is_refused(self):
        # A Sequence / PyDataset of known length: shuffle reorders its
        # batches, so the position would mean other batches.
        def sequence():
            return synthetic.SEQUENCE[self.FLAVOUR](SAMPLES, BATCH, seed=3)

        self._interrupted(dataset=sequence(), shuffle=True)
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError,
            r"fit\(shuffle=...\): backup True, now False",
        ):
            self.fit_tiny(
                self.tiny_model(),
                [backup_restore.BackupAndRestore(self.dir, save_freq=2)],
                epochs=3,
                dataset=sequence(),
                shuffle=False,
            )

    def test_a_resume_with_validation_added_warns_and_resumes(self):
        self._interrupted()
        model = self.tiny_model()
        x, y = synthetic.regression_data(16, seed=5)
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        with self.assertLogs(level="WARNING") as logs:
            history = self.fit_tiny(
                model, [callback], epochs=3, validation_data=(x, y)
            )
        self.assertEqual(callback.resumed_from, (1, 2))
        warning = "\n".join(logs.output)
        self.assertIn("validation data given: backup False, now True", warning)
        self.assertIn("from epoch 1 on", warning)
        self.assertLen(history.history["loss"], 3)
        self.assertLen(history.history["val_loss"], 2)

    @parameterized.named_parameters(
        (
            "validation_freq",
            dict(validation_freq=1),
            dict(validation_freq=2),
            "fit(validation_freq=...): backup 1, now 2",
        ),
        (
            "validation_steps",
            dict(),
            dict(validation_steps=1),
            "fit(validation_steps=...): backup None, now 1",
        ),
    )
    def test_a_resume_with_validation_changed_warns_and_resumes(
        self, before, now, message
    ):
        validation = synthetic.regression_data(16, seed=5)
        self._interrupted(validation_data=validation, **before)
        model = self.tiny_model()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        with self.assertLogs(level="WARNING") as logs:
            self.fit_tiny(
                model, [callback], epochs=3, validation_data=validation, **now
            )
        self.assertEqual(callback.resumed_from, (1, 2))
        warnings = [o for o in logs.output if "validated differently" in o]
        self.assertLen(warnings, 1)
        self.assertIn(message, warnings[0])
        self.assertEqual(_iterations(model), 3 * 4)

    def test_a_legacy_optimizer_runs_fit_again_after_an_interruption(self):
        if self.FLAVOUR != "tf_keras":
            self.skipTest("legacy optimizers are tf-keras's")
        keras = synthetic.KERAS[self.FLAVOUR]
        model = self.tiny_model()
        model.compile(keras.optimizers.legacy.SGD(0.001), "mse")
        # The interrupted fit() did not complete: running it again in this
        # process resumes it, with the learning rate now a float32.
        self._interrupted(model=model)
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        self.fit_tiny(model, [callback], epochs=3)
        self.assertEqual(callback.resumed_from, (1, 2))
        self.assertEqual(_iterations(model), 3 * 4)

    def test_a_raise_at_an_epoch_begin_then_fit_again_resumes_there(self):
        # tf-keras's multi-worker BackupAndRestore test in one process, for
        # both flavours: another callback raises at the beginning of epoch
        # 2, the same model runs fit() again and resumes at epoch 2.
        uninterrupted = self.tiny_model()
        self.fit_tiny(uninterrupted, [], epochs=4)

        class RaiseAtEpoch2(keras_callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 2:
                    raise keras_callbacks.Interrupted("epoch 2")

        model = self.tiny_model()
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                model,
                [backup_restore.BackupAndRestore(self.dir), RaiseAtEpoch2()],
                epochs=4,
            )
        callback = backup_restore.BackupAndRestore(self.dir)
        recorder = keras_callbacks.Recorder()
        self.fit_tiny(model, [callback, recorder], epochs=4)
        self.assertEqual(callback.resumed_from, (2, 0))
        self.assertEqual(recorder.epochs, [2, 3])
        self.assertEqual(_iterations(model), 4 * 4)
        for got, want in zip(
            self.weights(model), self.weights(uninterrupted), strict=True
        ):
            np.testing.assert_array_equal(got, want)

    @parameterized.parameters(2, 4)
    def test_other_epochs_continue_to_the_new_end_with_a_warning(self, epochs):
        self._interrupted()  # epochs=3, the backup at epoch 1, batch 2
        model = self.tiny_model()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        with self.assertLogs(level="WARNING") as logs:
            self.fit_tiny(model, [callback], epochs=epochs)
        self.assertEqual(callback.resumed_from, (1, 2))
        self.assertEqual(_iterations(model), epochs * 4)
        self.assertTrue(
            any(
                f"written by fit(epochs=3); this fit() has epochs={epochs} "
                "and continues it to that end" in line
                for line in logs.output
            ),
            logs.output,
        )

    def test_fewer_epochs_than_the_backup_is_refused(self):
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                self.tiny_model(),
                [callback, keras_callbacks.InterruptAt(7)],
                epochs=3,
            )
        callback.wait_for_backup()  # the last one: epoch 1, batch 3
        keras_callbacks.simulate_restart()
        before = keras_callbacks.backup_entries(self.dir)
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError,
            r"the backup is at epoch 1, batch 3, past the end of this fit\(\) "
            r"\(epochs=1\)",
        ):
            self.fit_tiny(
                self.tiny_model(),
                [backup_restore.BackupAndRestore(self.dir, save_freq=2)],
                epochs=1,
            )
        self.assertEqual(
            keras_callbacks.backup_entries(self.dir), before, "nothing lost"
        )

    def test_batch_size_of_a_dataset_with_drop_remainder_is_checked(self):
        def dataset(batch):
            x, y = synthetic.regression_data(SAMPLES, seed=3)
            return (
                tf.data.Dataset.from_tensor_slices((x, y))
                .batch(batch, drop_remainder=True)
                .repeat()
            )

        self._interrupted(dataset=dataset(BATCH), steps_per_epoch=4)
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError,
            r"input batches .*: backup \[\[\[16, 16\], 'float32'\], "
            r"\[\[16, 1\], 'float32'\]\], now \[\[\[8, 16\]",
        ):
            self.fit_tiny(
                self.tiny_model(),
                [backup_restore.BackupAndRestore(self.dir, 2)],
                epochs=3,
                dataset=dataset(BATCH // 2),
                steps_per_epoch=4,
            )

    def test_batches_per_epoch_of_a_dataset_are_checked(self):
        self._interrupted(
            dataset=synthetic.regression_dataset(SAMPLES, BATCH, seed=3)
        )
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError,
            r"batches per epoch: backup 4, now 2",
        ):
            self.fit_tiny(
                self.tiny_model(),
                [backup_restore.BackupAndRestore(self.dir, 2)],
                epochs=3,
                dataset=synthetic.regression_dataset(
                    SAMPLES, 2 * BATCH, seed=3
                ),
            )

    # -- one backup callback per fit() --------------------------------------

    @parameterized.named_parameters(
        ("two_of_ours", False),
        ("ours_and_the_flavours_own", True),
    )
    def test_two_backup_callbacks_are_refused_before_anything(self, keras_own):
        before = self._interrupted()
        other_dir = os.path.join(self.tmp, "other")
        other = (
            self.keras.callbacks.BackupAndRestore(other_dir)
            if keras_own
            else backup_restore.BackupAndRestore(other_dir)
        )
        model = self.tiny_model()
        with self.assertRaisesRegex(
            ValueError, r"more than one backup callback.*Nothing was restored"
        ):
            self.fit_tiny(
                model,
                [backup_restore.BackupAndRestore(self.dir), other],
                epochs=3,
            )
        self.assertEqual(keras_callbacks.backup_entries(self.dir), before)
        self.assertFalse(os.path.exists(other_dir) and dirs.entries(other_dir))
        self.assertEqual(_iterations(model), 0)

    def test_one_callback_serves_two_models_one_after_the_other(self):
        callback = backup_restore.BackupAndRestore(
            self.dir, delete_checkpoint=False
        )
        self.fit_tiny(self.tiny_model(), [callback])
        other = self.keras.Sequential(
            [
                self.keras.Input((synthetic.INPUT_DIM,)),
                self.keras.layers.Dense(3),
                self.keras.layers.Dense(1),
            ]
        )
        other.compile("sgd", "mse")
        self.fit_tiny(other, [callback])  # another fit() call: no mismatch
        self.assertIsNone(callback.resumed_from)
        self.assertEqual(_iterations(other), 2 * 4)


FitCallsTfKerasTest = test_case.tf_keras_variant(FitCallsTest)

if __name__ == "__main__":
    absltest.main()
