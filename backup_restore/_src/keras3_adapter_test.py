"""Contract test: the Keras 3 internals keras3_adapter.py relies on.

When Keras changes, this fails loudly here, naming the internal that moved,
instead of making backups silently wrong. `CONTRACT` names the test of every
private name the adapter's modules use; a test checks that list against
their code.
"""

import ast
import inspect
import random
import textwrap
import types
from unittest import mock

import keras
import numpy as np
import tensorflow as tf
from absl.testing import absltest
from keras.src.callbacks import csv_logger
from keras.src.trainers import epoch_iterator
from keras.src.trainers.data_adapters import py_dataset_adapter
from tensorflow.python.distribute import values as distribute_values

from backup_restore._src import fit_frames
from backup_restore._src import flavours
from backup_restore._src import keras3_adapter
from backup_restore._src import keras3_data
from backup_restore._src import keras3_state
from backup_restore._src import keras_state
from backup_restore._src import position
from testing import keras_callbacks
from testing import private_names
from testing import synthetic
from testing import test_case


class _Probe(keras_callbacks.Recorder):
    """Runs `check(model, seen)` in on_train_begin; records epochs/batches."""

    def __init__(self, check):
        super().__init__()
        self._check = check
        self.seen = {}

    def on_train_begin(self, logs=None):
        self._check(self.model, self.seen)


def _dataset(repeat=False):
    return synthetic.regression_dataset(
        32, 8, seed=1, shuffle_seed=2, repeat=repeat
    )


# -- Contract ---------------------------------------------------------------
# Every private name of Keras (and TensorFlow) that keras3_adapter.py,
# keras3_data.py, keras3_state.py and fit_frames.py use, and the tests of
# Keras3AdapterContractTest that pin it.
CONTRACT = {
    "_initial_epoch": ("test_start_at_starts_fit_at_an_epoch_and_batch_once",),
    "_enumerate_iterator": (
        "test_enumerate_from_is_keras_loop_from_its_source",
        "test_start_at_starts_fit_at_an_epoch_and_batch_once",
    ),
    "_steps_seen": ("test_enumerate_from_is_keras_loop_with_a_start",),
    "_current_iterator": ("test_enumerate_from_is_keras_loop_with_a_start",),
    "_interrupted_warning": (
        "test_enumerate_from_is_keras_loop_from_its_source",
    ),
    "_num_batches": ("test_epoch_length_of_an_input_of_unknown_size",),
    "_get_iterator": ("test_iterators_are_counted_and_positions_recorded",),
    "_distributed_dataset": (
        "test_geometry_seed_states_and_schedule",
        "test_metrics_can_be_built_before_the_first_step",
    ),
    "_num_samples": ("test_geometry_seed_states_and_schedule",),
    "_seed_generators": ("test_geometry_seed_states_and_schedule",),
    "_learning_rate": ("test_geometry_seed_states_and_schedule",),
    "_flatten_layers": ("test_layers_with_unsaved_state_are_named",),
    "_symbolic_build": (
        "test_metrics_can_be_built_before_the_first_step",
        "test_metrics_build_leaves_an_unbuilt_optimizer_unbuilt",
    ),
    "_compile_metrics": (
        "test_metrics_can_be_built_before_the_first_step",
        "test_metrics_build_skips_a_model_without_compiled_metrics",
    ),
    "_compile_loss": (
        "test_metrics_can_be_built_before_the_first_step",
        "test_metrics_build_skips_a_model_without_compiled_metrics",
    ),
    "_trainable_variables": (
        "test_optimizer_records_the_variables_it_was_built_on",
    ),
    "_serialize_to_tensors": (
        "test_objects_saving_state_of_their_own_are_told_apart",
    ),
    "_batches_seen_since_last_saving": (
        "test_callback_state_attributes_exist",
    ),
    "_last_batch_seen": ("test_callback_state_attributes_exist",),
    "_global_train_batch": (
        "test_callback_state_attributes_exist",
        "test_tensorboard_counts_its_batch_step_in_global_train_batch",
    ),
    "_value_specs": ("test_per_replica_specs_give_the_global_batch",),
    "_iterator_resource": ("test_skip_batches_draws_by_the_iterators_op",),
    "_flat_output_types": ("test_skip_batches_draws_by_the_iterators_op",),
    "_flat_output_shapes": ("test_skip_batches_draws_by_the_iterators_op",),
    "keras.src.backend.tensorflow.trainer": (
        "test_fit_locals_and_train_function",
    ),
    "keras.src.trainers.data_adapters": (
        "test_replay_draws_from_random_as_a_shuffled_py_dataset_epoch",
        "test_epoch_length_of_an_input_of_unknown_size",
    ),
    "keras.src.utils": ("test_csv_opener_is_csv_loggers",),
}


