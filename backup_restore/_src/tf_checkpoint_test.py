"""Contract test of tf_checkpoint's single-shard writer with TensorFlow 2.21.

`write_single_shard` must write what `Checkpoint.write` writes (same keys,
same values, the same object graph) so that `Checkpoint.read` restores it,
and must take its fast path for the plain variables of both Keras flavours:
a TensorFlow that changes the private API it relies on fails here.
"""

import os

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized
from tensorflow.core.protobuf import trackable_object_graph_pb2

from backup_restore._src import tf_checkpoint
from testing import synthetic
from testing import test_case

_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _trained(flavour):
    synthetic.KERAS[flavour].utils.set_random_seed(5)
    model = synthetic.regression_model("tiny", flavour=flavour)
    x, y = synthetic.regression_data(32, seed=1)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model


def _contents(prefix):
    """{key: (dtype, value)} of a checkpoint, the object graph parsed; a
    variant (an iterator's state) has no numpy value: None."""
    reader = tf.train.load_checkpoint(prefix)
    out = {}
    for key, dtype in reader.get_variable_to_dtype_map().items():
        value = None
        if dtype != tf.variant:
            value = reader.get_tensor(key)
        if key == _GRAPH_KEY:
            graph = trackable_object_graph_pb2.TrackableObjectGraph()
            graph.ParseFromString(value)
            value = graph
        out[key] = (dtype, value)
    return out


