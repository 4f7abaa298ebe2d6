"""When to back up: small policy objects instead of an if-chain."""

import collections
import dataclasses
import statistics
import time

from absl import logging


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
                "Either `save_freq` or `save_before_preemption` must be set: "
                "save_freq=False never backs up, and save_before_preemption "
                "is False, so nothing would ever be saved. Use "
                "save_freq='epoch' or an int, or set "
                "save_before_preemption=True."
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
        f"Invalid value for argument `save_freq`: {save_freq!r}. Pass "
        "'epoch' (back up at the end of every epoch), a positive int (back "
        "up every that many batches) or False (only with "
        "save_before_preemption=True)."
    )


# Batches timed before the first budgeted backup: the median step time needs
# a few; later ones also come from the steps between backups.
_MIN_STEP_SAMPLES = 5
# Recent per-batch times the step-time median is taken over: the median's
# error counts against the budget (3% of a step is a 3% budget), so many.
_STEP_WINDOW = 512
# A newly chosen interval is logged when it differs this much (relative)
# from the one logged last.
_LOG_CHANGE = 0.25


# The clock of the BudgetPolicies made without one; see set_clock.
_clock = time.monotonic


def set_clock(clock) -> None:
    """Makes `clock` (seconds, monotonic) the clock of every BudgetPolicy
    made from now on without one; None: time.monotonic again.

    A test seam, as faults.set_hook: a test of fit() with an
    `overhead_budget` decides how long each batch takes.
    """
    global _clock
    _clock = time.monotonic if clock is None else clock


class BudgetPolicy:
    """Backs up as often as a share of training time (`budget`) allows.

    Measured while training runs, from the clock at every batch end only:
    the step time is the median time per batch over the later half of
    recent intervals between backups (the steps a backup's background work
    has least chance to slow; before the first backup, every batch so far);
    the cost of the last backup is
    everything the batches since then took beyond that median (the hook
    itself, the copy-on-write copies landing in the next step, background
    work slowing the steps, a wait for the previous write). The next backup
    is due once that cost is at most `budget` of the batches' time since it:
    at a steady state each interval spends at most `budget` on its backup.
    Time outside the batches (validation, other callbacks' epoch ends) in an
    interval is counted as cost too: the policy errs towards fewer backups.

    Not thread-safe: called from the training loop.

    Args:
      budget: the share of training time granted to backups, in (0, 1).
      clock: seconds, monotonic; default: the one set_clock set
        (time.monotonic).
      log: called as `log(batches, seconds)` when the chosen interval
        changes by more than a quarter.

    Raises:
      ValueError: `budget` is not a number in (0, 1).
    """

    at_epoch_end = False
    every_n_batches = None

    def __init__(self, budget, *, clock=None, log=None):
        if (
            isinstance(budget, bool)
            or not isinstance(budget, (int, float))
            or not 0 < budget < 1
        ):
            raise ValueError(
                "overhead_budget must be a share of training time in (0, 1), "
                f"e.g. 0.03 for 3%; got {budget!r}."
            )
        self.budget = float(budget)
        self._clock = _clock if clock is None else clock
        self._log = log
        self._steps = collections.deque(maxlen=_STEP_WINDOW)
        self._interval_steps = []  # per-batch times since the last backup
        self._last_time = None
        self._last_batches = 0
        self._interval_seconds = 0.0  # since the last backup
        self._interval_batches = 0
        self._after_backup = False  # the next batch carries its cost
        self._logged = None
        # The last interval chosen: (batches, seconds), for logs and tests.
        self.chosen = None
        # What the first backup is expected to cost until one is measured.
        self.prior_cost_seconds = 0.0
        self._measured = False

    def step_seconds(self) -> float | None:
        """The median time per batch, once measured."""
        for steps in (self._steps, self._interval_steps):
            if len(steps) >= _MIN_STEP_SAMPLES:
                return statistics.median(steps)
        return None

    def save_after_batches(self, batches_since_last: int) -> bool:
        now = self._clock()
        if batches_since_last < self._last_batches:
            self._new_interval()  # backed up (at an epoch end, say)
            self._last_batches = 0
        trained = batches_since_last - self._last_batches
        if self._last_time is not None and trained > 0:
            seconds = now - self._last_time
            if not self._after_backup:
                self._interval_steps.append(seconds / trained)
            self._after_backup = False
            self._interval_seconds += seconds
            self._interval_batches += trained
        self._last_time = now
        self._last_batches = batches_since_last
        step = self.step_seconds()
        if step is None or self._interval_batches == 0:
            return False
        work = self._interval_batches * step
        cost = max(0.0, self._interval_seconds - work)
        if not self._measured:
            # No backup's cost is in these batches yet: the first one's is
            # only known from the state's size (set_prior_cost).
            cost = max(cost, self.prior_cost_seconds)
        if cost > self.budget * work:
            return False
        self._choose(self._interval_batches, self._interval_seconds)
        self._new_interval()
        self._last_batches = 0  # the caller resets its count now
        return True

    def set_prior_cost(self, seconds: float) -> None:
        """Expects the first backup to cost `seconds`: it is not due before
        the training time since the start is `seconds / budget`."""
        self.prior_cost_seconds = max(0.0, float(seconds))

    def _new_interval(self):
        # A backup was taken: the batches after it carry its cost.
        self._measured = True
        steps = self._interval_steps
        # Before the first backup nothing slowed them: all count.
        self._steps.extend(steps[len(steps) // 2 :] if self._steps else steps)
        self._interval_steps = []
        self._interval_seconds = 0.0
        self._interval_batches = 0
        self._after_backup = True

    def _choose(self, batches, seconds):
        self.chosen = (batches, seconds)
        logged = self._logged
        if logged is None or abs(batches - logged) > _LOG_CHANGE * logged:
            self._logged = batches
            if self._log is not None:
                self._log(batches, seconds)


def from_arguments(save_freq, save_before_preemption, overhead_budget=None):
    """The policy for the callback's `save_freq` and `overhead_budget`.

    Raises:
      ValueError: as `from_save_freq`; `overhead_budget` is not in (0, 1),
        or is given with a `save_freq` other than the default "epoch".
    """
    if overhead_budget is None:
        return from_save_freq(save_freq, save_before_preemption)
    if save_freq != "epoch":
        raise ValueError(
            f"overhead_budget={overhead_budget!r} chooses when to back up; "
            f"it cannot be combined with save_freq={save_freq!r}. Pass one "
            "of them."
        )
    return BudgetPolicy(overhead_budget, log=_log_interval(overhead_budget))


def _log_interval(budget):
    def log(batches, seconds):
        logging.info(
            "overhead_budget=%g: backing up after %d batches (%.2f s of "
            "training) since the last backup, the interval it allows now.",
            budget,
            batches,
            seconds,
        )

    return log
