r"""Example: Model.fit() that survives being killed, with BackupAndRestore.

  ./tools/bazel run //backup_restore/examples:fit -- --epochs=5

Stop it at any moment (Ctrl-C, `kill -9`, a crashed machine) and run the same
command again: training resumes from the last backup instead of starting
over. When fit() completes, the backups are deleted. `--keras=tf_keras`
builds the model with tf-keras instead of Keras 3 (`import keras`, which is
`tf.keras` in TensorFlow 2.21).
"""

import os
import tempfile

import numpy as np
from absl import app
from absl import flags

import backup_restore

_BACKUP_DIR = flags.DEFINE_string(
    "backup_dir",
    os.path.join(tempfile.gettempdir(), "backup_restore_fit_example"),
    "Where the backups live (an absolute path or a URL such as gs://...); "
    "one directory per training job.",
)
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs to train.", lower_bound=1)
_SAVE_FREQ = flags.DEFINE_string(
    "save_freq", "epoch", "'epoch', or back up every this many batches."
)
_DELETE_CHECKPOINT = flags.DEFINE_bool(
    "delete_checkpoint", True, "Delete the backups when fit() completes."
)
_KERAS = flags.DEFINE_enum(
    "keras",
    "keras3",
    ["keras3", "tf_keras"],
    "keras3: `import keras` (TensorFlow's default); tf_keras: `import "
    "tf_keras` (Keras 2).",
)
_VERBOSE = flags.DEFINE_enum(
    "verbose", "auto", ["auto", "0", "1", "2"], "Model.fit(verbose=...)."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _KERAS.value == "tf_keras":
        import tf_keras as keras
    else:
        import keras

    # Data: a learnable linear regression (any x, y or tf.data.Dataset).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 16)).astype("float32")
    y = x @ rng.normal(size=(16, 1)).astype("float32")

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss="mse")

    save_freq = _SAVE_FREQ.value
    backup = backup_restore.BackupAndRestore(
        _BACKUP_DIR.value,
        save_freq=save_freq if save_freq == "epoch" else int(save_freq),
        delete_checkpoint=_DELETE_CHECKPOINT.value,
    )
    verbose = _VERBOSE.value
    history = model.fit(
        x,
        y,
        batch_size=32,
        epochs=_EPOCHS.value,
        callbacks=[backup],
        verbose=verbose if verbose == "auto" else int(verbose),
    )

    if backup.resumed_from:
        epoch, batch = backup.resumed_from
        print(f"Resumed at epoch {epoch}, batch {batch} from a backup.")
    else:
        print("Trained from scratch (no backup to resume from).")
    print(f"Final loss: {history.history['loss'][-1]:.6f}")


if __name__ == "__main__":
    app.run(main)
