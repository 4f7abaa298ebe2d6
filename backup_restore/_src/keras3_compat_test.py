"""Keras 3's own BackupAndRestore tests, run against this library's class.

`keras.src.callbacks.backup_and_restore_test` ships in the keras wheel
(Keras 3.15.1, pinned in requirements.txt; it imports pytest, pinned there
too). It is imported from the installed package at test time, nothing of it
is copied here: while its cases run, the module's `callbacks` (Keras's
`keras.src.callbacks`) is replaced in-process by a copy whose
`BackupAndRestore` is `backup_restore.BackupAndRestore`. No assertion of it
is changed.

Every case runs but those in `EXCLUDED`, each with the reason it fails here.
An excluded case is still run, and must fail with the error its reason
names: a case that starts to pass, or fails for another reason, fails this
test, so the table stays true. What an excluded case checks beyond the
private attribute it stops at is checked in `OwnWordsTest`, with Keras's own
model, layer and interrupting callback.
"""

import contextlib
import importlib
import os
import types
import unittest
from unittest import mock

import keras
import numpy as np
from absl.testing import absltest

import backup_restore
from testing import dirs
from testing import keras_callbacks
from testing import test_case

KERAS_MODULE = "keras.src.callbacks.backup_and_restore_test"
KERAS_CASE = "BackupAndRestoreCallbackTest"

# Keras 3.15.1's cases; a Keras that adds or drops one fails
# test_the_cases_are_the_pinned_ones (then update this and EXCLUDED).
KERAS_CASES = (
    "test_backup_corrupted",
    "test_backup_dir_empty_error",
    "test_backup_dir_none_error",
    "test_best_case_epoch",
    "test_best_case_step",
    "test_model_deleted_case_epoch",
    "test_save_freq_unknown_error",
)

# Excluded case -> (why, the error it must fail with, as a regex).
EXCLUDED = {
    "test_best_case_epoch": (
        "private attribute: reads the callback's `_current_epoch` (Keras's "
        "own progress counter; ours keeps the position in its backups). "
        "The rest: OwnWordsTest.test_best_case_epoch.",
        r"AttributeError: .* has no attribute '_current_epoch'",
    ),
    "test_best_case_step": (
        "private attributes `_current_epoch`, `_last_batch_seen`; and an "
        "intended difference: it expects the canary counter at 17 because "
        "Keras redoes the interrupted epoch from its first batch, while "
        "ours resumes at the next unseen batch and ends at the "
        "uninterrupted run's 15. The rest: "
        "OwnWordsTest.test_best_case_step.",
        r"AttributeError: .* has no attribute '_current_epoch'",
    ),
    "test_backup_corrupted": (
        "private attribute `_current_epoch`, and file names: it corrupts "
        "Keras's `latest.weights.h5` (`_weights_path`, `_prev_weights_path`"
        "); ours are `backup-<seq>/` directories. The rest: "
        "OwnWordsTest.test_backup_corrupted.",
        r"AttributeError: .* has no attribute '_current_epoch'",
    ),
}


def _keras_tests():
    """Keras's test module, imported from the installed keras package."""
    return importlib.import_module(KERAS_MODULE)


def _callbacks_with_ours():
    """`keras.src.callbacks` with `BackupAndRestore` replaced by ours."""
    original = _keras_tests().callbacks
    substitute = types.ModuleType(original.__name__)
    substitute.__dict__.update(vars(original))
    substitute.BackupAndRestore = backup_restore.BackupAndRestore
    return substitute


def _wait_for_backups(callbacks) -> None:
    for callback in callbacks:
        with contextlib.suppress(backup_restore.BackupError):
            callback.wait_for_backup()


def _run_keras_cases(names) -> unittest.TestResult:
    """Runs Keras's cases `names` against our class; their result.

    A case that raises out of fit() (the interrupted ones) can leave our
    last backup still being written in the background when the case's
    cleanup removes its temporary directory; as a job's process would at
    its exit, the case waits for it first.
    """
    module = _keras_tests()
    case = getattr(module, KERAS_CASE)
    made = []
    make = backup_restore.BackupAndRestore.__init__

    def init(callback, *args, **kwargs):
        make(callback, *args, **kwargs)
        made.append(callback)

    keras_temp_dir = case.get_temp_dir

    def get_temp_dir(test):
        directory = keras_temp_dir(test)
        # Cleanups run last in, first out: this before its removal.
        test.addCleanup(_wait_for_backups, made)
        return directory

    suite = unittest.TestSuite(case(name) for name in names)
    result = unittest.TestResult()
    with (
        mock.patch.object(module, "callbacks", _callbacks_with_ours()),
        mock.patch.object(backup_restore.BackupAndRestore, "__init__", init),
        mock.patch.object(case, "get_temp_dir", get_temp_dir),
    ):
        suite.run(result)
    return result


def _describe(result) -> str:
    return "\n".join(
        f"{test.id()}:\n{trace}"
        for test, trace in result.failures + result.errors
    )


class KerasOwnTestsTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        keras_callbacks.simulate_restart()

    def test_the_cases_are_the_pinned_ones(self):
        names = unittest.TestLoader().getTestCaseNames(
            getattr(_keras_tests(), KERAS_CASE)
        )
        self.assertEqual(tuple(names), KERAS_CASES)
        self.assertLessEqual(set(EXCLUDED), set(KERAS_CASES))

    def test_keras_own_cases_pass_against_ours(self):
        names = [n for n in KERAS_CASES if n not in EXCLUDED]
        result = _run_keras_cases(names)
        # A run of no case, or of fewer, must not pass.
        self.assertEqual(result.testsRun, len(KERAS_CASES) - len(EXCLUDED))
        self.assertEqual(result.testsRun, 4)
        self.assertEqual(result.skipped, [])
        self.assertTrue(result.wasSuccessful(), _describe(result))

    def test_the_substitution_reaches_keras_cases(self):
        # A Keras case run here constructs our class, not Keras's.
        made = []
        original = backup_restore.BackupAndRestore.__init__

        def spy(callback, *args, **kwargs):
            made.append(type(callback))
            original(callback, *args, **kwargs)

        with mock.patch.object(
            backup_restore.BackupAndRestore, "__init__", spy
        ):
            result = _run_keras_cases(["test_model_deleted_case_epoch"])
        self.assertTrue(result.wasSuccessful(), _describe(result))
        # Our class (with tf-keras imported, the subclass that is also a
        # tf_keras.callbacks.Callback: see tf_keras_callback.py).
        self.assertLen(made, 1)
        self.assertTrue(issubclass(made[0], backup_restore.BackupAndRestore))

    def test_excluded_cases_fail_for_their_listed_reason(self):
        for name, (_, expected) in EXCLUDED.items():
            with self.subTest(name):
                result = _run_keras_cases([name])
                self.assertEqual(result.testsRun, 1)
                problems = result.failures + result.errors
                self.assertLen(problems, 1, f"{name} passes: un-exclude it")
                self.assertRegex(problems[0][1], expected)


class OwnWordsTest(test_case.TestCase):
    """What the excluded Keras cases check, without Keras's private
    attributes and file names: the same model (its canary layer counts the
    batches trained into the model's state), data and interruptions."""

    def setUp(self):
        super().setUp()
        keras_callbacks.simulate_restart()
        keras.utils.set_random_seed(5)
        self.module = _keras_tests()
        self.x = np.random.random((10, 3))  # 3 batches of 4 per epoch
        self.y = np.random.random((10, 1))

    def _model(self):
        return getattr(self.module, KERAS_CASE).make_model(None)

    def _counter(self, model):
        return int(model.layers[0].counter.value)

    def _interrupted(self, model, callback, steps_int, epoch_int, epochs):
        interrupting = self.module.InterruptingCallback(steps_int, epoch_int)
        with self.assertRaises(RuntimeError):
            model.fit(
                self.x,
                self.y,
                batch_size=4,
                callbacks=[callback, interrupting],
                epochs=epochs,
                verbose=0,
            )
        self.assertTrue(os.path.isdir(self.dir))

    def _resumed(self, model, callback):
        history = model.fit(
            self.x,
            self.y,
            batch_size=4,
            callbacks=[callback],
            epochs=5,
            verbose=0,
        )
        self.assertEqual(history.epoch, list(range(5)))
        self.assertFalse(os.path.exists(self.dir), "ours was created: gone")

    def test_best_case_step(self):
        model = self._model()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq=1)
        self._interrupted(model, callback, 2, None, epochs=2)
        self.assertEqual(self._counter(model), 2)
        self._resumed(model, callback)
        self.assertIsNotNone(callback.resumed_from)
        # 5 epochs of 3 batches, each trained once: Keras's own gives 17.
        self.assertEqual(self._counter(model), 15)

    def test_best_case_epoch(self):
        model = self._model()
        callback = backup_restore.BackupAndRestore(self.dir, save_freq="epoch")
        self._interrupted(model, callback, None, 2, epochs=6)
        self.assertEqual(self._counter(model), 6)
        self._resumed(model, callback)
        self.assertIsNotNone(callback.resumed_from)
        self.assertEqual(self._counter(model), 5 * 3)

    def test_backup_corrupted(self):
        model = self._model()
        callback = backup_restore.BackupAndRestore(
            self.dir, save_freq="epoch", double_checkpoint=True
        )
        # Interrupted in the 3rd epoch: two epoch backups are kept.
        self._interrupted(model, callback, None, 3, epochs=6)
        callback.wait_for_backup()
        backups = [
            n
            for n in keras_callbacks.backup_entries(self.dir)
            if "backup-" in n
        ]
        self.assertLen(backups, 2)
        dirs.corrupt_data(os.path.join(self.dir, backups[-1]), offset=10)
        # The newest fails its checks: the restore falls back to the one
        # before it (without double_checkpoint: BackupCorruptError).
        self._resumed(model, callback)
        self.assertIsNotNone(callback.resumed_from)
        self.assertEqual(self._counter(model), 5 * 3)


if __name__ == "__main__":
    absltest.main()
