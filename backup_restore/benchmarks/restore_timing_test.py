"""How the benchmark's restore table compares ours with the original."""

import math

from absl.testing import absltest

from backup_restore.benchmarks import restore_timing


class PairedRatioTest(absltest.TestCase):
    def test_equal_ratios_give_an_interval_of_that_ratio(self):
        mean, (low, high) = restore_timing.paired_ratio(
            [0.9, 1.8, 2.7], [1.0, 2.0, 3.0]
        )
        for value in (mean, low, high):
            self.assertAlmostEqual(value, 0.9)

    def test_interval_is_students_t_on_the_logarithms(self):
        ours, theirs = [1.1, 0.9, 1.2, 1.0, 0.95], [1.0] * 5
        logs = [math.log(r) for r in ours]
        mean = sum(logs) / 5
        sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 4)
        half = 2.776 * sd / math.sqrt(5)  # t(0.975, 4 degrees of freedom)
        got_mean, (low, high) = restore_timing.paired_ratio(ours, theirs)
        self.assertAlmostEqual(got_mean, math.exp(mean))
        self.assertAlmostEqual(low, math.exp(mean - half))
        self.assertAlmostEqual(high, math.exp(mean + half))

    def test_the_ratio_is_per_repetition_not_of_the_medians(self):
        # Ours the quicker in every repetition.
        _, (_, high) = restore_timing.paired_ratio(
            [0.9, 1.8, 2.7], [1.0, 2.0, 3.0]
        )
        self.assertLess(high, 1.0)
        # Medians 2.0 / 2.1 (ours 5% the quicker), but the ratios are 1.0,
        # 0.95 and 1.03: not told apart.
        _, (low, high) = restore_timing.paired_ratio(
            [1.0, 2.0, 3.0], [1.0, 2.1, 2.9]
        )
        self.assertLess(low, 1.0)
        self.assertGreater(high, 1.0)

    def test_one_repetition_has_no_interval(self):
        self.assertEqual(restore_timing.paired_ratio([2.0], [4.0]), (0.5, None))

    def test_description_names_the_quicker_or_neither(self):
        self.assertEqual(
            restore_timing.describe_ratio((0.9, (0.85, 0.95))),
            "0.900x (0.850-0.950: ours quicker)",
        )
        self.assertEqual(
            restore_timing.describe_ratio((1.1, (1.05, 1.15))),
            "1.100x (1.050-1.150: theirs quicker)",
        )
        self.assertEqual(
            restore_timing.describe_ratio((1.0, (0.95, 1.05))),
            "1.000x (0.950-1.050: not told apart)",
        )
        self.assertEqual(restore_timing.describe_ratio((0.5, None)), "0.500x")


if __name__ == "__main__":
    absltest.main()