class Keras3AdapterContractTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(3)
        self.model = synthetic.regression_model("tiny", flavour="keras3")

    def _fit(self, check, epochs=3, **kwargs):
        probe = _Probe(check)
        kwargs.setdefault("x", _dataset())
        self.model.fit(epochs=epochs, verbose=0, callbacks=[probe], **kwargs)
        return probe

    def test_every_private_name_has_a_contract_test(self):
        private_names.check_contract(
            self,
            CONTRACT,
            keras3_adapter,
            keras3_data,
            keras3_state,
            fit_frames,
            own={"_model"},  # keras3_adapter._OneShotEpoch's
        )

    def test_enumerate_from_is_keras_loop_from_its_source(self):
        # enumerate_from is Keras's loop with a start step and a count of
        # batches drawn (Keras's own cannot start at a step that is no
        # multiple of steps_per_execution). Keras's source, given those two,
        # must be the copy, statement for statement.
        keras_source = textwrap.dedent(
            inspect.getsource(epoch_iterator.EpochIterator._enumerate_iterator)
        )
        for old, new in (
            ("self.steps_per_execution", "per_call"),
            ("self.", "it."),
            ("range(0, steps_per_epoch", "range(start, steps_per_epoch"),
            ("step = -per_call", "step = start - per_call"),
        ):
            self.assertIn(old, keras_source)
            keras_source = keras_source.replace(old, new)
        # The iterator made at the epoch's start has `drawn` batches drawn.
        keras_source = keras_source.replace(
            "it._steps_seen = 0", "it._steps_seen = drawn", 1
        )
        (theirs,) = ast.parse(keras_source).body
        theirs.body.insert(
            2, ast.parse("per_call = it.steps_per_execution").body[0]
        )
        (ours,) = ast.parse(
            textwrap.dedent(inspect.getsource(keras3_data.enumerate_from))
        ).body
        body = ours.body[1:]  # without the docstring
        self.assertEqual(
            [ast.dump(s) for s in body],
            [ast.dump(s) for s in theirs.body],
            "EpochIterator._enumerate_iterator changed: update "
            "keras3_data.enumerate_from to match it",
        )

    def test_epoch_length_of_an_input_of_unknown_size(self):
        # `_num_batches`: unknown (None) until fit() has counted an epoch.
        seen = {}

        class Steps(keras_callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                context = keras3_adapter.fit_context()
                seen[epoch] = keras3_adapter.completed_epoch_steps(context)
                seen["context"] = context
                seen["generator"] = keras3_adapter.is_python_generator_input(
                    context
                )

        unknown = _dataset().filter(lambda x, y: True)
        self.model.fit(unknown, epochs=2, verbose=0, callbacks=[Steps()])
        # 4 batches; Keras counts the step that found the input used up.
        self.assertEqual((seen[0], seen[1]), (None, 5))
        self.assertFalse(seen["generator"])
        keras3_adapter.set_counted_epoch_steps(seen["context"], 7)
        self.assertEqual(seen["context"]._num_batches, 7)
        generator = synthetic.regression_generator(32, 8)
        self.model.fit(
            generator,
            steps_per_epoch=2,
            epochs=1,
            verbose=0,
            callbacks=[Steps()],
        )
        self.assertTrue(seen["generator"])

    def test_replay_draws_from_random_as_a_shuffled_py_dataset_epoch(self):
        # PyDatasetAdapter's generator, shuffling, draws the epoch's batch
        # order from Python's `random` when it starts; replay_epochs makes
        # the same draw (and runs the epoch hooks) without reading.
        dataset = synthetic.RegressionPyDataset(32, 8)
        adapter = py_dataset_adapter.PyDatasetAdapter(dataset, shuffle=True)
        random.seed(3)
        adapter.on_epoch_begin()
        read = [
            int(batch[0][0][0] * 1e6) for batch in adapter.get_numpy_iterator()
        ]
        adapter.on_epoch_end()
        after_reading = random.getstate()
        self.assertLen(read, 4)
        random.seed(3)
        context = types.SimpleNamespace(
            _get_iterator=lambda: [], data_adapter=adapter
        )
        keras3_adapter.replay_epochs(context, iterators=0, epochs=1)
        self.assertEqual(random.getstate(), after_reading)
        self.assertIn(
            "random.shuffle(indices)",
            inspect.getsource(py_dataset_adapter.PyDatasetAdapter),
        )

    def test_csv_opener_is_csv_loggers(self):
        # CSVLogger.on_train_begin opens its file with file_utils.File.
        self.assertIn(
            "file_utils.File(self.filename, mode)",
            inspect.getsource(csv_logger.CSVLogger.on_train_begin),
        )
        path = self.create_tempfile(content="epoch,loss\n").full_path
        with keras3_adapter.open_csv_for_append(path) as f:
            f.write("0,1.0\n")
        with open(path) as f:
            self.assertEqual(f.read(), "epoch,loss\n0,1.0\n")

    def test_layers_with_unsaved_state_are_named(self):
        # Layer._flatten_layers: a TextVectorization's inner lookup layer is
        # not named (the user made the outer one).
        inputs = keras.Input((1,), dtype="string")
        words = keras.layers.TextVectorization(name="words")(inputs)
        looked = keras.layers.StringLookup(
            vocabulary=["a", "b"], name="lookup"
        )(inputs)
        model = keras.Model(inputs, [words, looked])
        self.assertEqual(
            keras3_adapter.layers_with_unsaved_state(model),
            ["words (TextVectorization)", "lookup (StringLookup)"],
        )

    def test_per_replica_specs_give_the_global_batch(self):
        # Under a strategy, a distributed dataset's element_spec holds a
        # PerReplicaSpec per component; `_value_specs` are the replicas'.
        replica = tf.TensorSpec([4, 3], tf.float32)
        spec = distribute_values.PerReplicaSpec(replica, replica)
        self.assertEqual(spec._value_specs, (replica, replica))
        self.assertEqual(
            fit_frames.global_batch_shapes((spec,)), [[[8, 3], "float32"]]
        )
        self.assertEqual(fit_frames.one_replica_spec((spec,)), (replica,))

    def test_pinned_version(self):
        self.assertEqual(
            keras.__version__,
            keras3_adapter.VERIFIED_VERSION,
            "Keras changed: re-verify every internal in keras3_adapter.py "
            "(first _enumerate_from against EpochIterator._enumerate_iterator)"
            ", then update VERIFIED_VERSION and requirements.txt",
        )

    def test_enumerate_from_is_keras_loop_with_a_start(self):
        # _enumerate_from copies EpochIterator._enumerate_iterator: from
        # step 0 it must yield what Keras's own loop yields, and keep the
        # same state, for each kind of input.
        for kwargs in (
            {"x": _dataset()},  # a new iterator every epoch
            {"x": _dataset(repeat=True), "steps_per_epoch": 3},  # one
            {"x": _dataset().filter(lambda x, y: True)},  # unknown size
        ):
            theirs = self._steps(lambda it: it._enumerate_iterator(), kwargs)
            ours = self._steps(
                lambda it: keras3_data.enumerate_from(it, 0, 0), kwargs
            )
            self.assertEqual(ours, theirs, kwargs)
        self.assertIn(
            "_steps_seen",
            inspect.getsource(epoch_iterator.EpochIterator._enumerate_iterator),
        )

    def _steps(self, enumerate_epoch, kwargs):
        it = keras3_adapter.TFEpochIterator(
            distribute_strategy=tf.distribute.get_strategy(), **kwargs
        )
        out = []
        for _ in range(2):  # two epochs
            with it.catch_stop_iteration():
                for begin, end, iterator in enumerate_epoch(it):
                    next(iterator)
                    out.append((begin, end, it._steps_seen))
                    if begin >= 5:
                        break
            out.append(("epoch end", it._num_batches))
        return out

    def test_start_at_starts_fit_at_an_epoch_and_batch_once(self):
        def check(model, seen):
            context = keras3_adapter.fit_context()
            keras3_adapter.start_at(model, context, 1, 2, 2)

        probe = self._fit(check)
        self.assertEqual(probe.epochs, [1, 2])
        self.assertEqual(probe.batches[:3], [(1, 2), (1, 3), (2, 0)])
        self.assertIsNone(self.model._initial_epoch)  # read once, gone
        again = self._fit(lambda m, s: None, epochs=1)
        self.assertEqual(again.epochs, [0])

    def test_fit_locals_and_train_function(self):
        calls = []

        def check(model, seen):
            seen["context"] = keras3_adapter.fit_context()
            seen["callbacks"] = keras3_adapter.fit_callback_list()
            seen["initial_epoch"] = keras3_adapter.user_initial_epoch(None)
            keras3_adapter.wrap_train_function(
                model, keras_callbacks.recording(calls)
            )

        probe = self._fit(check, initial_epoch=1)
        self.assertIsInstance(
            probe.seen["context"], keras3_adapter.TFEpochIterator
        )
        self.assertIn(probe, probe.seen["callbacks"].callbacks)
        self.assertEqual(probe.seen["initial_epoch"], 1)
        self.assertLen(calls, 8)  # 2 epochs of 4 batches
        keras3_adapter.unwrap_train_function(self.model)
        self.assertNotIsInstance(
            self.model.train_function,
            keras3_adapter.fit_frames.WrappedTrainFunction,
        )
        self.assertIsNone(keras3_adapter.fit_context())

    def test_skip_batches_draws_by_the_iterators_op(self):
        calls = []

        def check(model, seen):
            keras3_adapter.wrap_train_function(
                model, keras_callbacks.recording(calls)
            )

        self._fit(check, epochs=1)
        keras3_adapter.unwrap_train_function(self.model)
        # fit()'s iterator takes the IteratorGetNext path.
        self.assertTrue(fit_frames.skips_fast(calls[0]))
        dataset = tf.data.Dataset.range(10).map(lambda i: (i, 2 * i))
        skipped, drawn = iter(dataset), iter(dataset)
        fit_frames.skip_batches(skipped, 4)
        for _ in range(4):
            next(drawn)
        self.assertEqual(
            [int(t) for t in next(skipped)], [int(t) for t in next(drawn)]
        )
        with self.assertRaises(StopIteration):
            fit_frames.skip_batches(skipped, 6)
        # Any other iterator is advanced by next().
        plain = iter([1, 2, 3])
        self.assertFalse(fit_frames.skips_fast(plain))
        fit_frames.skip_batches(plain, 2)
        self.assertEqual(next(plain), 3)

    def test_iterators_are_counted_and_positions_recorded(self):
        def check(model, seen):
            context = keras3_adapter.fit_context()
            keras3_adapter.track_iterators(context)
            seen["context"] = context

        probe = self._fit(check)
        context = probe.seen["context"]
        # Keras makes a new iterator at each epoch end (input used up) and
        # another at each epoch start: 2 per epoch, 6 for 3 epochs.
        self.assertEqual(context._get_iterator().made, 6)
        spot = position.Position()
        spot.on_iterator(object())
        spot.end_batch(1)
        self.assertEqual(
            keras3_adapter.data_position(context, spot, at_epoch_end=False),
            {"iterators_done": 5, "drawn": 2},
        )
        self.assertEqual(
            keras3_adapter.data_position(context, spot, at_epoch_end=True),
            {"iterators_done": 6, "drawn": 0},
        )
        # A replay counts the iterators it stands for, whether it makes them
        # (a seeded shuffle) or not (these arrays: dataset_replay.py).
        keras3_adapter.replay_epochs(context, iterators=3, epochs=0)
        self.assertEqual(context._get_iterator().made, 9)

    def test_geometry_seed_states_and_schedule(self):
        def check(model, seen):
            context = keras3_adapter.fit_context()
            seen["geometry"] = keras3_adapter.data_geometry(context)

        x, y = synthetic.regression_data(20)
        probe = self._fit(check, x=x, y=y, batch_size=8)
        self.assertEqual(
            probe.seen["geometry"],
            {
                "steps_per_epoch": 3,
                "batch_size": 8,
                "num_samples": 20,
                "element_spec": [
                    [[None, synthetic.INPUT_DIM], "float32"],
                    [[None, 1], "float32"],
                ],
            },
        )
        dropout = synthetic.regression_model(
            "tiny", dropout=0.5, flavour="keras3"
        )
        states = keras3_adapter.layer_random_generators(dropout)
        self.assertLen(states, 1)
        self.assertIsInstance(states[0], keras.Variable)
        schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
        self.assertIs(
            keras3_adapter.learning_rate_schedule(
                keras.optimizers.Adam(schedule)
            ),
            schedule,
        )
        self.assertIsNone(
            keras3_adapter.learning_rate_schedule(keras.optimizers.Adam(0.1))
        )
        # Set aside, the schedule no longer stops get_config().
        adam = keras.optimizers.Adam(schedule, beta_1=0.8)
        with keras3_adapter.learning_rate_schedule_set_aside(adam):
            self.assertEqual(adam.get_config()["beta_1"], 0.8)
            self.assertIsNone(keras3_adapter.learning_rate_schedule(adam))
        self.assertIs(keras3_adapter.learning_rate_schedule(adam), schedule)
        # A callable learning rate is called at each step; it cannot be set.
        rate = lambda: 0.01  # noqa: E731
        self.assertIs(
            keras3_adapter.learning_rate_schedule(keras.optimizers.Adam(rate)),
            rate,
        )

    def test_metrics_can_be_built_before_the_first_step(self):
        model = synthetic.regression_model("tiny", flavour="keras3")
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])

        def check(m, seen):
            keras3_adapter.build_compiled_metrics(
                m, keras3_adapter.fit_context()
            )
            seen["variables"] = [len(x.variables) for x in m.metrics]

        probe = _Probe(check)
        model.fit(_dataset(), epochs=1, verbose=0, callbacks=[probe])
        self.assertEqual(probe.seen["variables"], [2, 2])

    def test_async_checkpoint_of_the_tf_variables_behind_keras_ones(self):
        # TF's async checkpoint cannot copy Keras 3 variables; the plain
        # tf.Variables behind them it can (checkpoint_objects).
        model = self.model
        model.fit(_dataset(), epochs=1, verbose=0)
        options = tf.train.CheckpointOptions(
            experimental_enable_async_checkpoint=True
        )
        objects = keras3_adapter.checkpoint_objects(
            model, None, keras_state.held_state(model, keras3_adapter)
        )
        checkpoint = tf.train.Checkpoint(**objects)
        prefix = self.tmp + "/ckpt"
        for _ in range(2):
            path = checkpoint.write(prefix, options=options)
            checkpoint.sync()
        before = [v.numpy() for v in model.variables]
        for v in model.variables:
            v.assign(np.zeros(v.shape, v.dtype))
        status = tf.train.Checkpoint(**objects).read(path)
        status.assert_existing_objects_matched()
        for got, want in zip(model.variables, before, strict=True):
            np.testing.assert_array_equal(got.numpy(), want)

    def test_metrics_build_leaves_an_unbuilt_optimizer_unbuilt(self):
        # _symbolic_build builds model.optimizer unless Optimizer.built.
        model = synthetic.gan_model("keras3")

        def check(m, seen):
            keras3_adapter.build_compiled_metrics(
                m, keras3_adapter.fit_context()
            )
            seen["built"] = m.optimizer.built
            seen["variables"] = len(m.optimizer.variables)

        probe = _Probe(check)
        x, noise = synthetic.gan_data(16)
        unbuilt = len(model.optimizer.variables)  # iterations, learning rate
        model.fit(x, noise, epochs=1, verbose=0, callbacks=[probe])
        self.assertFalse(probe.seen["built"])
        self.assertEqual(probe.seen["variables"], unbuilt)
        self.assertFalse(model.optimizer.built)

    def test_metrics_build_skips_a_model_without_compiled_metrics(self):
        # keras.io's DCGAN: a Model holding two built models, no call(),
        # compile() without loss or metrics: nothing to build, and tracing
        # it symbolically would raise.
        class Holder(keras.Model):
            def __init__(self):
                super().__init__()
                self.inner = keras.Sequential(
                    [keras.Input((3,)), keras.layers.Dense(1)]
                )

        model = Holder()
        model.compile()
        self.assertIsNone(model._compile_metrics)
        self.assertIsNone(model._compile_loss)
        keras3_adapter.build_compiled_metrics(model, None)
        self.assertFalse(model.built)

    def test_optimizer_records_the_variables_it_was_built_on(self):
        # BaseOptimizer._trainable_variables: the list build() was given.
        variables = [keras.Variable(np.zeros((n,), "float32")) for n in (2, 3)]
        optimizer = keras.optimizers.Adam()
        self.assertEqual(
            keras3_adapter.optimizer_built_on(optimizer, variables),
            (False, None),
        )
        optimizer.build([variables[1]])
        self.assertEqual(optimizer._trainable_variables, [variables[1]])
        self.assertEqual(
            keras3_adapter.optimizer_built_on(optimizer, variables), (True, [1])
        )
        self.assertEqual(
            keras3_adapter.optimizer_built_on(optimizer, variables[:1]),
            (True, None),
        )

    def test_unfilled_build_makes_the_slots_through_add_variable_from_reference(
        self,
    ):
        # The optimizers make their zero-initialised slots through
        # add_variable_from_reference (replaced on the instance during the
        # build): the same variables a plain build makes, none filled.
        held = [
            keras.Variable(np.ones(shape, "float32"))
            for shape in ((2, 3), (3,))
        ]

        def variables():
            return list(held)

        def layout(optimizer):
            # The name without the optimizer's own (adam_1, adam_2, ...).
            return [
                (v.path.split("/", 1)[-1], v.shape, v.dtype)
                for v in optimizer.variables
            ]

        for make, slot_count in (
            (keras.optimizers.Adam, 4),
            (lambda: keras.optimizers.SGD(momentum=0.9), 2),
            (
                lambda: keras.optimizers.LossScaleOptimizer(
                    keras.optimizers.Adam()
                ),
                4,
            ),
        ):
            plain = make()
            plain.build(variables())
            optimizer = make()
            before = {id(v) for v in optimizer.variables}
            with mock.patch.object(
                keras3_state.unfilled_slots,
                "empty",
                wraps=keras3_state.unfilled_slots.empty,
            ) as empty:
                made = keras3_adapter.build_optimizer(
                    optimizer, variables(), unfilled=True
                )
            slots = [v for v in optimizer.variables if id(v) not in before]
            # A LossScaleOptimizer's own scale and counter are made too.
            self.assertContainsSubset(
                [id(v) for v in made], [id(v) for v in slots]
            )
            self.assertLen(made, slot_count)
            # One empty tensor per shape (unfilled_slots.Empties).
            self.assertEqual(empty.call_count, len(held))
            self.assertEqual(layout(optimizer), layout(plain))
            inner = getattr(optimizer, "inner_optimizer", optimizer)
            for each in (optimizer, inner):
                self.assertNotIn("add_variable_from_reference", vars(each))
        # A slot that starts at another value than zero is made filled.
        optimizer = keras.optimizers.Adagrad(initial_accumulator_value=0.5)
        made = keras3_adapter.build_optimizer(
            optimizer, variables(), unfilled=True
        )
        self.assertEqual(made, [])
        np.testing.assert_array_equal(optimizer.variables[-1], [0.5] * 3)
        # Without unfilled, Keras's own build.
        optimizer = keras.optimizers.Adam()
        self.assertEqual(keras3_adapter.build_optimizer(optimizer, []), [])
        self.assertTrue(optimizer.built)

    def test_objects_saving_state_of_their_own_are_told_apart(self):
        # Trackable._serialize_to_tensors: overridden by a MutableHashTable.
        table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, -1)
        self.assertTrue(keras3_adapter.state_not_backed_up(table))
        for obj in (
            tf.Variable(1.0),
            keras.Variable(1.0),
            tf.random.Generator.from_seed(1),  # its state is a tf.Variable
            keras.layers.Dense(1),
            keras.optimizers.Adam(),
        ):
            self.assertFalse(keras3_adapter.state_not_backed_up(obj), obj)

    def test_multi_worker_and_parameter_server_are_refused(self):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with self.assertRaisesRegex(ValueError, "not supported with Keras 3"):
            keras3_adapter.check_strategy(strategy)
        keras3_adapter.check_strategy(tf.distribute.get_strategy())

    def test_callback_state_attributes_exist(self):
        private_names.check_callback_tables(
            self,
            keras.callbacks,
            keras3_adapter,
            lambda made: self.model.fit(
                _dataset(), epochs=1, verbose=0, callbacks=made
            ),
        )

    def test_tensorboard_counts_its_batch_step_in_global_train_batch(self):
        board = keras.callbacks.TensorBoard(self.create_tempdir().full_path)
        self.model.fit(_dataset(), epochs=2, verbose=0, callbacks=[board])
        self.assertEqual(board._global_train_batch, 8)


