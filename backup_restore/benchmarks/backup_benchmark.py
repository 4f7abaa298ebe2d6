r"""Benchmark: backup_restore vs the BackupAndRestore of tf-keras (or Keras 3).

Runs, in one process, interleaved and repeated (medians, and every
repetition's value), Model.fit() with: no callback, the Keras flavour's own
BackupAndRestore (--keras), and backup_restore's with synchronous and
asynchronous backups, and with an overhead_budget; for MLPs with Adam of about
1M and 50M parameters and one of many small tensors (200 Dense(4) layers);
with one backup per epoch and a frequent setting. Prints, per configuration:
training overhead vs no callback, milliseconds the training loop is blocked
per backup, process CPU time per backup against the physical floor measured
in the same run (a copy, write and fsync of the same bytes), the time from
the backup hook's return until the backup is kill-safe (p50/p95: published
under its final name, seen in the directory every 5 ms), bytes per backup,
peak bytes in backup_dir, and persist speed relative to the floor. It reads
nothing of backup_restore's internals: our figures come from the callback's
hooks, backup_dir and the log (commit_log.py).
Then restores, each in a fresh process (restore_timing.py): ours, the
flavour's own and the floor (a no-callback fit()'s first step plus
Checkpoint.read of the same state), warm and cold, from fit()'s start to the
end of the first resumed step. `--measure=restore` (or `backup`) runs one
half only.

  ./tools/bazel run -c opt //backup_restore/benchmarks:backup_benchmark -- \
      --dir=/tmp/backup_benchmark

Take the numbers as ratios measured in the same run, on the same machine.
"""

import json
import os
import shutil
import statistics
import threading
import time

from absl import app
from absl import flags

from backup_restore.benchmarks import commit_log
from backup_restore.benchmarks import restore_timing

