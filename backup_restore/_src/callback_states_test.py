"""Other callbacks' state survives an interruption (in-process fit)."""

import os
import types

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from backup_restore._src import callback_states
from testing import fit_test_case
from testing import keras_callbacks
from testing import synthetic
from testing import test_case

SAMPLES, BATCH = 64, 16  # 4 batches per epoch
X, Y = synthetic.regression_data(SAMPLES, seed=3)


class LearningRateLog(keras_callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_epoch_end(self, epoch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate.numpy()))


class Counter(keras_callbacks.Callback):
    """A user callback that opts in to backups."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1

    def get_backup_state(self):
        return {"batches": self.batches}

    def set_backup_state(self, state):
        self.batches = state["batches"]


def _run(flavour, make_callbacks, epochs, backup_dir=None, interrupt_at=None):
    """Builds a fresh model and fits it; returns (model, history, callbacks)."""
    synthetic.KERAS[flavour].utils.set_random_seed(11)
    model = synthetic.regression_model("tiny", flavour=flavour)
    callbacks = make_callbacks()
    extra = []
    if backup_dir:
        extra.append(backup_restore.BackupAndRestore(backup_dir, save_freq=3))
    if interrupt_at:
        extra.append(keras_callbacks.InterruptAt(interrupt_at))
    history = model.fit(
        X,
        Y,
        batch_size=BATCH,
        epochs=epochs,
        verbose=0,
        callbacks=extra + callbacks,  # ours first: it moves itself last
    )
    return model, history, callbacks


class CallbackStatesTest(fit_test_case.FitTestCase):
    def _compare(self, make_callbacks, epochs, interrupt_at):
        """Uninterrupted vs interrupted+resumed; returns both callback lists."""
        ref_model, ref_history, ref_cbs = _run(
            self.FLAVOUR, make_callbacks, epochs
        )
        with self.assertRaises(keras_callbacks.Interrupted):
            _run(self.FLAVOUR, make_callbacks, epochs, self.dir, interrupt_at)
        model, history, cbs = _run(
            self.FLAVOUR, make_callbacks, epochs, self.dir
        )
        self.assertEqual(history.epoch, ref_history.epoch)
        self.assertEqual(history.history, ref_history.history)
        for got, want in zip(model.weights, ref_model.weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
        return ref_cbs, cbs

    def test_early_stopping_stops_at_the_same_epoch(self):
        def make():
            # Never "improves" after epoch 0: stops after epoch 2.
            return [
                self.keras.callbacks.EarlyStopping(
                    monitor="loss",
                    min_delta=1e9,
                    patience=2,
                    restore_best_weights=True,
                )
            ]

        # Interrupted after 7 batches: last backup at batch 6 (epoch 1).
        (ref,), (got,) = self._compare(make, epochs=8, interrupt_at=7)
        self.assertEqual(ref.stopped_epoch, 2)
        self.assertEqual(got.stopped_epoch, ref.stopped_epoch)
        self.assertEqual(got.best, ref.best)
        for a, b in zip(got.best_weights, ref.best_weights, strict=True):
            np.testing.assert_array_equal(a, b)

    def test_reduce_lr_on_plateau_follows_the_same_trajectory(self):
        def make():
            return [
                self.keras.callbacks.ReduceLROnPlateau(
                    monitor="loss", min_delta=1e9, patience=1, factor=0.5
                ),
                LearningRateLog(),
            ]

        (ref_plateau, ref_log), (plateau, log) = self._compare(
            make, epochs=5, interrupt_at=10
        )
        self.assertLen(set(ref_log.rates), 5, "the LR changed every epoch")
        self.assertEqual(plateau.wait, ref_plateau.wait)
        self.assertEqual(plateau.cooldown_counter, ref_plateau.cooldown_counter)
        # The log callback is not backed up: it saw the resumed epochs only.
        self.assertEqual(log.rates, ref_log.rates[-len(log.rates) :])

    def test_learning_rate_scheduler(self):
        def make():
            return [
                self.keras.callbacks.LearningRateScheduler(
                    lambda epoch, lr: lr * 0.5
                ),
                LearningRateLog(),
            ]

        # Interrupted mid-epoch (batch 7; last backup at batch 6 = epoch 1,
        # batch 2): on_epoch_begin(1) runs again on resume, and must not halve
        # the restored learning rate a second time.
        (_, ref_log), (_, log) = self._compare(make, epochs=4, interrupt_at=7)
        self.assertEqual(log.rates, ref_log.rates[-len(log.rates) :])

    def test_model_checkpoint_keeps_its_best(self):
        def make():
            return [
                self.keras.callbacks.ModelCheckpoint(
                    os.path.join(self.tmp, "best.weights.h5"),
                    monitor="loss",
                    save_best_only=True,
                    save_weights_only=True,
                    save_freq=3,
                )
            ]

        (ref,), (got,) = self._compare(make, epochs=3, interrupt_at=7)
        self.assertEqual(got.best, ref.best)
        self.assertEqual(
            got._batches_seen_since_last_saving,
            ref._batches_seen_since_last_saving,
        )

    @parameterized.named_parameters(
        ("truncate", False, False),
        ("append", True, False),
        # ReduceLROnPlateau after the logger adds the learning rate to the
        # logs, which History records and the logger's rows do not hold.
        ("truncate_keys_added_after_it", False, True),
        ("append_keys_added_after_it", True, True),
    )
    def test_csv_logger_file_is_identical(self, append, keys_added_after):
        ref_path = os.path.join(self.tmp, "reference.csv")
        job_path = os.path.join(
            self.tmp, "job.csv"
        )  # interrupted, then resumed
        calls = []
        for path in (ref_path, job_path):
            with open(path, "w") as f:
                f.write("a row of an earlier job\n")

        def make():
            calls.append(None)
            path = ref_path if len(calls) == 1 else job_path
            callbacks = [self.keras.callbacks.CSVLogger(path, append=append)]
            if keys_added_after:
                callbacks.append(
                    self.keras.callbacks.ReduceLROnPlateau(monitor="loss")
                )
            return callbacks

        # Interrupted after 10 batches: epochs 0 and 1 are in the CSV file,
        # the last backup is at batch 9 (epoch 2, batch 1).
        self._compare(make, epochs=3, interrupt_at=10)
        with open(ref_path) as f:
            want = f.read()
        with open(job_path) as f:
            got = f.read()
        self.assertEqual(got, want)
        # Append: the earlier row + 3 epochs (CSVLogger writes no header into
        # a non-empty file). Truncate: header + 3 epochs.
        self.assertEqual(want.count("\n"), 4)
        # The logger's columns are epoch and loss only.
        self.assertNotRegex(want, r"\blr\b|learning_rate")

    def test_user_callback_opt_in(self):
        (ref,), (got,) = self._compare(
            lambda: [Counter()], epochs=3, interrupt_at=7
        )
        self.assertEqual(ref.batches, 12)
        self.assertEqual(got.batches, 12)

    def test_user_state_must_be_json(self):
        class Bad(self.keras.callbacks.Callback):
            def get_backup_state(self):
                return {"array": np.zeros(3)}

            def set_backup_state(self, state):
                pass

        with self.assertRaisesRegex(TypeError, "JSON-serializable"):
            _run(self.FLAVOUR, lambda: [Bad()], 2, self.dir)

    def test_an_attribute_the_installed_keras_lacks_is_named_and_left_out(self):
        class Stopping(self.keras.callbacks.EarlyStopping):
            pass

        adapter = types.SimpleNamespace(
            BUILTIN_CALLBACK_STATE={Stopping: ("wait", "renamed")},
            BUILTIN_CALLBACK_TENSORS={Stopping: "best_weights"},
            CSV_LOGGER=self.keras.callbacks.CSVLogger,
            NAME="Keras 9.0.0",
            VERIFIED_VERSION="3.15.1",
        )
        stopping = Stopping(monitor="loss")
        stopping.wait = 2
        with self.assertLogs(level="WARNING") as logs:
            states, tensors = callback_states.collect([stopping], adapter)
        self.assertEqual(list(states.values()), [{"attrs": {"wait": 2}}])
        self.assertEqual(tensors, {})  # no best weights yet
        (warning,) = logs.output
        self.assertIn(
            "Stopping of Keras 9.0.0 has no attribute 'renamed'", warning
        )
        self.assertIn("verified with Keras 3.15.1", warning)
        with self.assertNoLogs(level="WARNING"):  # once per attribute
            callback_states.collect([stopping], adapter)
        resumed = Stopping(monitor="loss")
        callback_states.restore([resumed], adapter, states, {}, None)
        self.assertEqual(resumed.wait, 2)
        self.assertFalse(hasattr(resumed, "renamed"))


CallbackStatesTfKerasTest = test_case.tf_keras_variant(CallbackStatesTest)

if __name__ == "__main__":
    absltest.main()