class VersionGuardTest(test_case.TestCase):
    """The installed Keras is checked against the verified one at run time."""

    def setUp(self):
        super().setUp()
        self.addCleanup(flavours._WARNED.clear)
        flavours._WARNED.clear()

    def test_the_installed_keras_is_the_verified_minor_release(self):
        # Fails when the pinned Keras moves on: re-verify the adapter first.
        self.assertFalse(flavours.warn_if_unverified(keras3_adapter))

    def test_another_minor_release_is_warned_about_once(self):
        with (
            mock.patch.object(keras3_adapter, "VERSION", "3.16.0"),
            mock.patch.object(keras3_adapter, "NAME", "Keras 3.16.0"),
            self.assertLogs(level="WARNING") as logs,
        ):
            self.assertTrue(flavours.warn_if_unverified(keras3_adapter))
            self.assertFalse(flavours.warn_if_unverified(keras3_adapter))
        (line,) = logs.output
        self.assertIn("verified with Keras 3.15.1; Keras 3.16.0", line)
        self.assertIn("exact resume", line)

    def test_a_patch_release_is_not_warned_about(self):
        with mock.patch.object(keras3_adapter, "VERSION", "3.15.9"):
            self.assertFalse(flavours.warn_if_unverified(keras3_adapter))


if __name__ == "__main__":
    absltest.main()
