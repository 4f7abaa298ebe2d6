"""Everything a model holds is backed up and restored exactly: optimizers
held as attributes (a GAN's), an optimizer built on a subset of the
variables, raw tf.Variables; in-process interruptions, both flavours."""

import glob
import os
from unittest import mock

import numpy as np
import tensorflow as tf
from absl import logging
from absl.testing import absltest
from absl.testing import parameterized
from tensorflow.python.ops import gen_resource_variable_ops

import backup_restore
from backup_restore._src import backup_metadata
from backup_restore._src import store
from backup_restore._src import unfilled_slots
from testing import fit_test_case
from testing import keras_callbacks
from testing import synthetic
from testing import tamper
from testing import test_case

SAMPLES = 64
BATCH = 16  # 4 batches per epoch
EPOCHS = 3


def _state(model) -> dict:
    """Every variable the model holds, its optimizers' included, by name:
    numpy arrays."""
    state = {f"weight {i}": w.numpy() for i, w in enumerate(model.weights)}
    for name in ("optimizer", "d_optimizer", "g_optimizer", "spare"):
        optimizer = getattr(model, name, None)
        if optimizer is not None:
            for i, variable in enumerate(optimizer.variables):
                state[f"{name} {i}"] = np.asarray(variable)
    if hasattr(model, "seen"):
        state["seen"] = model.seen.numpy()
        for i, variable in enumerate(model.side.layer.weights):
            state[f"side {i}"] = np.asarray(variable)
    return state


class _UseSpareOptimizer(keras_callbacks.Callback):
    """From epoch 1 on, the model's `spare` optimizer is built and takes one
    step (once: a resumed run finds it taken)."""

    def on_epoch_begin(self, epoch, logs=None):
        spare = self.model.spare
        if epoch >= 1 and int(np.asarray(spare.iterations)) == 0:
            variables = self.model.trainable_variables
            spare.build(variables)
            spare.apply_gradients(
                [(tf.ones(v.shape, v.dtype), v) for v in variables]
            )


