"""Finding TensorFlow's stateful random ops in a traced training step.

`tf.random.uniform`, `tf.random.normal`, `tf.random.shuffle` and the other
legacy random ops keep their state in the op's kernel, not in a variable:
no checkpoint holds it. A training step that draws from them draws, after a
resume, what the first steps of the job drew, not what an uninterrupted run
draws next. `watch()` records the op types of those ops that TensorFlow
creates in a graph (a `tf.function` being traced) while it is active, so
that the first call of the training function can say so once. Ops run
eagerly are not recorded: variable initializers lifted out of a trace run
eagerly, and their values are restored from the backup anyway.

`tf.random.Generator` (ops named Stateful*, state in a variable the backup
holds), Keras 3's `SeedGenerator` and the stateless ops are exact.

TensorFlow-private API used here (TensorFlow 2.21, pinned;
stateful_random_test is the contract test):
`tensorflow.python.framework.op_callbacks.add_op_callback` and
`remove_op_callback`, which TensorFlow's own debugging tools use.
"""

import contextlib

from tensorflow.python.framework import op_callbacks

# The random ops whose state lives in their kernel.
OP_TYPES = frozenset(
    {
        "Multinomial",
        "ParameterizedTruncatedNormal",
        "RandomGamma",
        "RandomPoisson",
        "RandomPoissonV2",
        "RandomShuffle",
        "RandomStandardNormal",
        "RandomUniform",
        "RandomUniformInt",
        "TruncatedNormal",
    }
)


@contextlib.contextmanager
def watch():
    """Yields a set that collects the types of the stateful random ops
    created in a graph, on this thread, until the block ends."""
    found = set()

    # As TensorFlow calls it: positionally, op_name too for an eager op.
    def callback(op_type, inputs, attrs, outputs, op_name=None, graph=None):  # noqa: PLR0917
        del inputs, attrs, outputs, op_name
        if graph is not None and op_type in OP_TYPES:
            found.add(op_type)
        # the outputs stay as they are

    op_callbacks.add_op_callback(callback)
    try:
        yield found
    finally:
        op_callbacks.remove_op_callback(callback)
