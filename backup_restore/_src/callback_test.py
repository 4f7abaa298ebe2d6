"""In-process tests of BackupAndRestore in Model.fit()."""

import os
import time
import uuid
import warnings
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from backup_restore._src import faults
from backup_restore._src import fit_content
from backup_restore._src import stateful_random
from testing import dirs
from testing import fit_test_case
from testing import keras_callbacks
from testing import synthetic
from testing import test_case

SAMPLES = fit_test_case.SAMPLES
BATCH = fit_test_case.BATCH  # 4 batches per epoch
EPOCHS = fit_test_case.EPOCHS


class _Ticks(keras_callbacks.Callback):
    """A fake clock for the backup policy: each training batch takes one
    second, and nothing else takes any time."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def __call__(self):
        return self.now

    def on_train_batch_end(self, batch, logs=None):
        self.now += 1.0


class CallbackTest(fit_test_case.FitTestCase):
    def _reference(self, **fit_kwargs):
        model = self.tiny_model()
        history = self.fit_tiny(
            model, [keras_callbacks.Recorder()], **fit_kwargs
        )
        return model, history

    def _interrupted_then_resumed(self, save_freq, interrupt_at, **kw):
        model = self.tiny_model()
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                model,
                [
                    backup_restore.BackupAndRestore(self.dir, save_freq),
                    keras_callbacks.InterruptAt(interrupt_at),
                ],
                **kw,
            )
        self.assertTrue(tf.io.gfile.isdir(self.dir))
        resumed = self.tiny_model()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq)
        recorder = keras_callbacks.Recorder()
        history = self.fit_tiny(resumed, [callback, recorder], **kw)
        return resumed, history, callback, recorder

    # -- resume -------------------------------------------------------------

    @parameterized.named_parameters(
        # 4 batches per epoch; interrupted after 6 batches = epoch 1, batch 2.
        ("epoch", "epoch", 6, (1, 0)),
        ("every_3_batches", 3, 7, (1, 2)),
        # A save due at an epoch's last batch is written at the epoch's end.
        ("every_4_batches_at_epoch_end", 4, 6, (1, 0)),
        ("every_5_batches", 5, 11, (2, 2)),
    )
    def test_resumes_where_the_backup_was_and_matches(
        self, save_freq, interrupt_at, expected
    ):
        ref_model, ref_history = self._reference()
        model, history, callback, recorder = self._interrupted_then_resumed(
            save_freq, interrupt_at
        )
        self.assertEqual(callback.resumed_from, expected)
        epoch, batch = expected
        self.assertEqual(recorder.epochs, list(range(epoch, EPOCHS)))
        self.assertEqual(recorder.batches[0], (epoch, batch))
        # History covers every epoch, as if never interrupted.
        self.assertEqual(history.epoch, list(range(EPOCHS)))
        self.assertEqual(history.history, ref_history.history)
        for got, want in zip(
            self.weights(model), self.weights(ref_model), strict=True
        ):
            np.testing.assert_array_equal(got, want)
        self.assertEqual(
            int(model.optimizer.iterations.numpy()),
            int(ref_model.optimizer.iterations.numpy()),
        )
        self.assertFalse(os.path.exists(self.dir), "deleted on completion")

    def test_no_backup_starts_fresh_and_deletes_at_end(self):
        callback = backup_restore.BackupAndRestore(self.dir)
        history = self.fit_tiny(self.tiny_model(), [callback])
        self.assertIsNone(callback.resumed_from)
        self.assertLen(history.epoch, EPOCHS)
        self.assertFalse(os.path.exists(self.dir))

    def test_delete_checkpoint_false_keeps_the_backup(self):
        self.fit_tiny(
            self.tiny_model(),
            [
                backup_restore.BackupAndRestore(
                    self.dir, delete_checkpoint=False
                )
            ],
        )
        self.assertEqual(dirs.entries(self.dir), ["backup-00000003"])
        # Running the same job again finds it complete: no epoch runs.
        keras_callbacks.simulate_restart()
        callback = backup_restore.BackupAndRestore(
            self.dir, delete_checkpoint=False
        )
        recorder = keras_callbacks.Recorder()
        history = self.fit_tiny(self.tiny_model(), [callback, recorder])
        self.assertEqual(callback.resumed_from, (EPOCHS, 0))
        self.assertEqual(recorder.epochs, [])
        self.assertEqual(history.epoch, list(range(EPOCHS)))

    def test_a_wrapped_callback_runs_each_hook_once(self):
        # Another callback may wrap this one and forward its hooks (the
        # benchmark does, to time them): it must not also add itself to fit's
        # callbacks, or every hook would run twice.
        inner = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        backups = keras_callbacks.BackupPositions(self)
        wrapper = keras_callbacks.forwarding(
            self.keras.callbacks.Callback, inner
        )
        self.fit_tiny(self.tiny_model(), [wrapper(), backups])
        # Every batch but the last (its backup would be deleted at once).
        self.assertLen(backups.positions, EPOCHS * 4 - 1)

    def test_one_checkpoint_object_serves_every_backup(self):
        # TensorFlow's async checkpointing allocates a host copy of the whole
        # state per Checkpoint object: one per backup ran out of memory.
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        backups = keras_callbacks.BackupPositions(self)
        made = []
        checkpoint_class = tf.train.Checkpoint

        def counting(*args, **kwargs):
            made.append(1)
            return checkpoint_class(*args, **kwargs)

        with mock.patch.object(tf.train, "Checkpoint", counting):
            self.fit_tiny(self.tiny_model(), [callback, backups])
        self.assertLen(backups.positions, EPOCHS * 4 - 1)
        self.assertLen(made, 1)

    @parameterized.parameters(
        # (save_freq, delete_checkpoint, backups written): the backup due at
        # the very end is skipped when fit() would delete it at once.
        ("epoch", True, EPOCHS - 1),
        ("epoch", False, EPOCHS),
        (4, True, EPOCHS - 1),
        (4, False, EPOCHS),
    )
    def test_the_backup_deleted_at_the_end_is_not_written(
        self, save_freq, delete, expected
    ):
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq=save_freq, delete_checkpoint=delete
        )
        backups = keras_callbacks.BackupPositions(self)
        self.fit_tiny(self.tiny_model(), [callback, backups])
        self.assertEqual(backups.epochs, list(range(1, expected + 1)))
        self.assertEqual(os.path.exists(self.dir), not delete)

    def test_no_last_backup_when_early_stopping_ends_training(self):
        callback = backup_restore.BackupAndRestore(self.dir)
        backups = keras_callbacks.BackupPositions(self)

        class StopAfterFirstEpoch(self.keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                self.model.stop_training = True

        history = self.fit_tiny(
            self.tiny_model(), [callback, StopAfterFirstEpoch(), backups]
        )
        self.assertEqual(history.epoch, [0])
        self.assertEqual(backups.positions, [])

    def test_a_directory_that_existed_is_kept_at_completion(self):
        # Even empty: only what the callback created is removed.
        os.makedirs(self.dir)
        self.fit_tiny(
            self.tiny_model(), [backup_restore.BackupAndRestore(self.dir)]
        )
        self.assertEqual(os.listdir(self.dir), [])

    def test_the_parents_it_created_are_removed_at_completion(self):
        parent = os.path.join(self.tmp, "existing")
        os.makedirs(parent)
        nested = os.path.join(parent, "made", "by", "us")
        self.fit_tiny(
            self.tiny_model(), [backup_restore.BackupAndRestore(nested)]
        )
        self.assertEqual(os.listdir(parent), [])

    def test_a_directory_left_by_an_interrupted_run_is_removed(self):
        # The restart finds backup_dir with only the backups of the run
        # that created it: it ends as an uninterrupted run does.
        self._interrupted_then_resumed("epoch", 6)
        self.assertFalse(os.path.exists(self.dir))

    def test_a_directory_that_existed_is_kept_after_an_interrupted_run(self):
        # The interrupted run left only its backups in the user's directory:
        # the resumed run still keeps the directory.
        os.makedirs(self.dir)
        self._interrupted_then_resumed("epoch", 6)
        self.assertEqual(os.listdir(self.dir), [])

    def test_foreign_files_survive_completion(self):
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "notes.txt"), "w") as f:
            f.write("mine")
        self.fit_tiny(
            self.tiny_model(), [backup_restore.BackupAndRestore(self.dir)]
        )
        self.assertEqual(os.listdir(self.dir), ["notes.txt"])

    def test_ram_filesystem(self):
        self.dir = f"ram://callback_test/{uuid.uuid4().hex}"
        ref_model, _ = self._reference()
        model, _, callback, _ = self._interrupted_then_resumed("epoch", 6)
        self.assertEqual(callback.resumed_from, (1, 0))
        for got, want in zip(
            self.weights(model), self.weights(ref_model), strict=True
        ):
            np.testing.assert_array_equal(got, want)

    def test_unbuilt_model_is_built_and_restored(self):
        x, y = synthetic.regression_data(SAMPLES, seed=3)

        def unbuilt():
            self.keras.utils.set_random_seed(7)
            return synthetic.regression_model(
                "tiny", build=False, flavour=self.FLAVOUR
            )

        ref = unbuilt()
        ref.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
        model = unbuilt()
        with self.assertRaises(keras_callbacks.Interrupted):
            model.fit(
                x,
                y,
                batch_size=BATCH,
                epochs=EPOCHS,
                verbose=0,
                callbacks=[
                    backup_restore.BackupAndRestore(self.dir),
                    keras_callbacks.InterruptAt(6),
                ],
            )
        resumed = unbuilt()
        self.assertFalse(resumed.built)
        callback = backup_restore.BackupAndRestore(self.dir)
        resumed.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[callback],
        )
        self.assertEqual(callback.resumed_from, (1, 0))
        for got, want in zip(
            self.weights(resumed), self.weights(ref), strict=True
        ):
            np.testing.assert_array_equal(got, want)

    def _assert_resumes_exactly(self, make_model, x, y):
        """Fits `make_model()` uninterrupted, then interrupted after 6
        batches (a backup after each) and resumed: the weights are equal."""

        def fit(model, callbacks):
            model.fit(
                x,
                y,
                batch_size=BATCH,
                epochs=EPOCHS,
                verbose=0,
                callbacks=callbacks,
            )

        ref = make_model()
        fit(ref, [])
        first = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        with self.assertRaises(keras_callbacks.Interrupted):
            fit(
                make_model(),
                [first, keras_callbacks.InterruptAt(6, backup=first)],
            )
        resumed = make_model()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        fit(resumed, [callback])
        self.assertEqual(callback.resumed_from, (1, 2))
        for got, want in zip(
            self.weights(resumed), self.weights(ref), strict=True
        ):
            np.testing.assert_array_equal(got, want)
        return resumed

    def test_a_model_built_without_its_sublayers_weights_is_restored(self):
        # A subclassed model with no build() of its own: model.build()
        # marks it built (Keras 3 warns of its unbuilt state) and the
        # sublayers make their weights at the first step.
        x, y = synthetic.regression_data(SAMPLES, seed=3)
        keras_module = self.keras

        class TwoDense(keras_module.Model):
            def __init__(self):
                super().__init__()
                self.hidden = keras_module.layers.Dense(4, activation="relu")
                self.out = keras_module.layers.Dense(1)

            def call(self, inputs):
                return self.out(self.hidden(inputs))

        def built_without_weights():
            keras_module.utils.set_random_seed(7)
            model = TwoDense()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.build((None, x.shape[1]))
            self.assertTrue(model.built)  # before fit(), the resumed one too
            model.compile(keras_module.optimizers.Adam(0.01), "mse")
            return model

        self._assert_resumes_exactly(built_without_weights, x, y)

    def test_an_rnn_with_recurrent_dropout_resumes_exactly(self):
        # tf-keras: its masks cache per graph is an attribute that
        # Module.submodules cannot walk.
        keras_module = self.keras
        rng = np.random.RandomState(3)
        x = rng.rand(SAMPLES, 3, 2).astype("float32")
        y = rng.rand(SAMPLES, 1).astype("float32")

        def rnn():
            keras_module.utils.set_random_seed(7)
            if self.FLAVOUR == "tf_keras":
                experimental = keras_module.backend.experimental
                experimental.enable_tf_random_generator()
                self.addCleanup(experimental.disable_tf_random_generator)
            model = keras_module.Sequential(
                [
                    keras_module.Input((3, 2)),
                    keras_module.layers.LSTM(
                        3, dropout=0.2, recurrent_dropout=0.2
                    ),
                    keras_module.layers.Dense(1),
                ]
            )
            model.compile(keras_module.optimizers.Adam(0.01), "mse")
            return model

        self._assert_resumes_exactly(rnn, x, y)

    def _stateful_random_warnings(self, model):
        x, y = synthetic.regression_data(SAMPLES, seed=3)
        with mock.patch.object(
            fit_content.logging, "warning", wraps=fit_content.logging.warning
        ) as warning:
            model.fit(
                x,
                y,
                batch_size=BATCH,
                epochs=EPOCHS,
                verbose=0,
                callbacks=[backup_restore.BackupAndRestore(self.dir)],
            )
        return [
            c.args
            for c in warning.call_args_list
            if "stateful random ops" in c.args[0]
        ]

    def test_a_step_drawing_from_stateful_random_ops_is_named_once(self):
        keras_module = self.keras

        class Noisy(keras_module.Model):
            def __init__(self):
                super().__init__()
                self.out = keras_module.layers.Dense(1)

            def call(self, inputs):
                return self.out(inputs)

            def train_step(self, data):
                x, y = data
                noisy = x + tf.random.normal(tf.shape(x), stddev=0.01)
                return super().train_step((noisy, y))

        keras_module.utils.set_random_seed(7)  # op determinism needs one
        model = Noisy()
        model.compile(keras_module.optimizers.SGD(0.01), "mse")
        (warned,) = self._stateful_random_warnings(model)
        self.assertEqual(warned[1], "RandomStandardNormal")

    def test_only_a_fit_that_starts_afresh_watches_its_first_step(self):
        # A resumed run's first step is downtime: its run before warned.
        x, y = synthetic.regression_data(SAMPLES, seed=3)
        calls = []

        def fit(callbacks):
            with mock.patch.object(
                stateful_random, "watch", wraps=stateful_random.watch
            ) as watch:
                try:
                    self.tiny_model().fit(
                        x,
                        y,
                        batch_size=BATCH,
                        epochs=EPOCHS,
                        verbose=0,
                        callbacks=callbacks,
                    )
                finally:
                    calls.append(watch.call_count)

        first = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        with self.assertRaises(keras_callbacks.Interrupted):
            fit([first, keras_callbacks.InterruptAt(6, backup=first)])
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        fit([callback])
        self.assertEqual(callback.resumed_from, (1, 2))
        self.assertEqual(calls, [1, 0])

    def test_a_model_drawing_from_no_stateful_random_op_is_not_warned(self):
        self.assertEqual(self._stateful_random_warnings(self.tiny_model()), [])

    # -- refusing a backup --------------------------------------------------

    def _leave_a_backup(self):
        self.fit_tiny(
            self.tiny_model(),
            [
                backup_restore.BackupAndRestore(
                    self.dir, delete_checkpoint=False
                )
            ],
            epochs=1,
        )
        keras_callbacks.simulate_restart()
        return keras_callbacks.backup_entries(self.dir)

    def _interrupt_after_a_backup(self, model, batch=5):
        """fit()s `model` with backups every 2 batches until an interruption
        after global batch `batch`, then as after a restart."""
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                model,
                [
                    backup_restore.BackupAndRestore(
                        self.dir, save_freq=2, async_backup=False
                    ),
                    keras_callbacks.InterruptAt(batch),
                ],
            )
        keras_callbacks.simulate_restart()

    def _assert_refused(self, model, *patterns):
        before = self._leave_a_backup()
        weights = self.weights(model)
        with self.assertRaises(backup_restore.BackupMismatchError) as cm:
            self.fit_tiny(model, [backup_restore.BackupAndRestore(self.dir)])
        for pattern in patterns:
            self.assertRegex(str(cm.exception), pattern)
        self.assertEqual(
            keras_callbacks.backup_entries(self.dir), before, "nothing lost"
        )
        for got, want in zip(self.weights(model), weights, strict=True):
            np.testing.assert_array_equal(got, want)  # nothing half-restored

    def test_changed_layer_is_refused_with_what_differs(self):
        self.keras.utils.set_random_seed(7)
        model = self.keras.Sequential(
            [
                self.keras.Input(shape=(synthetic.INPUT_DIM,)),
                self.keras.layers.Dense(9, activation="relu"),
                self.keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer=self.keras.optimizers.Adam(0.01), loss="mse")
        self._assert_refused(
            model, r"weight #0: backup .*\[16, 8\], model .*\[16, 9\]"
        )

    def test_changed_dtype_is_refused(self):
        self.keras.utils.set_random_seed(7)
        model = self.keras.Sequential(
            [
                self.keras.Input(shape=(synthetic.INPUT_DIM,)),
                self.keras.layers.Dense(8, activation="relu", dtype="float64"),
                self.keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer=self.keras.optimizers.Adam(0.01), loss="mse")
        self._assert_refused(model, r"float32\[16, 8\], model .*float64")

    def test_extra_layer_is_refused(self):
        self.keras.utils.set_random_seed(7)
        model = self.keras.Sequential(
            [
                self.keras.Input(shape=(synthetic.INPUT_DIM,)),
                self.keras.layers.Dense(8, activation="relu"),
                self.keras.layers.Dense(4, activation="relu"),
                self.keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer=self.keras.optimizers.Adam(0.01), loss="mse")
        self._assert_refused(model, "number of weights: backup 4, model 6")

    def test_changed_optimizer_config_is_refused(self):
        self._assert_refused(
            self.tiny_model(learning_rate=0.5),
            r"optimizer config 'learning_rate': backup 0.0099.*, model 0.5",
        )

    def test_changed_optimizer_class_is_refused(self):
        model = self.tiny_model()
        model.compile(optimizer=self.keras.optimizers.SGD(0.01), loss="mse")
        self._assert_refused(model, r"optimizer class: backup .*Adam.*SGD")

    def test_changed_loss_is_refused(self):
        model = self.tiny_model()
        model.compile(optimizer=self.keras.optimizers.Adam(0.01), loss="mae")
        self._assert_refused(model, r"loss: backup 'mse', model 'mae'")

    def test_loss_object_is_compared_by_class_and_configuration(self):
        def compiled(smoothing):
            model = self.tiny_model()
            model.compile(
                optimizer=self.keras.optimizers.Adam(0.01),
                loss=self.keras.losses.BinaryCrossentropy(
                    label_smoothing=smoothing, name=f"bce{smoothing}"
                ),
            )
            return model

        self._interrupt_after_a_backup(compiled(0.2))
        kept = keras_callbacks.backup_entries(self.dir)
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError,
            r"(?s)different model, optimizer or loss.*loss: backup "
            r".*BinaryCrossentropy.*'label_smoothing': 0\.2.*model "
            r".*'label_smoothing': 0\.1",
        ):
            self.fit_tiny(
                compiled(0.1), [backup_restore.BackupAndRestore(self.dir)]
            )
        self.assertEqual(keras_callbacks.backup_entries(self.dir), kept)
        # The same loss resumes; its name only labels the logs.
        callback = backup_restore.BackupAndRestore(self.dir)
        model = compiled(0.2)
        model.loss.name = "renamed"
        self.fit_tiny(model, [callback])
        self.assertIsNotNone(callback.resumed_from)

    def test_schedule_whose_configuration_keras_cannot_give_resumes(self):
        # Keras's get_config() raises for the object the schedule's
        # configuration holds; training, and the originals, need none.
        class Helper:
            pass

        class Schedule(self.keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                return 0.01

            def get_config(self):
                return {"helper": Helper()}

        def compiled(beta_1=0.9):
            model = self.tiny_model()
            model.compile(
                optimizer=self.keras.optimizers.Adam(Schedule(), beta_1=beta_1),
                loss="mse",
            )
            return model

        self._interrupt_after_a_backup(compiled())
        # The rest of the configuration is still compared.
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError,
            r"optimizer config 'beta_1': backup 0\.9, model 0\.5",
        ):
            self.fit_tiny(
                compiled(beta_1=0.5),
                [backup_restore.BackupAndRestore(self.dir)],
            )
        callback = backup_restore.BackupAndRestore(self.dir)
        self.fit_tiny(compiled(), [callback])
        self.assertIsNotNone(callback.resumed_from)

    def test_callable_learning_rate_resumes_mid_epoch(self):
        def compiled():
            model = self.tiny_model()
            model.compile(
                optimizer=self.keras.optimizers.Adam(lambda: 0.01),
                loss="mse",
            )
            return model

        self._interrupt_after_a_backup(compiled(), batch=7)
        callback = backup_restore.BackupAndRestore(self.dir)
        self.fit_tiny(compiled(), [callback])
        self.assertEqual(callback.resumed_from, (1, 2))

    def test_corrupt_backup_is_refused_and_kept(self):
        self._leave_a_backup()
        data = dirs.corrupt_data(
            os.path.join(self.dir, "backup-00000001"), offset=10
        )
        with self.assertRaisesRegex(
            backup_restore.BackupCorruptError,
            "(?s)fails TensorFlow's checks.*Checksum does not match.*"
            "Nothing was deleted",
        ):
            self.fit_tiny(
                self.tiny_model(),
                [backup_restore.BackupAndRestore(self.dir)],
            )
        self.assertTrue(os.path.exists(data))

    def _interrupt_in_epoch_2(self, **kwargs):
        """fit() interrupted in epoch 2, after the backups of epochs 0 and
        1 (4 batches per epoch); returns the committed backups' names."""
        callback = backup_restore.BackupAndRestore(self.dir, **kwargs)
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                self.tiny_model(),
                [callback, keras_callbacks.InterruptAt(10)],
            )
        callback.wait_for_backup()  # the older ones are deleted by then
        return keras_callbacks.backup_entries(self.dir)

    def test_double_checkpoint_falls_back_to_the_previous_backup(self):
        ref_model, ref_history = self._reference()
        entries = self._interrupt_in_epoch_2(double_checkpoint=True)
        self.assertEqual(entries, ["backup-00000001", "backup-00000002"])
        dirs.corrupt_data(os.path.join(self.dir, entries[-1]), offset=10)
        model = self.tiny_model()
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq=1, double_checkpoint=True
        )
        # Batch backups from here on: the corrupt backup is never the one
        # kept beside the newest. What stays after each deletion:
        kept = []

        def observe(stage, path):
            if stage == faults.DELETE_OLDER:
                entries = keras_callbacks.backup_entries(self.dir)
                kept.append([e for e in entries if e != os.path.basename(path)])

        faults.set_hook(observe)
        self.addCleanup(faults.set_hook, None)
        history = self.fit_tiny(model, [callback])
        faults.set_hook(None)
        self.assertEqual(callback.resumed_from, (1, 0))  # epoch 0's backup
        self.assertEqual(
            kept[0], ["backup-00000001", "backup-00000003"], "intact kept"
        )
        self.assertTrue(all(len(k) == 2 for k in kept), kept)
        self.assertEqual(history.history, ref_history.history)
        for got, want in zip(
            self.weights(model), self.weights(ref_model), strict=True
        ):
            np.testing.assert_array_equal(got, want)
        self.assertFalse(os.path.exists(self.dir), "deleted on completion")

    @parameterized.named_parameters(
        ("default", {}), ("false", {"double_checkpoint": False})
    )
    def test_without_double_checkpoint_only_the_newest_backup_stays(
        self, kwargs
    ):
        self.assertEqual(
            self._interrupt_in_epoch_2(**kwargs), ["backup-00000002"]
        )

    # -- arguments ----------------------------------------------------------

    @parameterized.named_parameters(
        ("zero", 0),
        ("negative", -3),
        ("float", 2.5),
        ("bool_true", True),
        ("none", None),
        ("other_string", "batch"),
    )
    def test_invalid_save_freq(self, save_freq):
        # The phrase of both Keras originals' error, then what to pass.
        with self.assertRaisesRegex(
            ValueError, r"Invalid value for argument `save_freq`.*Pass 'epoch'"
        ):
            backup_restore.BackupAndRestore(self.dir, save_freq=save_freq)
        self.assertFalse(os.path.exists(self.dir), "nothing created")

    @parameterized.named_parameters(("none", None), ("empty", ""))
    def test_empty_backup_dir(self, backup_dir):
        # The phrase of both Keras originals' error, then what to pass.
        with self.assertRaisesRegex(
            ValueError,
            r"Empty `backup_dir` argument passed.*Pass the directory",
        ):
            backup_restore.BackupAndRestore(backup_dir)

    def test_save_freq_false_needs_save_before_preemption(self):
        with self.assertRaisesRegex(
            ValueError,
            "Either `save_freq` or `save_before_preemption` must be set",
        ):
            backup_restore.BackupAndRestore(self.dir, save_freq=False)

    def test_save_freq_false_is_valid_with_save_before_preemption(self):
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq=False, save_before_preemption=True
        )
        self.assertFalse(callback.save_freq)
        self.assertEqual(dirs.entries(self.dir), [], "probed, nothing left")

    def test_invalid_backup_dir(self):
        for bad, exc in [
            (None, ValueError),
            ("", ValueError),
            (3, TypeError),
            (self.create_tempfile().full_path, ValueError),
        ]:
            with self.subTest(bad=bad), self.assertRaises(exc):
                backup_restore.BackupAndRestore(bad)

    def test_unknown_kwargs_warn_once_naming_them(self):
        with self.assertLogs(logging.get_absl_logger(), "WARNING") as logs:
            backup_restore.BackupAndRestore(
                self.dir, future_option=1, another=2
            )
        self.assertLen(logs.output, 1)
        self.assertIn("another, future_option", logs.output[0])
        self.assertIn("async_backup", logs.output[0])

    def test_every_argument_of_both_originals_is_accepted(self):
        # tf-keras 2.21: (backup_dir, save_freq, delete_checkpoint,
        # save_before_preemption); Keras 3.15: (backup_dir, save_freq,
        # double_checkpoint, delete_checkpoint).
        callback = backup_restore.BackupAndRestore(
            backup_dir=self.dir,
            save_freq=2,
            delete_checkpoint=False,
            save_before_preemption=True,
            double_checkpoint=True,
        )
        self.assertTrue(callback.double_checkpoint)
        backups = keras_callbacks.BackupPositions(self)
        self.fit_tiny(self.tiny_model(), [callback, backups], epochs=1)
        # Every 2 batches of 4, the last kept at the end (delete_checkpoint
        # False) with the previous one beside it (double_checkpoint).
        self.assertLen(backups.positions, 2)
        self.assertEqual(
            keras_callbacks.backup_entries(self.dir),
            ["backup-00000001", "backup-00000002"],
        )
        self.assertFalse(
            backup_restore.BackupAndRestore(self.dir).double_checkpoint
        )

    def test_a_misspelled_argument_of_ours_is_a_type_error(self):
        with self.assertRaisesRegex(TypeError, "did you mean 'async_backup'"):
            backup_restore.BackupAndRestore(self.dir, asnyc_backup=False)
        with self.assertRaisesRegex(
            TypeError, "did you mean 'delete_checkpoint'"
        ):
            backup_restore.BackupAndRestore(self.dir, delete_checkpoints=False)

    def test_factory_and_signature_match_tf_keras(self):
        callback = backup_restore.callback_backup_and_restore(
            self.dir, save_freq=2, delete_checkpoint=False
        )
        self.assertIsInstance(callback, backup_restore.BackupAndRestore)
        # A Callback of both flavours.
        for flavour in synthetic.KERAS.values():
            self.assertIsInstance(callback, flavour.callbacks.Callback)
        self.assertEqual(callback.save_freq, 2)
        self.assertFalse(callback.delete_checkpoint)
        # (3, False, False): delete_checkpoint=False in both flavours'
        # positional orders (positional_args_test tells them apart).
        positional = backup_restore.BackupAndRestore(self.dir, 3, False, False)
        self.assertEqual(positional.save_freq, 3)
        self.assertFalse(positional.delete_checkpoint)

    @parameterized.named_parameters(("sync", False), ("async", True))
    def test_training_waited_log_reports_the_whole_wait(self, asynchronous):
        # Each backup's fsync is held 0.4 s: in the hook when synchronous;
        # asynchronously the next backup's hook waits for it (a backup per
        # batch). The log line must report that wait, not the snapshot.
        def hold(stage, path):
            del path
            if stage == faults.PUBLISHED:
                time.sleep(0.4)

        faults.set_hook(hold)
        self.addCleanup(faults.set_hook, None)
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq=1, async_backup=asynchronous
        )
        with self.assertLogs(level=logging.INFO) as logs:
            self.fit_tiny(self.tiny_model(), [callback], epochs=1)
        waited = [
            float(m.split("training waited ")[1].split(" s")[0])
            for m in logs.output
            if "training waited" in m
        ]
        self.assertLen(waited, 3, logs.output)  # batches 1-3 (4: epoch end)
        # Synchronously every backup waits; asynchronously the second on.
        self.assertGreaterEqual(min(waited[1:]), 0.3, waited)

    def test_a_backup_late_to_become_kill_safe_makes_training_wait(self):
        # A state written in background whose publication is held 1.5 s
        # (a writer starved by training): past the deadline the next batch
        # waits until the backup is kill-safe.
        from backup_restore._src import store

        self.enter_context(mock.patch.object(store, "KILL_SAFE_MAX_BYTES", 0))
        self.enter_context(
            mock.patch.object(store, "KILL_SAFE_DEADLINE_SECONDS", 0.1)
        )
        held = []

        def hold(stage, path):
            del path
            if stage == faults.DATA_WRITTEN and not held:
                held.append(stage)
                time.sleep(1.5)

        faults.set_hook(hold)
        self.addCleanup(faults.set_hook, None)
        committed = {}
        directory = self.dir

        class Observer(keras_callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 2:  # the backup (after batch 1) is 0.2 s old
                    time.sleep(0.2)
                committed[batch] = [
                    n
                    for n in keras_callbacks.backup_entries(directory)
                    if n.startswith("backup-")
                ]

        callback = backup_restore.BackupAndRestore(self.dir, save_freq=2)
        self.fit_tiny(self.tiny_model(), [Observer(), callback], epochs=1)
        self.assertEqual(held, [faults.DATA_WRITTEN])
        self.assertEqual(committed[2], [])  # before our hook's wait
        self.assertEqual(committed[3], ["backup-00000001"])

    def _budgeted_fit(self, epochs, delete_checkpoint=False):
        """fit() with a 90% overhead budget, batches of one fake second
        each (policy.set_clock); returns the backups' positions and the
        INFO logs."""
        from backup_restore._src import policy

        clock = _Ticks()
        policy.set_clock(clock)
        self.addCleanup(policy.set_clock, None)
        callback = backup_restore.BackupAndRestore(
            self.dir, overhead_budget=0.9, delete_checkpoint=delete_checkpoint
        )
        backups = keras_callbacks.BackupPositions(self)
        with self.assertLogs(level=logging.INFO) as logs:
            self.fit_tiny(
                self.tiny_model(), [clock, callback, backups], epochs=epochs
            )
        return backups.positions, logs.output

    def test_overhead_budget_backs_up_and_excludes_save_freq(self):
        # Each batch takes a second and a backup none: once the step time
        # is measured (5 batches after the first), the budget allows a
        # backup after every batch; one due at an epoch's last batch is
        # written at the epoch's end.
        positions, logs = self._budgeted_fit(epochs=3)
        self.assertEqual(
            positions, [(1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3), (3, 0)]
        )
        self.assertTrue(
            any("overhead_budget=0.9: backing up after" in m for m in logs),
            logs,
        )
        with self.assertRaisesRegex(ValueError, "cannot be combined"):
            backup_restore.BackupAndRestore(
                self.dir, save_freq=2, overhead_budget=0.03
            )
        with self.assertRaisesRegex(ValueError, "share of training time"):
            backup_restore.BackupAndRestore(self.dir, overhead_budget=3)

    def test_overhead_budget_expects_the_first_backup_to_cost_its_size(self):
        # A state expected to take 10 s per variable to write: a 90% budget
        # allows no backup in a fit of 12 one-second batches.
        from backup_restore._src import background

        self.enter_context(
            mock.patch.object(
                background, "_WRITE_SECONDS_PER_VARIABLE_MEASURED", 10.0
            )
        )
        positions, _ = self._budgeted_fit(epochs=3, delete_checkpoint=True)
        self.assertEqual(positions, [])

    def test_a_backup_of_the_other_flavour_is_refused_and_kept(self):
        other = "tf_keras" if self.FLAVOUR == "keras3" else "keras3"
        model = self.tiny_model(other)
        with self.assertRaises(keras_callbacks.Interrupted):
            self.fit_tiny(
                model,
                [
                    backup_restore.BackupAndRestore(
                        self.dir, save_freq=2, async_backup=False
                    ),
                    keras_callbacks.InterruptAt(6),
                ],
            )
        kept = keras_callbacks.backup_entries(self.dir)
        self.assertNotEmpty(kept)
        keras_callbacks.simulate_restart()
        want = "written by a (tf-keras|Keras) .* model; this model is a"
        with self.assertRaisesRegex(backup_restore.BackupMismatchError, want):
            self.fit_tiny(
                self.tiny_model(),
                [backup_restore.BackupAndRestore(self.dir, save_freq=2)],
            )
        self.assertEqual(keras_callbacks.backup_entries(self.dir), kept)

    def test_keras_3_on_another_backend_is_a_clear_error(self):
        if self.FLAVOUR != "keras3":
            self.skipTest("a Keras 3 backend")
        model = self.tiny_model()
        callback = backup_restore.BackupAndRestore(self.dir)
        with mock.patch.object(keras.backend, "backend", return_value="jax"):
            with self.assertRaisesRegex(
                ValueError, "TensorFlow backend.*'jax'.*KERAS_BACKEND"
            ):
                callback.set_model(model)
        self.assertFalse(os.path.exists(self.dir) and dirs.entries(self.dir))

    def test_a_model_of_no_keras_is_a_type_error(self):
        callback = backup_restore.BackupAndRestore(self.dir)
        with self.assertRaisesRegex(TypeError, "serves Keras models"):
            callback.set_model(tf.Module())

    def test_uncompiled_model_is_a_clear_error(self):
        model = self.keras.Sequential([self.keras.layers.Dense(1)])
        callback = backup_restore.BackupAndRestore(self.dir)
        callback.set_model(model)
        with self.assertRaisesRegex(ValueError, "compile"):
            callback.on_train_begin()


CallbackTfKerasTest = test_case.tf_keras_variant(CallbackTest)

if __name__ == "__main__":
    absltest.main()