class HeldStateTest(fit_test_case.FitTestCase):
    def _model(self, kind):
        self.keras.utils.set_random_seed(5)
        if kind == "gan":
            return synthetic.gan_model(self.FLAVOUR)
        if kind == "gan_optimizer_in_compile":
            return synthetic.gan_model(self.FLAVOUR, optimizer_in_compile=True)
        return synthetic.raw_variable_model(self.FLAVOUR)

    def _fit(self, kind, model, callbacks):
        if kind.startswith("gan"):
            x, y = synthetic.gan_data(SAMPLES, seed=3)
        else:
            x, y = synthetic.regression_data(SAMPLES, seed=3)
        return model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=EPOCHS,
            verbose=0,
            callbacks=callbacks,
        )

    def _interrupted_then_resumed(self, kind, interrupt_at=7, save_freq=3):
        model = self._model(kind)
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                kind,
                model,
                [
                    backup_restore.BackupAndRestore(self.dir, save_freq),
                    keras_callbacks.InterruptAt(interrupt_at),
                ],
            )
        keras_callbacks.simulate_restart()
        resumed = self._model(kind)
        callback = backup_restore.BackupAndRestore(self.dir, save_freq)
        history = self._fit(kind, resumed, [callback])
        return resumed, history, callback

    @parameterized.named_parameters(
        # Killed after 7 batches: the backup after batch 6 is epoch 1,
        # batch 2; the one after batch 4 is written at epoch 1's start.
        ("gan", "gan", 7, 3, (1, 2)),
        ("gan_epoch_backups", "gan", 6, "epoch", (1, 0)),
        ("gan_optimizer_in_compile", "gan_optimizer_in_compile", 7, 3, (1, 2)),
        ("raw_variable", "raw_variable", 7, 3, (1, 2)),
    )
    def test_resume_matches_uninterrupted_run(
        self, kind, interrupt_at, save_freq, expected
    ):
        reference = self._model(kind)
        ref_history = self._fit(kind, reference, [])
        model, history, callback = self._interrupted_then_resumed(
            kind, interrupt_at, save_freq
        )
        self.assertEqual(callback.resumed_from, expected)
        self.assertEqual(history.history, ref_history.history)
        got, want = _state(model), _state(reference)
        self.assertEqual(sorted(got), sorted(want))
        for path in want:
            np.testing.assert_array_equal(got[path], want[path], err_msg=path)
        self.assertEqual(
            synthetic.state_sha256(model), synthetic.state_sha256(reference)
        )

    def test_gan_optimizers_and_unused_default_are_restored_as_they_were(self):
        model, _, _ = self._interrupted_then_resumed("gan")
        # 3 epochs of 4 batches: one step of each optimizer per batch.
        self.assertEqual(int(model.d_optimizer.iterations.numpy()), 12)
        self.assertEqual(int(model.g_optimizer.iterations.numpy()), 12)
        # The compiled default optimizer is never used: still unbuilt.
        self.assertEqual(int(model.optimizer.iterations.numpy()), 0)

    @parameterized.named_parameters(("gan", "gan"), ("raw", "raw_variable"))
    def test_every_part_of_the_checkpoint_is_described(self, kind):
        model = self._model(kind)
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                kind,
                model,
                [
                    backup_restore.BackupAndRestore(self.dir, 3),
                    keras_callbacks.InterruptAt(7),
                ],
            )
        info = store.BackupStore(self.dir, writable=False).latest()
        parts = {
            name.split("/", 1)[0]
            for name, _ in tf.train.list_variables(info.checkpoint_prefix)
            if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
        }
        undescribed = parts - set(backup_metadata.CHECKPOINT_PARTS)
        self.assertEmpty(undescribed, f"of {sorted(parts)}")

    def test_raw_variable_is_restored(self):
        model, _, _ = self._interrupted_then_resumed("raw_variable")
        self.assertEqual(float(model.seen.numpy()), EPOCHS * SAMPLES)

    def test_a_gan_backup_is_refused_by_a_model_without_its_optimizers(self):
        model = self._model("gan")
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                "gan",
                model,
                [
                    backup_restore.BackupAndRestore(self.dir, 3),
                    keras_callbacks.InterruptAt(5),
                ],
            )
        keras_callbacks.simulate_restart()
        other = self._model("gan")
        # The same model holding one more optimizer.
        other.spare_optimizer = self.keras.optimizers.Adam()
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError, "optimizers held: backup"
        ):
            self._fit(
                "gan", other, [backup_restore.BackupAndRestore(self.dir, 3)]
            )

    def test_optimizer_first_built_after_the_first_backup_is_restored(self):
        # Backups after batch 3 (spare unbuilt) and at epoch 1, batch 2
        # (built): the second holds its state.
        def model_with_spare():
            model = self._model("raw_variable")
            model.spare = self.keras.optimizers.SGD(0.1, momentum=0.9)
            return model

        reference = model_with_spare()
        ref_history = self._fit(
            "raw_variable", reference, [_UseSpareOptimizer()]
        )
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                "raw_variable",
                model_with_spare(),
                [
                    backup_restore.BackupAndRestore(self.dir, 3),
                    _UseSpareOptimizer(),
                    keras_callbacks.InterruptAt(7),
                ],
            )
        keras_callbacks.simulate_restart()
        model = model_with_spare()
        callback = backup_restore.BackupAndRestore(self.dir, 3)
        history = self._fit(
            "raw_variable", model, [callback, _UseSpareOptimizer()]
        )
        self.assertEqual(callback.resumed_from, (1, 2))
        self.assertEqual(history.history, ref_history.history)
        got, want = _state(model), _state(reference)
        self.assertEqual(sorted(got), sorted(want))
        for path in want:
            np.testing.assert_array_equal(got[path], want[path], err_msg=path)

    def test_backup_without_the_held_record_still_restores_a_plain_model(self):
        # Backups written before fingerprints recorded the held state: a
        # plain model's checkpoint holds the same objects as then.
        def plain():
            self.keras.utils.set_random_seed(5)
            return synthetic.regression_model("tiny", flavour=self.FLAVOUR)

        reference = plain()
        ref_history = self._fit("regression", reference, [])
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                "regression",
                plain(),
                [
                    backup_restore.BackupAndRestore(self.dir, 3),
                    keras_callbacks.InterruptAt(7),
                ],
            )
        # The newest (older ones may be in deletion still).
        newest = tamper.committed(self.dir)[-1]
        tamper.set_field(newest, "fingerprint.held", tamper.DELETE)
        keras_callbacks.simulate_restart()
        model = plain()
        callback = backup_restore.BackupAndRestore(self.dir, 3)
        history = self._fit("regression", model, [callback])
        self.assertEqual(callback.resumed_from, (1, 2))
        self.assertEqual(history.history, ref_history.history)
        self.assertEqual(
            synthetic.state_sha256(model), synthetic.state_sha256(reference)
        )

    def test_edited_held_record_is_refused_as_invalid(self):
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                "gan",
                self._model("gan"),
                [
                    backup_restore.BackupAndRestore(self.dir, 3),
                    keras_callbacks.InterruptAt(4),
                ],
            )
        (backup,) = tamper.committed(self.dir)
        tamper.set_field(
            backup, "fingerprint.held.optimizers", [{"path": "optimizer"}]
        )
        keras_callbacks.simulate_restart()
        with self.assertRaisesRegex(
            backup_restore.BackupCorruptError,
            r"fingerprint\.held\.optimizers\[0\]\.class is missing",
        ):
            self._fit(
                "gan",
                self._model("gan"),
                [backup_restore.BackupAndRestore(self.dir, 3)],
            )

    def test_state_a_backup_cannot_hold_is_named_once_at_the_start(self):
        model = self._model("raw_variable")
        model.table = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.int64, -1
        )
        with self.assertLogs(level=logging.WARNING) as logs:
            logging.warning("(none)")  # assertLogs wants one
            self._fit(
                "raw_variable",
                model,
                [backup_restore.BackupAndRestore(self.dir, 3)],
            )
        warned = [r for r in logs.output if "MutableHashTable" in r]
        if self.FLAVOUR == "keras3":
            # The backup holds the model's variables, not the model.
            self.assertLen(warned, 1, logs.output)
            self.assertIn("table (MutableHashTable)", warned[0])
        else:
            # The backup holds the model object, the table with it.
            self.assertEqual(warned, [])

    def test_optimizer_on_variables_outside_the_model_is_named(self):
        model = self._model("raw_variable")
        outside = tf.Variable(np.zeros((2,), "float32"))
        model.side_optimizer = self.keras.optimizers.SGD(0.1)
        model.side_optimizer.build([outside])
        with self.assertLogs(level=logging.WARNING) as logs:
            self._fit(
                "raw_variable",
                model,
                [backup_restore.BackupAndRestore(self.dir, 3)],
            )
        warned = [r for r in logs.output if "side_optimizer" in r]
        self.assertLen(warned, 1, logs.output)
        self.assertIn("does not hold", warned[0])

    def test_a_failed_restore_leaves_the_slots_as_a_build_with_zeros(self):
        # The restore makes the optimizers' slots without filling them (the
        # read fills them). Here every backup fails its checksums: the slots
        # are then zeros, as Keras's own build leaves them, and the model is
        # unchanged. Unfilled slots are made to hold 7s, so that leftover
        # bytes show.
        with self.assertRaises(keras_callbacks.Interrupted):
            self._fit(
                "gan",
                self._model("gan"),
                [
                    backup_restore.BackupAndRestore(self.dir, 3),
                    keras_callbacks.InterruptAt(7),
                ],
            )
        backups = tamper.committed(self.dir)
        self.assertNotEmpty(backups)
        for backup in backups:
            for path in glob.glob(os.path.join(backup, "*.data-*")):
                with open(path, "r+b") as f:
                    f.seek(os.path.getsize(path) // 2)
                    byte = f.read(1)
                    f.seek(-1, os.SEEK_CUR)
                    f.write(bytes([byte[0] ^ 0xFF]))
        keras_callbacks.simulate_restart()
        model = self._model("gan")
        weights = [w.numpy() for w in model.weights]
        optimizers = (model.d_optimizer, model.g_optimizer)
        before = {id(v) for o in optimizers for v in o.variables}
        sevens = lambda shape, dtype: tf.cast(tf.fill(shape, 7), dtype)  # noqa: E731
        with mock.patch.object(unfilled_slots, "empty", side_effect=sevens):
            with self.assertRaises(backup_restore.BackupCorruptError):
                self._fit(
                    "gan", model, [backup_restore.BackupAndRestore(self.dir, 3)]
                )
        slots = [
            v for o in optimizers for v in o.variables if id(v) not in before
        ]
        self.assertNotEmpty(slots)
        for slot in slots:
            np.testing.assert_array_equal(np.asarray(slot), 0)
        for got, want in zip(model.weights, weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want)

    def test_optimizer_built_in_the_first_step_is_named_before_training_on(
        self,
    ):
        # Built lazily, as a train_step building it at its first apply: the
        # warning comes after that first step, not at the first backup
        # (here the end of epoch 0).
        model = self._model("raw_variable")
        outside = tf.Variable(np.zeros((2,), "float32"))
        model.side_optimizer = self.keras.optimizers.SGD(0.1)

        class BuildInFirstStep(keras_callbacks.Callback):
            built = False

            def on_train_batch_begin(self, batch, logs=None):
                if not self.built:
                    self.built = True
                    self.model.side_optimizer.build([outside])

            def on_train_batch_end(self, batch, logs=None):
                if batch == 1:
                    logging.warning("marker: second batch trained")

        with self.assertLogs(level=logging.WARNING) as logs:
            self._fit(
                "raw_variable",
                model,
                [
                    backup_restore.BackupAndRestore(self.dir, "epoch"),
                    BuildInFirstStep(),
                ],
            )
        warned = [i for i, r in enumerate(logs.output) if "side_optimizer" in r]
        marker = [i for i, r in enumerate(logs.output) if "marker" in r]
        self.assertLen(warned, 1, logs.output)
        self.assertLess(warned[0], marker[0], logs.output)

    def test_what_cannot_be_backed_up_is_one_warning(self):
        model = self._model("raw_variable")
        model.table = tf.lookup.experimental.MutableHashTable(
            tf.string, tf.int64, -1
        )
        outside = tf.Variable(np.zeros((2,), "float32"))
        model.side_optimizer = self.keras.optimizers.SGD(0.1)
        model.side_optimizer.build([outside])
        with self.assertLogs(level=logging.WARNING) as logs:
            self._fit(
                "raw_variable",
                model,
                [backup_restore.BackupAndRestore(self.dir, 3)],
            )
        warned = [
            r
            for r in logs.output
            if "side_optimizer" in r or "MutableHashTable" in r
        ]
        self.assertLen(warned, 1, logs.output)
        self.assertIn("side_optimizer", warned[0])
        if self.FLAVOUR == "keras3":
            self.assertIn("table (MutableHashTable)", warned[0])

    def _keras_io_gan(self):
        """keras.io's DCGAN pattern: a Model holding two built models, no
        call() of its own (never built itself), compile(d_optimizer,
        g_optimizer, loss_fn) with no loss or metrics of Keras's."""
        keras = self.keras
        keras.utils.set_random_seed(5)

        class GAN(keras.Model):
            def __init__(self):
                super().__init__()
                self.discriminator = keras.Sequential(
                    [keras.Input((6,)), keras.layers.Dense(1)]
                )
                self.generator = keras.Sequential(
                    [keras.Input((4,)), keras.layers.Dense(6)]
                )

            def compile(self, d_optimizer, g_optimizer, loss_fn):
                super().compile()
                self.d_optimizer = d_optimizer
                self.g_optimizer = g_optimizer
                self.loss_fn = loss_fn

            def train_step(self, data):
                real, noise = data
                n = tf.shape(real)[0]
                labels = tf.concat([tf.ones((n, 1)), tf.zeros((n, 1))], 0)
                d_vars = self.discriminator.trainable_weights
                with tf.GradientTape() as tape:
                    x = tf.concat([self.generator(noise), real], 0)
                    d_loss = self.loss_fn(labels, self.discriminator(x))
                grads = tape.gradient(d_loss, d_vars)
                self.d_optimizer.apply_gradients(
                    zip(grads, d_vars, strict=True)
                )
                g_vars = self.generator.trainable_weights
                with tf.GradientTape() as tape:
                    fake = self.discriminator(self.generator(noise))
                    g_loss = self.loss_fn(tf.zeros((n, 1)), fake)
                grads = tape.gradient(g_loss, g_vars)
                self.g_optimizer.apply_gradients(
                    zip(grads, g_vars, strict=True)
                )
                return {"d_loss": d_loss, "g_loss": g_loss}

        gan = GAN()
        gan.compile(
            keras.optimizers.Adam(1e-3),
            keras.optimizers.Adam(2e-3),
            keras.losses.BinaryCrossentropy(from_logits=True),
        )
        return gan

    def test_keras_io_gan_resumes_mid_epoch_exactly(self):
        rng = np.random.RandomState(0)
        real = rng.rand(SAMPLES, 6).astype("float32")
        noise = rng.rand(SAMPLES, 4).astype("float32")

        def fit(model, callbacks):
            model.fit(
                real,
                noise,
                batch_size=BATCH,
                epochs=EPOCHS,
                verbose=0,
                callbacks=callbacks,
            )

        expected = self._keras_io_gan()
        fit(expected, [])
        interrupted = self._keras_io_gan()
        with self.assertRaises(keras_callbacks.Interrupted):
            fit(
                interrupted,
                [
                    backup_restore.BackupAndRestore(self.dir, save_freq=3),
                    keras_callbacks.InterruptAt(7),
                ],
            )
        keras_callbacks.simulate_restart()
        resumed = self._keras_io_gan()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=3)
        fit(resumed, [callback])
        self.assertEqual(callback.resumed_from, (1, 2))
        got, want = _state(resumed), _state(expected)
        self.assertEqual(sorted(got), sorted(want))
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)


