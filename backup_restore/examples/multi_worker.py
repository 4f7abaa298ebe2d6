r"""Example: multi-worker training (MultiWorkerMirroredStrategy) with backups.

Every worker runs this same program with its own TF_CONFIG. The chief writes
the backups into --backup_dir, which every worker must see (a shared disk,
gs://...); when any worker dies, restart the whole group and it resumes from
the chief's last backup. The launcher does that on one machine (2 workers on
127.0.0.1; it restarts the group when a worker dies):

  ./tools/bazel run //testing:launcher -- --num_workers=2 \
      --trainer=backup_restore/examples/multi_worker

Kill one of the workers (`kill -9 <pid>`, the pids are printed): the launcher
starts the group again, and training continues after the last backup.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

import backup_restore

_BACKUP_DIR = flags.DEFINE_string(
    "backup_dir",
    os.path.join(tempfile.gettempdir(), "backup_restore_multi_worker_example"),
    "Where the chief writes the backups; every worker must see it.",
)
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs to train.", lower_bound=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tf_keras

    # Before anything else starts TensorFlow's runtime.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = strategy.cluster_resolver.task_id

    tf_keras.utils.set_random_seed(1)  # the same data on every worker
    images = np.random.default_rng(0).uniform(size=(4096, 8, 8, 1))
    labels = (images.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(4096, seed=2)
        .batch(64)  # the global batch, split among the workers
    )
    with strategy.scope():
        model = tf_keras.Sequential(
            [
                tf_keras.Input((8, 8, 1)),
                tf_keras.layers.Conv2D(8, 3, activation="relu"),
                tf_keras.layers.Flatten(),
                tf_keras.layers.Dense(2),
            ]
        )
        model.compile(
            optimizer="adam",
            loss=tf_keras.losses.SparseCategoricalCrossentropy(
                from_logits=True
            ),
            metrics=["accuracy"],
        )

    backup = backup_restore.BackupAndRestore(_BACKUP_DIR.value)
    history = model.fit(
        dataset,
        epochs=_EPOCHS.value,
        callbacks=[backup],
        verbose=2 if task == 0 else 0,  # progress from the chief only
    )
    if task == 0:
        if backup.resumed_from:
            epoch, batch = backup.resumed_from
            print(f"Resumed at epoch {epoch}, batch {batch} from a backup.")
        print(f"Final accuracy: {history.history['accuracy'][-1]:.3f}")


if __name__ == "__main__":
    app.run(main)
