r"""Demo: a training killed for real, restarted, and checked against the truth.

  ./tools/bazel run //backup_restore/examples:demo [-- --keras=tf_keras]

1. trains the example model without interruption (the reference);
2. trains it again with backups every 5 batches and SIGKILLs the process in
   the middle of an epoch (a real `kill -9`, no cleanup possible);
3. inspects the backup directory the killed process left;
4. runs the same command again: it resumes from the backup and completes;
5. compares the final weights and History with the reference.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

from testing import procs

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


def main(argv):
    del argv
    trainer = procs.runfile("testing/fit_trainer")
    inspect = procs.runfile("backup_restore/inspect")
    work = tempfile.mkdtemp(prefix="backup_restore_demo_")
    common = ["--epochs=4", "--num_samples=160", "--batch_size=16"]
    common.append(f"--keras={_KERAS.value}")
    backup_dir = os.path.join(work, "backup")

    print("1. Uninterrupted reference run ...", flush=True)
    reference = procs.run(
        trainer, [*common, f"--backup_dir={work}/reference_backup"]
    )
    assert reference.returncode == 0, reference.describe()

    job = [*common, f"--backup_dir={backup_dir}", "--save_freq=5"]
    print(
        f"2. Same training, backups every 5 batches, SIGKILL after batch "
        f"{_KILL_AT.value} (epoch {_KILL_AT.value // 10}, batch "
        f"{_KILL_AT.value % 10} of 10) ...",
        flush=True,
    )
    killed = procs.run(trainer, [*job, f"--fail_at_step={_KILL_AT.value}"])
    print(f"   the process died with signal {killed.killed_by} (SIGKILL)")

    print(
        "3. What the killed process left (bazel run //backup_restore:inspect):"
    )
    out = subprocess.run(
        [sys.executable, inspect, backup_dir],
        capture_output=True,
        text=True,
        check=False,
    )
    print("   " + out.stdout.strip().replace("\n", "\n   "), flush=True)

    print("4. Running the same command again ...", flush=True)
    resumed = procs.run(trainer, job)
    assert resumed.returncode == 0, resumed.describe()
    epoch, batch = resumed.result["resumed_from"]
    print(f"   it resumed at epoch {epoch}, batch {batch} and completed")

    same_weights = (
        resumed.result["weights_sha256"] == reference.result["weights_sha256"]
    )
    same_history = resumed.result["history"] == reference.result["history"]
    print("5. Compared with the uninterrupted run:")
    print(f"   final weights bit-identical: {same_weights}")
    print(f"   History identical: {same_history}")
    print("   losses:", json.dumps(resumed.result["history"]["loss"]))
    print(
        f"   backup directory removed on completion: "
        f"{not os.path.exists(backup_dir)}"
    )
    return 0 if same_weights and same_history else 1


if __name__ == "__main__":
    app.run(main)