HeldStateTfKerasTest = fit_test_case.tf_keras_variant(HeldStateTest)


class EmptiesTest(test_case.TestCase):
    """The slots a restore makes share one empty tensor per shape."""

    def test_one_per_shape_and_an_update_in_place_changes_one_slot(self):
        empties = unfilled_slots.Empties()
        with mock.patch.object(
            unfilled_slots, "empty", wraps=unfilled_slots.empty
        ) as empty:
            slots = [
                tf.Variable(empties(shape, dtype))
                for shape, dtype in (
                    ((2, 3), tf.float32),
                    ((3,), tf.float32),
                    ((2, 3), tf.float32),
                    ((2, 3), tf.float64),
                    ([2, 3], "float32"),
                )
            ]
        self.assertEqual(empty.call_count, 3)
        # TensorFlow copies the buffer the slots share before an update in
        # place: the others keep their (arbitrary) bytes.
        others = [s.numpy() for s in (slots[2], slots[4])]
        slots[0].assign_add(tf.ones((2, 3)))
        for slot, was in zip((slots[2], slots[4]), others, strict=True):
            np.testing.assert_array_equal(slot.numpy(), was)


class SharedHandleKernelsTest(test_case.TestCase):
    """Variables made in the block get handles without a debug name (the
    attribute that gave each variable a kernel of its own), and keep their
    names and values; outside it TensorFlow's own path is untouched."""

    def _debug_names(self, make):
        with mock.patch.object(
            gen_resource_variable_ops,
            "var_handle_op",
            wraps=gen_resource_variable_ops.var_handle_op,
        ) as op:
            made = make()
        return made, [call.kwargs.get("debug_name") for call in op.mock_calls]

    def test_the_block_drops_the_debug_name_and_keeps_the_variable(self):
        def make():
            with unfilled_slots.shared_handle_kernels():
                return tf.Variable([1.0, 2.0], name="m/dense/kernel")

        variable, names = self._debug_names(make)
        # Fails if TensorFlow stops making an eager variable's handle
        # through the function the block replaces.
        self.assertEqual(names, [""])
        self.assertEqual(variable.name, "m/dense/kernel:0")
        variable.assign_add([1.0, 1.0])
        np.testing.assert_array_equal(variable.numpy(), [2.0, 3.0])

    def test_outside_the_block_and_after_an_error_the_name_is_passed(self):
        with self.assertRaises(ValueError):
            with unfilled_slots.shared_handle_kernels():
                raise ValueError("inside")
        _, names = self._debug_names(lambda: tf.Variable(1.0, name="v"))
        self.assertLen(names, 1)
        self.assertStartsWith(names[0], "v")

    def test_a_build_makes_its_slots_in_the_block(self):
        optimizer = tf.keras.optimizers.Adam()
        weights = [tf.Variable(tf.ones((2, 2)), name=f"w{i}") for i in (0, 1)]
        _, names = self._debug_names(
            lambda: unfilled_slots.build_with_slot_maker(
                optimizer, weights, lambda original: original, []
            )
        )
        self.assertNotEmpty(names)
        self.assertEqual(set(names), {""})
        self.assertLen(optimizer.variables, 2 + 2 * len(weights))


