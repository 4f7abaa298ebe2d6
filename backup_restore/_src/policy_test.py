"""BudgetPolicy and the save_freq policies, on a fake clock."""

import itertools
import random

from absl.testing import absltest
from absl.testing import parameterized

from backup_restore._src import policy
from testing import test_case


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _train(
    budget, batches, *, step=0.1, cost=None, jitter=0.0, seed=0, prior=None
):
    """Simulates a training loop asking a BudgetPolicy at every batch end.

    `cost(k)` is the extra time the k-th batch after a backup takes (k=0:
    the batch whose end runs the backup hook, then the next ones).
    Returns (policy, batch indices backed up at, achieved overhead).
    """
    clock = _Clock()
    rng = random.Random(seed)
    p = policy.BudgetPolicy(budget, clock=clock)
    if prior is not None:
        p.set_prior_cost(prior)
    since, backed_up, after, extra = 0, [], None, 0.0
    for batch in range(batches):
        took = step * (1 + jitter * (2 * rng.random() - 1))
        if after is not None:
            took += cost(after)
            extra += cost(after)
            after += 1
        clock.now += took
        since += 1
        if p.save_after_batches(since):
            backed_up.append(batch)
            since, after = 0, 0
    # The batches' own time: what the backups' extra time is a share of.
    return p, backed_up, extra / (batches * step)


def _blocking(seconds):
    """A backup that blocks its hook for `seconds` (and nothing else)."""
    return lambda k: seconds if k == 0 else 0.0


class BudgetPolicyTest(test_case.TestCase):
    def test_first_backup_waits_for_what_its_expected_cost_allows(self):
        # Expected to cost 0.3 s at a 3% budget: not before 10 s of
        # training (100 batches of 0.1 s); then measured as usual.
        _, backed_up, _ = _train(0.03, 400, cost=_blocking(0.3), prior=0.3)
        self.assertBetween(backed_up[0], 99, 101)
        self.assertBetween(backed_up[1] - backed_up[0], 95, 105)
        # Without an estimate the first comes after the 5 timed batches.
        _, backed_up, _ = _train(0.03, 400, cost=_blocking(0.3))
        self.assertLess(backed_up[0], 10)

    @parameterized.named_parameters(
        # interval = cost / (budget * step)
        ("three_percent", 0.03, 0.3, 100),
        ("thirty_percent", 0.3, 0.3, 10),
        ("cheap_backups", 0.05, 0.02, 4),
    )
    def test_interval_is_what_the_budget_allows(self, budget, cost, want):
        p, backed_up, achieved = _train(budget, 3000, cost=_blocking(cost))
        # After the first (which follows the first 5 timed batches).
        gaps = {b - a for a, b in itertools.pairwise(backed_up[1:])}
        # The batch a backup is due at, or the next (rounding).
        self.assertContainsSubset(gaps, {want, want + 1})
        self.assertIn(p.chosen[0], (want, want + 1))
        self.assertLessEqual(achieved, budget * 1.01)
        # Not just rarer: at most one batch more than due.
        self.assertGreaterEqual(achieved, budget * want / (want + 1) * 0.99)

    def test_background_work_slowing_the_next_steps_is_counted(self):
        # The hook returns at once, but the next 20 steps take 10% longer
        # (a background write competing for the cores): 0.2 s per backup.
        def slower(k):
            return 0.01 if k < 20 else 0.0

        p, _, achieved = _train(0.03, 4000, cost=slower)
        self.assertBetween(p.chosen[0], 60, 72)  # 0.2 / (0.03 * 0.1) = 67
        self.assertLessEqual(achieved, 0.03 * 1.05)
        self.assertGreaterEqual(achieved, 0.03 * 0.8)

    def test_noisy_steps_keep_the_budget(self):
        # Step times vary by +-10%: the median step, not the fastest, is
        # the baseline, so the noise does not count as a cost.
        for seed in range(3):
            with self.subTest(seed=seed):
                p, _, achieved = _train(
                    0.03, 6000, cost=_blocking(0.3), jitter=0.1, seed=seed
                )
                self.assertLessEqual(achieved, 0.03 * 1.15)
                self.assertGreaterEqual(achieved, 0.03 * 0.5)
                self.assertBetween(p.chosen[0], 60, 140)

    def test_cost_changes_are_followed(self):
        clock = _Clock()
        p = policy.BudgetPolicy(0.1, clock=clock)
        since, gaps, last, cost = 0, [], None, 0.0
        for batch in range(2000):
            clock.now += 0.1 + cost
            cost = 0.0
            since += 1
            if p.save_after_batches(since):
                if last is not None:
                    gaps.append(batch - last)
                last, since = batch, 0
                cost = 0.1 if batch < 1000 else 0.5
        self.assertTrue({10, 11} & set(gaps), gaps)  # 0.1 / (0.1 * 0.1)
        self.assertIn(gaps[-1], (50, 51))  # 0.5 / (0.1 * 0.1)

    def test_a_backup_made_elsewhere_starts_a_new_interval(self):
        # The callback writes a due backup at the epoch's end and resets its
        # count; the policy sees the count drop.
        clock = _Clock()
        p = policy.BudgetPolicy(0.5, clock=clock)
        for n in range(1, 7):  # 1 s per batch; due once measured
            clock.now += 1.0
            self.assertEqual(p.save_after_batches(n), n == 6)

        def interval():
            clock.now += 10.0  # a backup costing 9 s, then its batch
            self.assertFalse(p.save_after_batches(1))
            for n in range(2, 18):
                clock.now += 1.0
                self.assertFalse(p.save_after_batches(n), n)
            clock.now += 1.0
            return p.save_after_batches(18)  # 9 s <= 0.5 * 18 s

        self.assertTrue(interval())
        clock.now += 10.0
        self.assertFalse(p.save_after_batches(1))
        for n in range(2, 6):
            clock.now += 1.0
            self.assertFalse(p.save_after_batches(n))
        # Here the caller backs up on its own (an epoch end) and resets.
        self.assertTrue(interval())

    def test_no_backup_before_the_step_time_is_measured(self):
        clock = _Clock()
        p = policy.BudgetPolicy(0.9, clock=clock)
        for n in range(1, 6):
            clock.now += 1.0
            self.assertFalse(p.save_after_batches(n))
            self.assertIsNone(p.step_seconds())
        clock.now += 1.0
        self.assertTrue(p.save_after_batches(6))
        self.assertEqual(p.step_seconds(), 1.0)

    @parameterized.parameters(0, 1, -0.1, 1.5, "0.03", True, None)
    def test_invalid_budget(self, budget):
        with self.assertRaisesRegex(ValueError, "share of training time"):
            policy.BudgetPolicy(budget)

    def test_budget_replaces_save_freq(self):
        self.assertIsInstance(
            policy.from_arguments("epoch", False, 0.03), policy.BudgetPolicy
        )
        self.assertIsInstance(
            policy.from_arguments("epoch", True, 0.03), policy.BudgetPolicy
        )
        with self.assertRaisesRegex(ValueError, "cannot be combined"):
            policy.from_arguments(5, False, 0.03)
        self.assertEqual(
            policy.from_arguments(5, False, None).every_n_batches, 5
        )


if __name__ == "__main__":
    absltest.main()
