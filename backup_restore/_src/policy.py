"""When to back up: small policy objects instead of an if-chain."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class SavePolicy:
    """Decides at which training events a backup is written.

    Attributes:
      every_n_batches: back up whenever this many batches have been trained
        since the last backup; None for epoch-level backups only.
      at_epoch_end: back up at the end of every epoch.
    """

    every_n_batches: int | None
    at_epoch_end: bool

    def save_after_batches(self, batches_since_last: int) -> bool:
        return (
            self.every_n_batches is not None
            and batches_since_last >= self.every_n_batches
        )


def from_save_freq(save_freq, save_before_preemption: bool) -> SavePolicy:
    """The policy for tf-keras's `save_freq` argument, validated.

    Raises:
      ValueError: `save_freq` is not "epoch", a positive int or False, or it
        is False without `save_before_preemption`.
    """
    if save_freq == "epoch":
        return SavePolicy(every_n_batches=None, at_epoch_end=True)
    if save_freq is False:
        if not save_before_preemption:
            raise ValueError(
                "save_freq=False never backs up, and save_before_preemption "
                "is False: nothing would ever be saved. Use save_freq='epoch' "
                "or an int, or set save_before_preemption=True."
            )
        return SavePolicy(every_n_batches=None, at_epoch_end=False)
    if (
        isinstance(save_freq, int)
        and not isinstance(save_freq, bool)
        and save_freq > 0
    ):
        # Batch-level backups. A backup due at the last batch of an epoch is
        # written at the epoch's end instead, with the epoch's logs.
        return SavePolicy(every_n_batches=save_freq, at_epoch_end=False)
    raise ValueError(
        f"save_freq must be 'epoch', a positive int (back up every that many "
        f"batches) or False (only with save_before_preemption=True); got "
        f"{save_freq!r}."
    )
