"""Contract test: the tf-keras internals tf_keras_adapter.py relies on.

When tf-keras changes, this fails loudly here, naming the internal that moved,
instead of making backups silently wrong.
"""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import absltest

from backup_restore._src import flavours
from backup_restore._src import tf_keras_adapter as keras_adapter
from testing import keras_callbacks
from testing import synthetic
from testing import test_case


class _Probe(tf_keras.callbacks.Callback):
    """Runs `check(model)` in on_train_begin and records epochs/batches."""

    def __init__(self, check):
        super().__init__()
        self._check = check
        self.epochs, self.batches, self.seen = [], [], {}

    def on_train_begin(self, logs=None):
        self._check(self.model, self.seen)

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self.batches.append(batch)


class AdapterContractTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        self.x, self.y = synthetic.regression_data(32)
        self.model = synthetic.regression_model("tiny")

    def _fit(self, check, **kwargs):
        probe = _Probe(check)
        kwargs.setdefault("x", self.x)
        kwargs.setdefault("y", self.y)
        if isinstance(kwargs["x"], np.ndarray):
            kwargs.setdefault("batch_size", 8)
        self.model.fit(epochs=3, verbose=0, callbacks=[probe], **kwargs)
        return probe

    def test_pinned_version(self):
        self.assertEqual(
            tf_keras.__version__,
            keras_adapter.VERIFIED_VERSION,
            "tf-keras changed: re-verify every internal in "
            "tf_keras_adapter.py, then update VERIFIED_VERSION and "
            "requirements.txt",
        )

    def test_training_state_hook_sets_initial_epoch_and_step(self):
        self.assertTrue(hasattr(self.model, "_training_state"))
        self.assertIsNone(self.model._training_state)
        probe = self._fit(lambda m, _: keras_adapter.start_at(m, None, 1, 2, 0))
        self.assertEqual(probe.epochs, [1, 2])
        self.assertEqual(probe.batches[:3], [2, 3, 0])
        keras_adapter.clear_start(self.model, None)
        self.assertIsNone(self.model._training_state)

    def test_train_function_exists_in_on_train_begin_and_gets_iterators(self):
        calls = []

        def check(model, seen):
            keras_adapter.wrap_train_function(
                model, keras_callbacks.recording(calls)
            )

        self._fit(check)
        self.assertLen(calls, 12)  # 32 / 8 = 4 batches x 3 epochs
        self.assertTrue(all(hasattr(it, "get_next") for it in calls))

    def test_fit_data_handler_and_iterator_recreation(self):
        def check(model, seen):
            handler = keras_adapter.fit_context()
            seen["handler"] = handler
            seen["recreate"] = keras_adapter.recreates_iterator_per_epoch(
                handler
            )
            seen["spec"] = handler._dataset.element_spec

        numpy_fit = self._fit(check)
        self.assertIsNotNone(numpy_fit.seen["handler"])
        self.assertFalse(numpy_fit.seen["recreate"])
        self.assertLen(numpy_fit.seen["spec"], 2)  # (x, y)
        dataset = synthetic.regression_dataset(32, 8)
        self.assertTrue(self._fit(check, x=dataset, y=None).seen["recreate"])
        repeated = synthetic.regression_dataset(32, 8, repeat=True)
        self.assertFalse(
            self._fit(check, x=repeated, y=None, steps_per_epoch=4).seen[
                "recreate"
            ]
        )
        self.assertIsNone(keras_adapter.fit_context())

    def test_data_geometry_of_arrays_and_datasets(self):
        def check(model, seen):
            handler = keras_adapter.fit_context()
            seen["geometry"] = keras_adapter.data_geometry(handler)

        # 30 samples in batches of 8: 4 batches, the last of 6.
        arrays = self._fit(check, x=self.x[:30], y=self.y[:30])
        self.assertEqual(
            arrays.seen["geometry"],
            {
                "steps_per_epoch": 4,
                "batch_size": 8,
                "num_samples": 30,
                "element_spec": [
                    [[None, 16], "float32"],
                    [[None, 1], "float32"],
                ],
            },
        )
        dataset = synthetic.regression_dataset(32, 8)
        geometry = self._fit(check, x=dataset, y=None).seen["geometry"]
        self.assertEqual(geometry["steps_per_epoch"], 4)
        self.assertIsNone(geometry["batch_size"])
        self.assertIsNone(geometry["num_samples"])

    def test_epoch_length_of_an_input_of_unknown_size(self):
        dataset = synthetic.regression_dataset(32, 8).filter(lambda x, y: True)
        seen = {}

        class Steps(tf_keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                handler = keras_adapter.fit_context()
                seen[epoch] = keras_adapter.completed_epoch_steps(handler)
                if epoch == 0:
                    seen["handler"] = handler

        self.model.fit(dataset, epochs=2, verbose=0, callbacks=[Steps()])
        self.assertEqual(seen[0], None)  # unknown until fit() counted it
        self.assertEqual(seen[1], 4)
        keras_adapter.set_counted_epoch_steps(seen["handler"], 4)
        self.assertEqual(seen["handler"].inferred_steps, 4)

    def test_learning_rate_schedule_is_found(self):
        schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, 5, 0.9)
        for optimizer in (
            tf_keras.optimizers.Adam(schedule),
            tf_keras.optimizers.legacy.SGD(schedule),
            tf_keras.mixed_precision.LossScaleOptimizer(
                tf_keras.optimizers.Adam(schedule)
            ),
        ):
            self.assertIs(
                keras_adapter.learning_rate_schedule(optimizer),
                schedule,
                type(optimizer).__name__,
            )
        self.assertIsNone(
            keras_adapter.learning_rate_schedule(tf_keras.optimizers.Adam(0.1))
        )

    def test_compiled_metrics_can_be_built_before_the_first_step(self):
        model = synthetic.regression_model("tiny")
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])
        self.model = model

        def check(m, seen):
            self.assertFalse(m.compiled_loss.built)
            self.assertEqual(m.metrics, [])
            keras_adapter.build_compiled_metrics(m, keras_adapter.fit_context())
            seen["names"] = [metric.name for metric in m.metrics]
            seen["variables"] = sum(len(x.variables) for x in m.metrics)

        probe = self._fit(check)
        self.assertEqual(probe.seen["names"], ["loss", "mae"])
        self.assertEqual(probe.seen["variables"], 4)

    def test_optimizer_records_the_variables_it_was_built_on(self):
        # Optimizer._built, _index_dict and _var_key: what build() records.
        variables = [tf.Variable(np.zeros((n,), "float32")) for n in (2, 3)]
        optimizer = tf_keras.optimizers.Adam()
        self.assertEqual(
            keras_adapter.optimizer_built_on(optimizer, variables),
            (False, None),
        )
        optimizer.build([variables[1]])
        self.assertTrue(optimizer._built)
        self.assertEqual(
            optimizer._index_dict, {optimizer._var_key(variables[1]): 0}
        )
        self.assertEqual(
            keras_adapter.optimizer_built_on(optimizer, variables), (True, [1])
        )
        self.assertEqual(
            keras_adapter.optimizer_built_on(optimizer, variables[:1]),
            (True, None),
        )
        # A LossScaleOptimizer is built by building the one it wraps.
        scaled = tf_keras.mixed_precision.LossScaleOptimizer(
            tf_keras.optimizers.Adam()
        )
        scaled.build([variables[0]])
        self.assertEqual(
            keras_adapter.optimizer_built_on(scaled, variables), (True, [0])
        )
        # A legacy optimizer makes its slots lazily: there is no build.
        self.assertEqual(
            keras_adapter.optimizer_built_on(
                tf_keras.optimizers.legacy.Adam(), variables
            ),
            (None, None),
        )

    def test_model_history_is_this_fits_history_in_on_train_begin(self):
        def check(model, seen):
            seen["history"] = model.history

        probe = self._fit(check)
        history = self.model.history
        self.assertIs(probe.seen["history"], history)
        self.assertEqual(history.epoch, [0, 1, 2])

    def test_callbacks_run_in_list_order_history_last(self):
        order = []

        class Mark(tf_keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                order.append("mine")
                self.model.history.epoch = ["set by mine"]

        self.model.fit(self.x, self.y, epochs=1, verbose=0, callbacks=[Mark()])
        # History.on_train_begin ran after ours and reset its epoch list.
        self.assertEqual(order, ["mine"])
        self.assertEqual(self.model.history.epoch, [0])

    def test_train_counter_counts_this_fits_steps_from_zero(self):
        def check(model, seen):
            seen["at_start"] = keras_adapter.train_counter(model)
            keras_adapter.set_train_counter(model, 100)

        self.model.fit(self.x, self.y, epochs=1, batch_size=8, verbose=0)
        probe = self._fit(check)
        # fit() set it to 0 before on_train_begin; it counts on from what
        # on_train_begin sets (3 epochs of 4 batches).
        self.assertEqual(probe.seen["at_start"], 0)
        self.assertEqual(keras_adapter.train_counter(self.model), 112)

    def test_callback_state_attributes_exist(self):
        callbacks = {
            tf_keras.callbacks.EarlyStopping: dict(monitor="loss"),
            tf_keras.callbacks.ReduceLROnPlateau: dict(monitor="loss"),
            tf_keras.callbacks.ModelCheckpoint: dict(
                filepath=self.create_tempfile().full_path + ".weights.h5",
                save_weights_only=True,
            ),
            tf_keras.callbacks.TensorBoard: dict(
                log_dir=self.create_tempdir().full_path
            ),
        }
        self.assertEqual(
            set(callbacks), set(keras_adapter.BUILTIN_CALLBACK_STATE)
        )
        made = [cls(**kwargs) for cls, kwargs in callbacks.items()]
        self.model.fit(self.x, self.y, epochs=1, verbose=0, callbacks=made)
        for callback in made:
            for attr in keras_adapter.BUILTIN_CALLBACK_STATE[type(callback)]:
                self.assertTrue(hasattr(callback, attr), (callback, attr))

    def test_supports_tf_logs_makes_fit_pass_tensor_batch_logs(self):
        import tensorflow as tf

        class Logs(tf_keras.callbacks.Callback):
            def __init__(self, tensor_logs):
                super().__init__()
                if tensor_logs:
                    keras_adapter.accept_tensor_logs(self)
                self.types = set()

            def on_train_batch_end(self, batch, logs=None):
                self.types.add(type(logs["loss"]))

        plain, tensors = Logs(False), Logs(True)
        for callback in (plain, tensors):
            self.model.fit(
                self.x, self.y, epochs=1, verbose=0, callbacks=[callback]
            )
        self.assertFalse(any(issubclass(t, tf.Tensor) for t in plain.types))
        self.assertTrue(all(issubclass(t, tf.Tensor) for t in tensors.types))


class VersionGuardTest(test_case.TestCase):
    def test_the_installed_tf_keras_is_the_verified_minor_release(self):
        # Fails when the pinned tf-keras moves on: re-verify the adapter.
        self.addCleanup(flavours._WARNED.clear)
        flavours._WARNED.clear()
        self.assertFalse(flavours.warn_if_unverified(keras_adapter))


if __name__ == "__main__":
    absltest.main()