class WriteSingleShardTest(test_case.TestCase):
    def _both(self, checkpoint):
        """Writes `checkpoint` both ways; returns (ours, TensorFlow's)."""
        ours = os.path.join(self.tmp, "ours", "ckpt")
        theirs = os.path.join(self.tmp, "theirs", "ckpt")
        os.makedirs(os.path.dirname(ours))
        self.assertTrue(tf_checkpoint.write_single_shard(checkpoint, ours))
        checkpoint.write(theirs)
        return ours, theirs

    def assertSameCheckpoint(self, ours, theirs):
        a, b = _contents(ours), _contents(theirs)
        self.assertCountEqual(a, b)
        for key, (dtype, value) in a.items():
            self.assertEqual(dtype, b[key][0], key)
            if key == _GRAPH_KEY:
                self.assertEqual(value, b[key][1])
            elif value is not None:
                np.testing.assert_array_equal(value, b[key][1], err_msg=key)

    def test_tensorflow_still_has_the_variable_read_closure(self):
        self.assertIsNotNone(tf_checkpoint._VARIABLE_READ)

    @parameterized.named_parameters(
        ("keras3", "keras3"), ("tf_keras", "tf_keras")
    )
    def test_a_trained_model_is_written_as_tensorflow_writes_it(self, flavour):
        model = _trained(flavour)
        rng = tf.random.Generator.from_seed(3)
        checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer, rng=rng
        )
        ours, theirs = self._both(checkpoint)
        self.assertSameCheckpoint(ours, theirs)
        self.assertEqual(
            sorted(os.listdir(os.path.dirname(ours))),
            ["ckpt.data-00000-of-00001", "ckpt.index"],
        )
        # Checkpoint.read restores every value of it into a fresh model.
        fresh = _trained(flavour)
        for v in fresh.weights:
            v.assign(tf.zeros_like(v))
        fresh_rng = tf.random.Generator.from_seed(99)
        status = tf.train.Checkpoint(
            model=fresh, optimizer=fresh.optimizer, rng=fresh_rng
        ).read(ours)
        status.assert_existing_objects_matched()
        for a, b in zip(model.weights, fresh.weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        for a, b in zip(
            model.optimizer.variables, fresh.optimizer.variables, strict=True
        ):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
        np.testing.assert_array_equal(
            rng.normal([4]).numpy(), fresh_rng.normal([4]).numpy()
        )

    def test_values_are_read_when_written(self):
        v = tf.Variable([1.0, 2.0])
        checkpoint = tf.train.Checkpoint(v=v)
        first = os.path.join(self.tmp, "a", "ckpt")
        os.makedirs(os.path.dirname(first))
        self.assertTrue(tf_checkpoint.write_single_shard(checkpoint, first))
        v.assign([3.0, 4.0])
        second = os.path.join(self.tmp, "b", "ckpt")
        os.makedirs(os.path.dirname(second))
        self.assertTrue(tf_checkpoint.write_single_shard(checkpoint, second))
        key = "v/.ATTRIBUTES/VARIABLE_VALUE"
        np.testing.assert_array_equal(
            tf.train.load_checkpoint(first).get_tensor(key), [1.0, 2.0]
        )
        np.testing.assert_array_equal(
            tf.train.load_checkpoint(second).get_tensor(key), [3.0, 4.0]
        )

    def test_an_iterator_resumes_where_it_was(self):
        dataset = tf.data.Dataset.range(10).shuffle(10, seed=1)
        iterator = iter(dataset)
        next(iterator), next(iterator)
        checkpoint = tf.train.Checkpoint(it=iterator)
        ours, theirs = self._both(checkpoint)
        self.assertSameCheckpoint(ours, theirs)
        expected = [int(x) for x in iterator]
        restored = iter(dataset)
        tf.train.Checkpoint(it=restored).read(ours).assert_consumed()
        self.assertEqual([int(x) for x in restored], expected)

    def test_mirrored_variables_are_written_as_tensorflow_writes_them(self):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
        with strategy.scope():
            v = tf.Variable([5.0, 6.0])
        checkpoint = tf.train.Checkpoint(v=v)
        path = os.path.join(self.tmp, "m", "ckpt")
        os.makedirs(os.path.dirname(path))
        written = tf_checkpoint.write_single_shard(checkpoint, path)
        if not written:  # TensorFlow's saver is what the store then uses
            checkpoint.write(path)
        theirs = os.path.join(self.tmp, "theirs", "ckpt")
        checkpoint.write(theirs)
        self.assertSameCheckpoint(path, theirs)

    def test_an_uninitialised_variable_is_left_out_as_tensorflow_does(self):
        from tensorflow.python.ops import resource_variable_ops

        checkpoint = tf.train.Checkpoint(
            u=resource_variable_ops.UninitializedVariable(
                shape=[2], dtype=tf.float32
            ),
            v=tf.Variable([1.0, 2.0]),
        )
        ours, theirs = self._both(checkpoint)
        self.assertSameCheckpoint(ours, theirs)
        self.assertNotIn("u/.ATTRIBUTES/VARIABLE_VALUE", _contents(ours))

    @parameterized.named_parameters(
        ("no_device", "", True),
        ("host", "/cpu:0", True),
        ("local_job", "/job:localhost/replica:0/task:0/device:CPU:0", True),
        ("worker", "/job:worker/replica:0/task:1/device:CPU:0", False),
        ("ps", "/job:ps/replica:0/task:0/device:CPU:0", False),
    )
    def test_only_this_process_devices_are_plain(self, device, plain):
        self.assertEqual(tf_checkpoint._on_this_task(device), plain)

    def test_what_it_cannot_write_is_left_to_tensorflow(self):
        class Odd(tf.Module):
            """A trackable whose tensor is not a tensor, variable or spec."""

            def _serialize_to_tensors(self):
                return {"x": np.float32(1.0)}

            def _restore_from_tensors(self, restored_tensors):
                return None

        path = os.path.join(self.tmp, "odd", "ckpt")
        os.makedirs(os.path.dirname(path))
        checkpoint = tf.train.Checkpoint(odd=Odd())
        self.assertFalse(tf_checkpoint.write_single_shard(checkpoint, path))
        self.assertEqual(os.listdir(os.path.dirname(path)), [])


if __name__ == "__main__":
    absltest.main()
