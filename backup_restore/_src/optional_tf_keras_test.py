"""tf-keras is optional: `import backup_restore` and a Keras 3 fit() that
backs up and resumes work where tf_keras cannot be imported, and tf-keras's
fit() takes the callback whether it was made before or after tf_keras was
imported. Each run is a fresh interpreter; a resume is a real restart."""

import json
import os
import subprocess
import sys
import textwrap

from absl.testing import absltest

from testing import test_case

# Trains 3 epochs of 8 batches, backing up every 2 batches; `interrupt`
# raises after 11 batches. Prints what the caller checks, as JSON.
_RUN = textwrap.dedent(
    """
    import json, sys
    flavour, backup_dir, interrupt, block = sys.argv[1:]
    if block == "block":
        sys.modules["tf_keras"] = None  # `import tf_keras` raises
    import numpy as np
    import backup_restore
    early = backup_restore.BackupAndRestore(backup_dir, save_freq=2)
    if flavour == "keras3":
        import keras
    else:
        import tf_keras as keras
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    callback = (
        early if flavour == "keras3" or interrupt == "interrupt"
        else backup_restore.BackupAndRestore(backup_dir, save_freq=2)
    )

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if interrupt == "interrupt" and (
                int(self.model.optimizer.iterations.numpy()) == 11
            ):
                raise KeyboardInterrupt("interrupted")

    x = np.random.RandomState(0).rand(64, 4).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    try:
        model.fit(x, y, batch_size=8, epochs=3, verbose=0,
                  callbacks=[callback, Interrupt()])
    except KeyboardInterrupt:
        pass
    tf_keras = sys.modules.get("tf_keras")
    print(json.dumps({
        "resumed_from": callback.resumed_from,
        "iterations": int(model.optimizer.iterations.numpy()),
        "tf_keras_imported": tf_keras is not None,
        "tf_keras_callback": tf_keras is not None
        and isinstance(callback, tf_keras.callbacks.Callback),
    }))
    """
)


class OptionalTfKerasTest(test_case.TestCase):
    def _run(self, flavour, interrupt, block):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _RUN,
                flavour,
                self.tmp + "/backups",
                interrupt,
                block,
            ],
            capture_output=True,
            text=True,
            env=dict(
                os.environ,
                PYTHONPATH=os.pathsep.join(sys.path),
                TF_CPP_MIN_LOG_LEVEL="2",
                TF_USE_LEGACY_KERAS="0",
            ),
            timeout=600,
            check=False,
        )
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    def test_keras3_backs_up_and_resumes_without_tf_keras(self):
        first = self._run("keras3", "interrupt", "block")
        self.assertEqual(first["iterations"], 11)
        self.assertFalse(first["tf_keras_imported"])
        resumed = self._run("keras3", "run", "block")
        self.assertFalse(resumed["tf_keras_imported"])
        # Backed up after batch 10 (epoch 1, batch 2): the rest is trained.
        self.assertEqual(resumed["resumed_from"], [1, 2])
        self.assertEqual(resumed["iterations"], 24)

    def test_tf_keras_fit_takes_the_callback_made_before_or_after(self):
        # Made before tf_keras was imported: a Keras 3 callback that
        # tf-keras's fit() runs all the same.
        first = self._run("tf_keras", "interrupt", "import")
        self.assertEqual(first["iterations"], 11)
        self.assertFalse(first["tf_keras_callback"])
        # Made after: a tf_keras.callbacks.Callback too.
        resumed = self._run("tf_keras", "run", "import")
        self.assertTrue(resumed["tf_keras_callback"])
        self.assertEqual(resumed["resumed_from"], [1, 2])
        self.assertEqual(resumed["iterations"], 24)


if __name__ == "__main__":
    absltest.main()
