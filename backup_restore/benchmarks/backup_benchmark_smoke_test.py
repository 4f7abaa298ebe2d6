"""The benchmark binary runs end to end on a tiny model and prints its table."""

from absl.testing import absltest
from absl.testing import parameterized

from testing import procs
from testing import test_case


class BenchmarkSmokeTest(test_case.TestCase):
    @parameterized.parameters("tf_keras", "keras3")
    def test_tiny_run_prints_every_configuration(self, keras):
        proc = procs.run(
            procs.runfile("backup_restore/benchmarks/backup_benchmark"),
            [
                f"--dir={self.tmp}",
                "--sizes=tiny",
                "--repeats=1",
                "--epochs=2",
                "--steps_per_epoch=4",
                "--backups_per_epoch=2",
                f"--keras={keras}",
                *(["--training_threads=1"] if keras == "keras3" else []),
            ],
            timeout=600,
            result_file=False,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-5000:])
        for config in (keras, "ours_sync", "ours_async", "ours_budget"):
            self.assertIn(f"| {config} |", proc.stdout)
        self.assertIn("physical floor per backup", proc.stdout)
        # The restores, each in a fresh process, warm and cold.
        self.assertIn("Restore, fresh process", proc.stdout)
        self.assertRegex(proc.stdout, r"\| tiny \(\d+ MB\) \| warm \| \d+ \|")
        self.assertRegex(proc.stdout, r"\| tiny \(\d+ MB\) \| cold \| \d+ \|")
        # The paired count: repetitions where ours was the quicker.
        self.assertRegex(
            proc.stdout, r"\| [01] of 1, [01] of 1 \| \d\.\d{3}x \|\n"
        )
        self.assertIn(
            "one backup alone (no training), process CPU", proc.stdout
        )
        self.assertIn(
            "TensorFlow threads: "
            + ("1 intra-op" if keras == "keras3" else "default"),
            proc.stdout,
        )
        self.assertIn("hook return to kill-safe p50", proc.stdout)
        self.assertIn("ours_budget (overhead_budget=0.03) chose", proc.stdout)
        self.assertIn(f"ours_async vs {keras} (same run)", proc.stdout)
        self.assertIn("Checkpoint.read", proc.stdout)


if __name__ == "__main__":
    absltest.main()
