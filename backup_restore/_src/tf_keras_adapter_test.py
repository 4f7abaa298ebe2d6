"""Contract test: the tf-keras internals tf_keras_adapter.py relies on.

When tf-keras changes, this fails loudly here, naming the internal that moved,
instead of making backups silently wrong. `CONTRACT` names the test of every
private name the adapter's modules use; a test checks that list against
their code.
"""

import inspect
import random
import re
import types
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import absltest
from tf_keras.src.engine import data_adapter

from backup_restore._src import fit_frames
from backup_restore._src import flavours
from backup_restore._src import tf_keras_adapter as keras_adapter
from backup_restore._src import tf_keras_callback
from backup_restore._src import tf_keras_data
from backup_restore._src import tf_keras_state
from testing import keras_callbacks
from testing import private_names
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


# -- Contract ---------------------------------------------------------------
# Every private name of tf-keras that tf_keras_adapter.py, tf_keras_data.py,
# tf_keras_state.py and tf_keras_callback.py use, and the tests of
# AdapterContractTest that pin it (fit_frames.py's: keras3_adapter_test).
CONTRACT = {
    "_training_state": (
        "test_training_state_hook_sets_initial_epoch_and_step",
    ),
    "_initial_epoch": ("test_user_initial_epoch_is_the_data_handlers",),
    "_adapter": (
        "test_fit_data_handler_and_iterator_recreation",
        "test_data_geometry_of_arrays_and_datasets",
    ),
    "_dataset": (
        "test_fit_data_handler_and_iterator_recreation",
        "test_skip_in_input_starts_fits_array_pipeline_later",
        "test_replay_draws_from_random_as_a_shuffled_sequence_epoch",
    ),
    "_inferred_steps": ("test_epoch_length_of_an_input_of_unknown_size",),
    "_shuffle_sequence": (
        "test_replay_draws_from_random_as_a_shuffled_sequence_epoch",
    ),
    "_keras_sequence": (
        "test_replay_draws_from_random_as_a_shuffled_sequence_epoch",
    ),
    "_train_counter": ("test_train_counter_counts_this_fits_steps_from_zero",),
    "_random_generator": ("test_layer_random_generators",),
    "_flatten_layers": (
        "test_layer_random_generators",
        "test_layers_with_unsaved_state_are_named",
    ),
    "_flatten_modules": (
        "test_layer_random_generators_wherever_a_layer_holds_them",
    ),
    "_auto_track_sub_layers": (
        "test_layer_random_generators_wherever_a_layer_holds_them",
        "test_layer_random_generators_of_layers_alone_skip_the_deep_walk",
    ),
    "_flatten": (
        "test_layer_random_generators_wherever_a_layer_holds_them",
        "test_layer_random_generators_of_layers_alone_skip_the_deep_walk",
    ),
    "_rng_type": ("test_layer_random_generators",),
    "_maybe_init": ("test_layer_random_generators",),
    "_generator": ("test_layer_random_generators",),
    "_built": ("test_optimizer_records_the_variables_it_was_built_on",),
    "_index_dict": ("test_optimizer_records_the_variables_it_was_built_on",),
    "_var_key": ("test_optimizer_records_the_variables_it_was_built_on",),
    "_learning_rate": ("test_learning_rate_schedule_is_found",),
    "_hyper": ("test_learning_rate_schedule_is_found",),
    "_batches_seen_since_last_saving": (
        "test_callback_state_attributes_exist",
    ),
    "_last_batch_seen": ("test_callback_state_attributes_exist",),
    "_global_train_batch": ("test_callback_state_attributes_exist",),
    "_supports_tf_logs": (
        "test_supports_tf_logs_makes_fit_pass_tensor_batch_logs",
        "test_callback_lists_read_only_what_hooks_supplies",
    ),
    "_chief_worker_only": (
        "test_callback_lists_read_only_what_hooks_supplies",
    ),
    "_implements_train_batch_hooks": (
        "test_callback_lists_read_only_what_hooks_supplies",
    ),
    "_implements_test_batch_hooks": (
        "test_callback_lists_read_only_what_hooks_supplies",
    ),
    "_implements_predict_batch_hooks": (
        "test_callback_lists_read_only_what_hooks_supplies",
    ),
    "tf_keras.src.engine": ("test_fit_data_handler_and_iterator_recreation",),
}


class AdapterContractTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        self.x, self.y = synthetic.regression_data(32)
        self.model = synthetic.regression_model("tiny")

    def _fit(self, check, callbacks_after=(), **kwargs):
        probe = _Probe(check)
        kwargs.setdefault("x", self.x)
        kwargs.setdefault("y", self.y)
        if isinstance(kwargs["x"], np.ndarray):
            kwargs.setdefault("batch_size", 8)
        self.model.fit(
            epochs=3,
            verbose=0,
            callbacks=[probe, *callbacks_after],
            **kwargs,
        )
        return probe

    def test_every_private_name_has_a_contract_test(self):
        private_names.check_contract(
            self,
            CONTRACT,
            keras_adapter,
            tf_keras_data,
            tf_keras_state,
            tf_keras_callback,
        )

    def test_user_initial_epoch_is_the_data_handlers(self):
        def check(model, seen):
            handler = keras_adapter.fit_context()
            seen["initial"] = keras_adapter.user_initial_epoch(handler)

        probe = self._fit(check, initial_epoch=1)
        self.assertEqual(probe.seen["initial"], 1)
        self.assertEqual(probe.epochs, [1, 2])

    def test_replay_draws_from_random_as_a_shuffled_sequence_epoch(self):
        # KerasSequenceAdapter's generator, shuffling, draws the epoch's
        # batch order from Python's `random` when it starts, and the epoch
        # ends with the Sequence's on_epoch_end; replay_epochs does both
        # without reading.
        class Counted(synthetic.RegressionSequence):
            ends = 0

            def on_epoch_end(self):
                type(self).ends += 1

        sequence = Counted(32, 8)
        adapter = data_adapter.KerasSequenceAdapter(sequence, shuffle=True)
        self.assertIs(adapter._keras_sequence, sequence)
        self.assertTrue(adapter._shuffle_sequence)
        random.seed(3)
        read = adapter._handle_multiprocessing(sequence, 1, False, 10)
        self.assertLen(list(read()), 4)
        adapter.on_epoch_end()
        after_reading = random.getstate()
        random.seed(3)
        handler = types.SimpleNamespace(_adapter=adapter, _dataset=[])
        keras_adapter.replay_epochs(handler, iterators=1, epochs=1)
        self.assertEqual(random.getstate(), after_reading)
        self.assertEqual(Counted.ends, 2)

    def test_layers_with_unsaved_state_are_named(self):
        # Layer._flatten_layers: a lookup layer in a nested model is found; a
        # TextVectorization's inner lookup layer is not named (the user made
        # the outer one).
        inputs = tf_keras.Input((1,), dtype="string")
        words = tf_keras.layers.TextVectorization(name="words")(inputs)
        inner = tf_keras.Sequential(
            [
                tf_keras.Input((1,), dtype="string"),
                tf_keras.layers.StringLookup(vocabulary=["a"], name="lookup"),
            ]
        )
        model = tf_keras.Model(inputs, [words, inner(inputs)])
        self.assertEqual(
            keras_adapter.layers_with_unsaved_state(model),
            ["words (TextVectorization)", "lookup (StringLookup)"],
        )

    def test_layer_random_generators(self):
        # A Dropout's RandomGenerator: legacy stateful ops by default (no
        # state to back up, named), a tf.random.Generator once
        # enable_tf_random_generator() was called.
        def model():
            # Layer._flatten_layers: a layer of a nested model is found.
            inner = tf_keras.Sequential(
                [
                    tf_keras.Input((4,)),
                    tf_keras.layers.Dropout(0.5, name="drop"),
                ]
            )
            return tf_keras.Sequential([inner, tf_keras.layers.Dense(1)])

        legacy = model()
        self.assertEqual(keras_adapter.legacy_rng_layers(legacy), ["drop"])
        self.assertEqual(keras_adapter.layer_random_generators(legacy), [])
        tf_keras.backend.experimental.enable_tf_random_generator()
        self.addCleanup(
            tf_keras.backend.experimental.disable_tf_random_generator
        )
        stateful = model()
        self.assertEqual(keras_adapter.legacy_rng_layers(stateful), [])
        (generator,) = keras_adapter.layer_random_generators(stateful)
        self.assertIsInstance(generator, tf.random.Generator)
        self.assertEqual(
            keras_adapter.random_generators_of([stateful]), [generator]
        )

    def test_layer_random_generators_wherever_a_layer_holds_them(self):
        # A Dropout inside a plain tf.Module, inside a layer that does not
        # track its sublayers and in a dict: `_flatten_modules` enters none
        # of them, `Module.submodules` (and so the order backups keep)
        # does. Each one alone must be found.
        tf_keras.backend.experimental.enable_tf_random_generator()
        self.addCleanup(
            tf_keras.backend.experimental.disable_tf_random_generator
        )

        class Holder(tf.Module):
            def __init__(self):
                super().__init__()
                self.drop = tf_keras.layers.Dropout(0.5)

        class Untracked(tf_keras.layers.Layer):
            def __init__(self):
                super().__init__()
                self._auto_track_sub_layers = False
                self.drop = tf_keras.layers.Dropout(0.5)

            def call(self, x):
                return self.drop(x, training=True)

        class Outer(tf_keras.layers.Layer):
            def __init__(self, where):
                super().__init__()
                if where == "module":
                    self.holder = Holder()
                elif where == "untracked":
                    self.inner = Untracked()
                else:
                    self.by_name = {"drop": tf_keras.layers.Dropout(0.5)}

            def call(self, x):
                if hasattr(self, "holder"):
                    return self.holder.drop(x, training=True)
                if hasattr(self, "inner"):
                    return self.inner(x)
                return self.by_name["drop"](x, training=True)

        class Augmented(tf_keras.Sequential):
            # A Sequential tracks only the layers added to it: an attribute
            # layer (used by a custom train_step, say) is not one of them.
            def __init__(self, layers):
                super().__init__(layers)
                self.augment = tf_keras.layers.Dropout(0.5)

        for where in ("module", "untracked", "dict", "sequential_attribute"):
            with self.subTest(where):
                layers = [tf_keras.Input((4,)), tf_keras.layers.Dense(1)]
                if where == "sequential_attribute":
                    model = Augmented(layers)
                else:
                    model = tf_keras.Sequential(
                        [layers[0], Outer(where), layers[1]]
                    )
                found = keras_adapter.layer_random_generators(model)
                self.assertLen(found, 1)
                self.assertIsInstance(found[0], tf.random.Generator)
                if where != "dict":
                    self.assertNotIn(
                        "Dropout",
                        [type(m).__name__ for m in model._flatten_layers()],
                    )

    def test_layer_random_generators_of_layers_alone_skip_the_deep_walk(self):
        # Sequential models (nested too) do not track their sublayers
        # themselves; with no generator in them, the walk reads their own
        # attributes only, never `Module.submodules` (which visits every
        # attribute of every layer: tens of ms for 200 layers).
        tf_keras.backend.experimental.enable_tf_random_generator()
        self.addCleanup(
            tf_keras.backend.experimental.disable_tf_random_generator
        )
        inner = tf_keras.Sequential(
            [tf_keras.Input((4,)), tf_keras.layers.Dense(4)]
        )
        model = tf_keras.Sequential([inner, tf_keras.layers.Dense(1)])
        with mock.patch.object(
            tf.Module,
            "submodules",
            new_callable=mock.PropertyMock,
            side_effect=AssertionError("Module.submodules was walked"),
        ):
            self.assertEqual(keras_adapter.layer_random_generators(model), [])
        self.assertFalse(model._auto_track_sub_layers)

    def test_callback_lists_read_only_what_hooks_supplies(self):
        # tf-keras's CallbackList (and TF1's callback configuration) reads
        # these private members of a callback; tf_keras_callback.Hooks gives
        # each to a Keras 3 callback.
        from tf_keras.src import callbacks as callbacks_module
        from tf_keras.src.distribute import distributed_training_utils_v1

        read = set()
        for module in (callbacks_module, distributed_training_utils_v1):
            source = inspect.getsource(module)
            read.update(re.findall(r"\b(?:cb|callback)\.(_[a-z]\w*)", source))
            read.update(
                re.findall(r"getattr\((?:cb|callback), \"(_[a-z]\w*)\"", source)
            )
        self.assertEqual(
            read,
            {
                "_supports_tf_logs",
                "_chief_worker_only",
                "_implements_train_batch_hooks",
                "_implements_test_batch_hooks",
                "_implements_predict_batch_hooks",
            },
        )
        for name in read:
            self.assertTrue(hasattr(tf_keras_callback.Hooks, name), name)

        class Keras3Callback(keras.callbacks.Callback, tf_keras_callback.Hooks):
            pass

        callbacks = tf_keras.callbacks.CallbackList(
            [Keras3Callback()], add_history=True, model=self.model
        )
        self.assertTrue(callbacks._should_call_train_batch_hooks)
        self.assertTrue(callbacks._batch_hooks_support_tf_logs)

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
        # skip_batches draws from them by their IteratorGetNext op.
        self.assertTrue(all(fit_frames.skips_fast(it) for it in calls))

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

    def test_skip_in_input_starts_fits_array_pipeline_later(self):
        # fit()'s pipeline for arrays, replaced in on_train_begin (before
        # fit() makes its iterator), starts 6 batches in: the 12 batches of
        # 3 epochs of 4 leave 6 to train, then the data runs out.
        class Batches(tf_keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.trained = 0

            def on_train_batch_end(self, batch, logs=None):
                self.trained += 1

        def check(model, seen):
            handler = keras_adapter.fit_context()
            seen["skipped"] = keras_adapter.skip_in_input(handler, 6)

        counted = Batches()
        arrays = self._fit(check, callbacks_after=[counted])
        self.assertTrue(arrays.seen["skipped"])
        self.assertEqual(counted.trained, 6)
        # A tf.data.Dataset: its batches are drawn at the first step.
        dataset = synthetic.regression_dataset(32, 8)
        self.assertFalse(self._fit(check, x=dataset, y=None).seen["skipped"])

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

    def test_schedule_set_aside_lets_get_config_describe_the_rest(self):
        class Helper:
            pass

        class Schedule(tf_keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                return 0.01

            def get_config(self):
                return {"helper": Helper()}  # tf-keras cannot serialize it

        schedule = Schedule()
        for optimizer in (
            tf_keras.optimizers.Adam(schedule, beta_1=0.8),
            tf_keras.optimizers.legacy.Adam(schedule, beta_1=0.8),
            tf_keras.mixed_precision.LossScaleOptimizer(
                tf_keras.optimizers.Adam(schedule, beta_1=0.8)
            ),
        ):
            name = type(optimizer).__name__
            with self.assertRaises(TypeError, msg=name):
                optimizer.get_config()
            with keras_adapter.learning_rate_schedule_set_aside(optimizer):
                config = optimizer.get_config()
            self.assertIn("0.8", str(config), name)
            self.assertIs(
                keras_adapter.learning_rate_schedule(optimizer), schedule, name
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

    def test_unfilled_build_makes_the_slots_through_add_variable_from_reference(
        self,
    ):
        # The optimizers make their zero-initialised slots through
        # add_variable_from_reference (replaced on the instance during the
        # build): the same variables a plain build makes, none filled.
        held = [
            tf.Variable(np.ones(shape, "float32")) for shape in ((2, 3), (3,))
        ]

        def layout(optimizer):
            # The name without the optimizer's own prefix.
            return [
                (v.name.split("/", 1)[-1], v.shape, v.dtype)
                for v in optimizer.variables
            ]

        for make, slot_count in (
            (tf_keras.optimizers.Adam, 4),
            (lambda: tf_keras.optimizers.SGD(momentum=0.9), 2),
            (
                lambda: tf_keras.mixed_precision.LossScaleOptimizer(
                    tf_keras.optimizers.Adam()
                ),
                4,
            ),
        ):
            plain = make()
            plain.build(list(held))
            optimizer = make()
            before = {id(v) for v in optimizer.variables}
            with mock.patch.object(
                tf_keras_state.unfilled_slots,
                "empty",
                wraps=tf_keras_state.unfilled_slots.empty,
            ) as empty:
                made = keras_adapter.build_optimizer(
                    optimizer, list(held), unfilled=True
                )
            slots = [v for v in optimizer.variables if id(v) not in before]
            self.assertLen(made, slot_count)
            # One empty tensor per shape (unfilled_slots.Empties).
            self.assertEqual(empty.call_count, len(held))
            self.assertContainsSubset(
                [id(v) for v in made], [id(v) for v in slots]
            )
            self.assertEqual(layout(optimizer), layout(plain))
            inner = getattr(optimizer, "inner_optimizer", optimizer)
            for each in (optimizer, inner):
                self.assertNotIn("add_variable_from_reference", vars(each))
        # A slot given another initial value is made filled.
        optimizer = tf_keras.optimizers.Adagrad(initial_accumulator_value=0.5)
        made = keras_adapter.build_optimizer(
            optimizer, list(held), unfilled=True
        )
        self.assertEqual(made, [])
        np.testing.assert_array_equal(optimizer.variables[-1], [0.5] * 3)
        # A legacy optimizer makes its slots lazily: nothing is built.
        legacy = tf_keras.optimizers.legacy.Adam()
        self.assertEqual(
            keras_adapter.build_optimizer(legacy, list(held), unfilled=True),
            [],
        )

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
        private_names.check_callback_tables(
            self,
            tf_keras.callbacks,
            keras_adapter,
            lambda made: self.model.fit(
                self.x, self.y, epochs=1, verbose=0, callbacks=made
            ),
        )

    def test_supports_tf_logs_makes_fit_pass_tensor_batch_logs(self):
        import tensorflow as tf

        class Logs(tf_keras.callbacks.Callback):
            def __init__(self, tensor_logs):
                super().__init__()
                if tensor_logs:
                    self._supports_tf_logs = True
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
    """The installed tf-keras is checked against the verified one when a
    fit() starts."""

    def setUp(self):
        super().setUp()
        self.addCleanup(flavours._WARNED.clear)
        flavours._WARNED.clear()

    def test_the_installed_tf_keras_is_the_verified_minor_release(self):
        # Fails when the pinned tf-keras moves on: re-verify the adapter.
        self.assertFalse(flavours.warn_if_unverified(keras_adapter))

    def test_another_minor_release_is_warned_about_once(self):
        model = synthetic.regression_model("tiny")
        with (
            mock.patch.object(keras_adapter, "VERSION", "2.22.0"),
            mock.patch.object(keras_adapter, "NAME", "tf-keras 2.22.0"),
            self.assertLogs(level="WARNING") as logs,
        ):
            self.assertIs(flavours.for_model(model), keras_adapter)
            self.assertIs(flavours.for_model(model), keras_adapter)
        (line,) = logs.output
        self.assertIn("verified with tf-keras 2.21.0; tf-keras 2.22.0", line)
        self.assertIn("exact resume", line)
        self.assertIn("tf-keras 2.21.x", line)

    def test_a_patch_release_is_not_warned_about(self):
        with mock.patch.object(keras_adapter, "VERSION", "2.21.7"):
            self.assertFalse(flavours.warn_if_unverified(keras_adapter))


if __name__ == "__main__":
    absltest.main()
