"""Keras 3's data iterator inside fit(): where a resumed fit() starts
reading, and what a position in its input means (private API; part of
keras3_adapter.py).

- `EpochIterator._enumerate_iterator` yields `(begin_step, end_step,
  iterator)` for one epoch, always from step 0; `enumerate_from` is the same
  loop starting at the resumed step. `_current_iterator`, `_steps_seen`,
  `_num_batches`, `steps_per_epoch`, `steps_per_execution`,
  `_get_iterator()` and `data_adapter` are its state; `track_iterators`
  replaces `_get_iterator` (for one fit()) to count the iterators fit()
  makes. `_distributed_dataset`: the batch shapes.
- Data adapters (`ArrayDataAdapter`, `TFDatasetAdapter`, `PyDatasetAdapter`
  with `shuffle` and `py_dataset`, `GeneratorDataAdapter`): `batch_size`,
  `_num_samples`, `on_epoch_begin/end`, for what a position means and for
  `replay_epochs`.
"""

import random

from keras.src.trainers.data_adapters import generator_data_adapter
from keras.src.trainers.data_adapters import py_dataset_adapter

from backup_restore._src import dataset_replay
from backup_restore._src import fit_frames


def enumerate_from(it, start: int, drawn: int):
    """`EpochIterator._enumerate_iterator` of Keras 3.15.1, starting at
    batch `start` with `drawn` batches already drawn from the iterator.

    A copy, not a wrapper of Keras's generator: that one starts at step 0
    in steps of `steps_per_execution`, and the step a fit() resumes at need
    not be a multiple of it (an epoch's replayed last step); its count of
    batches drawn starts at 0. keras3_adapter_test compares the copy with
    Keras's source statement by statement."""
    it.data_adapter.on_epoch_begin()
    steps_per_epoch = it.steps_per_epoch or it._num_batches or -1
    per_call = it.steps_per_execution
    if steps_per_epoch > 0:
        if it._current_iterator is None or it.steps_per_epoch is None:
            it._current_iterator = iter(it._get_iterator())
            it._steps_seen = drawn
        for step in range(start, steps_per_epoch, per_call):
            if it._num_batches and it._steps_seen >= it._num_batches:
                if it.steps_per_epoch:
                    it._interrupted_warning()
                break
            it._steps_seen += per_call
            yield step, step + per_call - 1, it._current_iterator
        if it._num_batches and it._steps_seen >= it._num_batches:
            it._current_iterator = iter(it._get_iterator())
            it._steps_seen = 0
    else:
        iterator = iter(it._get_iterator())
        step = start - per_call
        while True:
            step += per_call
            it._steps_seen = step + per_call
            yield step, step + per_call - 1, iterator
    it.data_adapter.on_epoch_end()


def recreates_iterator_per_epoch(context) -> bool:
    """Whether fit() makes a new data iterator at every epoch: Keras 3 does
    unless `steps_per_epoch` is given (then one iterator runs on, and is
    made anew only when it runs out)."""
    return context.steps_per_epoch is None


def skip_in_input(context, count: int) -> bool:
    """Keras 3 makes its iterators inside its epoch iterator, from a
    distributed dataset: the first step draws the skipped batches."""
    del context, count
    return False


class _CountingSource:
    """Stands in for the distributed dataset fit() makes its iterators
    from, and counts them. Keras 3 makes more than it trains on (a new one
    at the end of every epoch that used up its input, whether or not the
    next epoch uses it), and each one advances a `shuffle(seed=...)`'s
    reshuffle seeds: a resumed fit() must make as many."""

    def __init__(self, dataset):
        self._dataset = dataset
        self.made = 0

    def __iter__(self):
        iterator = iter(self._dataset)
        self.made += 1
        return iterator

    def replay(self, count: int) -> None:
        """Stands for `count` iterators made and never read: makes them
        where making one changes what later ones yield (dataset_replay.py),
        and only counts them elsewhere."""
        if dataset_replay.iterators_matter(self._dataset):
            for _ in range(count):
                iter(self)
        else:
            self.made += count

    def __getattr__(self, name):
        return getattr(self._dataset, name)


def track_iterators(context) -> None:
    """Counts the iterators this fit() makes from now on."""
    source = _CountingSource(context._get_iterator())
    context._get_iterator = lambda: source


def data_position(context, position, at_epoch_end: bool) -> dict:
    """The data position to back up (see position.py): how many iterators
    fit() made before the one the next step trains on, and how many batches
    were drawn from that one."""
    made = context._get_iterator().made
    if not at_epoch_end:
        # Mid-epoch, the current iterator is the newest one made.
        return {"iterators_done": made - 1, "drawn": position.iterator_batches}
    upcoming = context._current_iterator
    if recreates_iterator_per_epoch(context) or upcoming is None:
        return {"iterators_done": made, "drawn": 0}
    if upcoming is position.iterator:
        return {"iterators_done": made - 1, "drawn": position.iterator_batches}
    # The input ran out at this epoch's end: the next epoch trains on the
    # iterator fit() has just made.
    return {"iterators_done": made - 1, "drawn": 0}


def replay_epochs(context, iterators: int, epochs: int) -> None:
    """Brings fit()'s input to where the interrupted run had it, without
    reading it: makes `iterators` iterators (each `iter()` of a
    `Dataset.shuffle(seed=...)` draws its next reshuffle seeds; only
    counted where making one changes nothing, see dataset_replay.py), and for
    each of the `epochs` completed epochs runs the data adapter's epoch
    hooks (a PyDataset's `on_epoch_end` may reorder it) and, for a shuffled
    PyDataset, the batch-order draw from Python's `random` that its
    generator makes when an epoch starts reading it."""
    source = context._get_iterator()
    adapter = context.data_adapter
    if iterators:
        source.replay(iterators)
    shuffled = (
        isinstance(adapter, py_dataset_adapter.PyDatasetAdapter)
        and adapter.shuffle
        and adapter.py_dataset.num_batches
    )
    for _ in range(epochs):
        if shuffled:
            random.shuffle(list(range(adapter.py_dataset.num_batches)))
        adapter.on_epoch_begin()
        adapter.on_epoch_end()


def is_python_generator_input(context) -> bool:
    return isinstance(
        context.data_adapter, generator_data_adapter.GeneratorDataAdapter
    )


def data_geometry(context) -> dict:
    """What a position in fit()'s input means (None where unknown)."""
    adapter = context.data_adapter

    def known(name):
        value = getattr(adapter, name, None)
        return None if value is None else int(value)

    batch_size = known("batch_size")
    samples = getattr(adapter, "_num_samples", None)
    return {
        "steps_per_epoch": context.num_batches,
        "batch_size": batch_size,
        "num_samples": None if samples is None else int(samples),
        "element_spec": fit_frames.batch_shapes(context._distributed_dataset),
    }


def completed_epoch_steps(context):
    """Batches per epoch, once fit() knows them; None before."""
    return context.num_batches


def set_counted_epoch_steps(context, steps: int) -> None:
    """Tells fit() the epoch length it counted in the interrupted run's
    first epoch of an input of unknown size."""
    context._num_batches = int(steps)
