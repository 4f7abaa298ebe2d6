"""Parity with tf_keras.callbacks.BackupAndRestore (tf-keras 2.21).

The same interrupted training runs with tf-keras's callback and with ours;
where they agree (resume position, save_freq semantics, cleanup) the results
must match. Where ours is deliberately better it is asserted explicitly.
"""

import os

import tf_keras
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import dirs
from testing import keras_callbacks
from testing import synthetic
from testing import test_case

EPOCHS = 4
X, Y = synthetic.regression_data(64)  # batch 16: 4 batches per epoch


def _run(make_callback, interrupt_at, **callback_kwargs):
    """Interrupted fit, then a resumed fit; returns (recorder, history, dir)."""
    directory = make_callback.directory
    tf_keras.utils.set_random_seed(1)
    model = synthetic.regression_model("tiny")
    try:
        model.fit(
            X,
            Y,
            batch_size=16,
            epochs=EPOCHS,
            verbose=0,
            callbacks=[
                make_callback(directory, **callback_kwargs),
                keras_callbacks.InterruptAt(interrupt_at),
            ],
        )
    except keras_callbacks.Interrupted:
        pass
    keras_callbacks.simulate_restart()  # the job runs again
    tf_keras.utils.set_random_seed(1)
    model = synthetic.regression_model("tiny")
    recorder = keras_callbacks.Recorder()
    history = model.fit(
        X,
        Y,
        batch_size=16,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[make_callback(directory, **callback_kwargs), recorder],
    )
    return recorder, history


class ParityTest(test_case.TestCase):
    def _both(self, interrupt_at, **kwargs):
        results = {}
        for name, cls in (
            ("tf_keras", tf_keras.callbacks.BackupAndRestore),
            ("ours", backup_restore.BackupAndRestore),
        ):

            def make(directory, cls=cls, **kw):
                return cls(directory, **kw)

            make.directory = os.path.join(self.tmp, name)
            results[name] = (
                *_run(make, interrupt_at, **kwargs),
                make.directory,
            )
        return results["tf_keras"], results["ours"]

    @parameterized.named_parameters(
        ("epoch_saves", dict(save_freq="epoch"), 9, 2),
        ("int_saves_at_last_batch_of_epoch", dict(save_freq=4), 9, 2),
    )
    def test_resume_epoch_index(self, kwargs, interrupt_at, expected_epoch):
        (tk_rec, tk_hist, _), (our_rec, our_hist, _) = self._both(
            interrupt_at, **kwargs
        )
        self.assertEqual(tk_rec.epochs[0], expected_epoch)
        self.assertEqual(our_rec.epochs, tk_rec.epochs)
        self.assertEqual(our_rec.batches[0], tk_rec.batches[0])
        # tf-keras's History only has the epochs after resuming; ours has all.
        self.assertLen(tk_hist.epoch, EPOCHS - expected_epoch)
        self.assertEqual(our_hist.epoch, list(range(EPOCHS)))

    def test_int_save_freq_resumes_at_the_same_batch(self):
        # 6 batches, saves every 3 batches: both resume at epoch 1, batch 2.
        (tk_rec, _, _), (our_rec, _, _) = self._both(7, save_freq=3)
        self.assertEqual(tk_rec.batches[0], (1, 2))
        self.assertEqual(our_rec.batches[0], (1, 2))
        # tf-keras re-reads the data of the resumed epoch from its start (its
        # own known limitation); ours continues at the next unseen batch, as
        # the kill tests show through bit-identical weights.

    def test_cleanup_on_completion(self):
        (_, _, tk_dir), (_, _, our_dir) = self._both(100)
        self.assertFalse(
            os.path.exists(os.path.join(tk_dir, "chief"))
            and os.listdir(os.path.join(tk_dir, "chief")),
        )
        self.assertFalse(os.path.exists(our_dir))

    def test_model_stays_usable_for_another_fit(self):
        # tf-keras's callback deletes model._training_state at the end of
        # fit(), so the next fit() of that model fails; ours does not.
        for name, cls, breaks in (
            ("tf_keras", tf_keras.callbacks.BackupAndRestore, True),
            ("ours", backup_restore.BackupAndRestore, False),
        ):
            model = synthetic.regression_model("tiny")
            directory = os.path.join(self.tmp, name)
            model.fit(X, Y, epochs=1, verbose=0, callbacks=[cls(directory)])
            if breaks:
                with self.assertRaisesRegex(AttributeError, "_training_state"):
                    model.fit(X, Y, epochs=1, verbose=0)
            else:
                model.fit(X, Y, epochs=1, verbose=0)

    def test_completion_keeps_other_files_unlike_keras3(self):
        # Keras 3's BackupAndRestore rmtree()s backup_dir on completion,
        # files it did not write included; ours deletes only its own.
        import keras  # Keras 3, installed with TensorFlow

        for name in ("keras3", "ours"):
            directory = os.path.join(self.tmp, name)
            os.makedirs(directory)
            notes = os.path.join(directory, "notes.txt")
            with open(notes, "w") as f:
                f.write("the user's own file")
            if name == "keras3":
                model = keras.Sequential(
                    [keras.Input((X.shape[1],)), keras.layers.Dense(1)]
                )
                model.compile(optimizer="adam", loss="mse")
                callback = keras.callbacks.BackupAndRestore(directory)
            else:
                model = synthetic.regression_model("tiny")
                callback = backup_restore.BackupAndRestore(directory)
            model.fit(X, Y, epochs=1, verbose=0, callbacks=[callback])
            self.assertEqual(os.path.exists(notes), name == "ours", name)

    def test_delete_checkpoint_false_keeps_the_backup(self):
        (_, _, tk_dir), (_, _, our_dir) = self._both(
            100, delete_checkpoint=False
        )
        self.assertTrue(os.listdir(tk_dir))
        # The first run completed 4 epochs (4 backups, the last one kept);
        # the second found it complete and trained nothing.
        self.assertEqual(dirs.entries(our_dir), ["backup-00000004"])


if __name__ == "__main__":
    absltest.main()