class FailedBuildTest(test_case.TestCase, parameterized.TestCase):
    """A restore's build that fails part way (an error, Ctrl-C) leaves no
    slot it made holding the unfilled tensor's bytes."""

    @parameterized.parameters("keras3", "tf_keras")
    def test_slots_made_before_the_failure_are_zero(self, flavour):
        if flavour == "keras3":
            import keras  # pylint: disable=g-import-not-at-top

            from backup_restore._src import keras3_state as state  # pylint: disable=g-import-not-at-top
        else:
            import tf_keras as keras  # pylint: disable=g-import-not-at-top

            from backup_restore._src import tf_keras_state as state  # pylint: disable=g-import-not-at-top
        made = []

        class Interrupted(BaseException):
            pass

        class FailingAdam(keras.optimizers.Adam):
            def add_variable_from_reference(self, *args, **kwargs):
                if len(made) == 3:
                    raise Interrupted  # as Ctrl-C would, part way
                variable = super().add_variable_from_reference(*args, **kwargs)
                made.append(variable)
                return variable

        weights = [tf.Variable(tf.ones((2, 2))) for _ in range(2)]
        sevens = lambda shape, dtype: tf.cast(tf.fill(shape, 7), dtype)  # noqa: E731
        with mock.patch.object(unfilled_slots, "empty", side_effect=sevens):
            with self.assertRaises(Interrupted):
                state.build_optimizer(FailingAdam(), weights, unfilled=True)
        self.assertLen(made, 3)
        for slot in made:
            np.testing.assert_array_equal(np.asarray(slot), 0)


if __name__ == "__main__":
    absltest.main()
