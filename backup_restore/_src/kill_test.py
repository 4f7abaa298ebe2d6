"""Crash safety: where a killed run resumes, and real kills of real processes.

Where training resumes after a crash at a chosen batch is the callback's
bookkeeping: KillPositionTest (and its tf-keras variant) interrupts fit() in
process at each chosen batch and restarts it as a new job would (a fresh
model and callback, the count of completed fit() calls reset).

KillAtBatchTest (per flavour) and KillDuringWriteTest run the test trainer
in a child process, kill it (SIGKILL or SIGTERM) at a chosen batch or at a
chosen stage of a backup write, then run the same training again to
completion in this process, as a restarted job. The kills during a backup
write, right after the backup hook and by an external signal exercise the
store's and the engine's code, the same under both flavours, so they run
with Keras 3 models only.

Either way the rerun must resume from the last committed backup and end with
the weights, optimizer steps and History of an uninterrupted run.
"""

import os
import signal

import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import fit_setup
from testing import fit_test_case
from testing import keras_callbacks
from testing import procs
from testing import synthetic
from testing import test_case
from testing import trainers

# 64 samples / batch 16 = 4 batches per epoch, 3 epochs.
_ARGS = ["--epochs=3", "--num_samples=64", "--batch_size=16", "--seed=5"]
_SETUP = dict(num_samples=64, batch_size=16, seed=5)


# The kills at chosen batches: (name, save_freq, the batches each run
# trains before it is interrupted, where the last run resumes or None).
POSITIONS = [
    # Killed after 8 batches: the end-of-epoch-1 backup was not yet written
    # (on_epoch_end comes after the last batch).
    ("epoch_saves_at_epoch_boundary", "epoch", [8], (1, 0)),
    ("epoch_saves_mid_epoch", "epoch", [6], (1, 0)),
    ("step_saves_mid_epoch", "3", [7], (1, 2)),
    ("step_saves_just_after_a_save", "3", [10], (2, 1)),
    ("during_first_epoch_nothing_saved", "epoch", [2], None),
    # Run 1: backup after batch 3 = (0, 3); interrupted after batch 5. Run
    # 2 resumes at overall batch 3, backs up 3 batches later (overall batch
    # 6 = (1, 2)) and is interrupted 4 batches in (overall batch 7).
    ("killed_twice", "3", [5, 4], (1, 2)),
]


class KillPositionTest(fit_test_case.FitTestCase):
    """In process, with Keras 3 models; KillPositionTfKerasTest: tf-keras."""

    SETUP = _SETUP

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._reference = None

    def _job(self, backup_dir, save_freq, interrupt_at=None):
        keras_callbacks.simulate_restart()
        setup = fit_setup.FitSetup(keras=self.FLAVOUR, **self.SETUP)
        self.keras.utils.set_random_seed(setup.seed)
        model = setup.build_model()
        backup = backup_restore.BackupAndRestore(
            backup_dir,
            save_freq=save_freq if save_freq == "epoch" else int(save_freq),
        )
        callbacks = [backup]
        if interrupt_at is not None:
            callbacks.append(keras_callbacks.InterruptAt(interrupt_at, backup))
        kwargs = dict(
            **setup.fit_kwargs(), epochs=3, callbacks=callbacks, verbose=0
        )
        if interrupt_at is not None:
            with self.assertRaises(keras_callbacks.Interrupted):
                model.fit(**kwargs)
            return None
        history = model.fit(**kwargs)
        return {
            "resumed_from": backup.resumed_from,
            "weights_sha256": synthetic.weights_sha256(model.weights),
            "optimizer_iterations": int(model.optimizer.iterations.numpy()),
            "history_epochs": history.epoch,
            "history": history.history,
        }

    @parameterized.named_parameters(*POSITIONS)
    def test_interrupted_at_batch_resumes_from_the_last_backup(
        self, save_freq, interrupts, expected
    ):
        if self._reference is None:
            ref_dir = self.create_tempdir().full_path + "/ref"
            type(self)._reference = self._job(ref_dir, "epoch")
        for batches in interrupts:
            self._job(self.dir, save_freq, interrupt_at=batches)
        if expected is None:
            self.assertFalse(
                keras_callbacks.backup_entries(self.dir), "no backup yet"
            )
        result = self._job(self.dir, save_freq)
        self.assertEqual(result["resumed_from"], expected)
        for key in ("weights_sha256", "optimizer_iterations", "history"):
            self.assertEqual(result[key], self._reference[key], key)
        self.assertEqual(result["history_epochs"], [0, 1, 2])
        self.assertFalse(os.path.exists(self.dir), "deleted on completion")


