"""Reading a tf.train.Checkpoint back in one RestoreV2.

`read_single_shard` restores what `Checkpoint.read` restores, for the plain
case (every object a resource variable of this process): the variables'
checkpoint keys and the index's shapes and dtypes are compared first, one
RestoreV2 reads every tensor (TensorFlow checks each one's CRC-32C as it
reads it, so the bytes are verified once, by the read itself), and only when
all were read are they assigned. A failed read or check changes no variable.
TensorFlow's own `Checkpoint.read` takes a Python detour per variable
(saveables, a restore function, an identity op and a device scope each:
about 0.7 ms per variable, 0.8 s for 1207); here one op per variable.

`ReadAhead` begins that RestoreV2 before the objects to restore into are
ready (an optimizer's slots are made meanwhile), on another thread: the
read and that work overlap, and nothing is assigned until the checks pass.

Anything else (a tf.data iterator, a distributed variable, a registered
saver, a key the checkpoint lacks or holds beyond the objects there are
now, which TensorFlow restores when they are made, a shape or dtype that
differs) is left
to `Checkpoint.read` (returns None having changed nothing), which then
restores it or raises its own error as before.

TensorFlow-private API used here (TensorFlow 2.21, pinned;
tf_checkpoint_read_test is the contract test): the same as tf_checkpoint's
writer: `Checkpoint._saver._gather_serialized_tensors` and the read closure
of `BaseResourceVariable._serialize_to_tensors`.
"""

import threading

import tensorflow as tf
from tensorflow.python.checkpoint import tensor_callable
from tensorflow.python.ops import gen_resource_variable_ops
from tensorflow.python.ops import io_ops

from backup_restore._src import tf_checkpoint

_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# tf.train.Checkpoint's own counter of save(); write() leaves it as it is.
_SAVE_COUNTER_KEY = "save_counter/.ATTRIBUTES/VARIABLE_VALUE"
# How the checkpoint key of a variable's value ends; other savers (a
# tf.data iterator's state, a registered saver) write other keys.
_VARIABLE_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


class Restored:
    """The status of a read done here: every object of the checkpoint was
    matched and restored (read_single_shard checked it before reading), so
    the assertions of a `Checkpoint.read` status hold."""

    def assert_existing_objects_matched(self):
        return self

    def assert_consumed(self):
        return self

    def expect_partial(self):
        return self


def _plain_variable(value):
    """The resource variable whose read `value` (an entry of a serialized
    checkpoint) defers, or None when it is anything else."""
    if not isinstance(value, tensor_callable.Callable):
        return None
    fn = value._tensor  # pylint: disable=protected-access
    if getattr(fn, "__code__", None) is not tf_checkpoint._VARIABLE_READ:  # pylint: disable=protected-access
        return None
    variable = fn.__closure__[0].cell_contents
    if not tf_checkpoint._on_this_task(variable.device):  # pylint: disable=protected-access
        return None
    return variable


def targets(checkpoint):
    """[(checkpoint key, variable)] of every entry `checkpoint` restores, or
    None when one is not a plain resource variable of this process."""
    serialized = tf_checkpoint.serialized_tensors(checkpoint)
    if serialized is None:
        return None
    found = []
    for trackable, tensor_dict in serialized.items():
        if trackable is None:
            # The object graph the saver writes beside the tensors: the
            # keys (object paths) say which variable each tensor is.
            continue
        for key, entry in tensor_dict.items():
            variable = (
                None if isinstance(entry, dict) else _plain_variable(entry)
            )
            if variable is None:
                return None
            found.append((key, variable))
    return found


class ReadAhead:
    """Every tensor of a checkpoint, read by one RestoreV2 on another thread.

    Begun before the objects to restore into are ready, so the read (the
    files, TensorFlow's CRC-32C of each tensor) overlaps that work; the op
    runs without Python's lock. `tensors` hands the values over once the
    caller's checks have passed; nothing here assigns a variable.
    """

    def __init__(self, file_prefix: str, reader):
        dtypes = reader.get_variable_to_dtype_map()
        self.file_prefix = file_prefix
        self.reader = reader  # its index, for read_single_shard
        self._keys = list(dtypes)
        self._dtypes = [dtypes[key] for key in self._keys]
        self._values = None
        self._error = None
        self._thread = threading.Thread(
            target=self._read, name="backup_restore read", daemon=True
        )
        self._thread.start()

    def _read(self):
        try:
            # The device scope is per thread: CPU:0, as read_single_shard.
            with tf.device("CPU:0"):
                values = io_ops.restore_v2(
                    self.file_prefix,
                    self._keys,
                    [""] * len(self._keys),
                    self._dtypes,
                )
            self._values = dict(zip(self._keys, values, strict=True))
        except BaseException as e:  # pylint: disable=broad-except
            self._error = e  # raised by tensors(), in the caller's thread

    def tensors(self, keys):
        """The tensors of `keys`, once every tensor was read and checked.

        Raises:
          tf.errors.OpError, IndexError: what the read raised (a tensor
            that fails its CRC-32C, a data file shorter than its index).
        """
        self._thread.join()
        if self._error is not None:
            raise self._error
        return [self._values[key] for key in keys]

    def close(self) -> None:
        """Waits for the read and drops what it read (idempotent)."""
        self._thread.join()
        self._values = None


