"""Contract test of dataset_skip with TensorFlow 2.21 and tf-keras 2.21.

tf-keras's pipeline for arrays, started some batches in by dataset_skip,
yields what the same pipeline yields after that many batches are drawn
from it: for shuffled and ordered arrays, a last partial batch, several
inputs with sample weights, and counts within the first epoch, at an epoch
boundary and beyond it. A tf.data or tf-keras that changes the pipeline's
shape makes `skip_batches` return None (the batches are then drawn: slower,
still exact), and the first group fails here.
"""

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import absltest
from absl.testing import parameterized
from tf_keras.src.engine import data_adapter

from backup_restore._src import dataset_skip
from testing import test_case

_EPOCHS = 3


def _handler(shuffle, samples=40, weights=False, **kwargs):
    """A fit()'s DataHandler over arrays (5 batches of 8 an epoch)."""
    tf_keras.utils.set_random_seed(7)
    x = {
        "a": np.arange(samples * 2, dtype="float32").reshape(samples, 2),
        "b": np.arange(samples, dtype="int64").reshape(samples, 1),
    }
    y = np.arange(samples, dtype="float32").reshape(samples, 1) * 3.0
    sample_weight = np.linspace(0.0, 1.0, samples) if weights else None
    return data_adapter.DataHandler(
        x=x,
        y=y,
        sample_weight=sample_weight,
        batch_size=8,
        epochs=_EPOCHS,
        shuffle=shuffle,
        **kwargs,
    )


def _batches(iterator):
    return [
        [np.asarray(t) for t in tf.nest.flatten(batch)] for batch in iterator
    ]


class SkipBatchesTest(test_case.TestCase, parameterized.TestCase):
    @parameterized.product(
        shuffle=[True, False],
        samples=[40, 37],  # 37: a last batch of 5
        weights=[False, True],
        count=[1, 5, 7, 10, 14],
    )
    def test_yields_what_follows_the_drawn_batches(
        self, shuffle, samples, weights, count
    ):
        drawn = iter(_handler(shuffle, samples, weights)._dataset)
        for _ in range(count):
            next(drawn)
        expected = _batches(drawn)
        skipped = dataset_skip.skip_batches(
            _handler(shuffle, samples, weights)._dataset, count
        )
        self.assertIsNotNone(skipped)
        got = _batches(skipped)
        self.assertLen(got, _EPOCHS * 5 - count)
        for want, have in zip(expected, got, strict=True):
            for a, b in zip(want, have, strict=True):
                np.testing.assert_array_equal(a, b)

    def test_the_shuffle_is_not_the_same_every_epoch(self):
        # Otherwise the test above could not tell a skip of the epochs'
        # permutations from a restart of them.
        epochs = _batches(_handler(True)._dataset)
        first, second = epochs[:5], epochs[5:10]
        self.assertFalse(
            all(
                np.array_equal(a[0], b[0])
                for a, b in zip(first, second, strict=True)
            )
        )

    def test_other_pipelines_are_left_to_drawing(self):
        others = {
            "class_weight": _handler(True, class_weight={0: 1.0})._dataset,
            "batch_shuffle": _handler("batch")._dataset,
            "user_dataset": tf.data.Dataset.range(10).batch(2).prefetch(1),
            "zip_then_map": tf.data.Dataset.zip(
                (tf.data.Dataset.range(4), tf.data.Dataset.range(4))
            )
            .map(lambda a, b: a + b, num_parallel_calls=2)
            .prefetch(tf.data.AUTOTUNE),
        }
        for name, dataset in others.items():
            with self.subTest(name):
                self.assertIsNone(dataset_skip.skip_batches(dataset, 2))


if __name__ == "__main__":
    absltest.main()
