r"""Test trainer: Model.fit() with BackupAndRestore and fault injection.

Trains a small regression MLP on embedded synthetic data. Kill it at any time
(Ctrl-C, `kill -9`, or the --fail_* flags) and run the same command again: it
resumes from the last backup. When training completes the backup is deleted.

  ./tools/bazel run //testing:fit_trainer -- \
      --backup_dir=/tmp/fit_trainer_backup --epochs=5 --save_freq=10

The last line printed summarises the run, e.g.
  RESULT epochs_run=3 resumed_from=epoch:2,batch:0 final_loss=0.0123
"""

import glob
import json
import os
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging

from backup_restore._src import cli
from testing import fit_setup
from testing import procs

_BACKUP_DIR = flags.DEFINE_string(
    "backup_dir", None, "Directory for the backups (created if missing)."
)
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs to train.", lower_bound=1)
_STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch",
    None,
    "Batches per epoch; default: one pass over the data.",
    lower_bound=1,
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 16, "Batch size.", lower_bound=1
)
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 256, "Synthetic samples.", lower_bound=1
)
_SAVE_FREQ = flags.DEFINE_string(
    "save_freq",
    "epoch",
    "'epoch', a number of batches between backups, or 'false' (backups on "
    "preemption only, with --save_before_preemption).",
)
_DELETE_CHECKPOINT = flags.DEFINE_bool(
    "delete_checkpoint", True, "Delete the backup when training completes."
)
_KERAS = flags.DEFINE_enum(
    "keras",
    "keras3",
    ["keras3", "tf_keras"],
    "Which Keras builds the model: keras3 (tf.keras in TensorFlow 2.21, "
    "its default) or tf_keras (the legacy package).",
)
_INPUT = flags.DEFINE_enum(
    "input",
    "numpy",
    ["numpy", "dataset", "dataset_repeat", "sequence", "generator"],
    "Input pipeline: numpy arrays, a finite tf.data.Dataset, a repeated one "
    "(needs --steps_per_epoch), a keras Sequence, or a Python generator "
    "(needs --steps_per_epoch).",
)
_SHUFFLE = flags.DEFINE_bool("shuffle", True, "Shuffle the training data.")
_MODEL = flags.DEFINE_enum(
    "model",
    "regression",
    ["regression", "gan", "gan_optimizer_in_compile", "raw_variable"],
    "What trains: the regression MLP (--model_size, --dropout); a GAN as "
    "keras.io's DCGAN example writes one (two optimizers held as attributes, "
    "a custom train_step; with gan_optimizer_in_compile the discriminator's "
    "is the compiled one too); a subclassed model with a raw tf.Variable "
    "its train_step updates. The last three read numpy input.",
)
_OPTIMIZER = flags.DEFINE_enum(
    "optimizer",
    "adam",
    ["adam", "legacy_sgd"],
    "The regression model's optimizer: Adam(0.01), or tf-keras's legacy "
    "SGD(0.001) (--keras=tf_keras only).",
)
_MODEL_SIZE = flags.DEFINE_enum(
    "model_size", "small", ["tiny", "small", "large"], "Model size."
)
_DROPOUT = flags.DEFINE_float("dropout", 0.0, "Dropout rate.", lower_bound=0.0)
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
    "steps_per_execution",
    1,
    "Model.compile steps_per_execution.",
    lower_bound=1,
)
_SEED = flags.DEFINE_integer("seed", 1, "Random seed.")
_TF_RANDOM_GENERATOR = flags.DEFINE_bool(
    "tf_random_generator",
    True,
    "Call tf_keras.backend.experimental.enable_tf_random_generator(), so "
    "that layer randomness (Dropout) is backed up and resumes exactly.",
)
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", True, "tf.config.experimental.enable_op_determinism()."
)
_FAIL_AT_STEP = flags.DEFINE_integer(
    "fail_at_step",
    None,
    "Fail after this many batches of this run (counted from the start of "
    "this process), to demonstrate a crash.",
    lower_bound=1,
)
_RAISE_AT_EPOCH_BEGIN = flags.DEFINE_integer(
    "raise_at_epoch_begin",
    None,
    "Another callback (after the backup callback) raises RuntimeError at "
    "the beginning of this epoch; this process then calls fit() again, "
    "which resumes from the backup. Every worker raises at the same epoch "
    "and waits for the others before the second fit().",
    lower_bound=0,
)
_FAIL_ON_TASK = flags.DEFINE_integer(
    "fail_on_task",
    None,
    "Multi-worker: apply --fail_at_step and --kill_at_backup_stage only in "
    "the worker with this index.",
)
_FAIL_WITH = flags.DEFINE_enum(
    "fail_with",
    "sigkill",
    ["sigkill", "sigterm", "exception", "pause"],
    "How --fail_at_step fails: a real signal to this process, a Python "
    "exception, or 'pause': print PAUSED and wait for an external signal.",
)
_KILL_AT_BACKUP_STAGE = flags.DEFINE_enum(
    "kill_at_backup_stage",
    None,
    [
        "before_data",
        "data_written",
        "half_written",
        "before_commit",
        "published",
        "committed",
    ],
    "SIGKILL this process at this stage of writing backup number "
    "--kill_at_backup_number (half_written: truncate the data file first).",
)
_KILL_AT_BACKUP_NUMBER = flags.DEFINE_integer(
    "kill_at_backup_number",
    1,
    "Which backup of this run to kill in.",
    lower_bound=1,
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    "default",
    [
        "default",
        "mirrored",
        "multi_worker",
        "parameter_server",
        "tpu",
        "one_device",
        "central_storage",
    ],
    "tf.distribute strategy. mirrored / central_storage: all GPUs, or on a "
    "machine without GPUs, --logical_cpus logical CPU devices. multi_worker: "
    "MultiWorkerMirroredStrategy over the cluster in TF_CONFIG. "
    "parameter_server: ParameterServerStrategy over the chief/worker/ps "
    "cluster in TF_CONFIG; the worker and ps tasks only serve (start them "
    "all with //testing:launcher --num_ps=1); "
    "needs --steps_per_epoch and reads a repeated tf.data input. "
    "tpu: TPUStrategy on this TPU VM's TPU. "
    "one_device: OneDeviceStrategy on the first GPU, else the CPU.",
)
_LOGICAL_CPUS = flags.DEFINE_integer(
    "logical_cpus",
    2,
    "With --strategy=mirrored and no GPU: split the CPU into this many "
    "logical devices, one replica each.",
    lower_bound=1,
)
_SAVE_BEFORE_PREEMPTION = flags.DEFINE_bool(
    "save_before_preemption",
    False,
    "On SIGTERM: back up at the current batch, then exit with status 42.",
)
_ASYNC_BACKUP = flags.DEFINE_bool(
    "async_backup",
    True,
    "Persist backups on a background thread (training waits only for a "
    "snapshot in host memory).",
)
_FAIL_AFTER_BACKUP_COMMITTED = flags.DEFINE_bool(
    "fail_after_backup_committed",
    True,
    "Before --fail_at_step fails, wait until the last backup is committed, "
    "so where the next run resumes does not depend on timing. With false, a "
    "backup may still be in flight: the next run then resumes from the one "
    "before it.",
)
_PERSIST_DELAY_SECONDS = flags.DEFINE_float(
    "persist_delay_seconds",
    0.0,
    "Demo/test hook: hold every background persist this long after its data "
    "is written, so that a signal can land while a backup is in flight.",
    lower_bound=0.0,
)
_RESULT_FILE = flags.DEFINE_string(
    "result_file", None, "Write the run's outcome as JSON here."
)


