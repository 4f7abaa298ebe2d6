"""What writing a tf.train.Checkpoint needs to know of TensorFlow.

The facts of a checkpoint that decide how it is written (a reachable
tf.data iterator, the bytes of its variables), walked once per object, and
the error of TensorFlow's asynchronous writer, taken at its own backup.
"""

import dataclasses
import weakref

import tensorflow as tf

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
