"""tf-keras's data handler inside fit(): how many batches a resumed fit()
skips, and what a position in its input means (private API; part of
tf_keras_adapter.py).

- `DataHandler._adapter.should_recreate_iterator()`: whether `fit()` creates
  a new iterator every epoch, which decides how many batches to skip on
  resume.
- `DataHandler._dataset` / `._adapter`, and `KerasSequenceAdapter`'s
  `_shuffle_sequence` / `_keras_sequence`: `replay_epochs` brings a
  per-epoch input pipeline to where the skipped epochs would have left it.
  `skip_in_input` replaces `_dataset` of an array input (before fit()
  makes its iterator) by the same pipeline started some batches in.
- `DataHandler._adapter`'s `batch_size()` / `get_size()` (in batches) /
  `partial_batch_size()`, `DataHandler._dataset.element_spec` and
  `inferred_steps` / `_inferred_steps`: what a data position means (checked
  on resume), and the epoch length fit() counted for an input of unknown
  size (given to a resumed fit()).
"""

import random

from tf_keras.src.engine import data_adapter

from backup_restore._src import dataset_replay
from backup_restore._src import dataset_skip
from backup_restore._src import fit_frames


def recreates_iterator_per_epoch(data_handler) -> bool:
    """Whether fit() makes a new data iterator at every epoch.

    tf-keras does for a `tf.data.Dataset` given without `steps_per_epoch`;
    numpy arrays, generators, Sequences and repeated datasets use one iterator
    for all epochs.
    """
    return bool(data_handler._adapter.should_recreate_iterator())


def track_iterators(data_handler) -> None:
    """tf-keras makes an iterator only to train on it: the position counts
    them (position.py)."""
    del data_handler


def data_position(data_handler, position, at_epoch_end: bool) -> dict:
    """The data position to back up (see position.py)."""
    return position.record(
        at_epoch_end=at_epoch_end,
        next_iterator_new=recreates_iterator_per_epoch(data_handler),
    )


def replay_epochs(data_handler, iterators: int, epochs: int) -> None:
    """Advances a per-epoch input pipeline by `iterators` epochs without
    training (tf-keras makes one iterator per epoch for such an input, and
    none for the others; `epochs` is the same count then).

    For inputs that get a new iterator every epoch, what orders epoch k lives
    outside the checkpoint: the reshuffle seed generator of a
    `Dataset.shuffle(seed=...)` advances once per iterator created, fit's
    Sequence shuffle draws from Python's `random` once per epoch, and a
    Sequence may reorder itself in `on_epoch_end`. Doing the same for each
    makes the resumed epoch see what the uninterrupted run saw. An
    iterator is made only where making one changes what later ones yield
    (dataset_replay.py).
    """
    del epochs
    adapter = data_handler._adapter
    dataset = data_handler._dataset
    make = dataset_replay.iterators_matter(dataset)
    for _ in range(iterators):
        if make:
            iter(dataset)  # draws the next reshuffle seeds; never read
        if isinstance(adapter, data_adapter.KerasSequenceAdapter):
            if adapter._shuffle_sequence:
                random.shuffle(list(range(len(adapter._keras_sequence))))
        adapter.on_epoch_end()


def skip_in_input(data_handler, count: int) -> bool:
    """Makes the iterator fit() is about to make start `count` batches in,
    where the input is arrays (one pipeline for all epochs, whose skipped
    batches dataset_skip.py never slices); False for any other input, whose
    skipped batches the first step draws."""
    adapter = data_handler._adapter
    if (
        count <= 0
        or type(adapter) is not data_adapter.TensorLikeDataAdapter
        or adapter.should_recreate_iterator()
    ):
        return False
    dataset = dataset_skip.skip_batches(data_handler._dataset, count)
    if dataset is None:
        return False
    data_handler._dataset = dataset
    return True


def is_python_generator_input(data_handler) -> bool:
    """Whether fit() reads a plain Python generator (not a Sequence)."""
    return type(data_handler._adapter) is data_adapter.GeneratorDataAdapter


def data_geometry(data_handler) -> dict:
    """What a position in fit()'s input means: batches per epoch, batch size
    and number of samples, each None where fit() does not know it."""

    def known(read):
        try:
            value = read()
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            return None
        return None if value is None else int(value)

    adapter = data_handler._adapter
    batch_size = known(adapter.batch_size)
    # Array adapters count their size in batches; the last may be partial.
    batches = known(adapter.get_size)
    partial = known(adapter.partial_batch_size)
    samples = None
    if batch_size is not None and batches is not None:
        samples = batches * batch_size - (
            batch_size - partial if partial else 0
        )
    return {
        "steps_per_epoch": known(lambda: data_handler.inferred_steps),
        "batch_size": batch_size,
        "num_samples": samples,
        # A tf.data.Dataset tells fit() neither of those two; its element
        # shapes include the batch size with batch(drop_remainder=True).
        "element_spec": fit_frames.batch_shapes(data_handler._dataset),
    }


def completed_epoch_steps(data_handler):
    """Batches per epoch, once fit() has counted them; None before."""
    return data_handler.inferred_steps


def set_counted_epoch_steps(data_handler, steps: int) -> None:
    """Tells fit() how many batches an epoch has, as it would have counted
    itself at the end of the first epoch of an input of unknown size.

    Without it, a resumed fit() runs its first epoch to the end of the data
    again; that last, failing step increments the optimizer's `iterations`
    once more than the uninterrupted run did.
    """
    data_handler._inferred_steps = int(steps)
