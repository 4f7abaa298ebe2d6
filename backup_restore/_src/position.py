"""Where a fit() call is in its input: flavour-free bookkeeping.

Both Keras flavours train on a data iterator they hand to
`model.train_function` once per step. An input is either one iterator for
the whole fit() or a new iterator per epoch (or when one runs out), so a
position is: how many iterators were used up, and how many batches were
drawn from the current one. A resumed fit() replays the used-up ones (their
creation advances reshuffle seeds) and skips the drawn batches.
"""


class Position:
    """The training thread's count of epochs, batches and iterators."""

    def __init__(
        self, iterators_done: int = 0, skip: int = 0, skipped: bool = False
    ):
        """`skip` batches of the next iterator were trained before; it
        starts after them if `skipped` (the input pipeline skips them),
        else the first step draws them."""
        self.epoch = 0
        self.epoch_batches = 0  # batches of this epoch trained
        self.since_save = 0  # batches trained since the last backup
        self._batch_start = 0
        self._iterator = None
        self.iterators_done = iterators_done
        self.iterator_batches = 0  # batches drawn from the current iterator
        self._pending_skip = skip
        self._skipped = skipped

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epoch_batches = 0

    def begin_batch(self, batch: int) -> None:
        self._batch_start = batch

    def end_batch(self, batch: int) -> None:
        """Batches `_batch_start..batch` are trained (> 1 with
        steps_per_execution)."""
        trained = batch - self._batch_start + 1
        self.epoch_batches = batch + 1
        self.iterator_batches += trained
        self.since_save += trained

    def saved(self) -> None:
        self.since_save = 0

    def on_iterator(self, iterator) -> int:
        """Called with every iterator a step trains on; returns how many
        batches to skip in it now (resuming), else 0."""
        if iterator is self._iterator:
            return 0
        if self._iterator is not None:
            self.iterators_done += 1
        self._iterator = iterator
        skip, self._pending_skip = self._pending_skip, 0
        self.iterator_batches = skip
        return 0 if self._skipped else skip

    @property
    def iterator(self):
        return self._iterator

    def record(self, *, at_epoch_end: bool, next_iterator_new: bool) -> dict:
        """The data position to back up."""
        if at_epoch_end and next_iterator_new and self._iterator is not None:
            return {"iterators_done": self.iterators_done + 1, "drawn": 0}
        return {
            "iterators_done": self.iterators_done,
            "drawn": self.iterator_batches,
        }

    def forget_iterator(self) -> None:
        """fit() ended: drop the reference to its iterator."""
        self._iterator = None
