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
    [
        "adam",
        "exponential_decay",
        "warmup_cosine",
        "legacy_adam",
        "legacy_sgd_decay",
        "loss_scale",
    ],
    "Optimizer / learning-rate schedule; loss_scale: mixed_float16 policy "
    "and LossScaleOptimizer.",
)
_MODEL = flags.DEFINE_enum(
    "model",
    "mlp",
    ["mlp", "string_lookup", "normalization", "batch_norm_dropout"],
    "mlp; string_lookup: adapted StringLookup + Embedding; normalization: "
    "an adapted Normalization layer; batch_norm_dropout: BatchNormalization "
    "and Dropout.",
)
_INPUT = flags.DEFINE_enum(
    "input",
    "numpy",
    ["numpy", "filtered_dataset"],
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


def _optimizer(tf, tf_keras):
    schedules = tf_keras.optimizers.schedules
    name = _OPTIMIZER.value
    if name == "exponential_decay":
        return tf_keras.optimizers.Adam(
            schedules.ExponentialDecay(0.01, 5, 0.9)
        )
    if name == "warmup_cosine":

        class WarmupCosine(schedules.LearningRateSchedule):
            """A user-defined schedule, without get_config()."""

            def __call__(self, step):
                step = tf.cast(step, tf.float32)
                cosine = 0.005 * (1 + tf.cos(3.14159 * (step - 4) / 40))
                return tf.where(step < 4, 0.01 * step / 4, cosine)

        return tf_keras.optimizers.Adam(WarmupCosine())
    if name == "legacy_adam":
        return tf_keras.optimizers.legacy.Adam(0.01)
    if name == "legacy_sgd_decay":
        return tf_keras.optimizers.legacy.SGD(
            schedules.ExponentialDecay(0.01, 5, 0.9), momentum=0.9
        )
    if name == "loss_scale":
        scaler = getattr(tf_keras.mixed_precision, "LossScaleOptimizer", None)
        scaler = scaler or tf_keras.optimizers.LossScaleOptimizer  # Keras 3
        return scaler(tf_keras.optimizers.Adam(0.01))
    return tf_keras.optimizers.Adam(0.01)


def _data(np):
    rng = np.random.RandomState(0)
    x = rng.normal(size=(_NUM_SAMPLES.value, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    if _MODEL.value == "string_lookup":
        words = np.array(["red", "green", "blue", "gold", "grey", "teal"])
        x = words[rng.randint(0, len(words), size=(_NUM_SAMPLES.value, 1))]
        y = (x == "red").astype("float32") + (x == "gold").astype("float32")

    return x, y


def _model(tf, tf_keras, x):
    layers = tf_keras.layers
    if _MODEL.value == "string_lookup":
        lookup = layers.StringLookup()
        lookup.adapt(x)
        inputs = tf_keras.Input((1,), dtype=tf.string)
        h = layers.Embedding(lookup.vocabulary_size(), 4)(lookup(inputs))
        h = layers.Flatten()(h)
    else:
        inputs = tf_keras.Input((4,))
        h = inputs
        if _MODEL.value == "normalization":
            norm = layers.Normalization()
            norm.adapt(x)
            h = norm(h)
        h = layers.Dense(8, activation="relu")(h)
        if _MODEL.value == "batch_norm_dropout":
            h = layers.Dropout(0.3)(layers.BatchNormalization()(h))
    outputs = layers.Dense(1, dtype="float32")(h)
    model = tf_keras.Model(inputs, outputs)
    model.compile(optimizer=_optimizer(tf, tf_keras), loss="mse")
    return model


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
    import numpy as np
    import tensorflow as tf

    import backup_restore
    from testing import synthetic

    tf_keras = synthetic.KERAS[_KERAS.value]  # either flavour
    if _KERAS.value == "keras3" and _OPTIMIZER.value.startswith("legacy"):
        raise app.UsageError("Keras 3 has no legacy optimizers.")
    if _OPTIMIZER.value == "loss_scale":
        tf_keras.mixed_precision.set_global_policy("mixed_float16")
    if _KERAS.value == "tf_keras":
        tf_keras.backend.experimental.enable_tf_random_generator()
    tf_keras.utils.set_random_seed(1)
    tf.config.experimental.enable_op_determinism()
    x, y = _data(np)
    if _KERAS.value == "keras3" and x.dtype.kind == "U":
        x = tf.constant(x)  # Keras 3's fit() takes no numpy string arrays
    model = _model(tf, tf_keras, x)
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
    kill_points = _kill_points(backup)
    validation = (x[:16], y[:16]) if _VALIDATION.value else None
    inputs = dict(x=x, y=y, batch_size=_BATCH_SIZE.value)
    if _INPUT.value == "filtered_dataset":
        dataset = (
            tf.data.Dataset.from_tensor_slices((x, y))
            .filter(lambda features, label: True)  # size unknown to fit()
            .shuffle(len(x), seed=3, reshuffle_each_iteration=True)
            .batch(_BATCH_SIZE.value)
        )
        inputs = dict(x=dataset)
    phases = []
    for phase in _PHASES.value:
        epochs, _, initial_epoch = phase.partition(":")
        history = model.fit(
            **inputs,
            epochs=int(epochs),
            initial_epoch=int(initial_epoch or 0),
            validation_data=validation,
            callbacks=[backup, kill_points],
            verbose=0,
        )
        resumed = backup.resumed_from
        phases.append(
            {
                "history_epochs": history.epoch,
                "history": history.history,
                "resumed_from": list(resumed) if resumed else None,
                "iterations": int(model.optimizer.iterations.numpy()),
            }
        )
    result = {
        "phases": phases,
        "weights_sha256": synthetic.weights_sha256(
            [
                w
                for w in model.weights
                if isinstance(
                    w, (tf.Variable, synthetic.KERAS["keras3"].Variable)
                )
            ]
        ),
        "preempted": backup.preempted,
        "backup_dir_exists": os.path.isdir(_BACKUP_DIR.value),
    }
    procs.report(_RESULT_FILE.value, result, json.dumps(result))
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["backup_dir"])
    sys.exit(app.run(main))
