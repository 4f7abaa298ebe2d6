"""Contract test of tf_checkpoint_read with TensorFlow 2.21.

`read_single_shard` must restore what `Checkpoint.read` restores, take its
one-RestoreV2 path for the plain variables of both Keras flavours, leave
everything else to `Checkpoint.read` having changed nothing, and change no
variable when a tensor fails TensorFlow's checksum: a TensorFlow that
changes the private API it relies on fails here. A `ReadAhead` must be the
one read of a restore that uses it, on its own thread. A checkpoint read in
parts must be read in one op per part, at once, with the same outcome.
"""

import itertools
import os
import threading
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

from backup_restore._src import tf_checkpoint_read
from testing import synthetic
from testing import test_case


def _model(flavour, seed):
    """A trained tiny model: weights and built optimizer slots."""
    synthetic.KERAS[flavour].utils.set_random_seed(seed)
    model = synthetic.regression_model("tiny", flavour=flavour)
    x, y = synthetic.regression_data(32, seed=seed)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model


def _values(model):
    return [np.array(v) for v in model.weights + model.optimizer.variables]


def _checkpoint(model):
    return tf.train.Checkpoint(
        weights=list(model.weights),
        slots=list(model.optimizer.variables),
    )


def _read(prefix, checkpoint, ahead=None):
    reader = tf_checkpoint_read.index_reader(prefix)
    return tf_checkpoint_read.read_single_shard(
        checkpoint, prefix, reader, ahead
    )


def _ahead(prefix):
    return tf_checkpoint_read.read_ahead(
        prefix, tf_checkpoint_read.index_reader(prefix)
    )


def _corrupt_tensor(prefix, at=0.5):
    """Flips a byte of the data file, `at` (a fraction) into it."""
    data = prefix + ".data-00000-of-00001"
    with open(data, "rb") as f:
        raw = bytearray(f.read())
    raw[int(len(raw) * at)] ^= 0xFF
    with open(data, "wb") as f:
        f.write(raw)


