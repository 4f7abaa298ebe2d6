"""Everyday fit() variations, killed and signalled for real, resume exactly.

Each case runs testing/scenario_trainer in child processes: once
uninterrupted, once until a real SIGKILL (or SIGTERM) at a deterministic
point, and once more to resume; the resumed run must end bit-identical
(weights, optimizer steps, History) to the uninterrupted one.
"""

import os
import signal

from absl.testing import absltest
from absl.testing import parameterized

from testing import procs
from testing import test_case
from testing import trainers

# 64 samples in batches of 8: 8 batches per epoch, 3 epochs.
_BATCHES_PER_EPOCH = 8


class ScenariosTest(procs.FlavouredRuns, test_case.TestCase):
    """With Keras 3 models; ScenariosTfKerasTest: the same with tf-keras."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.trainer = trainers.scenario_trainer()
        cls._references = {}

    def _run(self, args, expect=0):
        run = self.run_child(self.trainer, [f"--backup_dir={self.dir}", *args])
        self.assertEqual(run.returncode, expect, run.describe())
        return run

    def _reference(self, args):
        key = tuple(args)
        if key not in self._references:
            ref_dir = os.path.join(self.create_tempdir().full_path, "ref")
            run = self.run_child(
                self.trainer, [f"--backup_dir={ref_dir}", *args]
            )
            self.assertEqual(run.returncode, 0, run.describe())
            self._references[key] = run.result
        return self._references[key]

    def _assert_same_training(self, got, want):
        self.assertEqual(got["weights_sha256"], want["weights_sha256"])
        for got_phase, want_phase in zip(
            got["phases"], want["phases"], strict=True
        ):
            self.assertEqual(got_phase["iterations"], want_phase["iterations"])
            self.assertEqual(
                got_phase["history_epochs"], want_phase["history_epochs"]
            )
            self.assertEqual(got_phase["history"], want_phase["history"])

    def _kill_and_resume(self, args, kill_after):
        want = self._reference(args)
        killed = self.run_child(
            self.trainer,
            [
                f"--backup_dir={self.dir}",
                *args,
                f"--kill_after_batches={kill_after}",
            ],
        )
        self.assertEqual(killed.killed_by, signal.SIGKILL, killed.describe())
        resumed = self._run(args)
        self._assert_same_training(resumed.result, want)
        self.assertFalse(resumed.result["backup_dir_exists"])
        return resumed.result

    # -- optimizers and learning-rate schedules (mid-epoch kills) ----------

    @parameterized.named_parameters(
        ("exponential_decay", "exponential_decay"),
        ("user_warmup_cosine", "warmup_cosine"),
        ("legacy_adam", "legacy_adam"),
        ("legacy_sgd_schedule", "legacy_sgd_decay"),
        ("mixed_precision_loss_scale", "loss_scale"),
    )
    def test_optimizer_resumes_exactly_after_mid_epoch_kills(self, optimizer):
        if optimizer.startswith("legacy") and self.FLAVOUR == "keras3":
            self.skipTest("Keras 3 has no legacy optimizers")
        args = [f"--optimizer={optimizer}", "--save_freq=3"]
        # Twice: in epoch 1 (after 11 batches), then in epoch 2 (20).
        self._reference(args)
        killed = self.run_child(
            self.trainer,
            [f"--backup_dir={self.dir}", *args, "--kill_after_batches=11"],
        )
        self.assertEqual(killed.killed_by, signal.SIGKILL, killed.describe())
        result = self._kill_and_resume(args, kill_after=20 - 9)
        self.assertEqual(result["phases"][0]["resumed_from"][0], 2)

    # -- an input of unknown size (Dataset.filter) -------------------------

    @parameterized.named_parameters(
        ("in_the_first_epoch", 5),
        ("after_the_first_epoch", 13),
    )
    def test_dataset_of_unknown_size_resumes_exactly(self, kill_after):
        self._kill_and_resume(
            ["--input=filtered_dataset", "--save_freq=3"], kill_after=kill_after
        )

    # -- layers whose state is not (only) variables ------------------------

    @parameterized.named_parameters(
        ("string_lookup_embedding", "string_lookup"),
        ("normalization", "normalization"),
        ("batch_norm_dropout", "batch_norm_dropout"),
    )
    def test_preprocessing_model_resumes_exactly(self, model):
        result = self._kill_and_resume(
            [f"--model={model}", "--save_freq=3"], kill_after=13
        )
        self.assertEqual(result["phases"][0]["resumed_from"], [1, 4])

    def test_string_lookup_names_the_state_a_backup_cannot_hold(self):
        run = self._run(["--model=string_lookup", "--phases=1"])
        self.assertRegex(
            run.stderr, r"string_lookup \(StringLookup\) keep state that"
        )

    # -- a job of two fit() calls ------------------------------------------

    @parameterized.named_parameters(
        ("killed_in_phase_1", 5),
        ("killed_at_the_phase_boundary", 2 * _BATCHES_PER_EPOCH + 1),
        ("killed_in_phase_2", 3 * _BATCHES_PER_EPOCH + 3),
    )
    def test_two_phase_job_resumes_exactly(self, kill_after):
        self._kill_and_resume(
            ["--phases=2,4:2", "--save_freq=2"], kill_after=kill_after
        )

    # -- preemption at awkward moments -------------------------------------

    def test_sigterm_during_validation_backs_up_and_resumes_exactly(self):
        args = ["--validation", "--save_freq=epoch"]
        want = self._reference(args)
        run = self.run_child_and_signal(
            self.trainer,
            [
                f"--backup_dir={self.dir}",
                *args,
                "--save_before_preemption",
                "--pause_in_validation=1",
            ],
            sig=signal.SIGTERM,
        )
        self.assertEqual(run.returncode, 42, run.describe())
        self.assertRegex(run.stderr, r"Preemption \(SIGTERM\): backed up")
        resumed = self._run([*args, "--save_before_preemption"])
        self.assertEqual(
            resumed.result["phases"][0]["resumed_from"],
            [0, _BATCHES_PER_EPOCH],
        )
        self._assert_same_training(resumed.result, want)

    def test_sigterm_before_the_deletion_backs_up_the_finished_run(self):
        args = ["--save_freq=epoch", "--save_before_preemption"]
        want = self._reference(args)
        run = self.run_child_and_signal(
            self.trainer,
            [f"--backup_dir={self.dir}", *args, "--pause_at=finish_waited"],
            sig=signal.SIGTERM,
        )
        self.assertEqual(run.returncode, 42, run.describe())
        self.assertTrue(os.listdir(self.dir), "the finished run's backup")
        resumed = self._run(args)
        self.assertEqual(resumed.result["phases"][0]["resumed_from"], [3, 0])
        self._assert_same_training(resumed.result, want)
        self.assertFalse(resumed.result["backup_dir_exists"])

    def test_sigterm_during_the_deletion_completes_the_run(self):
        run = self.run_child_and_signal(
            self.trainer,
            [
                f"--backup_dir={self.dir}",
                "--save_freq=epoch",
                "--save_before_preemption",
                "--pause_at=deleting",
            ],
            sig=signal.SIGTERM,
        )
        self.assertEqual(run.returncode, 0, run.describe())
        self.assertIn("RESULT", run.stdout)
        self.assertRegex(run.stderr, "arrived after training had completed")
        self.assertFalse(os.path.exists(self.dir))

    # -- a resume with other data ------------------------------------------

    def test_resume_with_another_batch_size_is_refused_and_loses_nothing(self):
        killed = self.run_child(
            self.trainer,
            [
                f"--backup_dir={self.dir}",
                "--save_freq=3",
                "--kill_after_batches=13",
            ],
        )
        self.assertEqual(killed.killed_by, signal.SIGKILL, killed.describe())
        before = sorted(os.listdir(self.dir))
        refused = self._run(["--save_freq=3", "--batch_size=16"], expect=1)
        self.assertRegex(
            refused.stderr,
            r"BackupMismatchError(.|\n)*batches per epoch: backup 8, now 4"
            r"(.|\n)*batch size: backup 8, now 16",
        )
        self.assertEqual(sorted(os.listdir(self.dir)), before)
        resumed = self._run(["--save_freq=3"])  # the same job as before
        self.assertEqual(resumed.result["phases"][0]["resumed_from"], [1, 4])

    # -- kept backups ------------------------------------------------------

    def test_kept_backup_ends_at_the_end_of_training(self):
        # save_freq=3 does not divide the 24 batches' epochs evenly.
        args = ["--save_freq=3", "--nodelete_checkpoint"]
        first = self._run(args)
        again = self._run(args)
        self.assertEqual(again.result["phases"][0]["resumed_from"], [3, 0])
        self._assert_same_training(again.result, first.result)


ScenariosTfKerasTest = test_case.tf_keras_variant(ScenariosTest)


if __name__ == "__main__":
    absltest.main()
