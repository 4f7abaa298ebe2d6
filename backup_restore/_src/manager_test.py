"""BackupManager for custom training loops (in-process)."""

import os
import signal
import subprocess
import sys

import numpy as np
import tensorflow as tf
import tf_keras
from absl.testing import absltest

import backup_restore
from testing import dirs
from testing import synthetic
from testing import test_case


def _objects(width=8):
    tf_keras.utils.set_random_seed(3)
    model = tf_keras.Sequential(
        [tf_keras.Input((4,)), tf_keras.layers.Dense(width)]
    )
    optimizer = tf_keras.optimizers.Adam(0.1)
    optimizer.build(model.trainable_variables)
    dataset = tf.data.Dataset.range(100).shuffle(100, seed=1).repeat()
    return model, optimizer, iter(dataset), tf.random.Generator.from_seed(5)


def _backups(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith("backup-"))


class ManagerTest(test_case.TestCase):
    def _manager(self, objects, directory=None, **kwargs):
        model, optimizer, iterator, rng = objects
        return backup_restore.BackupManager(
            directory or self.dir,
            model=model,
            optimizer=optimizer,
            iterator=iterator,
            rng=rng,
            **kwargs,
        )

    def test_fresh_start_returns_zero(self):
        manager = self._manager(_objects())
        self.assertEqual(manager.restore(), 0)
        self.assertIsNone(manager.resumed_from)

    def test_round_trip_of_weights_iterator_rng_and_metadata(self):
        model, _, iterator, rng = objects = _objects()
        manager = self._manager(
            objects, save_every_n_steps=5
        )  # the earlier names
        manager.restore()
        for step in range(1, 8):
            next(iterator)
            rng.normal([1])
            model.weights[0].assign_add(tf.ones_like(model.weights[0]))
            if step == 5:
                at_backup = model.weights[0].numpy()
            manager.maybe_backup(step, metadata={"lr": 0.1})
        manager.wait()  # the backup of step 5 is the last one

        # A new process rebuilds the same objects, then restores.
        fresh_model, _, fresh_iterator, fresh_rng = fresh = _objects()
        resumed = self._manager(fresh)
        self.assertEqual(resumed.restore(), 5)
        self.assertEqual(resumed.metadata, {"lr": 0.1})
        np.testing.assert_array_equal(fresh_model.weights[0].numpy(), at_backup)
        # The iterator and the generator continue after their 5th draw.
        _, _, replay_iterator, replay_rng = _objects()
        for _ in range(5):
            next(replay_iterator)
            replay_rng.normal([1])
        self.assertEqual(
            [int(next(fresh_iterator)) for _ in range(3)],
            [int(next(replay_iterator)) for _ in range(3)],
        )
        np.testing.assert_array_equal(
            fresh_rng.normal([3]).numpy(), replay_rng.normal([3]).numpy()
        )

    def test_finish_deletes_and_keeps_foreign_files(self):
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "notes"), "w") as f:
            f.write("x")
        manager = self._manager(_objects(), save_freq=1)
        manager.restore()
        manager.maybe_backup(1)
        manager.finish()
        self.assertEqual(os.listdir(self.dir), ["notes"])

    def test_a_backup_outside_restore_and_finish_is_refused(self):
        # The job owns backup_dir from restore() to finish(): a backup
        # outside that would be written without the owner's lock.
        manager = self._manager(_objects(), save_freq=1)
        for call in (
            lambda: manager.backup(1),
            lambda: manager.maybe_backup(1),
        ):
            with self.assertRaisesRegex(
                RuntimeError, r"call restore\(\) first"
            ):
                call()
        self.assertEqual(_backups(self.dir), [])
        self.assertEqual(manager.restore(), 0)
        manager.backup(1)
        manager.finish(delete=False)
        with self.assertRaisesRegex(RuntimeError, r"after finish\(\)"):
            manager.backup(2)
        self.assertEqual(_backups(self.dir), ["backup-00000001"])

    def test_a_step_that_is_no_count_of_steps_is_refused_writing_nothing(
        self,
    ):
        manager = self._manager(_objects(), save_freq=1)
        self.assertEqual(manager.restore(), 0)
        manager.backup(4, wait=True)
        for step, error, message in [
            (-1, ValueError, "from 0 to 2\\*\\*63 - 1, .* not -1"),
            (2**63, ValueError, "not 9223372036854775808"),
            (2.5, TypeError, "must be an integer.*not float: 2.5"),
            (True, TypeError, "not bool: True"),
            ("3", TypeError, "not str"),
            (tf.constant(1.5), TypeError, "must be an integer"),
        ]:
            for call in (manager.backup, manager.maybe_backup):
                with self.subTest(step=step, call=call.__name__):
                    with self.assertRaisesRegex(error, message):
                        call(step)
        manager.wait_for_backup()
        self.assertEqual(_backups(self.dir), ["backup-00000001"])
        # Counts given as numpy or TensorFlow integers are recorded as ints.
        manager.backup(np.int64(5), wait=True)
        manager.backup(tf.constant(6, tf.int64), wait=True)
        manager.finish(delete=False)
        resumed = self._manager(_objects(), save_freq=1)
        self.assertEqual(resumed.restore(), 6)
        resumed.finish()

    def test_a_manager_taken_over_in_the_same_process_writes_nothing(self):
        first = self._manager(_objects(), save_freq=1)
        self.assertEqual(first.restore(), 0)
        first.backup(1, wait=True)
        second = self._manager(_objects(), save_freq=1)
        self.assertEqual(second.restore(), 1)
        second.backup(2, wait=True)
        for call in (lambda: first.backup(3), lambda: first.maybe_backup(3)):
            with self.assertRaisesRegex(RuntimeError, "taken over by another"):
                call()
        self.assertEqual(_backups(self.dir), ["backup-00000002"])
        with self.assertLogs(level="WARNING") as logs:
            first.finish()
        self.assertTrue(any("not deleted" in r for r in logs.output))
        self.assertEqual(_backups(self.dir), ["backup-00000002"])
        second.backup(3, wait=True)
        second.finish()
        self.assertFalse(os.path.exists(self.dir))

    def _finish_a_run(self, directory):
        manager = self._manager(_objects(), directory, save_freq=1)
        manager.restore()
        manager.maybe_backup(1)
        manager.finish()

    def test_double_checkpoint_keeps_the_previous_backup(self):
        for double, kept in ((True, 2), (False, 1)):
            with self.subTest(double_checkpoint=double):
                directory = os.path.join(self.tmp, f"double_{double}")
                manager = self._manager(
                    _objects(),
                    directory,
                    save_freq=1,
                    double_checkpoint=double,
                )
                manager.restore()
                for step in range(1, 4):
                    manager.maybe_backup(step)
                manager.wait_for_backup()
                self.assertLen(_backups(directory), kept)
                manager.finish()

    def test_finish_keeps_an_empty_directory_that_existed(self):
        os.makedirs(self.dir)
        self._finish_a_run(self.dir)
        self.assertEqual(os.listdir(self.dir), [])

    def test_finish_removes_only_the_directories_it_created(self):
        parent = os.path.join(self.tmp, "existing")
        os.makedirs(parent)
        self._finish_a_run(os.path.join(parent, "made", "by", "us"))
        self.assertEqual(os.listdir(parent), [])

    def test_owns_backup_dir_until_finish_and_again_in_the_same_process(self):
        # Another process tries to own the directory (without importing
        # the package's TensorFlow: only the ownership modules, in a bare
        # package).
        probe = [
            sys.executable,
            "-c",
            "import sys, types; pkg = types.ModuleType('backup_restore'); "
            "pkg.__path__ = [sys.argv[2]]; "
            "sys.modules['backup_restore'] = pkg; "
            "from backup_restore._src import ownership; "
            "ownership.acquire(sys.argv[1])",
            self.dir,
            os.path.dirname(backup_restore.__file__),
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

        def another_process():
            return subprocess.run(
                probe, capture_output=True, text=True, env=env, check=False
            )

        abandoned = self._manager(_objects(), save_freq=1)
        abandoned.restore()
        abandoned.maybe_backup(1)
        abandoned.wait()  # then never finished, like a fit() that raised
        refused = another_process()
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("BackupDirInUseError", refused.stderr)
        self.assertIn(f"pid {os.getpid()} on host", refused.stderr)
        # The same process starts again on the same directory.
        again = self._manager(_objects(), save_every_n_steps=1)
        self.assertEqual(again.restore(), 1)
        again.finish()
        self.assertFalse(os.path.exists(self.dir))
        free = another_process()
        self.assertEqual(free.returncode, 0, free.stderr)

    def test_changed_shape_is_refused_naming_the_variable(self):
        manager = self._manager(_objects(width=8))
        manager.restore()
        manager.backup(3, wait=True)
        changed = self._manager(_objects(width=9))
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError,
            r"model/layer_with_weights-0/kernel: backup float32\[4, 8\], "
            r"now float32\[4, 9\]",
        ):
            changed.restore()
        # Besides the lock file, held by this process until its next start.
        self.assertEqual(
            dirs.entries(self.dir),
            [".backup_restore.lock", "backup-00000001"],
            "nothing deleted",
        )

    def test_extra_object_is_refused(self):
        manager = self._manager(_objects())
        manager.restore()
        manager.backup(3, wait=True)
        model, optimizer, iterator, rng = _objects()
        bigger = backup_restore.BackupManager(
            self.dir,
            model=model,
            optimizer=optimizer,
            iterator=iterator,
            rng=rng,
            step=tf.Variable(0),
        )
        with self.assertRaisesRegex(
            backup_restore.BackupMismatchError, "step: not in the backup"
        ):
            bigger.restore()

    def test_a_keras_callback_backup_is_left_alone(self):
        model = synthetic.regression_model("tiny")
        x, y = synthetic.regression_data(32)
        model.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[
                backup_restore.BackupAndRestore(
                    self.dir, delete_checkpoint=False
                )
            ],
        )
        before = sorted(os.listdir(self.dir))
        manager = backup_restore.BackupManager(self.dir, model=model)
        # Not the custom loop's backup: it starts afresh and never deletes
        # the callback's.
        self.assertEqual(manager.restore(), 0)
        manager.backup(1)
        manager.finish()
        self.assertEqual(sorted(os.listdir(self.dir)), before)

    def test_layer_randomness_resumes_exactly(self):
        tf_keras.backend.experimental.enable_tf_random_generator()

        def objects():
            tf_keras.utils.set_random_seed(3)
            model = synthetic.regression_model("tiny", dropout=0.5)
            model.optimizer.build(model.trainable_variables)
            return model, model.optimizer

        def train(model, optimizer, steps):
            x = tf.ones([8, synthetic.INPUT_DIM])
            for _ in range(steps):
                synthetic.gradient_step(
                    model,
                    optimizer,
                    lambda: tf.reduce_sum(model(x, training=True)),
                )

        model, optimizer = objects()
        train(model, optimizer, 6)
        reference = [w.numpy() for w in model.weights]

        model, optimizer = objects()
        manager = backup_restore.BackupManager(
            self.dir, model=model, optimizer=optimizer
        )
        manager.restore()
        train(model, optimizer, 3)
        manager.backup(3, wait=True)
        model, optimizer = objects()  # a restarted process
        manager = backup_restore.BackupManager(
            self.dir, model=model, optimizer=optimizer
        )
        self.assertEqual(manager.restore(), 3)
        train(model, optimizer, 3)
        for got, want in zip(model.weights, reference, strict=True):
            np.testing.assert_array_equal(got.numpy(), want)

    def test_callback_names_and_steps_counted_from_the_restored_backup(self):
        first = self._manager(_objects(), save_freq=10, delete_checkpoint=False)
        first.restore()
        first.backup(23)  # as at a preemption at step 23
        first.wait_for_backup()
        first.finish()  # delete_checkpoint=False: kept
        self.assertEqual(_backups(self.dir), ["backup-00000001"])

        resumed = self._manager(_objects(), save_freq=10)
        self.assertEqual(resumed.restore(), 23)
        self.assertEqual(resumed.resumed_from, 23)
        # Due 10 steps after the restored backup, not at a multiple of 10:
        # the callback's rule for save_freq=N (policy.py).
        listings = {}
        for step in range(24, 34):
            resumed.maybe_backup(step)
            resumed.wait_for_backup()
            listings[step] = _backups(self.dir)
        self.assertEqual(listings[32], ["backup-00000001"])
        self.assertEqual(listings[33], ["backup-00000002"])
        resumed.finish()  # delete_checkpoint=True (default): deleted
        self.assertFalse(os.path.exists(self.dir))

    def test_invalid_arguments(self):
        with self.assertRaisesRegex(ValueError, "objects to back up"):
            backup_restore.BackupManager(self.dir)
        for bad in (0, -1, 1.5, True):
            with self.assertRaisesRegex(ValueError, "save_every_n_steps"):
                backup_restore.BackupManager(
                    self.dir, save_every_n_steps=bad, v=tf.Variable(1)
                )
        with self.assertRaisesRegex(ValueError, "not both"):
            backup_restore.BackupManager(
                self.dir,
                save_freq=2,
                save_every_n_steps=2,
                v=tf.Variable(1),
            )
        with self.assertRaisesRegex(
            ValueError,
            "Invalid value for argument `save_freq`.*number of steps",
        ):
            backup_restore.BackupManager(
                self.dir, save_freq="epoch", v=tf.Variable(1)
            )
        # Other keywords are the objects to back up: a misspelled argument
        # must not become one.
        with self.assertRaisesRegex(TypeError, "did you mean 'async_backup'"):
            backup_restore.BackupManager(
                self.dir, asnyc_backup=False, v=tf.Variable(1)
            )
        with self.assertRaisesRegex(TypeError, r"step=3 is none"):
            backup_restore.BackupManager(self.dir, step=3, v=tf.Variable(1))
        self.assertFalse(os.path.exists(self.dir))

    def test_preemption_without_exit_returns_true_and_keeps_the_backup(self):
        calls = []
        previous = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
        self.addCleanup(signal.signal, signal.SIGTERM, previous)
        handler_before = signal.getsignal(signal.SIGTERM)
        manager = self._manager(
            _objects(), save_before_preemption=True, exit_on_preemption=False
        )
        manager.restore()
        self.assertFalse(manager.maybe_backup(1))
        os.kill(os.getpid(), signal.SIGTERM)
        self.assertTrue(manager.preemption_requested)
        self.assertEqual(calls, [signal.SIGTERM], "previous handler chained")
        self.assertTrue(manager.maybe_backup(2))
        manager.finish()
        self.assertEqual(dirs.entries(self.dir), ["backup-00000001"])
        self.assertIs(signal.getsignal(signal.SIGTERM), handler_before)
        self.assertEqual(self._manager(_objects()).restore(), 2)


