"""Preemption: a real SIGTERM makes the job back up at that step and exit 42.

Child processes pause at a chosen step (the trainers' --fail_with=pause) and
receive real signals from this test; the rerun must resume at exactly that
step and end bit-identical to an uninterrupted run.
"""

import os
import signal

from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import dirs
from testing import fit_test_case
from testing import keras_callbacks
from testing import procs
from testing import synthetic
from testing import test_case
from testing import trainers

_FIT = ["--epochs=3", "--num_samples=64", "--batch_size=16", "--seed=4"]
_LOOP = ["--steps=30", "--save_every=10", "--seed=4"]


class PreemptionTest(procs.FlavouredRuns, test_case.TestCase):
    """With Keras 3 models; PreemptionTfKerasTest: the same with tf-keras."""

    def _reference(self, binary, base):
        ref = self.run_child(binary, [*base, f"--backup_dir={self.dir}-ref"])
        self.assertEqual(ref.returncode, 0, ref.describe())
        return ref.result

    def _job(self, base, *extra):
        """The flags of the job under test: `base`, on self.dir, backing up
        on SIGTERM (save_before_preemption), then `extra`."""
        return [
            *base,
            f"--backup_dir={self.dir}",
            "--save_before_preemption",
            *extra,
        ]

    def _preempt(self, binary, args, signals=(signal.SIGTERM,)):
        run = self.run_child_and_signal(
            binary, [*args, "--fail_with=pause"], sig=signals
        )
        self.assertEqual(
            run.returncode, backup_restore.RESTART_EXIT_CODE, run.describe()
        )
        self.assertIn("Preemption (SIGTERM)", run.stderr)
        return run

    def _rerun(self, binary, args, reference, resumed_from):
        """Runs the job again: it resumes at `resumed_from` and ends
        bit-identical to `reference`. Returns the run."""
        rerun = self.run_child(binary, args)
        self.assertEqual(rerun.returncode, 0, rerun.describe())
        self.assertEqual(rerun.result["resumed_from"], resumed_from)
        self.assertEqual(
            rerun.result["weights_sha256"], reference["weights_sha256"]
        )
        return rerun

    @parameterized.named_parameters(
        # 4 batches per epoch; epoch backups only, so every batch after the
        # last epoch backup would be lost without the preemption backup.
        ("mid_epoch", 7, (1, 3)),
        # At an epoch's last batch the backup is taken at the epoch's end.
        ("last_batch_of_an_epoch", 8, (2, 0)),
        ("first_batch", 1, (0, 1)),
    )
    def test_sigterm_backs_up_at_that_batch(self, batch, expected):
        reference = self._reference(trainers.fit_trainer(), _FIT)
        args = self._job(_FIT)
        self._preempt(
            trainers.fit_trainer(), [*args, f"--fail_at_step={batch}"]
        )
        rerun = self._rerun(
            trainers.fit_trainer(), args, reference, list(expected)
        )
        self.assertEqual(rerun.result["history"], reference["history"])

    def test_sigterm_under_mirrored_strategy(self):
        # Two replicas on 2 logical CPUs (all GPUs in the _gpu variant).
        fit = [*_FIT, "--strategy=mirrored", "--input=dataset"]
        reference = self._reference(trainers.fit_trainer(), fit)
        args = self._job(fit)
        self._preempt(trainers.fit_trainer(), [*args, "--fail_at_step=6"])
        self._rerun(trainers.fit_trainer(), args, reference, [1, 2])

    def test_save_freq_false_saves_only_on_preemption(self):
        reference = self._reference(trainers.fit_trainer(), _FIT)
        args = self._job(_FIT, "--save_freq=False")
        self._preempt(trainers.fit_trainer(), [*args, "--fail_at_step=6"])
        self.assertLen(dirs.entries(self.dir), 1)
        self._rerun(trainers.fit_trainer(), args, reference, [1, 2])

    def test_sigterm_while_a_backup_is_in_flight(self):
        # Batch-level backups every 3 batches, each held 3 s in the
        # background; paused at batch 5 while the batch-3 backup persists.
        reference = self._reference(trainers.fit_trainer(), _FIT)
        args = self._job(_FIT, "--save_freq=3", "--persist_delay_seconds=3")
        run = self._preempt(
            trainers.fit_trainer(),
            [*args, "--fail_at_step=5", "--nofail_after_backup_committed"],
        )
        self.assertIn("PERSIST DELAYED", run.stdout)
        self._rerun(
            trainers.fit_trainer(),
            [*args, "--persist_delay_seconds=0"],
            reference,
            [1, 1],
        )

    def test_sigterm_twice(self):
        reference = self._reference(trainers.fit_trainer(), _FIT)
        args = self._job(_FIT)
        self._preempt(
            trainers.fit_trainer(),
            [*args, "--fail_at_step=6"],
            signals=(signal.SIGTERM, signal.SIGTERM),
        )
        self._rerun(trainers.fit_trainer(), args, reference, [1, 2])

    def test_without_save_before_preemption_sigterm_just_kills(self):
        args = [*_FIT, f"--backup_dir={self.dir}", "--save_freq=epoch"]
        run = self.run_child_and_signal(
            trainers.fit_trainer(),
            [*args, "--fail_at_step=7", "--fail_with=pause"],
            sig=signal.SIGTERM,
        )
        self.assertEqual(run.killed_by, signal.SIGTERM, run.describe())
        rerun = self.run_child(trainers.fit_trainer(), args)
        self.assertEqual(rerun.result["resumed_from"], [1, 0])

    # -- custom training loop ------------------------------------------------

    def test_custom_loop_sigterm_backs_up_at_that_step(self):
        reference = self._reference(trainers.custom_loop_trainer(), _LOOP)
        args = self._job(_LOOP)
        self._preempt(
            trainers.custom_loop_trainer(), [*args, "--fail_at_step=13"]
        )
        self._rerun(trainers.custom_loop_trainer(), args, reference, 13)