def read_ahead(file_prefix: str):
    """A ReadAhead of `file_prefix`, or None (nothing begun) when the
    one-RestoreV2 path cannot take its index (a tensor that is not a
    variable's value, which Checkpoint.read restores) or the index cannot
    be read (the caller's checks then say why)."""
    try:
        reader = index_reader(file_prefix)
        keys = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError):
        return None
    if any(k != _GRAPH_KEY and not k.endswith(_VARIABLE_VALUE) for k in keys):
        return None
    return ReadAhead(file_prefix, reader)


def read_single_shard(checkpoint, file_prefix: str, reader, ahead=None):
    """Restores `checkpoint` from `file_prefix` in one RestoreV2; returns a
    `Restored` status, or None (having read and changed nothing) when it
    needs TensorFlow's own `Checkpoint.read`.

    Args:
      checkpoint: the tf.train.Checkpoint to restore into.
      file_prefix: the checkpoint written by Checkpoint.write.
      reader: `tf.compat.v1.train.NewCheckpointReader(file_prefix)`: its
        index, read once by the caller.
      ahead: a ReadAhead of `file_prefix` whose tensors are used instead
        of reading them here, or None.

    Raises:
      tf.errors.OpError: a tensor cannot be read or fails its CRC-32C (no
        variable was changed).
    """
    found = targets(checkpoint)
    if not found:
        return None
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    for key, variable in found:
        if (
            key not in shapes
            or dtypes[key] != variable.dtype
            or not variable.shape.is_compatible_with(shapes[key])
        ):
            return None
    keys = [key for key, _ in found]
    unmatched = set(shapes) - set(keys) - {_GRAPH_KEY, _SAVE_COUNTER_KEY}
    if unmatched:
        # Objects not made yet (an optimizer's slots before its build):
        # Checkpoint.read restores them when they are made.
        return None
    # The object graph and the save counter are read too, unused: every
    # tensor of the checkpoint has its CRC-32C checked, as Checkpoint.read
    # checks them.
    others = [k for k in (_GRAPH_KEY, _SAVE_COUNTER_KEY) if k in shapes]
    if ahead is not None and ahead.file_prefix == file_prefix:
        # Read with the index's dtypes, which the variables' match (above).
        values = ahead.tensors(keys + others)
    else:
        with tf.device("CPU:0"):
            values = io_ops.restore_v2(
                file_prefix,
                keys + others,
                [""] * (len(keys) + len(others)),
                [variable.dtype for _, variable in found]
                + [dtypes[k] for k in others],
            )
    # Every tensor was read and checked: nothing below can fail on the data.
    for (_, variable), value in zip(found, values[: len(found)], strict=True):
        gen_resource_variable_ops.assign_variable_op(variable.handle, value)
    return Restored()


# The last index read: (prefix, the index file's identity) -> its reader.
# A restore checks the index (what it holds) and then reads the tensors:
# the index is read once for both.
_LAST_INDEX = [None, None]


def index_reader(file_prefix: str):
    """`tf.compat.v1.train.NewCheckpointReader(file_prefix)`, the last one
    again while the index file is unchanged (same size and mtime).

    Not tf.train.load_checkpoint: on ram:// it takes the prefix for a
    directory.

    Raises:
      tf.errors.OpError, ValueError: the index cannot be read.
    """
    stat = tf.io.gfile.stat(file_prefix + ".index")
    identity = (file_prefix, stat.length, stat.mtime_nsec)
    if _LAST_INDEX[0] == identity:
        return _LAST_INDEX[1]
    reader = tf.compat.v1.train.NewCheckpointReader(file_prefix)
    _LAST_INDEX[:] = [identity, reader]
    return reader
