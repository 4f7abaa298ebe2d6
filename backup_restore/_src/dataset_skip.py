"""Starting tf-keras's input pipeline for arrays some batches in, without
slicing the batches skipped.

tf-keras feeds arrays to fit() through one pipeline for all epochs: a
dataset of each epoch's shuffled batch indices, zipped with the arrays, and
a parallel map that gathers each batch. A resumed fit() must skip the
batches trained before; drawing them slices every one of them (about 60 us a
batch). Skipping their indices below the gather instead costs a few
microseconds a batch and yields the same batches: the index dataset is the
same object, so its shuffle makes the same permutations.

Private API of tf.data (checked by dataset_skip_test): `DatasetV2._inputs()`
and `._variant_tensor`; `_ParallelMapDataset`'s `_map_func.function`,
`_num_parallel_calls`, `_deterministic`, `_use_inter_op_parallelism`,
`_preserve_cardinality` and `_common_args`; `_PrefetchDataset._buffer_size`;
the dataset classes' names in `tensorflow.python.data.ops`.
"""

import tensorflow as tf
from tensorflow.python.ops import gen_dataset_ops

# tf-keras's pipeline for arrays, from the top: prefetch, the options of
# the adapter and of `slice_inputs`, the gather, the zip of the batch
# indices with the arrays.
_ARRAY_PIPELINE = (
    "_PrefetchDataset",
    "_OptionsDataset",
    "_OptionsDataset",
    "_ParallelMapDataset",
    "_ZipDataset",
)
_DATASET_MODULES = "tensorflow.python.data.ops."


def skip_batches(dataset, count: int):
    """`dataset` (tf-keras's pipeline for arrays) starting `count` batches
    in, its skipped batches never gathered; None for any other dataset."""
    nodes = _chain(dataset)
    if nodes is None:
        return None
    top, _, _, gather, zipped = nodes
    indices, arrays = zipped._inputs()
    skipped = tf.data.Dataset.zip((indices.skip(count), arrays))
    function = gather._map_func.function
    variant = gen_dataset_ops.parallel_map_dataset_v2(
        skipped._variant_tensor,
        function.captured_inputs,
        f=function,
        num_parallel_calls=gather._num_parallel_calls,
        deterministic=gather._deterministic,
        use_inter_op_parallelism=gather._use_inter_op_parallelism,
        preserve_cardinality=gather._preserve_cardinality,
        **gather._common_args,
    )
    rebuilt = (
        tf.data.experimental.from_variant(variant, gather.element_spec)
        .with_options(dataset.options())
        .prefetch(tf.data.AUTOTUNE)
    )
    if rebuilt.element_spec != top.element_spec:
        return None
    return rebuilt


def _chain(dataset):
    """The datasets of `_ARRAY_PIPELINE`, top first, or None where
    `dataset` is not made of exactly those."""
    nodes = []
    node = dataset
    for kind in _ARRAY_PIPELINE:
        cls = type(node)
        if (
            not isinstance(node, tf.data.Dataset)
            or cls.__name__ != kind
            or not cls.__module__.startswith(_DATASET_MODULES)
        ):
            return None
        nodes.append(node)
        inputs = node._inputs()
        if kind == "_ZipDataset":
            if len(inputs) != 2:
                return None
        elif len(inputs) != 1:
            return None
        else:
            node = inputs[0]
    prefetch = nodes[0]
    if int(prefetch._buffer_size) != tf.data.AUTOTUNE:
        return None
    return nodes