class CallbackPreemptionTest(test_case.TestCase):
    def test_fit_returns_after_the_preemption_backup(self):
        class SignalAt(tf_keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch == 5 - 4:  # epoch 1, batch 1 (4 batches/epoch)
                    if self.model.optimizer.iterations.numpy() == 6:
                        os.kill(os.getpid(), signal.SIGTERM)

        model = synthetic.regression_model("tiny")
        x, y = synthetic.regression_data(64)
        callback = backup_restore.BackupAndRestore(
            self.dir,
            save_freq=False,
            save_before_preemption=True,
            exit_on_preemption=False,
        )
        history = model.fit(
            x,
            y,
            batch_size=16,
            epochs=3,
            verbose=0,
            callbacks=[callback, SignalAt()],
        )
        self.assertTrue(callback.preempted)
        self.assertEqual(history.epoch, [0, 1])  # stopped during epoch 1
        self.assertEqual(dirs.entries(self.dir), ["backup-00000001"])
        resumed = backup_restore.BackupAndRestore(self.dir)
        synthetic.regression_model("tiny").fit(
            x, y, batch_size=16, epochs=3, verbose=0, callbacks=[resumed]
        )
        self.assertEqual(resumed.resumed_from, (1, 2))
        self.assertIs(
            signal.getsignal(signal.SIGTERM), signal.SIG_DFL, "restored"
        )


if __name__ == "__main__":
    absltest.main()
