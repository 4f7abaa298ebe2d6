"""Exact resume: interrupted and restarted runs end bit-identical.

In process (ExactResumeTest, and ExactResumeTfKerasTest for tf-keras), every
kind of input trains three times with op determinism and a fixed seed, each
fit() on a fresh model and a fresh BackupAndRestore, as a restarted job
builds them:
  1. uninterrupted (the reference);
  2. batch-level backups, interrupted mid-epoch, restarted, interrupted
     mid-epoch again, restarted to completion;
  3. epoch-level backups, interrupted before an end-of-epoch backup,
     restarted.
An interrupted fit() never counts as completed, so the next fit() on its
backup_dir resumes it, in this process as in a new one (a notebook cell run
again after Ctrl-C): nothing in the process needs resetting in between.

With real SIGKILLs (SigkillTest): one configuration per kind of input
(arrays, tf.data, a PyDataset, a distribution strategy, a custom loop), and
the models holding state besides their layers (a GAN with optimizers as
attributes, a raw tf.Variable) in both flavours, in
child processes of the test trainers, killed twice mid-epoch and restarted.

Final weights (SHA-256 of every variable, and of every variable the model
holds: its optimizers' and raw tf.Variables), optimizer iterations and the
History returned by fit() must equal the reference exactly.
"""

import signal

import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import device
from testing import fit_setup
from testing import fit_test_case
from testing import keras_callbacks
from testing import procs
from testing import synthetic
from testing import test_case
from testing import trainers

EPOCHS = 3
# 4 batches per epoch unless stated.
_BASE = dict(num_samples=64, batch_size=16, seed=9)

# name -> FitSetup arguments (the flavour comes from the test class).
INPUTS = {
    "numpy_shuffle": {},
    "numpy_no_shuffle": dict(shuffle=False),
    "dataset_reshuffle": dict(input="dataset"),
    "dataset_repeat": dict(input="dataset_repeat", steps_per_epoch=4),
    "sequence": dict(input="sequence"),
    "generator": dict(input="generator", steps_per_epoch=4),
    "dropout": dict(dropout=0.3),
    "mirrored_two_cpus": dict(strategy="mirrored", input="dataset"),
    "one_device": dict(strategy="one_device"),
    # Optimizers held as attributes (one of them also the compiled one, so
    # built on a subset of the variables), a raw tf.Variable.
    "gan": dict(model="gan"),
    "gan_optimizer_in_compile": dict(model="gan_optimizer_in_compile"),
    "raw_variable": dict(model="raw_variable"),
    "central_storage_two_cpus": dict(strategy="central_storage"),
    # 6 batches per epoch in 3 executions of 2.
    "steps_per_execution": dict(steps_per_execution=2, num_samples=96),
}
# Where each configuration is interrupted: (save_freq, steps of the 1st and
# 2nd run, epoch-level step). A step is one train_function call, which is
# steps_per_execution batches. With 4 batches per epoch, batch-level
# backups every 3 batches: interrupted after batch 5 (last backup (0, 3)),
# then 4 batches into the next run (last backup (1, 2)); epoch-level:
# after batch 8, before the end-of-epoch-1 backup.
KILLS = {"default": ("3", 5, 4, 8)}
# Backups every 2 batches; interrupted after batch 4, then after 4 more;
# epoch-level: after batch 8.
KILLS["steps_per_execution"] = ("2", 2, 2, 4)
# Keras 3's fit() itself does not run under CentralStorageStrategy.
NOT_IN = {"keras3": {"central_storage_two_cpus"}}


def _save_freq(value: str):
    return value if value == "epoch" else int(value)


def _outcome(model, history, backup) -> dict:
    """What a run ends with, as fit_trainer reports it."""
    resumed = backup.resumed_from
    return {
        "resumed_from": list(resumed) if resumed else None,
        "weights_sha256": synthetic.weights_sha256(model.weights),
        "state_sha256": synthetic.state_sha256(model),
        "optimizer_iterations": int(model.optimizer.iterations.numpy()),
        "history_epochs": history.epoch,
        "history": history.history,
    }


class _SameOutcome:
    def assert_same(self, got, want):
        self.assertIsNotNone(got["resumed_from"], "resumed")
        self.assertEqual(got["weights_sha256"], want["weights_sha256"])
        self.assertEqual(got["state_sha256"], want["state_sha256"])
        self.assertEqual(
            got["optimizer_iterations"], want["optimizer_iterations"]
        )
        self.assertEqual(got["history_epochs"], want["history_epochs"])
        self.assertEqual(got["history"], want["history"])


