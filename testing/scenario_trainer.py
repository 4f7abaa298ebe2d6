r"""Test binary: Model.fit() variations a user brings, with kill points.

Each run trains one scenario (an optimizer or LR schedule, a model with
preprocessing layers, validation data, one fit() call or several) with
BackupAndRestore and writes the outcome as JSON. Tests run it three ways
with the same flags: uninterrupted; with a kill point (the process dies by
a real signal there); and again without one (it resumes). The last must end
bit-identical to the first.

Kill points (all deterministic; "batches" count across fit() calls):
  --kill_after_batches=N     SIGKILL after N batches (after the last backup
                             committed).
  --pause_after_batches=N    print PAUSED after N batches and wait for a
                             signal (with --save_before_preemption a SIGTERM
                             then backs up at that batch and exits 42).
  --pause_in_validation=N    the same in the N-th validation batch.
  --pause_at=STAGE           the same inside the callback's end of training
                             (stages of backup_restore._src.faults).
"""

import json
import os
import signal
import sys
import time

from absl import app
from absl import flags

from testing import procs
from testing import scenario_setup

_BACKUP_DIR = flags.DEFINE_string("backup_dir", None, "Backup directory.")
_RESULT_FILE = flags.DEFINE_string("result_file", None, "Outcome as JSON.")
_KERAS = flags.DEFINE_enum(
    "keras", "tf_keras", ["keras3", "tf_keras"], "Which Keras builds the model."
)
_PHASES = flags.DEFINE_list(
    "phases",
    ["3"],
    "One fit() call per item: EPOCHS or EPOCHS:INITIAL_EPOCH.",
)
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer",
    "adam",
    scenario_setup.OPTIMIZERS,
    "Optimizer / learning-rate schedule; loss_scale: mixed_float16 policy "
    "and LossScaleOptimizer.",
)
_MODEL = flags.DEFINE_enum(
    "model",
    "mlp",
    scenario_setup.MODELS,
    "mlp; string_lookup: adapted StringLookup + Embedding; normalization: "
    "an adapted Normalization layer; batch_norm_dropout: BatchNormalization "
    "and Dropout.",
)
_INPUT = flags.DEFINE_enum(
    "input",
    "numpy",
    scenario_setup.INPUTS,
    "numpy arrays, or a shuffled tf.data.Dataset of unknown size (filter()).",
)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Training samples.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Batch size.")
_SAVE_FREQ = flags.DEFINE_string("save_freq", "epoch", "'epoch' or an int.")
_DELETE_CHECKPOINT = flags.DEFINE_bool("delete_checkpoint", True, "")
_SAVE_BEFORE_PREEMPTION = flags.DEFINE_bool("save_before_preemption", False, "")
_VALIDATION = flags.DEFINE_bool("validation", False, "Pass validation_data.")
_KILL_AFTER = flags.DEFINE_integer("kill_after_batches", None, "See above.")
_PAUSE_AFTER = flags.DEFINE_integer("pause_after_batches", None, "")
_PAUSE_IN_VALIDATION = flags.DEFINE_integer("pause_in_validation", None, "")
_PAUSE_AT = flags.DEFINE_string("pause_at", None, "A faults stage.")


def _wait_for_signal(callback):
    print("PAUSED", flush=True)
    while not callback.preemption_requested:
        time.sleep(0.02)


def _kill_points(backup):
    from testing import keras_callbacks

    class KillPoints(keras_callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            KillPoints.batches += 1
            if KillPoints.batches == _KILL_AFTER.value:
                backup.wait_for_backup()
                print(f"KILLING after {KillPoints.batches} batches", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            if KillPoints.batches == _PAUSE_AFTER.value:
                _wait_for_signal(backup)

        def on_test_batch_end(self, batch, logs=None):
            if batch + 1 == _PAUSE_IN_VALIDATION.value:
                _wait_for_signal(backup)

    return KillPoints()


def _pause_in_callback(backup):
    from backup_restore._src import faults

    def hook(stage, path):
        del path
        if stage == _PAUSE_AT.value:
            _wait_for_signal(backup)

    faults.set_hook(hook)


def main(argv):
    del argv
    import tensorflow as tf

    import backup_restore
    from testing import synthetic

    try:
        scenario = scenario_setup.Scenario(
            keras=_KERAS.value,
            optimizer=_OPTIMIZER.value,
            model=_MODEL.value,
            input=_INPUT.value,
            num_samples=_NUM_SAMPLES.value,
            batch_size=_BATCH_SIZE.value,
            validation=_VALIDATION.value,
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    scenario.set_policy()
    if _KERAS.value == "tf_keras":
        synthetic.KERAS[
            "tf_keras"
        ].backend.experimental.enable_tf_random_generator()
    tf.config.experimental.enable_op_determinism()
    model = scenario.build_model()
    save_freq = _SAVE_FREQ.value
    save_freq = save_freq if save_freq == "epoch" else int(save_freq)
    backup = backup_restore.BackupAndRestore(
        _BACKUP_DIR.value,
        save_freq=save_freq,
        delete_checkpoint=_DELETE_CHECKPOINT.value,
        save_before_preemption=_SAVE_BEFORE_PREEMPTION.value,
    )
    if _PAUSE_AT.value:
        _pause_in_callback(backup)
    phases = scenario_setup.run_job(
        scenario,
        model,
        backup,
        scenario_setup.parse_phases(_PHASES.value),
        callbacks=[_kill_points(backup)],
    )
    result = {
        "phases": phases,
        "weights_sha256": scenario_setup.weights_sha256(model),
        "preempted": backup.preempted,
        "backup_dir_exists": os.path.isdir(_BACKUP_DIR.value),
    }
    procs.report(_RESULT_FILE.value, result, json.dumps(result))
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["backup_dir"])
    sys.exit(app.run(main))
