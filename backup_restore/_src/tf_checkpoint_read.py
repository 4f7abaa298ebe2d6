"""Reading a tf.train.Checkpoint back in one RestoreV2 (a few at once for a
large one).

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

A large checkpoint is read by a few RestoreV2 ops at once, each on its own
thread and each over a contiguous run of the tensors of about equal bytes
(`_restore`): the op runs without Python's lock, and filling fresh memory
(a page fault per 4 KB) and checking the CRC-32Cs is CPU work that a single
op does on one core. 604 MB on 2 cores: 0.49 s in one op, 0.30 s in two.

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

import os
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
# A checkpoint is read in parts of at least this many bytes each, by at most
# this many ops at once (and no more than the CPUs this process may use).
_MIN_PART_BYTES = 32 << 20
_MAX_READERS = 4


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
        shapes = reader.get_variable_to_shape_map()
        self.file_prefix = file_prefix
        self.reader = reader  # its index, for read_single_shard
        self._keys = list(dtypes)
        self._dtypes = [dtypes[key] for key in self._keys]
        self._sizes = [_nbytes(shapes[key], dtypes[key]) for key in self._keys]
        self._values = None
        self._error = None
        self._thread = threading.Thread(
            target=self._read, name="backup_restore read", daemon=True
        )
        self._thread.start()

    def _read(self):
        try:
            values = _restore(
                self.file_prefix, self._keys, self._dtypes, self._sizes
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


def read_ahead(file_prefix: str, reader):
    """A ReadAhead of `file_prefix`, or None (nothing begun) when the
    one-RestoreV2 path cannot take its index (a tensor that is not a
    variable's value, which Checkpoint.read restores).

    `reader`: its index (`index_reader`), checked by the caller: the read
    allocates every tensor at the shape the index gives
    (checkpoint_format.claims_problem bounds them).
    """
    keys = reader.get_variable_to_dtype_map()
    if any(k != _GRAPH_KEY and not k.endswith(_VARIABLE_VALUE) for k in keys):
        return None
    return ReadAhead(file_prefix, reader)


def read_single_shard(checkpoint, file_prefix: str, reader, ahead=None):
    """Restores `checkpoint` from `file_prefix` in one RestoreV2 (`_restore`:
    a few at once for a large checkpoint); returns a
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
        values = _restore(
            file_prefix,
            keys + others,
            [variable.dtype for _, variable in found]
            + [dtypes[k] for k in others],
            [_nbytes(shapes[k], dtypes[k]) for k in keys + others],
        )
    # Every tensor was read and checked: nothing below can fail on the data.
    for (_, variable), value in zip(found, values[: len(found)], strict=True):
        gen_resource_variable_ops.assign_variable_op(variable.handle, value)
    return Restored()


def _nbytes(shape, dtype) -> int:
    """The bytes of a tensor of the index (0 for strings: unknown, small)."""
    count = 1
    for dim in shape:
        count *= dim
    return count * tf.as_dtype(dtype).size


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _readers(total_bytes: int) -> int:
    """How many RestoreV2 ops read `total_bytes` at once."""
    return max(
        1, min(_MAX_READERS, _usable_cpus(), total_bytes // _MIN_PART_BYTES)
    )


def _runs(sizes, parts: int):
    """[(start, stop)]: at most `parts` contiguous runs of `sizes`' indices,
    each of about the same total, none empty."""
    total = sum(sizes)
    runs, start, done = [], 0, 0
    for i, size in enumerate(sizes):
        done += size
        if len(runs) == parts - 1 or i == len(sizes) - 1:
            continue
        # Close the run here when this boundary is nearer the run's share
        # than the next one would be.
        target = total * (len(runs) + 1) / parts
        if done >= target or target - done < sizes[i + 1] / 2:
            runs.append((start, i + 1))
            start = i + 1
    runs.append((start, len(sizes)))
    return runs


def _restore(file_prefix: str, keys, dtypes, sizes):
    """The tensors of `keys` (of `dtypes`, `sizes` bytes each), in that
    order: one RestoreV2 per contiguous run of the keys in the file's
    (sorted) order, run at once on threads, the caller's reading the first.
    Every tensor's CRC-32C is checked by its op.

    Raises:
      tf.errors.OpError, IndexError: what a read raised (after every read
        has ended).
    """
    order = sorted(range(len(keys)), key=keys.__getitem__)
    runs = _runs([sizes[i] for i in order], _readers(sum(sizes)))
    results = [None] * len(runs)
    errors = [None] * len(runs)

    def read(part):
        start, stop = runs[part]
        picked = order[start:stop]
        try:
            # The device scope is per thread.
            with tf.device("CPU:0"):
                results[part] = io_ops.restore_v2(
                    file_prefix,
                    [keys[i] for i in picked],
                    [""] * len(picked),
                    [dtypes[i] for i in picked],
                )
        except BaseException as e:  # pylint: disable=broad-except
            errors[part] = e  # raised below, in the caller's thread

    helpers = [
        threading.Thread(
            target=read,
            args=(part,),
            name=f"backup_restore read {part + 1}",
            daemon=True,
        )
        for part in range(1, len(runs))
    ]
    for helper in helpers:
        helper.start()
    read(0)
    for helper in helpers:
        helper.join()
    for error in errors:
        if error is not None:
            raise error
    values = [None] * len(keys)
    for (start, stop), part in zip(runs, results, strict=True):
        for i, value in zip(order[start:stop], part, strict=True):
            values[i] = value
    return values


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
