r"""Example: preemption. On SIGTERM, back up at that batch and exit 42.

Cloud VMs and schedulers announce a kill with SIGTERM and a grace period.
With `save_before_preemption=True` the callback finishes the current batch,
backs up at exactly that batch, waits until the backup is committed and exits
with status 42 (`backup_restore.RESTART_EXIT_CODE`). Restart on 42 and no
work is lost:

  until ./tools/bazel run //backup_restore/examples:preemption; do
    [ $? -eq 42 ] || break
  done

Then, from another terminal, `kill <pid>` with the pid it prints.
"""

import os
import tempfile

import numpy as np
from absl import app
from absl import flags

import backup_restore

_BACKUP_DIR = flags.DEFINE_string(
    "backup_dir",
    os.path.join(tempfile.gettempdir(), "backup_restore_preemption_example"),
    "Where the backups live (an absolute path or a URL such as gs://...).",
)
_EPOCHS = flags.DEFINE_integer("epochs", 20, "Epochs to train.", lower_bound=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tf_keras

    # Two classes of points: inside or outside the unit sphere.
    points = np.random.default_rng(0).normal(size=(30_000, 3))
    labels = (np.linalg.norm(points, axis=1) < 1.2).astype("float32")

    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((3,)),
            tf_keras.layers.Dense(32, activation="relu"),
            tf_keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")

    backup = backup_restore.BackupAndRestore(
        _BACKUP_DIR.value,
        save_freq="epoch",
        save_before_preemption=True,  # SIGTERM: back up, exit 42
    )
    print(f"Training as pid {os.getpid()}: `kill {os.getpid()}` preempts it.")
    model.fit(points, labels, epochs=_EPOCHS.value, callbacks=[backup])
    if backup.resumed_from:
        epoch, batch = backup.resumed_from
        print(f"Completed after resuming at epoch {epoch}, batch {batch}.")
    else:
        print("Completed without a preemption.")


if __name__ == "__main__":
    app.run(main)
