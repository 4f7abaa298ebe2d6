r"""Demo: a training killed for real, restarted, and checked against the truth.

  ./tools/bazel run //backup_restore/examples:demo [-- --keras=tf_keras]

1. trains a small model without interruption (the reference);
2. trains it again with backups every 5 batches in a child process that is
   SIGKILLed in the middle of an epoch (a real `kill -9`, no cleanup
   possible);
3. inspects the backup directory the killed process left;
4. runs the same training again: it resumes from the backup and completes;
5. compares the final weights and History with the reference.

Each training runs in a child process of this demo (the same file with
--train_into): its model, data and seed are the same every time.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

_KILL_AT = flags.DEFINE_integer(
    "kill_at_batch", 23, "Batch after which the training is killed."
)
_KERAS = flags.DEFINE_enum(
    "keras",
    "keras3",
    ["keras3", "tf_keras"],
    "Which Keras builds the model: keras3 (tf.keras in TensorFlow 2.21, its "
    "default) or tf_keras.",
)
_TRAIN_INTO = flags.DEFINE_string(
    "train_into",
    None,
    "Internal: train in this process and write the outcome as JSON here.",
)
_BACKUP_DIR = flags.DEFINE_string(
    "backup_dir", None, "Internal: the training's backup_dir."
)
_SAVE_FREQ = flags.DEFINE_integer(
    "save_freq", None, "Internal: back up every this many batches."
)
_KILL = flags.DEFINE_bool(
    "kill", False, "Internal: SIGKILL the training after --kill_at_batch."
)

_EPOCHS = 4
_SAMPLES = 160
_BATCH = 16  # 10 batches per epoch


def _train():
    """One run of the training, in this process: the child's part."""
    import numpy as np
    import tensorflow as tf

    import backup_restore

    if _KERAS.value == "tf_keras":
        import tf_keras as keras
    else:
        import keras

    keras.utils.set_random_seed(1)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(_SAMPLES, 16)).astype("float32")
    y = x @ rng.normal(size=(16, 1)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    backup = backup_restore.BackupAndRestore(
        _BACKUP_DIR.value, save_freq=_SAVE_FREQ.value or "epoch"
    )

    class KillAt(keras.callbacks.Callback):
        """A crash at a chosen batch: SIGKILL, nothing runs after it."""

        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if _KILL.value and self.batches == _KILL_AT.value:
                # Where the next run resumes then does not depend on timing.
                backup.wait_for_backup()
                os.kill(os.getpid(), signal.SIGKILL)

    history = model.fit(
        x,
        y,
        batch_size=_BATCH,
        epochs=_EPOCHS,
        verbose=0,
        callbacks=[backup, KillAt()],
    )
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(variable.numpy().tobytes())
    with open(_TRAIN_INTO.value, "w") as f:
        json.dump(
            {
                "resumed_from": backup.resumed_from,
                "weights_sha256": digest.hexdigest(),
                "history": history.history,
            },
            f,
        )


def _child(work, name, *flags_):
    """Runs one training in a child process; returns (returncode, outcome)."""
    out = os.path.join(work, f"{name}.json")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            f"--train_into={out}",
            f"--keras={_KERAS.value}",
            f"--kill_at_batch={_KILL_AT.value}",
            *flags_,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if proc.returncode not in (0, -signal.SIGKILL):
        sys.exit(f"training {name} failed:\n{proc.stderr[-4000:]}")
    if not os.path.exists(out):
        return proc.returncode, None
    with open(out) as f:
        return proc.returncode, json.load(f)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _TRAIN_INTO.value:
        _train()
        return 0
    work = tempfile.mkdtemp(prefix="backup_restore_demo_")
    backup_dir = os.path.join(work, "backup")

    print("1. Uninterrupted reference run ...", flush=True)
    _, reference = _child(
        work, "reference", f"--backup_dir={work}/reference_backup"
    )

    job = [f"--backup_dir={backup_dir}", "--save_freq=5"]
    print(
        f"2. Same training, backups every 5 batches, SIGKILL after batch "
        f"{_KILL_AT.value} (epoch {_KILL_AT.value // 10}, batch "
        f"{_KILL_AT.value % 10} of 10) ...",
        flush=True,
    )
    returncode, _ = _child(work, "killed", *job, "--kill")
    print(f"   the process died with signal {-returncode} (SIGKILL)")

    print(
        "3. What the killed process left (bazel run //backup_restore:inspect):"
    )
    out = subprocess.run(
        [sys.executable, "-m", "backup_restore.inspect_backups", backup_dir],
        capture_output=True,
        text=True,
        check=False,
    )
    print("   " + out.stdout.strip().replace("\n", "\n   "), flush=True)

    print("4. Running the same training again ...", flush=True)
    _, resumed = _child(work, "resumed", *job)
    epoch, batch = resumed["resumed_from"]
    print(f"   it resumed at epoch {epoch}, batch {batch} and completed")

    same_weights = resumed["weights_sha256"] == reference["weights_sha256"]
    same_history = resumed["history"] == reference["history"]
    print("5. Compared with the uninterrupted run:")
    print(f"   final weights bit-identical: {same_weights}")
    print(f"   History identical: {same_history}")
    print("   losses:", json.dumps(resumed["history"]["loss"]))
    print(
        f"   backup directory removed on completion: "
        f"{not os.path.exists(backup_dir)}"
    )
    return 0 if same_weights and same_history else 1


if __name__ == "__main__":
    app.run(main)
