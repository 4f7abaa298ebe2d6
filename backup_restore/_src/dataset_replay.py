"""Whether making an iterator of a `tf.data.Dataset` changes what the
iterators made after it yield.

A resumed fit() makes again, without reading them, the iterators the
interrupted run used up (`replay_epochs` in each data module): making one
draws the next reshuffle seeds of a `Dataset.shuffle(seed=...)`. For most
pipelines making one changes nothing (Keras 3's pipeline for arrays draws
its shuffle inside a map function, whose random state each iterator makes
afresh), and making it costs about 10-20 ms of a restore. This module tells
the two apart from the pipeline's structure, erring towards making them.

Private API of tf.data (checked by dataset_replay_test): `DatasetV2._inputs()`
and `._functions()` (the input datasets and the `StructuredFunctionWrapper`s
of one dataset), a wrapper's `.function` (a `ConcreteFunction` with
`captured_inputs` and `graph`), and the dataset classes' names in
`tensorflow.python.data.ops`.
"""

import tensorflow as tf

# Dataset kinds whose state lives in each iterator, none in the dataset
# object: an iterator of one of them yields the same whatever iterators
# were made of it before (given the same for their inputs and functions).
# A shuffle, a random dataset, a cache, a sampling of several datasets and
# anything not named here may keep state across iterators.
_PER_ITERATOR_KINDS = frozenset(
    {
        "_BatchDataset",
        "_ConcatenateDataset",
        "_FilterDataset",
        "_FlatMapDataset",
        "_InterleaveDataset",
        "_MapDataset",
        "_OptionsDataset",
        "_PaddedBatchDataset",
        "_ParallelBatchDataset",
        "_ParallelInterleaveDataset",
        "_ParallelMapDataset",
        "_PrefetchDataset",
        "_RangeDataset",
        "_RepeatDataset",
        "_ShardDataset",
        "_SkipDataset",
        "_SparseTensorSliceDataset",
        "_TakeDataset",
        "_TensorDataset",
        "_TensorSliceDataset",
        "_UnbatchDataset",
        "_ZipDataset",
    }
)
_DATASET_MODULES = "tensorflow.python.data.ops."
# Ops that run Python: its state (a generator, a random module) outlives
# the iterator.
_PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
# Captured tensors that may carry state across iterators: a variable, a
# random generator, a seed generator, a table (resource), a dataset or an
# iterator (variant).
_STATEFUL_CAPTURES = (tf.resource, tf.variant)


def iterators_matter(dataset) -> bool:
    """Whether making (and dropping) an iterator of `dataset` can change
    what a later iterator of it yields. False only for a `tf.data.Dataset`
    built of the kinds above, whose functions capture no resource or
    variant and run no Python; True for anything else."""
    pending = [dataset]
    seen = set()
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        kind = type(node)
        if (
            not isinstance(node, tf.data.Dataset)
            or not kind.__module__.startswith(_DATASET_MODULES)
            or kind.__name__ not in _PER_ITERATOR_KINDS
        ):
            return True
        if not _plain_elements(node.element_spec):
            return True
        for wrapper in node._functions():
            if _function_keeps_state(wrapper.function):
                return True
        pending.extend(node._inputs())
    return False


def _plain_elements(element_spec) -> bool:
    """Whether the elements are tensors of values (no resources, variants
    or datasets)."""
    for spec in tf.nest.flatten(element_spec, expand_composites=False):
        dtype = getattr(spec, "dtype", None)
        if dtype is None or dtype in _STATEFUL_CAPTURES:
            return False
    return True


def _function_keeps_state(function) -> bool:
    if any(t.dtype in _STATEFUL_CAPTURES for t in function.captured_inputs):
        return True
    graph_def = function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for library_function in graph_def.library.function:
        nodes.extend(library_function.node_def)
    return any(node.op in _PYTHON_OPS for node in nodes)