def _save_freq(value: str):
    if value == "epoch":
        return "epoch"
    if value.lower() == "false":
        return False  # only with --save_before_preemption
    try:
        return int(value)
    except ValueError:
        raise app.UsageError(
            f"--save_freq must be 'epoch', an integer or 'false', got {value!r}"
        ) from None


def _install_fault_hook(stage: str | None, number: int, delay: float):
    """Demo/test hook into the backup write path (a private API).

    Kills this process at `stage` of backup number `number`, and/or holds
    every persist `delay` seconds once it is published (before fsync).
    """
    from backup_restore._src import faults

    target = "data_written" if stage == "half_written" else stage
    seen = {"n": 0}

    def hook(reached, path):
        if reached == faults.BEFORE_DATA:
            seen["n"] += 1
        if reached == faults.PUBLISHED and delay:
            print(f"PERSIST DELAYED in {path}", flush=True)
            time.sleep(delay)
        if reached != target or seen["n"] != number:
            return
        if stage == "half_written":
            for name in os.listdir(path):
                if ".data-" in name:
                    full = os.path.join(path, name)
                    os.truncate(full, os.path.getsize(full) // 2)
        print(f"KILLING at backup stage {stage} in {path}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    faults.set_hook(hook)


def _serve_parameter_server_task(tf, resolver):
    """Runs this worker or ps task of a parameter-server cluster forever.

    Only the chief runs fit(); the other tasks host variables (ps) or run the
    steps the chief schedules (worker) until they are killed.
    """
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=resolver.task_type,
        task_index=resolver.task_id,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    print(f"SERVING as {resolver.task_type} {resolver.task_id}", flush=True)
    server.join()


def _has_tpu():
    # Without a TPU, resolving one would query the GCE metadata server.
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _strategy(tf):
    name = _STRATEGY.value
    if name == "default":
        return tf.distribute.get_strategy()
    if name in ("multi_worker", "parameter_server"):
        if "TF_CONFIG" not in os.environ:
            raise app.UsageError(f"--strategy={name} needs TF_CONFIG.")
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if resolver.task_type in ("worker", "ps"):
            _serve_parameter_server_task(tf, resolver)
            sys.exit(0)
        return tf.distribute.ParameterServerStrategy(resolver)
    if name == "tpu":
        if not _has_tpu():
            raise app.UsageError(
                "--strategy=tpu: this machine has no TPU (no /dev/accel* or "
                "/dev/vfio device). Run on a Cloud TPU VM."
            )
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver("local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return fit_setup.local_strategy(tf, name, _LOGICAL_CPUS.value)


def _failure_callback(keras, at_step: int, how: str, backup):
    class Fail(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._batches = 0
            # Reads no logs: tf-keras's fit() may hand it logs as tensors,
            # and runs its batch hooks under ParameterServerStrategy (whose
            # batch logs are RemoteValues) only then. Set after Callback's
            # __init__, which sets it False on the instance.
            self._supports_tf_logs = True

        def on_train_batch_end(self, batch, logs=None):
            self._batches += 1
            if self._batches != at_step:
                return
            if _FAIL_AFTER_BACKUP_COMMITTED.value:
                backup.wait_for_backup()
            print(f"FAILING after {at_step} batches with {how}", flush=True)
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            elif how == "pause":
                # Wait for an external signal. With --save_before_preemption a
                # SIGTERM only marks the preemption: training then goes on
                # to back up at this very batch.
                print("PAUSED", flush=True)
                while not (
                    _SAVE_BEFORE_PREEMPTION.value
                    and backup.preemption_requested
                ):
                    time.sleep(0.05)
            else:
                raise RuntimeError(
                    f"--fail_at_step={at_step}: simulated failure"
                )

    return Fail()


def _raise_at_epoch_begin(keras, epoch: int):
    class RaiseAtEpochBegin(keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            if e == epoch:
                raise RuntimeError(f"--raise_at_epoch_begin={epoch}")

    return RaiseAtEpochBegin()


def _epochs_begun(keras):
    class EpochsBegun(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    return EpochsBegun()


def _barrier(tf, strategy):
    """Every worker of a multi-worker strategy waits here for the others."""
    if _STRATEGY.value == "multi_worker":
        ones = strategy.run(lambda: tf.constant(1.0))
        strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None).numpy()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _BACKUP_DIR.value:
        raise app.UsageError("--backup_dir is required.")
    if _STRATEGY.value == "parameter_server" and not _STEPS_PER_EPOCH.value:
        raise app.UsageError(
            "--strategy=parameter_server needs --steps_per_epoch (fit() "
            "under ParameterServerStrategy does)."
        )
    if _OPTIMIZER.value == "legacy_sgd" and (
        _KERAS.value != "tf_keras" or _MODEL.value != "regression"
    ):
        raise app.UsageError(
            "--optimizer=legacy_sgd needs --keras=tf_keras and "
            "--model=regression."
        )
    save_freq = _save_freq(_SAVE_FREQ.value)
    try:
        setup = fit_setup.FitSetup(
            keras=_KERAS.value,
            input=_INPUT.value,
            model=_MODEL.value,
            model_size=_MODEL_SIZE.value,
            dropout=_DROPOUT.value,
            steps_per_execution=_STEPS_PER_EXECUTION.value,
            shuffle=_SHUFFLE.value,
            num_samples=_NUM_SAMPLES.value,
            batch_size=_BATCH_SIZE.value,
            steps_per_epoch=_STEPS_PER_EPOCH.value,
            strategy=_STRATEGY.value,
            seed=_SEED.value,
        )
    except ValueError as e:
        raise app.UsageError(f"--{e}") from None

    import tensorflow as tf  # here, not at the top: keeps --help fast

    import backup_restore
    from testing import synthetic

    keras = synthetic.KERAS[_KERAS.value]

    # First: multi-worker collectives and logical devices must be configured
    # before anything else initializes TensorFlow's runtime.
    strategy = _strategy(tf)
    if _TF_RANDOM_GENERATOR.value and _KERAS.value == "tf_keras":
        keras.backend.experimental.enable_tf_random_generator()
    keras.utils.set_random_seed(_SEED.value)
    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    fails_here = _FAIL_ON_TASK.value in (None, task.get("index"))
    if (
        _KILL_AT_BACKUP_STAGE.value and fails_here
    ) or _PERSIST_DELAY_SECONDS.value:
        _install_fault_hook(
            _KILL_AT_BACKUP_STAGE.value if fails_here else None,
            _KILL_AT_BACKUP_NUMBER.value,
            _PERSIST_DELAY_SECONDS.value,
        )

    def backup_callback():
        return backup_restore.BackupAndRestore(
            cli.user_path(_BACKUP_DIR.value),
            save_freq=save_freq,
            delete_checkpoint=_DELETE_CHECKPOINT.value,
            save_before_preemption=_SAVE_BEFORE_PREEMPTION.value,
            async_backup=_ASYNC_BACKUP.value,
        )

    backup = backup_callback()
    callbacks = [backup]
    if _RAISE_AT_EPOCH_BEGIN.value is not None:
        callbacks.append(
            _raise_at_epoch_begin(keras, _RAISE_AT_EPOCH_BEGIN.value)
        )
    if _FAIL_AT_STEP.value and fails_here:
        callbacks.append(
            _failure_callback(
                keras, _FAIL_AT_STEP.value, _FAIL_WITH.value, backup
            )
        )
    with strategy.scope():
        model = setup.build_model()
        if _OPTIMIZER.value == "legacy_sgd":
            model.compile(
                optimizer=keras.optimizers.legacy.SGD(0.001),
                loss="mse",
                steps_per_execution=_STEPS_PER_EXECUTION.value,
            )
    fit_kwargs = dict(
        epochs=_EPOCHS.value,
        steps_per_epoch=_STEPS_PER_EPOCH.value,
        callbacks=callbacks,
        verbose=0,
    )
    if _STRATEGY.value == "parameter_server":
        # Every worker reads its own copy of the data, and a restarted worker
        # starts it again: the per-worker dataset must never run out.
        fit_kwargs["x"] = keras.utils.experimental.DatasetCreator(
            lambda input_context: synthetic.regression_dataset(
                _NUM_SAMPLES.value,
                _BATCH_SIZE.value,
                seed=_SEED.value,
                shuffle_seed=_SEED.value if _SHUFFLE.value else None,
                repeat=True,
            )
        )
    else:
        fit_kwargs.update(setup.fit_kwargs())
    raised_at = None
    if _RAISE_AT_EPOCH_BEGIN.value is None:
        history = model.fit(**fit_kwargs)
    else:
        try:
            model.fit(**fit_kwargs)
        except RuntimeError as e:
            if "raise_at_epoch_begin" not in str(e):
                raise
            raised_at = _RAISE_AT_EPOCH_BEGIN.value
        # As one would in a notebook or a retry loop: fit() again, in this
        # process, with the same model and a new callback. The workers meet
        # first, so that the chief's backup is committed before any reads.
        _barrier(tf, strategy)
        backup = backup_callback()
        begun = _epochs_begun(keras)
        fit_kwargs["callbacks"] = [backup, begun]
        history = model.fit(**fit_kwargs)

    resumed = backup.resumed_from
    result = {
        "raised_at_epoch_begin": raised_at,
        "epochs_begun": begun.epochs if raised_at is not None else None,
        "epochs_run": len(history.epoch),
        "history_epochs": history.epoch,
        "history": history.history,
        "resumed_from": list(resumed) if resumed else None,
        "weights_sha256": synthetic.weights_sha256(model.weights),
        # Every variable the model holds, its optimizers' and raw
        # tf.Variables included.
        "state_sha256": synthetic.state_sha256(model),
        "optimizer_iterations": int(model.optimizer.iterations.numpy()),
        # A GAN logs d_loss and g_loss, no loss: then the first logged.
        "final_loss": history.history.get(
            "loss", next(iter(history.history.values()), [None])
        )[-1]
        if history.epoch
        else None,
    }
    logging.info("Training finished: %s", result["epochs_run"])
    where = f"epoch:{resumed[0]},batch:{resumed[1]}" if resumed else "none"
    loss = result["final_loss"]
    loss_text = f"{loss:.6g}" if loss is not None else "none"
    procs.report(
        _RESULT_FILE.value,
        result,
        f"epochs_run={result['epochs_run']} resumed_from={where} "
        f"final_loss={loss_text}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
