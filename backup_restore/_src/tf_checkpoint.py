"""What writing a tf.train.Checkpoint needs to know of TensorFlow.

The facts of a checkpoint that decide how it is written (a reachable
tf.data iterator, the bytes of its variables), walked once per object; the
error of TensorFlow's asynchronous writer, taken at its own backup; and a
single-shard writer for a checkpoint written on the caller's thread.

TensorFlow-private API used here (TensorFlow 2.21, pinned; tf_checkpoint_test
is the contract test): `Checkpoint._saver._gather_serialized_tensors`, the
read closure of `BaseResourceVariable._serialize_to_tensors`,
`tensor_callable.Callable`, `saveable_object.SaveSpec`, `io_ops.save_v2`,
`gen_resource_variable_ops.read_variable_op`, and the async helper's
`_async_error`.
"""

import dataclasses
import types
import weakref

import tensorflow as tf
from tensorflow.python.checkpoint import tensor_callable
from tensorflow.python.eager import context
from tensorflow.python.ops import gen_resource_variable_ops
from tensorflow.python.ops import io_ops
from tensorflow.python.ops import resource_variable_ops
from tensorflow.python.training.saving import saveable_object

# Checkpoint -> Facts. Front ends reuse one Checkpoint object for every
# backup of a run; its object graph is walked once.
_FACTS = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class Facts:
    """What a checkpoint holds, as far as writing it is concerned.

    holds_iterator: a tf.data iterator is reachable. TensorFlow 2.21's
      asynchronous checkpointing changes the elements such an iterator
      yields afterwards (verified by store_test), so these checkpoints are
      written synchronously (into the page cache, on the caller's thread);
      fsync, checksums and the commit still run in the background.
    variable_bytes: the size of the variables it holds.
    variables: how many variables it holds.
    """

    holds_iterator: bool
    variable_bytes: int
    variables: int


def facts(checkpoint) -> Facts:
    """Walks the checkpoint's object graph once (cached per object)."""
    try:
        return _FACTS[checkpoint]
    except (KeyError, TypeError):
        pass
    holds, nbytes, count = False, 0, 0
    for obj in tf.train.TrackableView(checkpoint).descendants():
        if isinstance(
            obj, (tf.data.Iterator, tf.distribute.DistributedIterator)
        ):
            holds = True
        elif isinstance(obj, tf.Variable):
            count += 1
            if obj.shape.is_fully_defined():
                nbytes += obj.shape.num_elements() * obj.dtype.size
    result = Facts(holds, nbytes, count)
    try:
        _FACTS[checkpoint] = result
    except TypeError:  # not weak-referenceable: no cache
        pass
    return result


def sync(checkpoint) -> None:
    """Waits for TensorFlow's asynchronous write; raises its error here.

    `Checkpoint.sync()` waits but does not raise: TensorFlow 2.21's writer
    thread keeps its error (AsyncCheckpointHelper._async_save stores it in
    `_async_error`) and only the next `write` raises it
    (`_check_async_thread_error`), i.e. at the next backup, after this one
    would have been committed with whatever the failed write left
    (tensorflow/python/checkpoint/async_checkpoint_helper.py). Taking it
    here reports it at its own backup, and the next write starts clean. If
    TensorFlow renames these privates, the completeness check before the
    commit still refuses the backup (store_failure_test fails loudly).
    """
    checkpoint.sync()
    helper = getattr(checkpoint, "_async_checkpointer_impl", None)
    error = getattr(helper, "_async_error", None)
    if error is not None:
        helper._async_error = None
        raise error


def _variable_read_code():
    """The code of the closure by which a plain resource variable defers its
    read to the moment TensorFlow's saver writes (`_read_variable_closure`);
    None if TensorFlow no longer has it (the writer then reads through the
    closure itself)."""
    method = resource_variable_ops.BaseResourceVariable._serialize_to_tensors
    for const in method.__code__.co_consts:
        if (
            isinstance(const, types.CodeType)
            and const.co_name == "_read_variable_closure"
            and const.co_freevars == ("self",)
        ):
            return const
    return None


_VARIABLE_READ = _variable_read_code()


class _NotPlain(Exception):
    """The checkpoint needs TensorFlow's own saver (write_single_shard)."""


def _on_this_task(device: str) -> bool:
    """A device of this process (no job, or the local job of a process
    without a cluster)."""
    return tf.DeviceSpec.from_string(device or "").job in (None, "localhost")


