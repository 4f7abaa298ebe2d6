"""Contract test of stateful_random: TensorFlow's op callbacks see every op
created in a traced function, nested ones too, and only those."""

import tensorflow as tf
from absl.testing import absltest

from backup_restore._src import stateful_random
from testing import test_case


class WatchTest(test_case.TestCase):
    def test_finds_the_stateful_random_ops_of_a_trace_nested_too(self):
        @tf.function
        def step(x):
            def body(i, total):
                return i + 1, total + tf.random.normal([2])

            _, total = tf.while_loop(
                lambda i, _: i < 2, body, (0, tf.random.uniform([2]))
            )
            return total * x + tf.cast(tf.random.shuffle(tf.range(2)), x.dtype)

        with stateful_random.watch() as found:
            step(tf.constant(1.0))
        self.assertEqual(
            found, {"RandomStandardNormal", "RandomUniform", "RandomShuffle"}
        )

    def test_ignores_exact_random_ops_and_eager_ones(self):
        generator = tf.random.Generator.from_seed(1)

        @tf.function
        def step(x):
            return (
                x
                + generator.uniform([2])
                + tf.random.stateless_uniform([2], seed=[1, 2])
            )

        with stateful_random.watch() as found:
            step(tf.constant(1.0))
            tf.random.uniform([2])  # eager: an initializer lifted out
        self.assertEqual(found, set())

    def test_stops_watching_when_the_block_ends_even_by_an_error(self):
        @tf.function
        def step():
            return tf.random.uniform([1])

        with self.assertRaises(ValueError):
            with stateful_random.watch():
                raise ValueError("fit() raised")
        with stateful_random.watch() as found:
            pass
        step()  # traced after both blocks ended
        self.assertEqual(found, set())


if __name__ == "__main__":
    absltest.main()