def _reads(test):
    """The names of the threads that call RestoreV2 from now on."""
    calls = []
    real = tf_checkpoint_read.io_ops.restore_v2

    def counted(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    patcher = mock.patch.object(
        tf_checkpoint_read.io_ops, "restore_v2", counted
    )
    patcher.start()
    test.addCleanup(patcher.stop)
    return calls


def _in_parts(test, part_bytes):
    """From now on a checkpoint is read in parts of `part_bytes`, by as
    many as 4 ops at once, whatever the machine's CPUs."""
    for name, value in (
        ("_MIN_PART_BYTES", part_bytes),
        ("_usable_cpus", lambda: 4),
    ):
        patcher = mock.patch.object(tf_checkpoint_read, name, value)
        patcher.start()
        test.addCleanup(patcher.stop)


class ReadSingleShardTest(test_case.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("tf_keras", "tf_keras"), ("keras3", "keras3")
    )
    def test_restores_what_checkpoint_read_restores(self, flavour):
        source = _model(flavour, seed=1)
        prefix = _checkpoint(source).write(os.path.join(self.tmp, "ckpt"))
        ours, theirs = _model(flavour, seed=2), _model(flavour, seed=2)
        status = _read(prefix, _checkpoint(ours))
        self.assertIsNotNone(status, "the one-RestoreV2 path was not taken")
        status.assert_existing_objects_matched().expect_partial()
        _checkpoint(theirs).read(prefix).assert_existing_objects_matched()
        for a, b, c in zip(
            _values(ours), _values(theirs), _values(source), strict=True
        ):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)

    @parameterized.named_parameters(
        ("read_here", False, False),
        ("ahead", True, False),
        ("read_here_in_parts", False, True),
        ("ahead_in_parts", True, True),
    )
    def test_a_corrupt_tensor_changes_nothing(self, ahead, in_parts):
        source = tf.train.Checkpoint(
            a=tf.Variable(np.arange(1024, dtype=np.float32)),
            b=tf.Variable(np.ones(16384, dtype=np.float32)),
        )
        prefix = source.write(os.path.join(self.tmp, "ckpt"))
        _corrupt_tensor(prefix, at=0.75)  # in b: the object graph, a, b
        reads = _reads(self)
        if in_parts:
            # a (4 KB) and b (64 KB) in two parts: b read by a second op.
            _in_parts(self, 32 << 10)
        pending = _ahead(prefix) if ahead else None
        target = tf.train.Checkpoint(
            a=tf.Variable(np.zeros(1024, dtype=np.float32)),
            b=tf.Variable(np.zeros(16384, dtype=np.float32)),
        )
        with self.assertRaises(tf.errors.DataLossError):
            _read(prefix, target, pending)
        self.assertLen(reads, 2 if in_parts else 1)
        np.testing.assert_array_equal(target.a.numpy(), 0)
        np.testing.assert_array_equal(target.b.numpy(), 0)

    def test_every_tensor_is_checked_the_unused_ones_too(self):
        # The data file ends with the object graph (read, not assigned):
        # damage there is caught as Checkpoint.read would catch it.
        source = tf.train.Checkpoint(a=tf.Variable(np.arange(1000.0)))
        prefix = source.write(os.path.join(self.tmp, "ckpt"))
        data = prefix + ".data-00000-of-00001"
        raw = bytearray(open(data, "rb").read())
        raw[-5] ^= 0xFF
        with open(data, "wb") as f:
            f.write(raw)
        target = tf.train.Checkpoint(a=tf.Variable(np.zeros(1000)))
        with self.assertRaises(tf.errors.DataLossError):
            _read(prefix, target)
        np.testing.assert_array_equal(target.a.numpy(), 0)

    def test_leaves_what_is_not_plain_to_checkpoint_read(self):
        variable = tf.Variable(np.ones(3, dtype=np.float32))
        dataset = tf.data.Dataset.range(10)
        iterator = iter(dataset)
        prefix = tf.train.Checkpoint(v=variable, it=iterator).write(
            os.path.join(self.tmp, "ckpt")
        )
        target = tf.Variable(np.zeros(3, dtype=np.float32))
        checkpoint = tf.train.Checkpoint(v=target, it=iter(dataset))
        self.assertIsNone(_read(prefix, checkpoint))
        np.testing.assert_array_equal(target.numpy(), 0)

    @parameterized.named_parameters(
        ("tf_keras", "tf_keras"), ("keras3", "keras3")
    )
    def test_leaves_slots_not_made_yet_to_checkpoint_read(self, flavour):
        # Checkpoint.read restores them when the optimizer makes them.
        source = _model(flavour, seed=1)
        prefix = tf.train.Checkpoint(
            model=source, optimizer=source.optimizer
        ).write(os.path.join(self.tmp, "ckpt"))
        synthetic.KERAS[flavour].utils.set_random_seed(2)
        target = synthetic.regression_model("tiny", flavour=flavour)
        before = [np.array(v) for v in target.weights]
        checkpoint = tf.train.Checkpoint(
            model=target, optimizer=target.optimizer
        )
        self.assertIsNone(_read(prefix, checkpoint))
        for a, b in zip(before, target.weights, strict=True):
            np.testing.assert_array_equal(a, np.array(b))

    def test_leaves_a_shape_that_differs_to_checkpoint_read(self):
        prefix = tf.train.Checkpoint(
            v=tf.Variable(np.ones(3, dtype=np.float32))
        ).write(os.path.join(self.tmp, "ckpt"))
        target = tf.Variable(np.zeros(4, dtype=np.float32))
        self.assertIsNone(_read(prefix, tf.train.Checkpoint(v=target)))
        np.testing.assert_array_equal(target.numpy(), 0)

    def test_index_reader_reads_a_rewritten_index_again(self):
        checkpoint = tf.train.Checkpoint(v=tf.Variable([1.0]))
        prefix = checkpoint.write(os.path.join(self.tmp, "ckpt"))
        first = tf_checkpoint_read.index_reader(prefix)
        self.assertIs(first, tf_checkpoint_read.index_reader(prefix))
        checkpoint.v.assign([2.0])
        os.remove(prefix + ".index")
        checkpoint2 = tf.train.Checkpoint(v=tf.Variable([[2.0, 3.0]]))
        checkpoint2.write(prefix)
        again = tf_checkpoint_read.index_reader(prefix)
        self.assertEqual(
            again.get_variable_to_shape_map()["v/.ATTRIBUTES/VARIABLE_VALUE"],
            [1, 2],
        )


