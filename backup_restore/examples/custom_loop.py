r"""Example: a custom training loop with backup_restore.BackupManager.

  ./tools/bazel run //backup_restore/examples:custom_loop -- --steps=3000

The manager backs up the model, the optimizer and the tf.data iterator (its
position and shuffle state) every --save_freq steps. Kill it (Ctrl-C,
`kill -9`) and run the same command again: the loop continues after the last
backup, with the batches it would have seen. `finish()` deletes the backups.
"""

import os
import tempfile

import tensorflow as tf
from absl import app
from absl import flags

import backup_restore

_BACKUP_DIR = flags.DEFINE_string(
    "backup_dir",
    os.path.join(tempfile.gettempdir(), "backup_restore_custom_loop_example"),
    "Where the backups live (an absolute path or a URL such as gs://...).",
)
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps.", lower_bound=1)
_SAVE_FREQ = flags.DEFINE_integer(
    "save_freq", 500, "Back up every this many steps.", lower_bound=1
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tf_keras

    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential(
        [
            tf_keras.Input((8,)),
            tf_keras.layers.Dense(16),
            tf_keras.layers.Dense(1),
        ]
    )
    optimizer = tf_keras.optimizers.SGD(0.01)
    features = tf.random.normal([1024, 8], seed=1)
    noise = tf.random.normal([1024, 1], stddev=0.1, seed=3)
    targets = tf.reduce_sum(features, axis=1, keepdims=True) + noise
    dataset = tf.data.Dataset.from_tensor_slices((features, targets))
    iterator = iter(dataset.shuffle(1024, seed=2).batch(32).repeat())

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(
            zip(grads, model.trainable_variables, strict=True)
        )
        return loss

    manager = backup_restore.BackupManager(
        _BACKUP_DIR.value,
        save_freq=_SAVE_FREQ.value,
        model=model,
        optimizer=optimizer,
        iterator=iterator,
    )
    optimizer.build(model.trainable_variables)  # slots exist before restoring
    step = manager.restore()  # 0 on a fresh start
    if manager.resumed_from is not None:
        print(f"Resumed at step {step} from a backup.")
    while step < _STEPS.value:
        loss = train_step(*next(iterator))
        step += 1
        if step % 100 == 0:
            print(f"step {step}: loss {float(loss):.5f}", flush=True)
        manager.maybe_backup(step)  # every --save_freq steps
    manager.finish()  # waits for the last backup, then deletes the backups
    print(f"Done: {step} steps.")


if __name__ == "__main__":
    app.run(main)