_DIR = flags.DEFINE_string(
    "dir", None, "Scratch directory on the filesystem to measure (required)."
)
_SIZES = flags.DEFINE_list(
    "sizes", ["small", "1m", "50m"], "Models: tiny, small, 1m, 50m."
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repetitions.", lower_bound=1)
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs per fit.", lower_bound=1)
_STEPS = flags.DEFINE_integer(
    "steps_per_epoch",
    None,
    "Batches per epoch; default per model size, so that a fit lasts long "
    "enough to measure: 1m 200, 50m 20.",
    lower_bound=1,
)
_PER_EPOCH = flags.DEFINE_integer(
    "backups_per_epoch", 10, "The frequent setting.", lower_bound=2
)
_KERAS = flags.DEFINE_enum(
    "keras",
    "tf_keras",
    ["tf_keras", "keras3"],
    "Which Keras trains, and whose BackupAndRestore ours is compared with: "
    "tf_keras (tf_keras.callbacks) or keras3 (keras.callbacks).",
)
_THREADS = flags.DEFINE_integer(
    "training_threads",
    None,
    "TensorFlow's intra-op and inter-op thread pools (default: TensorFlow's, "
    "every core). 1 on a 2-core machine leaves a core to the background "
    "write: a stand-in for a machine whose training does not keep every "
    "host core busy (an accelerator, or more cores than training uses).",
    lower_bound=1,
)
_BUDGET = flags.DEFINE_float(
    "overhead_budget",
    0.03,
    "The overhead_budget of the ours_budget configuration.",
    lower_bound=0.001,
    upper_bound=0.9,
)

# (input width, hidden widths, default batches per epoch, save_freq of the
# frequent setting or None for --backups_per_epoch): ~1M and ~50M parameters
# (x3 with Adam's slots), and "small": many small tensors (200 Dense(4)
# layers, 1207 variables with Adam's slots), where per-tensor costs show.
_MODELS = {
    "tiny": (16, (32,), 4, None),
    "small": (4, (4,) * 200, 100, 5),
    "1m": (512, (1024, 512), 200, None),
    "50m": (4096, (4096, 4096, 4096), 20, None),
}
_BATCH = 16

_MEASURE = flags.DEFINE_multi_enum(
    "measure",
    ["backup", "restore"],
    ["backup", "restore"],
    "What to measure: backups during fit() (overhead, blocking, ...) and "
    "restores (each in a fresh process).",
)
_RESTORE_CHILD = flags.DEFINE_enum(
    "restore_child",
    None,
    ["none", "ours", "theirs", "read"],
    "Internal: this process is one fresh-process restore measurement "
    "(restore_timing.py) of the first --sizes model.",
)
_CHILD_PATH = flags.DEFINE_string(
    "child_path", None, "Internal: the backup the restore child reads."
)


def _model_and_data(keras_module, size, steps):
    """The benchmark's model of `size` (compiled, seed 0) and its data."""
    import numpy as np

    width, hidden, _, _ = _MODELS[size]
    keras_module.utils.set_random_seed(0)
    model = keras_module.Sequential(
        [keras_module.Input((width,))]
        + [keras_module.layers.Dense(h, activation="relu") for h in hidden]
        + [keras_module.layers.Dense(1)]
    )
    model.compile(keras_module.optimizers.Adam(1e-4), "mse")
    x = np.random.rand(steps * _BATCH, width).astype("float32")
    y = np.random.rand(steps * _BATCH, 1).astype("float32")
    return model, x, y


def _dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass  # deleted while walking
    return total


class _PeakSampler:
    """Samples a directory every few ms: keeps the peak of its bytes, and
    when each of its entries was first seen (wall time, `first_seen`): a
    backup of ours is kill-safe once it is published under its final name
    (docs/design.md), which its commit line names."""

    def __init__(self, path):
        self._path, self.peak = path, 0
        self.first_seen = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.005):
            now = time.time()
            try:
                for name in os.listdir(self._path):
                    self.first_seen.setdefault(name, now)
            except OSError:
                pass  # not made yet, or removed
            self.peak = max(self.peak, _dir_bytes(self._path))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _timed(tf_keras, inner, directory=None):
    """Wraps a callback; records how long each of its hook calls takes, and
    when each hook that may back up returned (with, given `directory`, the
    names in it then)."""
    from testing import keras_callbacks

    class Timed(keras_callbacks.forwarding(tf_keras.callbacks.Callback, inner)):
        def __init__(self):
            super().__init__()
            self.calls = []  # seconds, one entry per hook call
            self.backup_hook_calls = []  # those of the hooks that back up

        @property
        def seconds(self):
            return sum(self.calls)

        def per_backup_seconds(self, backups):
            """The `backups` longest calls of the hooks that back up (both
            callbacks back up in on_train_batch_end and on_epoch_end): the
            ones that backed up. Not on_train_begin (the restore check and
            set-up) nor on_train_end (the final wait and the deletion): all
            hook time counts those."""
            return sorted(self.backup_hook_calls, reverse=True)[:backups]

        def forward(self, name, *args, **kwargs):
            start = time.perf_counter()
            if name == "on_train_begin":
                self.began = start
            elif name == "on_epoch_begin":
                self.epoch = args[0]
            super().forward(name, *args, **kwargs)
            end = time.perf_counter()
            self.calls.append(end - start)
            if name in ("on_train_batch_end", "on_epoch_end"):
                self.backup_hook_calls.append(end - start)
                # The position a backup taken here is labelled with in our
                # log: after `batch + 1` batches of the epoch, or at the
                # start of the next epoch.
                if name == "on_epoch_end":
                    label = f"epoch {args[0] + 1}, batch 0"
                else:
                    label = f"epoch {self.epoch}, batch {args[0] + 1}"
                self.hook_ends[label] = time.time()
                if self.directory is not None:
                    # What was published before the hook returned.
                    self.listed[label] = set(os.listdir(self.directory))
            if name == "on_train_batch_end" and self.first_batch is None:
                # From on_train_begin to the end of the first batch: the
                # restore plus what it deferred to the first step (tf-keras
                # creates and restores the optimizer's slots there).
                self.first_batch = end - self.began
                if self.stop_after_first_batch:
                    self.model.stop_training = True

        began = first_batch = None
        epoch = 0
        stop_after_first_batch = False

    timed = Timed()
    timed.hook_ends = {}  # position label -> wall time the hook returned
    timed.directory, timed.listed = directory, {}
    return timed