KillPositionTfKerasTest = test_case.tf_keras_variant(KillPositionTest)


class _KillRuns(procs.FlavouredRuns, test_case.TestCase):
    """Runs of the test trainer killed for real, and their reruns."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.references = {}

    def _job(self, save_freq, backup_dir):
        """The trainer's fit() of `_ARGS`, run to completion in this process
        as a restarted job would run it (the rerun after a kill needs no
        process of its own: what the kill left is on disk)."""
        keras = synthetic.KERAS[self.FLAVOUR]
        keras_callbacks.simulate_restart()
        keras.backend.clear_session()  # a new process's layer names
        setup = fit_setup.FitSetup(keras=self.FLAVOUR, **_SETUP)
        keras.utils.set_random_seed(_SETUP["seed"])
        model = setup.build_model()
        backup = backup_restore.BackupAndRestore(
            backup_dir,
            save_freq=save_freq if save_freq == "epoch" else int(save_freq),
        )
        history = model.fit(
            **setup.fit_kwargs(), epochs=3, callbacks=[backup], verbose=0
        )
        resumed = backup.resumed_from
        return {
            "resumed_from": list(resumed) if resumed else None,
            "weights_sha256": synthetic.weights_sha256(model.weights),
            "optimizer_iterations": int(model.optimizer.iterations.numpy()),
            "history_epochs": history.epoch,
            "history": history.history,
        }

    def _reference(self, save_freq):
        # Backups do not change training, but cache per save_freq anyway so a
        # difference would show up as a mismatch, not be hidden. The killed
        # runs train in the trainer's process: the same code and seed give
        # the same bits here.
        if save_freq not in self.references:
            self.references[save_freq] = self._job(save_freq, f"{self.dir}-ref")
        return self.references[save_freq]

    def _args(self, save_freq, *extra):
        return [
            *_ARGS,
            f"--backup_dir={self.dir}",
            f"--save_freq={save_freq}",
            *extra,
        ]

    def _killed(self, save_freq, *extra, sig=signal.SIGKILL):
        run = self.run_child(
            trainers.fit_trainer(), self._args(save_freq, *extra)
        )
        self.assertEqual(run.killed_by, sig, run.describe())
        self.assertIsNone(run.result)
        return run

    def _finish(self, save_freq, expected_resume):
        reference = self._reference(save_freq)
        result = self._job(save_freq, self.dir)
        self.assertEqual(result["resumed_from"], list(expected_resume))
        self.assertEqual(result["weights_sha256"], reference["weights_sha256"])
        self.assertEqual(
            result["optimizer_iterations"], reference["optimizer_iterations"]
        )
        self.assertEqual(result["history"], reference["history"])
        self.assertEqual(result["history_epochs"], [0, 1, 2])
        self.assertFalse(os.path.exists(self.dir), "deleted on completion")

    def _names(self):
        # Without the owner's lock file, which a SIGKILL leaves behind.
        return sorted(
            n
            for n in os.listdir(self.dir)
            if not n.startswith(".backup_restore.")
        )


class KillAtBatchTest(_KillRuns):
    """A real SIGKILL at a chosen batch, with Keras 3 models;
    KillAtBatchTfKerasTest: the same with tf-keras."""

    def test_sigkill_just_before_a_save(self):
        # BackupAndRestore runs after every other callback, so a SIGKILL in
        # another callback's on_train_batch_end(9) comes before the backup
        # due at batch 9 (backups every 3 batches): the last is (1, 2).
        # (An exception raised there instead, as in KillPositionTest, still
        # lets fit() run the backup due at that batch.)
        self._killed("3", "--fail_at_step=9")
        self._finish("3", (1, 2))


KillAtBatchTfKerasTest = test_case.tf_keras_variant(KillAtBatchTest)


class KillDuringWriteTest(_KillRuns):
    """Kills during a backup write, right after the backup hook and by an
    external signal: the store's and the engine's code, the same under both
    flavours, so with Keras 3 models only."""

    @parameterized.named_parameters(
        ("sigkill", signal.SIGKILL), ("sigterm", signal.SIGTERM)
    )
    def test_external_signal_at_a_paused_step(self, sig):
        run = self.run_child_and_signal(
            trainers.fit_trainer(),
            self._args("3", "--fail_at_step=7", "--fail_with=pause"),
            sig=sig,
        )
        self.assertEqual(run.killed_by, sig, run.describe())
        self._finish("3", (1, 2))

    # -- kills at every stage of a backup write ------------------------------

    @parameterized.named_parameters(
        # Killed while writing the 2nd backup (end of epoch 1); the 1st (end
        # of epoch 0) is the last committed one, except once committed.
        # Asynchronous backups: every stage but before_data runs on the
        # background persist thread, while training goes on.
        ("async_before_data", "before_data", (1, 0), True, True),
        ("async_data_written", "data_written", (1, 0), True, True),
        ("async_half_written_data", "half_written", (1, 0), True, True),
        ("async_written_not_committed", "before_commit", (1, 0), True, True),
        # Published (renamed into place, not yet fsync'd): a process kill
        # resumes from it; the previous one stays until it is durable.
        ("async_published_not_durable", "published", (2, 0), False, True),
        ("async_committed_previous_kept", "committed", (2, 0), False, True),
        ("sync_published_not_durable", "published", (2, 0), False, False),
        ("sync_half_written_data", "half_written", (1, 0), True, False),
        ("sync_written_not_committed", "before_commit", (1, 0), True, False),
        ("sync_committed_previous_kept", "committed", (2, 0), False, False),
    )
    def test_sigkill_during_backup_write(
        self, stage, expected, leftover, asynchronous
    ):
        run = self._killed(
            "epoch",
            f"--kill_at_backup_stage={stage}",
            "--kill_at_backup_number=2",
            f"--async_backup={asynchronous}",
        )
        self.assertIn(f"KILLING at backup stage {stage}", run.stdout)
        names = self._names()
        if leftover:
            self.assertLen(names, 2)
            self.assertIn("backup-00000001", names)
            self.assertTrue(names[0].startswith(".tmp-backup-00000002-"), names)
        else:
            self.assertEqual(names, ["backup-00000001", "backup-00000002"])
        self._finish("epoch", expected)

    @parameterized.named_parameters(("async", True), ("sync", False))
    def test_sigkill_right_after_the_backup_hook_returned(self, asynchronous):
        # The epoch-0 backup's hook returned at batch 4; SIGKILL one batch
        # later. Asynchronously its background part (fsync, then deleting
        # the older backup) is held for 60 s, so the kill surely lands
        # before it: the backup was complete when the hook returned.
        extra = ["--persist_delay_seconds=60"] if asynchronous else []
        run = self._killed(
            "epoch",
            "--fail_at_step=5",
            "--nofail_after_backup_committed",
            f"--async_backup={asynchronous}",
            *extra,
        )
        self.assertIn("FAILING after 5 batches", run.stdout)
        self.assertIn("backup-00000001", self._names())
        self._finish("epoch", (1, 0))

    def test_ram_filesystem_survives_an_in_process_restart_only(self):
        # ram:// lives in the process: a killed process loses it. This is a
        # property of that filesystem, asserted so that nobody relies on it.
        run = self.run_child(
            trainers.fit_trainer(),
            [*_ARGS, "--backup_dir=ram://kill_test/x", "--fail_at_step=6"],
        )
        self.assertEqual(run.killed_by, signal.SIGKILL, run.describe())
        self.assertFalse(tf.io.gfile.exists("ram://kill_test/x"))


if __name__ == "__main__":
    absltest.main()
