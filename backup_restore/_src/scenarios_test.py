"""Everyday fit() variations, interrupted and restarted, resume exactly.

In process (ScenariosTest, and ScenariosTfKerasTest for tf-keras), each
scenario of testing/scenario_setup (an optimizer or learning-rate schedule,
preprocessing layers, an input of unknown size, a job of two fit() calls)
trains once uninterrupted, then is interrupted at a deterministic batch and
restarted as a new job would be: a fresh model and BackupAndRestore, and the
process's count of completed fit() calls reset. The restarted job must end
bit-identical (weights, optimizer steps, History) to the uninterrupted one.

With real processes (ScenariosProcessTest): the claims that need one, each
once: a two-fit() job SIGKILLed in its second fit() resumes in a new process
(whose count of completed fit() calls starts again from zero); a SIGTERM
before the final deletion and during it (the engine's code: Keras 3 only);
a SIGTERM during validation (each flavour's validation hooks: both).
"""

import os
import signal

from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import fit_test_case
from testing import keras_callbacks
from testing import procs
from testing import scenario_setup
from testing import synthetic
from testing import test_case
from testing import trainers

# 64 samples in batches of 8: 8 batches per epoch, 3 epochs.
_BATCHES_PER_EPOCH = 8
_ONE_FIT = ("3",)
_TWO_FITS = ("2", "4:2")


class ScenariosTest(fit_test_case.FitTestCase):
    """With Keras 3 models; ScenariosTfKerasTest: the same with tf-keras."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._references = {}
        if cls.FLAVOUR == "tf_keras":
            # As scenario_trainer: layer randomness in backed-up state.
            tf_keras = synthetic.KERAS["tf_keras"]
            tf_keras.backend.experimental.enable_tf_random_generator()

    def _job(
        self,
        scenario,
        backup_dir,
        *,
        phases=_ONE_FIT,
        interrupt=None,
        **backup_kwargs,
    ):
        """One job in a fresh "process": a fresh model and callback, its
        fit() calls interrupted after `interrupt` batches (counted across
        them) if given. Returns what it ended with, or None when
        interrupted."""
        keras_callbacks.simulate_restart()
        self.keras.backend.clear_session()  # a new process's layer names
        previous = scenario.set_policy()
        try:
            model = scenario.build_model()
            backup = backup_restore.BackupAndRestore(
                backup_dir, **backup_kwargs
            )
            callbacks = []
            if interrupt is not None:
                interrupt = keras_callbacks.InterruptAt(interrupt, backup)
                callbacks.append(interrupt)

            def run():
                return scenario_setup.run_job(
                    scenario,
                    model,
                    backup,
                    scenario_setup.parse_phases(phases),
                    callbacks=callbacks,
                )

            if interrupt is not None:
                with self.assertRaises(keras_callbacks.Interrupted):
                    run()
                return None
            return {
                "phases": run(),
                "weights_sha256": scenario_setup.weights_sha256(model),
                "backup_dir_exists": os.path.isdir(backup_dir),
            }
        finally:
            self.keras.mixed_precision.set_global_policy(previous)

    def _scenario(self, **kwargs):
        return scenario_setup.Scenario(keras=self.FLAVOUR, **kwargs)

    def _reference(self, scenario, phases=_ONE_FIT):
        key = (scenario, phases)
        if key not in self._references:
            ref_dir = os.path.join(self.create_tempdir().full_path, "ref")
            self._references[key] = self._job(scenario, ref_dir, phases=phases)
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

    def _interrupt_and_resume(
        self, scenario, interrupts, *, phases=_ONE_FIT, save_freq=3
    ):
        """Interrupted after each of `interrupts` batches in turn (each
        count from that job's start), then restarted to completion."""
        want = self._reference(scenario, phases)
        for batches in interrupts:
            self._job(
                scenario,
                self.dir,
                phases=phases,
                interrupt=batches,
                save_freq=save_freq,
            )
        resumed = self._job(
            scenario, self.dir, phases=phases, save_freq=save_freq
        )
        self._assert_same_training(resumed, want)
        self.assertFalse(resumed["backup_dir_exists"])
        return resumed

    # -- optimizers and learning-rate schedules (mid-epoch interruptions) ---

    @parameterized.named_parameters(
        ("exponential_decay", "exponential_decay"),
        ("user_warmup_cosine", "warmup_cosine"),
        ("legacy_adam", "legacy_adam"),
        ("legacy_sgd_schedule", "legacy_sgd_decay"),
        ("mixed_precision_loss_scale", "loss_scale"),
    )
    def test_optimizer_resumes_exactly_after_mid_epoch_interruptions(
        self, optimizer
    ):
        if optimizer.startswith("legacy") and self.FLAVOUR == "keras3":
            self.skipTest("Keras 3 has no legacy optimizers")
        # Twice: in epoch 1 (after 11 batches; last backup after 9), then in
        # epoch 2 (11 more: 20; last backup after 18).
        result = self._interrupt_and_resume(
            self._scenario(optimizer=optimizer), [11, 11]
        )
        self.assertEqual(result["phases"][0]["resumed_from"], [2, 2])

    # -- an input of unknown size (Dataset.filter) -------------------------

    @parameterized.named_parameters(
        ("in_the_first_epoch", 5),
        ("after_the_first_epoch", 13),
    )
    def test_dataset_of_unknown_size_resumes_exactly(self, interrupt):
        self._interrupt_and_resume(
            self._scenario(input="filtered_dataset"), [interrupt]
        )

    # -- layers whose state is not (only) variables ------------------------

    @parameterized.named_parameters(
        ("string_lookup_embedding", "string_lookup"),
        ("normalization", "normalization"),
        ("batch_norm_dropout", "batch_norm_dropout"),
    )
    def test_preprocessing_model_resumes_exactly(self, model):
        result = self._interrupt_and_resume(self._scenario(model=model), [13])
        self.assertEqual(result["phases"][0]["resumed_from"], [1, 4])

    def test_string_lookup_names_the_state_a_backup_cannot_hold(self):
        with self.assertLogs(level="WARNING") as logs:
            self._job(
                self._scenario(model="string_lookup"), self.dir, phases=("1",)
            )
        self.assertRegex(
            "\n".join(logs.output),
            r"string_lookup \(StringLookup\) keep state that",
        )

    # -- a job of two fit() calls ------------------------------------------

    @parameterized.named_parameters(
        ("interrupted_in_phase_1", 5),
        ("interrupted_at_the_phase_boundary", 2 * _BATCHES_PER_EPOCH + 1),
        ("interrupted_in_phase_2", 3 * _BATCHES_PER_EPOCH + 3),
    )
    def test_two_phase_job_resumes_exactly(self, interrupt):
        self._interrupt_and_resume(
            self._scenario(), [interrupt], phases=_TWO_FITS, save_freq=2
        )

    # -- a resume with other data ------------------------------------------

    def test_resume_with_another_batch_size_is_refused_and_loses_nothing(self):
        self._job(self._scenario(), self.dir, interrupt=13, save_freq=3)
        before = keras_callbacks.backup_entries(self.dir)
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError,
            r"batches per epoch: backup 8, now 4(.|\n)*"
            r"batch size: backup 8, now 16",
        ):
            self._job(self._scenario(batch_size=16), self.dir, save_freq=3)
        self.assertEqual(keras_callbacks.backup_entries(self.dir), before)
        resumed = self._job(self._scenario(), self.dir, save_freq=3)
        self.assertEqual(resumed["phases"][0]["resumed_from"], [1, 4])

    # -- kept backups ------------------------------------------------------

    def test_kept_backup_ends_at_the_end_of_training(self):
        # save_freq=3 does not divide the 24 batches' epochs evenly.
        kwargs = dict(save_freq=3, delete_checkpoint=False)
        first = self._job(self._scenario(), self.dir, **kwargs)
        again = self._job(self._scenario(), self.dir, **kwargs)
        self.assertEqual(again["phases"][0]["resumed_from"], [3, 0])
        self._assert_same_training(again, first)


