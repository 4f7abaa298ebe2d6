"""Optimizer slots made for a restore to fill, without filling them first.

A restore builds each optimizer the backup holds built, then reads the
backup into its slots. Zero-filling the slots first would be wasted work:
the read replaces every value. On a machine where first touching memory is
slow (a VM: about 3 s per GB measured here), the fill of Adam's two slots
per parameter cost more than the read itself. So the adapters build the
slots from `empty()` tensors (memory allocated, never written), one per
shape and dtype for a whole build (`Empties`), and the read assigns the
restored tensors to them (each variable takes the read's buffer; the empty
one is freed untouched).

Until the read has succeeded such a slot holds arbitrary bytes: a restore
that fails (a corrupt backup, a mismatch found after the build) calls
`zero_fill` on them, which leaves the optimizer as a build with zeros
would have, so that a failed restore still changes nothing a fresh start
can see. Under a distribution strategy the adapters fill as Keras does
(its variables copy the initial value per replica).
"""

import contextlib
import threading

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops


def wanted() -> bool:
    """Whether slots may be made unfilled here: not under a distribution
    strategy."""
    return not tf.distribute.has_strategy()


def empty(shape, dtype) -> tf.Tensor:
    """A tensor of `shape` and `dtype` whose memory is allocated but not
    written (not read either, until something is assigned over it)."""
    with tf.init_scope():
        return tf.raw_ops.Empty(
            shape=tf.TensorShape(shape).as_list(),
            dtype=tf.as_dtype(dtype),
            init=False,
        )


class Empties:
    """`empty` tensors for the slots of one build, one per shape and dtype.

    Slots of one shape share it: a variable made from a tensor holds that
    tensor's buffer, and TensorFlow copies a buffer a variable shares
    before changing it in place; the restore assigns each slot a tensor of
    its own anyway, as `zero_fill` does. An `Empty` op per slot cost a
    fresh process 0.1-0.15 s for the 804 Adam slots of 402 small variables
    (tf-keras); most models have a few distinct shapes.
    """

    def __init__(self):
        self._made = {}

    def __call__(self, shape, dtype) -> tf.Tensor:
        key = (tuple(tf.TensorShape(shape).as_list()), tf.as_dtype(dtype))
        tensor = self._made.get(key)
        if tensor is None:
            tensor = self._made[key] = empty(shape, dtype)
        return tensor


@contextlib.contextmanager
def method_replaced(obj, name: str, wrap):
    """Within the block, `obj.name` is `wrap(the original bound method)`.

    Set in the instance's own `__dict__`, not through `setattr`, so that
    the trackable machinery of Keras objects does not see (or track) it.
    """
    original = getattr(obj, name)
    own = vars(obj)
    had, previous = name in own, own.get(name)
    own[name] = wrap(original)
    try:
        yield
    finally:
        if had:
            own[name] = previous
        else:
            del own[name]


class _HandlesWithoutDebugName:
    """Stands for `gen_resource_variable_ops` inside `resource_variable_ops`:
    its `var_handle_op` drops the `debug_name` attribute; everything else is
    the module's own."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def var_handle_op(self, *args, **kwargs):
        kwargs["debug_name"] = ""
        return self._module.var_handle_op(*args, **kwargs)


_handles_lock = threading.RLock()


@contextlib.contextmanager
def shared_handle_kernels():
    """Within the block, eager variables are made with handles that carry
    no debug name.

    An eager op runs a kernel cached per set of attributes. `VarHandleOp`
    has the variable's name among them (`debug_name`, used only in
    messages), so each new name instantiates a kernel: 0.6 ms per variable
    here, most of the cost of making one. Without it, variables of one
    shape and dtype share a kernel: the 804 Adam slots of a 402-variable
    model cost 0.25-0.35 ms each instead of 0.85-0.95. The variables'
    names are unchanged. Where TensorFlow's internals differ from the ones
    this was written against, the block changes nothing.
    """
    module = getattr(resource_variable_ops, "gen_resource_variable_ops", None)
    if module is None or not hasattr(module, "var_handle_op"):
        yield
        return
    with _handles_lock:
        resource_variable_ops.gen_resource_variable_ops = (
            _HandlesWithoutDebugName(module)
        )
        try:
            yield
        finally:
            resource_variable_ops.gen_resource_variable_ops = module


def build_with_slot_maker(optimizer, variables, wrap, made) -> None:
    """Builds `optimizer` on `variables` with its `add_variable_from_
    reference` (through which both flavours' optimizers make their slots)
    replaced by `wrap(original)`, on it and on each optimizer it wraps
    (`inner_optimizer`: a LossScaleOptimizer builds its inner one), and its
    variables' handles made without debug names (`shared_handle_kernels`).

    `made`: the list `wrap` adds the slots it makes unfilled to. A build
    that fails part way (an error, Ctrl-C) zero-fills them before the
    exception goes on: no slot is left holding arbitrary bytes.
    """
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(shared_handle_kernels())
            inner = optimizer
            while inner is not None and hasattr(inner, "build"):
                stack.enter_context(
                    method_replaced(inner, "add_variable_from_reference", wrap)
                )
                inner = getattr(inner, "inner_optimizer", None)
            optimizer.build(variables)
    except BaseException:
        zero_fill(made)
        raise


def zero_fill(variables) -> None:
    """Fills slots made unfilled with zeros, as Keras's build would have
    (the restore that was to fill them failed)."""
    for variable in variables:
        variable.assign(tf.zeros(variable.shape, variable.dtype))
