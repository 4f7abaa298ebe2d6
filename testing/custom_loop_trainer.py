r"""Test trainer: a custom training loop with BackupManager, killable.

A tf.function train step in a plain Python loop. The manager backs up the
model, the optimizer, the tf.data iterator (its position and shuffle state)
and a tf.random.Generator (used for input noise); killed and restarted, the
loop continues at the step after the last backup and ends bit-identical to an
uninterrupted run.

  ./tools/bazel run //testing:custom_loop_trainer -- \
      --backup_dir=/tmp/custom_loop_backup --steps=200 --save_every=20
"""

import os
import signal
import sys
import time

from absl import app
from absl import flags

from backup_restore._src import cli
from testing import procs

_BACKUP_DIR = flags.DEFINE_string("backup_dir", None, "Backup directory.")
_KERAS = flags.DEFINE_enum(
    "keras",
    "keras3",
    ["keras3", "tf_keras"],
    "Which Keras builds the model and optimizer: keras3 (tf.keras in "
    "TensorFlow 2.21) or tf_keras.",
)
_DROPOUT = flags.DEFINE_float("dropout", 0.0, "Dropout rate.", lower_bound=0.0)
_STEPS = flags.DEFINE_integer("steps", 60, "Training steps.", lower_bound=1)
_SAVE_EVERY = flags.DEFINE_integer(
    "save_every", 10, "Back up every this many steps.", lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 16, "Batch size.", lower_bound=1
)
_SEED = flags.DEFINE_integer("seed", 1, "Random seed.")
_ASYNC_BACKUP = flags.DEFINE_bool("async_backup", True, "Background writes.")
_SAVE_BEFORE_PREEMPTION = flags.DEFINE_bool(
    "save_before_preemption",
    False,
    "On SIGTERM: back up at the current step, then exit with status 42.",
)
_FAIL_AT_STEP = flags.DEFINE_integer(
    "fail_at_step",
    None,
    "Fail after this many steps of this run (after the backups due by then "
    "are committed).",
    lower_bound=1,
)
_FAIL_WITH = flags.DEFINE_enum(
    "fail_with",
    "sigkill",
    ["sigkill", "sigterm", "exception", "pause"],
    "How --fail_at_step fails (pause: print PAUSED, wait for a signal).",
)
_RESULT_FILE = flags.DEFINE_string("result_file", None, "Outcome as JSON.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _BACKUP_DIR.value:
        raise app.UsageError("--backup_dir is required.")
    import tensorflow as tf  # here, not at the top: keeps --help fast

    import backup_restore
    from testing import synthetic

    keras = synthetic.KERAS[_KERAS.value]
    if _KERAS.value == "tf_keras":
        keras.backend.experimental.enable_tf_random_generator()
    keras.utils.set_random_seed(_SEED.value)
    tf.config.experimental.enable_op_determinism()
    model = synthetic.regression_model(
        "small", dropout=_DROPOUT.value, flavour=_KERAS.value
    )
    optimizer = keras.optimizers.Adam(0.01)
    dataset = synthetic.regression_dataset(
        256, _BATCH_SIZE.value, seed=_SEED.value, shuffle_seed=_SEED.value
    ).repeat()
    iterator = iter(dataset)
    rng = tf.random.Generator.from_seed(_SEED.value)
    loss_fn = keras.losses.MeanSquaredError()

    @tf.function
    def train_step(x, y):
        x = x + 0.01 * rng.normal(tf.shape(x))  # randomness to back up
        return synthetic.gradient_step(
            model, optimizer, lambda: loss_fn(y, model(x, training=True))
        )

    manager = backup_restore.BackupManager(
        cli.user_path(_BACKUP_DIR.value),
        save_freq=_SAVE_EVERY.value,
        async_backup=_ASYNC_BACKUP.value,
        save_before_preemption=_SAVE_BEFORE_PREEMPTION.value,
        model=model,
        optimizer=optimizer,
        iterator=iterator,
        rng=rng,
    )
    optimizer.build(model.trainable_variables)  # slots exist before restore
    step = manager.restore()
    resumed_from = manager.resumed_from
    losses = []
    steps_this_run = 0
    while step < _STEPS.value:
        x, y = next(iterator)
        losses.append(float(train_step(x, y)))
        step += 1
        steps_this_run += 1
        if steps_this_run == _FAIL_AT_STEP.value:
            manager.wait_for_backup()
            print(f"FAILING after {steps_this_run} steps", flush=True)
            how = _FAIL_WITH.value
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            elif how == "exception":
                raise RuntimeError("simulated failure")
            else:
                print("PAUSED", flush=True)
                while not manager.preemption_requested:
                    time.sleep(0.05)
        manager.maybe_backup(step)
    manager.finish()

    result = {
        "steps": step,
        "resumed_from": resumed_from,
        "weights_sha256": synthetic.weights_sha256(model.weights),
        "optimizer_iterations": int(optimizer.iterations.numpy()),
        "final_loss": losses[-1] if losses else None,
        "losses": losses,  # of this run's steps
    }
    loss = f"{losses[-1]:.6g}" if losses else "none"
    procs.report(
        _RESULT_FILE.value,
        result,
        f"steps={step} resumed_from="
        f"{'step:' + str(resumed_from) if resumed_from else 'none'} "
        f"final_loss={loss}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