PreemptionTfKerasTest = test_case.tf_keras_variant(PreemptionTest)


class _Sentinel(Exception):
    """Raised by the SIGTERM handler a test installs before fit()."""


def _sentinel_handler(signum, frame):
    raise _Sentinel(signum)


class _SigtermAtTrainBegin(keras_callbacks.Callback):
    """Sends this process SIGTERM from its on_train_begin, which fit() calls
    before BackupAndRestore's (it runs last): during fit()'s set-up."""

    def on_train_begin(self, logs=None):
        os.kill(os.getpid(), signal.SIGTERM)


def _sigterm_on_first_batch(x, y, batch):
    """A generator that sends this process SIGTERM when fit() first draws
    from it: while fit() builds its data adapter, before any hook."""
    os.kill(os.getpid(), signal.SIGTERM)
    while True:
        for start in range(0, len(x), batch):
            yield x[start : start + batch], y[start : start + batch]


class EarlyPreemptionTest(fit_test_case.FitTestCase):
    """In process: a preemption signal before training starts exits 42."""

    def test_sigterm_during_fit_set_up_exits_with_the_restart_status(self):
        previous = signal.signal(signal.SIGTERM, _sentinel_handler)
        self.addCleanup(signal.signal, signal.SIGTERM, previous)
        self.keras.utils.set_random_seed(1)
        model = synthetic.regression_model("tiny", flavour=self.FLAVOUR)
        x, y = synthetic.regression_data(32, seed=1)
        with self.assertRaises(SystemExit) as raised:
            model.fit(
                x,
                y,
                batch_size=8,
                epochs=1,
                verbose=0,
                callbacks=[
                    _SigtermAtTrainBegin(),
                    backup_restore.BackupAndRestore(
                        self.dir, save_before_preemption=True
                    ),
                ],
            )
        self.assertEqual(
            raised.exception.code, backup_restore.RESTART_EXIT_CODE
        )
        # The handler is gone again: the earlier one is back.
        self.assertIs(signal.getsignal(signal.SIGTERM), _sentinel_handler)

    def test_sigterm_before_fit_attaches_the_model_exits_too(self):
        previous = signal.signal(signal.SIGTERM, _sentinel_handler)
        self.addCleanup(signal.signal, signal.SIGTERM, previous)
        self.keras.utils.set_random_seed(1)
        model = synthetic.regression_model("tiny", flavour=self.FLAVOUR)
        x, y = synthetic.regression_data(32, seed=1)
        callback = backup_restore.BackupAndRestore(
            self.dir, save_before_preemption=True
        )
        with self.assertRaises(SystemExit) as raised:
            model.fit(
                _sigterm_on_first_batch(x, y, 8),
                steps_per_epoch=4,
                epochs=1,
                verbose=0,
                callbacks=[callback],
            )
        self.assertEqual(
            raised.exception.code, backup_restore.RESTART_EXIT_CODE
        )
        self.assertIs(signal.getsignal(signal.SIGTERM), _sentinel_handler)


EarlyPreemptionTfKerasTest = test_case.tf_keras_variant(EarlyPreemptionTest)


if __name__ == "__main__":
    absltest.main()