def _value(value):
    """The tensor to write for one entry of a serialized checkpoint: read
    now, as TensorFlow's saver would read it; None: nothing to write."""
    if isinstance(value, tensor_callable.Callable):
        fn = value._tensor  # pylint: disable=protected-access
        code = getattr(fn, "__code__", None)
        if code is not None and code is _VARIABLE_READ:
            variable = fn.__closure__[0].cell_contents
            if not _on_this_task(variable.device):
                raise _NotPlain(variable.device)
            # The read of the closure minus its per-variable device scopes,
            # tape bookkeeping and copy to the host (SaveV2 copies).
            tensor = gen_resource_variable_ops.read_variable_op(
                variable.handle, variable.dtype
            )
            # An uninitialised variable reads as an empty tensor, and the
            # closure writes nothing for it; an initialised one reads in its
            # static shape, so only a mismatch costs the check.
            if tensor.shape != variable.shape or not (
                variable.shape.is_fully_defined()
            ):
                if not gen_resource_variable_ops.var_is_initialized_op(
                    variable.handle
                ):
                    return None
            return tensor
    if isinstance(value, saveable_object.SaveSpec):
        # TensorFlow's saver names the entry by its key; a tensor-valued
        # name or slice (DTensor) it propagates, which this writer does not.
        if isinstance(value.name, tf.Tensor) or isinstance(
            value.slice_spec, tf.Tensor
        ):
            raise _NotPlain("a tensor-valued name or slice")
        if not _on_this_task(value.device):
            raise _NotPlain(value.device)
        with tf.device(value.device):
            return value.tensor
    if isinstance(value, tf.Tensor):  # a variable is not a tf.Tensor
        if not _on_this_task(value.device):
            raise _NotPlain(value.device)
        return value
    raise _NotPlain(type(value).__name__)


def serialized_tensors(checkpoint):
    """{trackable: tensor dict} of `checkpoint` (a tf.train.Checkpoint), as
    TensorFlow's saver gathers them; None where only TensorFlow's saver will
    do: not eager, an object map, registered savers, or a TensorFlow whose
    variables no longer serialize as the contract test expects."""
    if not context.executing_eagerly() or _VARIABLE_READ is None:
        return None
    saver = getattr(checkpoint, "_saver", None)  # a tf.train.Checkpoint's
    if saver is None or getattr(saver, "_object_map", None) is not None:
        return None
    serialized, _, registered_savers, _ = saver._gather_serialized_tensors(None)  # pylint: disable=protected-access
    return None if registered_savers else serialized


def write_single_shard(checkpoint, file_prefix: str) -> bool:
    """Writes `checkpoint` as `Checkpoint.write(file_prefix)` would, in one
    SaveV2 on this thread; returns False (having written nothing) when it
    needs TensorFlow's own saver.

    The same object graph and keys as `Checkpoint.write`, so that
    `Checkpoint.read` restores it; one shard (`.index` and
    `.data-00000-of-00001`), written in place rather than into a `_temp`
    directory and merged (the store writes into a directory that is
    published only when complete). For a state of many small variables it
    takes a fraction of TensorFlow's time: TensorFlow reads each variable
    through a closure, device scopes and a copy (about 0.1 ms each, 0.3 s
    for 1207), builds a saver and writes a shard per device; here one read
    op per variable (about 12 us) and one SaveV2.

    TensorFlow's saver (return False) when anything is not plain: registered
    savers, a variable or tensor of another task (multi-worker, parameter
    servers), an entry that is not a tensor or a tensor spec, tensor-valued
    names or slices, or a TensorFlow whose variables no longer serialize as
    the contract test expects. An uninitialised variable is left out, as
    TensorFlow's saver leaves it out.
    """
    serialized = serialized_tensors(checkpoint)
    if serialized is None:
        return False
    names, slices, tensors = [], [], []
    try:
        for tensor_dict in serialized.values():
            for key, entry in tensor_dict.items():
                entries = entry if isinstance(entry, dict) else {"": entry}
                for slice_spec, value in entries.items():
                    tensor = _value(value)
                    if tensor is not None:
                        names.append(key)
                        slices.append(slice_spec.strip())
                        tensors.append(tensor)
    except (_NotPlain, tf.errors.OpError):
        return False
    with tf.device("CPU:0"):
        io_ops.save_v2(file_prefix, names, slices, tensors)
    return True
