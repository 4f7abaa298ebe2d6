"""Contract test of dataset_replay with TensorFlow 2.21 and both Keras
flavours' pipelines.

For every pipeline `iterators_matter` calls free of state across
iterators, an iterator made after two others yields what the first one
yielded (so a resumed fit() may skip making them); for the seeded shuffle
it flags, it does not (so the check can tell). A tf.data that renames its
dataset classes or moves `_inputs()` / `_functions()` makes pipelines
flagged (no speed-up, still exact), and the first group fails here.
"""

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized
from keras.src.trainers.data_adapters import array_data_adapter
from tf_keras.src.engine import data_adapter as tf_keras_data_adapter

from backup_restore._src import dataset_replay
from testing import test_case


def _arrays():
    x = np.arange(64, dtype="float32").reshape(32, 2)
    return x, x[:, :1]


def _keras3_arrays():
    x, y = _arrays()
    return array_data_adapter.ArrayDataAdapter(
        x, y, batch_size=4, shuffle=True
    ).get_tf_dataset()


def _tf_keras_arrays():
    x, y = _arrays()
    return tf_keras_data_adapter.TensorLikeDataAdapter(
        x, y, batch_size=4, shuffle=True
    ).get_dataset()


def _plain_pipeline():
    x, _ = _arrays()
    return (
        tf.data.Dataset.from_tensor_slices(x)
        .map(lambda t: t * 2.0 + tf.random.uniform(()))
        .filter(lambda t: t[0] >= 0.0)
        .batch(4)
        .prefetch(1)
    )


def _nested():
    return tf.data.Dataset.range(3).flat_map(
        lambda t: tf.data.Dataset.range(4).shuffle(4).map(lambda u: u + t)
    )


# Pipelines whose iterators are independent of each other.
INDEPENDENT = {
    "keras3_arrays": _keras3_arrays,
    "tf_keras_arrays": _tf_keras_arrays,
    "plain_pipeline": _plain_pipeline,
    "nested_dataset_made_per_element": _nested,
    "zip_repeat_take_skip": lambda: (
        tf.data.Dataset.zip(
            (tf.data.Dataset.range(6), tf.data.Dataset.range(6).repeat(2))
        )
        .skip(1)
        .take(4)
    ),
}


def _variable_in_map():
    counter = tf.Variable(0, dtype=tf.int64)
    return tf.data.Dataset.range(4).map(lambda t: t + counter.assign_add(1))


def _generator_in_map():
    generator = tf.random.Generator.from_seed(1)
    return tf.data.Dataset.range(4).map(lambda t: generator.uniform(()))


def _python_generator():
    return tf.data.Dataset.from_generator(
        lambda: iter(range(4)),
        output_signature=tf.TensorSpec((), tf.int64),
    )


class _Unknown(tf.data.Dataset):
    """A dataset kind this module does not know."""

    def __init__(self):
        self._inner = tf.data.Dataset.range(3)
        super().__init__(self._inner._variant_tensor)

    def _inputs(self):
        return [self._inner]

    @property
    def element_spec(self):
        return self._inner.element_spec


FLAGGED = {
    "seeded_shuffle": lambda: tf.data.Dataset.range(16).shuffle(16, seed=3),
    "random_dataset": lambda: tf.data.Dataset.random(seed=3).take(4),
    "sampling": lambda: tf.data.Dataset.sample_from_datasets(
        [tf.data.Dataset.range(3), tf.data.Dataset.range(3)], seed=3
    ),
    "cache": lambda: tf.data.Dataset.range(3).cache(),
    "variable_in_map": _variable_in_map,
    "random_generator_in_map": _generator_in_map,
    "python_generator": _python_generator,
    "dataset_of_datasets": lambda: tf.data.Dataset.from_tensors(
        tf.data.Dataset.range(3)
    ),
    "shuffle_under_plain_kinds": lambda: (
        tf.data.Dataset.range(8)
        .shuffle(8, seed=3)
        .map(lambda t: t * 2)
        .batch(2)
        .prefetch(1)
    ),
    "unknown_kind": _Unknown,
}


def _first_elements(dataset, count=4):
    iterator = iter(dataset)
    return [
        tf.nest.map_structure(np.array, next(iterator)) for _ in range(count)
    ]


def _equal(a, b):
    flat_a, flat_b = tf.nest.flatten(a), tf.nest.flatten(b)
    return len(flat_a) == len(flat_b) and all(
        np.array_equal(x, y) for x, y in zip(flat_a, flat_b, strict=True)
    )


class IteratorsMatterTest(test_case.TestCase):
    @parameterized.named_parameters(
        (name, name) for name in sorted(INDEPENDENT)
    )
    def test_independent_pipeline_yields_the_same_whatever_was_made(self, name):
        tf.keras.utils.set_random_seed(7)
        dataset = INDEPENDENT[name]()
        self.assertFalse(dataset_replay.iterators_matter(dataset))
        first = _first_elements(dataset)
        iter(dataset)
        iter(dataset)
        self.assertTrue(_equal(first, _first_elements(dataset)))

    @parameterized.named_parameters((name, name) for name in sorted(FLAGGED))
    def test_pipeline_with_state_across_iterators_is_flagged(self, name):
        tf.keras.utils.set_random_seed(7)
        self.assertTrue(dataset_replay.iterators_matter(FLAGGED[name]()))

    def test_a_seeded_shuffle_does_change_with_the_iterators_made(self):
        dataset = FLAGGED["seeded_shuffle"]()
        first = _first_elements(dataset, 16)
        iter(dataset)
        self.assertFalse(_equal(first, _first_elements(dataset, 16)))

    def test_anything_but_a_dataset_is_flagged(self):
        self.assertTrue(dataset_replay.iterators_matter([1, 2, 3]))
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        distributed = strategy.experimental_distribute_dataset(
            tf.data.Dataset.range(4).batch(2)
        )
        self.assertTrue(dataset_replay.iterators_matter(distributed))


if __name__ == "__main__":
    absltest.main()