class ExactResumeTest(_SameOutcome, fit_test_case.FitTestCase):
    @classmethod
    def setUpClass(cls):
        # Before anything starts TensorFlow's runtime: the two replicas of
        # the mirrored and central-storage configurations.
        fit_setup.split_cpu(tf, 2)
        super().setUpClass()
        if cls.FLAVOUR == "tf_keras":
            # As fit_trainer: layer randomness (Dropout) in backed-up state.
            tf_keras = synthetic.KERAS["tf_keras"]
            tf_keras.backend.experimental.enable_tf_random_generator()

    def _fit(self, setup, backup_dir, save_freq="epoch", interrupt_at=None):
        """One job's fit(): a fresh model, input and callback on
        `backup_dir`; interrupted after `interrupt_at` batches if given."""
        self.keras.utils.set_random_seed(setup.seed)
        with fit_setup.local_strategy(tf, setup.strategy).scope():
            model = setup.build_model()
        backup = backup_restore.BackupAndRestore(
            backup_dir, save_freq=_save_freq(save_freq)
        )
        callbacks = [backup]
        if interrupt_at is not None:
            callbacks.append(keras_callbacks.InterruptAt(interrupt_at, backup))
        kwargs = dict(
            **setup.fit_kwargs(), epochs=EPOCHS, callbacks=callbacks, verbose=0
        )
        if interrupt_at is None:
            return _outcome(model, model.fit(**kwargs), backup)
        with self.assertRaises(keras_callbacks.Interrupted):
            model.fit(**kwargs)
        return None

    @parameterized.named_parameters((name, name) for name in INPUTS)
    def test_interrupted_and_restarted_runs_match_uninterrupted(self, name):
        if name in NOT_IN.get(self.FLAVOUR, ()):
            self.skipTest(f"{name}: not supported by {self.FLAVOUR}'s fit()")
        setup = fit_setup.FitSetup(
            keras=self.FLAVOUR, **{**_BASE, **INPUTS[name]}
        )
        save_freq, first, second, at_epoch = KILLS.get(name, KILLS["default"])
        reference = self._fit(setup, f"{self.tmp}/ref")

        # Batch-level backups, two mid-epoch interruptions.
        steps = f"{self.tmp}/s"
        self._fit(setup, steps, save_freq, interrupt_at=first)
        self._fit(setup, steps, save_freq, interrupt_at=second)
        resumed = self._fit(setup, steps, save_freq)
        self.assert_same(resumed, reference)
        self.assertNotEqual(resumed["resumed_from"][1], 0, "mid-epoch")

        # Epoch-level backups, interrupted before an end-of-epoch backup.
        epochs = f"{self.tmp}/e"
        self._fit(setup, epochs, interrupt_at=at_epoch)
        self.assert_same(self._fit(setup, epochs), reference)

    def test_generator_input_warns_that_it_cannot_be_rewound(self):
        setup = fit_setup.FitSetup(
            keras=self.FLAVOUR, **_BASE, input="generator", steps_per_epoch=4
        )
        self._fit(setup, self.dir, "3", interrupt_at=7)
        with self.assertLogs(level="WARNING") as logs:
            self._fit(setup, self.dir, "3")
        self.assertIn(
            "Python generator, which cannot be rewound", "\n".join(logs.output)
        )


ExactResumeTfKerasTest = test_case.tf_keras_variant(ExactResumeTest)


def _flags(name, flavour):
    setup = fit_setup.FitSetup(keras=flavour, **{**_BASE, **INPUTS[name]})
    return [*setup.flags(), f"--epochs={EPOCHS}"]