ScenariosTfKerasTest = test_case.tf_keras_variant(ScenariosTest)


class ScenariosProcessTest(procs.FlavouredRuns, test_case.TestCase):
    """Real SIGKILLs and SIGTERMs of testing/scenario_trainer: a killed
    process resumes in a new one. With Keras 3 models;
    ScenariosProcessTfKerasTest: the same with tf-keras."""

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
        ScenariosTest._assert_same_training(self, got, want)

    def _in_one_flavour(self):
        if self.FLAVOUR != "keras3":
            self.skipTest(
                "the engine's code, the same under both flavours (both "
                "run in process in ScenariosTest): one real process only"
            )

    def test_two_phase_job_sigkilled_in_phase_2_resumes_exactly(self):
        self._in_one_flavour()
        args = ["--phases=2,4:2", "--save_freq=2"]
        want = self._reference(args)
        killed = self.run_child(
            self.trainer,
            [
                f"--backup_dir={self.dir}",
                *args,
                f"--kill_after_batches={3 * _BATCHES_PER_EPOCH + 3}",
            ],
        )
        self.assertEqual(killed.killed_by, signal.SIGKILL, killed.describe())
        resumed = self._run(args)
        self.assertEqual(resumed.result["phases"][0]["resumed_from"], None)
        self.assertEqual(resumed.result["phases"][1]["resumed_from"], [3, 2])
        self._assert_same_training(resumed.result, want)
        self.assertFalse(resumed.result["backup_dir_exists"])

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
        self._in_one_flavour()
        # With validation: the same uninterrupted run as the test above's.
        args = ["--validation", "--save_freq=epoch"]
        want = self._reference(args)
        args.append("--save_before_preemption")
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
        self._in_one_flavour()
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


ScenariosProcessTfKerasTest = test_case.tf_keras_variant(ScenariosProcessTest)


if __name__ == "__main__":
    absltest.main()