class ReadAheadTest(test_case.TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("tf_keras", "tf_keras", 1),
        ("keras3", "keras3", 1),
        ("tf_keras_in_parts", "tf_keras", 4),
        ("keras3_in_parts", "keras3", 4),
    )
    def test_its_read_is_the_only_one(self, flavour, parts):
        source = _model(flavour, seed=1)
        prefix = _checkpoint(source).write(os.path.join(self.tmp, "ckpt"))
        target = _model(flavour, seed=2)
        reads = _reads(self)
        if parts > 1:
            _in_parts(self, 64)  # the tiny model's state in 4 parts
        ahead = _ahead(prefix)
        self.assertIsNotNone(ahead)
        status = _read(prefix, _checkpoint(target), ahead)
        self.assertIsNotNone(status, "the one-RestoreV2 path was not taken")
        # One op per part, each on its own thread, the read ahead's first.
        self.assertEqual(
            sorted(reads),
            ["backup_restore read"]
            + [f"backup_restore read {part}" for part in range(2, parts + 1)],
        )
        for a, b in zip(_values(target), _values(source), strict=True):
            np.testing.assert_array_equal(a, b)

    def test_a_read_ahead_of_another_checkpoint_is_not_used(self):
        one = tf.train.Checkpoint(v=tf.Variable([1.0])).write(
            os.path.join(self.tmp, "one")
        )
        two = tf.train.Checkpoint(v=tf.Variable([2.0])).write(
            os.path.join(self.tmp, "two")
        )
        ahead = _ahead(one)
        target = tf.Variable([0.0])
        self.assertIsNotNone(_read(two, tf.train.Checkpoint(v=target), ahead))
        self.assertEqual(target.numpy().tolist(), [2.0])
        ahead.close()

    def test_none_begins_for_what_is_not_a_variable(self):
        # A tf.data iterator's state goes to Checkpoint.read: reading it
        # ahead would read the data twice.
        iterator = iter(tf.data.Dataset.range(10))
        prefix = tf.train.Checkpoint(v=tf.Variable([1.0]), it=iterator).write(
            os.path.join(self.tmp, "ckpt")
        )
        reads = _reads(self)
        self.assertIsNone(_ahead(prefix))
        self.assertEqual(reads, [])


class PartsTest(parameterized.TestCase):
    @parameterized.parameters(
        ([67] * 9 + [0] * 19, 2, 335),
        ([1, 1, 1, 1], 4, 1),
        ([10, 1, 1, 1], 2, 10),
        ([1, 1, 1, 10], 4, 10),
        ([3] * 6, 4, 6),
        ([5], 3, 5),
        ([0, 0, 0], 2, 0),
    )
    def test_runs_cover_every_tensor_once_in_order(self, sizes, parts, most):
        runs = tf_checkpoint_read._runs(sizes, parts)  # pylint: disable=protected-access
        self.assertLessEqual(len(runs), parts)
        self.assertEqual(runs[0][0], 0)
        self.assertEqual(runs[-1][1], len(sizes))
        for (_, stop), (start, _) in itertools.pairwise(runs):
            self.assertEqual(stop, start)
        self.assertTrue(all(start < stop for start, stop in runs))
        self.assertEqual(max(sum(sizes[a:b]) for a, b in runs), most)

    @parameterized.parameters(
        (2, 0, 1),
        (2, 63 << 20, 1),
        (2, 64 << 20, 2),
        (2, 10 << 30, 2),
        (1, 10 << 30, 1),
        (64, 10 << 30, 4),
    )
    def test_readers(self, cpus, total, expected):
        with mock.patch.object(
            tf_checkpoint_read, "_usable_cpus", lambda: cpus
        ):
            self.assertEqual(tf_checkpoint_read._readers(total), expected)  # pylint: disable=protected-access


if __name__ == "__main__":
    absltest.main()