# One real-SIGKILL configuration per kind of input: (test name, input name,
# flavour).
SIGKILLED = [
    ("arrays_tf_keras", "numpy_shuffle", "tf_keras"),
    ("dataset_keras3", "dataset_reshuffle", "keras3"),
    ("pydataset_keras3", "sequence", "keras3"),
    ("mirrored_keras3", "mirrored_two_cpus", "keras3"),
    # What the model holds besides its layers and compiled optimizer: two
    # optimizers as attributes (keras.io's DCGAN pattern), one of them also
    # compiled (built on a subset of the variables), a raw tf.Variable.
    ("gan_keras3", "gan", "keras3"),
    ("gan_tf_keras", "gan", "tf_keras"),
    ("gan_optimizer_in_compile_keras3", "gan_optimizer_in_compile", "keras3"),
    (
        "gan_optimizer_in_compile_tf_keras",
        "gan_optimizer_in_compile",
        "tf_keras",
    ),
    ("raw_variable_keras3", "raw_variable", "keras3"),
    ("raw_variable_tf_keras", "raw_variable", "tf_keras"),
]


class SigkillTest(_SameOutcome, test_case.TestCase):
    def _run(self, args, killed=False):
        run = procs.run(trainers.fit_trainer(), args)
        if killed:
            self.assertEqual(run.killed_by, signal.SIGKILL, run.describe())
        else:
            self.assertEqual(run.returncode, 0, run.describe())
        return run

    def _killed_twice_and_restarted(self, flags, kills=KILLS["default"]):
        save_freq, first, second, _ = kills
        reference = self._run([*flags, f"--backup_dir={self.tmp}/ref"])
        steps = [
            *flags,
            f"--backup_dir={self.tmp}/s",
            f"--save_freq={save_freq}",
        ]
        self._run([*steps, f"--fail_at_step={first}"], killed=True)
        self._run([*steps, f"--fail_at_step={second}"], killed=True)
        resumed = self._run(steps)
        self.assert_same(resumed.result, reference.result)
        self.assertNotEqual(resumed.result["resumed_from"][1], 0, "mid-epoch")

    @parameterized.named_parameters(*SIGKILLED)
    def test_killed_and_restarted_runs_match_uninterrupted(self, name, flavour):
        self._killed_twice_and_restarted(_flags(name, flavour))

    @parameterized.parameters("keras3", "tf_keras")
    def test_tpu_killed_and_restarted_runs_match_uninterrupted(self, flavour):
        if device.requested_device() != "tpu":
            self.skipTest("TPUStrategy: runs in the _tpu variant only")
        flags = _flags("dataset_reshuffle", flavour)
        self._killed_twice_and_restarted([*flags, "--strategy=tpu"])

    @parameterized.parameters("keras3", "tf_keras")
    def test_custom_loop_killed_twice_matches_uninterrupted(self, flavour):
        loop = trainers.custom_loop_trainer()
        base = ["--steps=30", "--save_every=7", "--seed=2", "--dropout=0.3"]
        base.append(f"--keras={flavour}")

        def run(args, killed=False):
            result = procs.run(loop, [*base, *args])
            if killed:
                self.assertEqual(
                    result.killed_by, signal.SIGKILL, result.describe()
                )
            else:
                self.assertEqual(result.returncode, 0, result.describe())
            return result

        reference = run([f"--backup_dir={self.tmp}/ref"]).result
        args = [f"--backup_dir={self.tmp}/loop"]
        run([*args, "--fail_at_step=10"], killed=True)  # last backup: 7
        run([*args, "--fail_at_step=9"], killed=True)  # 7 + 9: last is 14
        resumed = run(args).result
        self.assertEqual(resumed["resumed_from"], 14)
        self.assertEqual(resumed["weights_sha256"], reference["weights_sha256"])
        self.assertEqual(
            resumed["optimizer_iterations"], reference["optimizer_iterations"]
        )

    def test_legacy_dropout_rng_is_not_exact_and_says_so(self):
        # tf-keras's legacy stateful RNG keeps its state in op kernels: it
        # cannot be backed up. Kept as a test so the difference stays known.
        # In a child process: the RNG choice is process-wide.
        flags = [
            *_flags("dropout", "tf_keras"),
            "--notf_random_generator",
        ]
        reference = self._run([*flags, f"--backup_dir={self.tmp}/ref"])
        args = [f"--backup_dir={self.tmp}/b", "--save_freq=3", *flags]
        self._run([*args, "--fail_at_step=7"], killed=True)
        resumed = self._run(args)
        self.assertIn("legacy stateful RNG", resumed.stderr)
        self.assertIn("enable_tf_random_generator()", resumed.stderr)
        self.assertNotEqual(
            resumed.result["weights_sha256"], reference.result["weights_sha256"]
        )


if __name__ == "__main__":
    absltest.main()