def _physical_floor(directory, state, buffers):
    """One backup's unavoidable work: copy the state, write it, fsync.

    Returns (wall seconds, process CPU seconds).
    """
    path = os.path.join(directory, "floor_probe")
    wall, cpu = time.perf_counter(), time.process_time()
    for b, a in zip(buffers, state, strict=True):
        b[...] = a
    with open(path, "wb") as f:
        for b in buffers:
            f.write(memoryview(b).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    result = time.perf_counter() - wall, time.process_time() - cpu
    os.remove(path)
    return result


def _reset_after_reference(model, flavour):
    """Undoes what tf-keras's own callback leaves on the model: it deletes
    the model's `_training_state` at the end of fit(), and the model's next
    fit() reads it (an AttributeError). The one write of a private name
    here, to tf-keras's model; Keras 3's callback leaves nothing (it sets
    `_initial_epoch` only when it restores, and the parent never restores
    with it)."""
    if flavour == "tf_keras":
        model._training_state = None


def _percentile(values, q):
    """The q-th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def _measure_restore(keras_module, backup_restore, model, data, *, size, steps):
    """Writes the backups of an epoch boundary (ours, the flavour's own, a
    plain tf.train.Checkpoint of the same state), then times their restores
    in fresh processes (restore_timing.py); returns its rows."""
    import tensorflow as tf

    root = _DIR.value
    backups = {
        "ours": os.path.join(root, f"{size}-restore-ours"),
        "theirs": os.path.join(root, f"{size}-restore-theirs"),
    }
    x, y = data
    for name, cls in (
        ("ours", backup_restore.BackupAndRestore),
        ("theirs", keras_module.callbacks.BackupAndRestore),
    ):
        shutil.rmtree(backups[name], ignore_errors=True)
        model.fit(
            x,
            y,
            batch_size=_BATCH,
            epochs=1,
            verbose=0,
            callbacks=[cls(backups[name], delete_checkpoint=False)],
        )
        _reset_after_reference(model, _KERAS.value)
    plain = os.path.join(root, f"{size}-restore-read")
    shutil.rmtree(plain, ignore_errors=True)
    backups["read"] = tf.train.Checkpoint(
        model=model, optimizer=model.optimizer
    ).write(os.path.join(plain, "ckpt"))
    args = [
        f"--dir={root}",
        f"--sizes={size}",
        f"--keras={_KERAS.value}",
        f"--steps_per_epoch={steps}",
    ]
    if _THREADS.value:
        args.append(f"--training_threads={_THREADS.value}")
    samples = restore_timing.measure(args, backups, _REPEATS.value)
    for path in (*backups.values(), plain):
        shutil.rmtree(path, ignore_errors=True)
    state_mb = sum(
        v.numpy().nbytes for v in model.weights + model.optimizer.variables
    )
    return restore_timing.rows(f"{size} ({state_mb / 1e6:.0f} MB)", samples)


def main(argv):
    del argv
    if not _DIR.value:
        raise app.UsageError("--dir is required (a scratch directory).")
    import numpy as np
    import tensorflow as tf

    if _KERAS.value == "keras3":
        import keras as keras_module  # Keras 3, TensorFlow backend
    else:
        import tf_keras as keras_module

    import backup_restore

    if _THREADS.value:
        tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
        tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
    root = _DIR.value
    os.makedirs(root, exist_ok=True)
    if _RESTORE_CHILD.value:
        size = _SIZES.value[0]
        model, x, y = _model_and_data(
            keras_module, size, _STEPS.value or _MODELS[size][2]
        )
        result = restore_timing.child(
            _RESTORE_CHILD.value,
            _CHILD_PATH.value,
            keras_module,
            model,
            (x, y, _BATCH),
            ours_cls=backup_restore.BackupAndRestore,
        )
        print(restore_timing.MARK + json.dumps(result))
        return 0
    epochs = _EPOCHS.value
    ref = _KERAS.value  # the configuration of that Keras's own callback
    cores = os.cpu_count()
    print(
        f"machine: {cores} cores; TensorFlow {tf.__version__}, "
        f"{_KERAS.value} {keras_module.__version__}; {epochs} epochs of "
        f"batches of {_BATCH}; {_REPEATS.value} repeats, interleaved, medians; "
        "TensorFlow threads: "
        + (
            f"{_THREADS.value} intra-op, {_THREADS.value} inter-op"
            if _THREADS.value
            else "default (every core)"
        )
    )
    rows, restore_rows = [], []
    for size in _SIZES.value:
        _, _, default_steps, frequent = _MODELS[size]
        steps = _STEPS.value or default_steps
        frequent = frequent or max(1, steps // _PER_EPOCH.value)
        model, x, y = _model_and_data(keras_module, size, steps)
        if "restore" in _MEASURE.value:
            restore_rows += _measure_restore(
                keras_module,
                backup_restore,
                model,
                (x, y),
                size=size,
                steps=steps,
            )
        if "backup" not in _MEASURE.value:
            continue
        model.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0)  # warm up
        variables = model.weights + model.optimizer.variables
        state = [v.numpy() for v in variables]
        state_bytes = sum(a.nbytes for a in state)
        buffers = [np.empty_like(a) for a in state]
        for b in buffers:
            b.fill(0)  # touched
        copies = []
        for _ in range(5):
            start = time.perf_counter()
            for b, a in zip(buffers, state, strict=True):
                np.copyto(b, a)
            copies.append(time.perf_counter() - start)
        copy_s = statistics.median(copies)
        floors = [_physical_floor(root, state, buffers) for _ in range(5)]
        raw_s = statistics.median(wall for wall, _ in floors)
        floor_cpu_s = statistics.median(cpu for _, cpu in floors)

        configs = ["none", ref, "ours_sync", "ours_async"]
        freqs = (
            ("1/epoch", "epoch"),
            (f"{steps // frequent}/epoch", frequent),
        )
        results = {}
        chosen = []  # (batches, seconds) the budget policy chose, per fit
        for rep in range(_REPEATS.value):
            for freq_name, save_freq in freqs:
                here = configs + (
                    ["ours_budget"] if save_freq == "epoch" else []
                )
                order = here[rep % len(here) :] + here[: rep % len(here)]
                for config in order:
                    key = (config, freq_name)
                    directory = os.path.join(root, f"{size}-{config}-{rep}")
                    shutil.rmtree(directory, ignore_errors=True)
                    callback = None
                    if config == ref:
                        callback = keras_module.callbacks.BackupAndRestore(
                            directory, save_freq=save_freq
                        )
                    elif config == "ours_budget":
                        callback = backup_restore.BackupAndRestore(
                            directory, overhead_budget=_BUDGET.value
                        )
                    elif config.startswith("ours"):
                        callback = backup_restore.BackupAndRestore(
                            directory,
                            save_freq=save_freq,
                            async_backup=config == "ours_async",
                        )
                    log = commit_log.CommitLog()
                    timed = None
                    if callback:
                        timed = _timed(keras_module, callback, directory)
                    os.makedirs(directory, exist_ok=True)
                    # Every run starts with nothing dirty in the page cache:
                    # tf-keras never fsyncs, and the kernel writing its
                    # backups back later would slow whichever run came next.
                    os.sync()
                    with _PeakSampler(directory) as sampler, log:
                        start = time.perf_counter()
                        cpu = time.process_time()
                        model.fit(
                            x,
                            y,
                            batch_size=_BATCH,
                            epochs=epochs,
                            verbose=0,
                            callbacks=[timed] if timed else [],
                        )
                        seconds = time.perf_counter() - start
                        cpu = time.process_time() - cpu
                    # tf-keras writes every scheduled backup; ours skips the
                    # one at the very end, which fit() would delete at once.
                    backups = epochs * (
                        1 if save_freq == "epoch" else steps // frequent
                    )
                    written = backups
                    if config.startswith("ours"):
                        written = len(log.committed)
                        if not written and config != "ours_budget":
                            raise RuntimeError(
                                "No backup's commit line was logged: the "
                                "line's format changed (commit_log.py)."
                            )
                        backups = max(1, written)
                    r = results.setdefault(key, {})
                    r.setdefault("fit_s", []).append(seconds)
                    r.setdefault("cpu_s", []).append(cpu)
                    r.setdefault("backups", []).append(backups)
                    r.setdefault("written", []).append(written)
                    r.setdefault("peak", []).append(sampler.peak)
                    if timed:
                        # Per backup: the hook calls that backed up; and all
                        # hook time of the fit (restore check, first-backup
                        # set-up, the final wait, deletion) per backup.
                        r.setdefault("block_ms", []).extend(
                            1000 * t for t in timed.per_backup_seconds(backups)
                        )
                        r.setdefault("hooks_ms", []).append(
                            1000 * timed.seconds / backups
                        )
                    if config.startswith("ours"):
                        r.setdefault("kill_safe_ms", []).extend(
                            log.kill_safe_after_hook_ms(
                                timed.hook_ends,
                                sampler.first_seen,
                                timed.listed,
                            )
                        )
                        if log.committed:
                            # The last backup's, from its snapshot's start.
                            r.setdefault("persist_s", []).append(
                                log.committed[-1][2]
                            )
                    if config == "ours_budget":
                        chosen.append(log.chosen[-1] if log.chosen else None)
                    shutil.rmtree(directory, ignore_errors=True)
                    _reset_after_reference(model, ref)

        # Backup size on disk: one backup of ours, at the end of an epoch.
        directory = os.path.join(root, f"{size}-size")
        shutil.rmtree(directory, ignore_errors=True)
        model.fit(
            x,
            y,
            batch_size=_BATCH,
            epochs=1,
            verbose=0,
            callbacks=[
                backup_restore.BackupAndRestore(
                    directory, delete_checkpoint=False
                )
            ],
        )
        backup_bytes = _dir_bytes(directory)
        shutil.rmtree(directory, ignore_errors=True)

        # A backup alone (snapshot, write + fsync + commit, as during
        # training), with training not competing for the cores: what the
        # engine costs by itself, through BackupManager (the callback's
        # engine, public).
        directory = os.path.join(root, f"{size}-engine")
        manager = backup_restore.BackupManager(
            directory,
            save_freq=None,
            async_backup=True,
            model=model,
            optimizer=model.optimizer,
        )
        manager.restore()
        # Process CPU too: with no training running, what a backup itself
        # costs, against the floor; the fits' CPU per backup adds what the
        # write and training cost each other on shared cores.
        engine_writes, engine_cpus = [], []
        for step in range(3):
            start, cpu = time.perf_counter(), time.process_time()
            manager.backup(step, wait=True)
            engine_writes.append(time.perf_counter() - start)
            engine_cpus.append(time.process_time() - cpu)
        manager.finish()
        engine_ckpt = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer
        )
        engine_s = statistics.median(engine_writes)
        engine_cpu_s = statistics.median(engine_cpus)
        # TensorFlow's own writer, no fsync, no commit: the floor under the
        # engine's persist (it serializes with this), and what tf-keras's
        # callback writes with.
        tf_writes, tf_cpus = [], []
        for i in range(3):
            start, cpu = time.perf_counter(), time.process_time()
            engine_ckpt.write(os.path.join(directory, f"tf{i}", "ckpt"))
            tf_writes.append(time.perf_counter() - start)
            tf_cpus.append(time.process_time() - cpu)
        shutil.rmtree(directory, ignore_errors=True)
        tf_write_s = statistics.median(tf_writes)
        tf_write_cpu_s = statistics.median(tf_cpus)

        base = {
            f: statistics.median(results[("none", f)]["fit_s"])
            for _, f in results
        }
        for (config, freq), r in results.items():
            if config == "none":
                continue
            none = results[("none", freq)]
            # Each fit against the no-callback fit of the same repetition
            # (run next to it): the machine's slow spells hit both.
            paired = [
                100 * (fit / base_fit - 1)
                for fit, base_fit in zip(r["fit_s"], none["fit_s"], strict=True)
            ]
            # Process CPU time (every thread) a backup adds, per backup.
            cpu_per_backup = [
                (cpu - base_cpu) / backups
                for cpu, base_cpu, backups in zip(
                    r["cpu_s"], none["cpu_s"], r["backups"], strict=True
                )
            ]
            label = freq
            if config == "ours_budget":
                label = f"budget {_BUDGET.value:g}"
            row = {
                "model": f"{size} ({state_bytes / 1e6:.0f} MB state)",
                "config": config,
                "backups": label,
                "overhead_%": statistics.median(paired),
                "paired": paired,
                "count": r["written"],
                "cpu_vs_floor": [c / floor_cpu_s for c in cpu_per_backup],
                "kill_safe_ms": r.get("kill_safe_ms"),
                "block_ms": statistics.median(r["block_ms"]),
                "hooks_ms": statistics.median(r["hooks_ms"]),
                "peak_MB": statistics.median(r["peak"]) / 1e6,
            }
            if config.startswith("ours"):
                row["vs_copy"] = row["block_ms"] / 1000 / copy_s
                if r.get("persist_s"):  # none when no backup was written
                    persist = statistics.median(r["persist_s"])
                    row["persist_vs_raw"] = raw_s / persist
            rows.append(row)
        print(
            f"\n{size}: {steps} batches per epoch; state "
            f"{state_bytes / 1e6:.1f} MB, backup "
            f"{backup_bytes / 1e6:.1f} MB; plain copy {copy_s * 1e3:.1f} ms; "
            f"raw write+fsync {raw_s * 1e3:.0f} ms "
            f"({state_bytes / raw_s / 1e6:.0f} MB/s); "
            f"engine persist alone (write+fsync+commit, no training) "
            f"{engine_s * 1e3:.0f} ms -> raw/engine = {raw_s / engine_s:.2f}; "
            f"Checkpoint.write alone (no fsync) {tf_write_s * 1e3:.0f} ms"
        )
        print(
            "  one backup alone (no training), process CPU: ours (write + "
            f"fsync + commit) {engine_cpu_s * 1e3:.1f} ms = "
            f"{engine_cpu_s / floor_cpu_s:.2f}x floor (per repetition "
            + ", ".join(f"{c / floor_cpu_s:.2f}x" for c in engine_cpus)
            + f"); Checkpoint.write (no fsync) {tf_write_cpu_s * 1e3:.1f} ms"
            f" = {tf_write_cpu_s / floor_cpu_s:.2f}x floor"
        )
        print(
            f"  physical floor per backup (copy + write + fsync of the "
            f"{state_bytes / 1e6:.1f} MB, {len(state)} tensors): "
            f"{raw_s * 1e3:.1f} ms wall, {floor_cpu_s * 1e3:.1f} ms process "
            "CPU; per repetition CPU ms "
            + ", ".join(f"{cpu * 1e3:.1f}" for _, cpu in floors)
        )
        # The spread of the baseline: overheads smaller than it are noise.
        for freq in sorted(base):
            fits = results[("none", freq)]["fit_s"]
            busy = [
                cpu / fit / cores
                for cpu, fit in zip(
                    results[("none", freq)]["cpu_s"], fits, strict=True
                )
            ]
            print(
                f"  no-callback fit ({freq} runs): median {base[freq]:.2f} s, "
                f"min {min(fits):.2f} s, max {max(fits):.2f} s; cores busy "
                + ", ".join(f"{100 * b:.0f}%" for b in busy)
            )
        for row in rows:
            if row["model"].startswith(size):
                print(
                    f"  {row['config']} {row['backups']}: overhead per "
                    "repetition "
                    + ", ".join(f"{p:+.0f}%" for p in row["paired"])
                    + "; backups "
                    + ", ".join(str(n) for n in row["count"])
                    + "; process CPU per backup / floor "
                    + ", ".join(f"{c:.2f}x" for c in row["cpu_vs_floor"])
                    + (
                        "; hook return to kill-safe p50 "
                        f"{_percentile(row['kill_safe_ms'], 50):.0f} ms, p95 "
                        f"{_percentile(row['kill_safe_ms'], 95):.0f} ms, max "
                        f"{max(row['kill_safe_ms']):.0f} ms"
                        if row["kill_safe_ms"]
                        else ""
                    )
                )
        if chosen:
            print(
                f"  ours_budget (overhead_budget={_BUDGET.value:g}) chose, "
                "per repetition: "
                + ", ".join(
                    f"every {c[0]} batches ({c[1]:.2f} s)"
                    if c
                    else "no interval (no backup due)"
                    for c in chosen
                )
            )

    print(
        "\n| model | callback | backups | overhead | blocking ms/backup "
        "| all hook ms / backup | CPU / floor | kill-safe p50/p95 ms "
        "| peak MB in dir | blocking / plain copy "
        "| persist speed / raw write+fsync |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        kill_safe = row["kill_safe_ms"]
        print(
            f"| {row['model']} | {row['config']} | {row['backups']} | "
            f"{row['overhead_%']:+.1f}% | {row['block_ms']:.1f} | "
            f"{row['hooks_ms']:.1f} | "
            f"{statistics.median(row['cpu_vs_floor']):.2f}x | "
            + (
                f"{_percentile(kill_safe, 50):.0f}/"
                f"{_percentile(kill_safe, 95):.0f} | "
                if kill_safe
                else "- | "
            )
            + f"{row['peak_MB']:.0f} | "
            + (f"{row['vs_copy']:.1f}x | " if "vs_copy" in row else "- | ")
            + (
                f"{row['persist_vs_raw']:.2f} |"
                if "persist_vs_raw" in row
                else "- |"
            )
        )
    ratio_rows = {(r["model"], r["config"], r["backups"]): r for r in rows}
    ref = _KERAS.value
    print(f"\nours_async vs {ref} (same run):")
    for (model_name, config, freq), row in ratio_rows.items():
        if config != "ours_async":
            continue
        theirs = ratio_rows[(model_name, ref, freq)]
        print(
            f"  {model_name}, {freq}: blocking "
            f"{row['block_ms'] / theirs['block_ms']:.2f}x of {ref}'s "
            f"(all hook time: "
            f"{row['hooks_ms'] / theirs['hooks_ms']:.2f}x); "
            f"overhead {row['overhead_%']:+.1f}% vs "
            f"{theirs['overhead_%']:+.1f}%"
            + (
                f" ({row['overhead_%'] / theirs['overhead_%']:.2f}x)"
                if theirs["overhead_%"] > 0
                else ""
            )
        )
    if restore_rows:
        restore_timing.print_table(ref, restore_rows)
    return 0


if __name__ == "__main__":
    app.run(main)
