r"""Benchmark: backup_restore vs tf_keras.callbacks.BackupAndRestore.

Runs, in one process, interleaved and repeated (medians), Model.fit() with:
no callback, tf-keras 2.21's BackupAndRestore, and backup_restore's with
synchronous and asynchronous backups; for MLPs with Adam of about 1M and 50M
parameters; with one backup per epoch and about ten per epoch. Prints, per
configuration: training overhead vs no callback, milliseconds the training
loop is blocked per backup, bytes per backup, peak bytes in backup_dir,
restore time, and save throughput relative to a plain memory copy of the same
state and to a raw write+fsync of the same bytes on the same filesystem.

  ./tools/bazel run -c opt //backup_restore/benchmarks:backup_benchmark -- \
      --dir=/tmp/backup_benchmark

Take the numbers as ratios measured in the same run, on the same machine.
"""

import os
import shutil
import statistics
import threading
import time

from absl import app
from absl import flags

_DIR = flags.DEFINE_string(
    "dir", None, "Scratch directory on the filesystem to measure (required)."
)
_SIZES = flags.DEFINE_list(
    "sizes", ["1m", "50m"], "Model sizes: tiny, 1m, 50m."
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

# (input width, hidden widths, default batches per epoch): ~1M and ~50M
# parameters (x3 with Adam's slots).
_MODELS = {
    "tiny": (16, (32,), 4),
    "1m": (512, (1024, 512), 200),
    "50m": (4096, (4096, 4096, 4096), 20),
}
_BATCH = 16


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
    """Samples the bytes in a directory every few ms; keeps the peak."""

    def __init__(self, path):
        self._path, self.peak = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _dir_bytes(self._path))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _timed(tf_keras, inner):
    """Wraps a callback; records how long each of its hook calls takes."""

    class Timed(tf_keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.calls = []  # seconds, one entry per hook call

        @property
        def seconds(self):
            return sum(self.calls)

        def per_backup_seconds(self, backups):
            """The `backups` longest calls: the ones that backed up."""
            return sorted(self.calls, reverse=True)[:backups]

        def set_model(self, model):
            super().set_model(model)
            inner.set_model(model)

        def set_params(self, params):
            super().set_params(params)
            inner.set_params(params)

    def make(name):
        def hook(self, *args, **kwargs):
            start = time.perf_counter()
            getattr(inner, name)(*args, **kwargs)
            self.calls.append(time.perf_counter() - start)

        return hook

    for name in (
        "on_train_batch_end",
        "on_epoch_end",
        "on_train_begin",
        "on_train_end",
        "on_epoch_begin",
        "on_train_batch_begin",
    ):
        setattr(Timed, name, make(name))
    return Timed()


def _drop_from_page_cache(directory):
    """Makes a directory's files cold: written back, then evicted."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _count_writes(store):
    """Counts the backups a store writes; returns a one-element list."""
    count = [0]
    write_async = store.write_async

    def counted(*args, **kwargs):
        count[0] += 1
        return write_async(*args, **kwargs)

    store.write_async = counted
    return count


def _raw_write_fsync_seconds(directory, nbytes):
    path = os.path.join(directory, "raw_write_probe")
    block = os.urandom(1 << 20)
    start = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= len(block)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    seconds = time.perf_counter() - start
    os.remove(path)
    return seconds


def main(argv):
    del argv
    if not _DIR.value:
        raise app.UsageError("--dir is required (a scratch directory).")
    import numpy as np
    import tensorflow as tf
    import tf_keras

    import backup_restore
    from backup_restore._src import store as store_lib

    root = _DIR.value
    os.makedirs(root, exist_ok=True)
    epochs = _EPOCHS.value
    print(
        f"machine: {os.cpu_count()} cores; TensorFlow {tf.__version__}, "
        f"tf-keras {tf_keras.__version__}; {epochs} epochs of batches of "
        f"{_BATCH}; {_REPEATS.value} repeats, interleaved, medians"
    )
    rows = []
    for size in _SIZES.value:
        width, hidden, default_steps = _MODELS[size]
        steps = _STEPS.value or default_steps
        frequent = max(1, steps // _PER_EPOCH.value)
        tf_keras.utils.set_random_seed(0)
        model = tf_keras.Sequential(
            [tf_keras.Input((width,))]
            + [tf_keras.layers.Dense(h, activation="relu") for h in hidden]
            + [tf_keras.layers.Dense(1)]
        )
        model.compile(tf_keras.optimizers.Adam(1e-4), "mse")
        x = np.random.rand(steps * _BATCH, width).astype("float32")
        y = np.random.rand(steps * _BATCH, 1).astype("float32")
        model.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0)  # warm up
        state = [v.numpy() for v in model.weights + model.optimizer.variables]
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
        raw_s = statistics.median(
            _raw_write_fsync_seconds(root, state_bytes) for _ in range(3)
        )

        configs = ["none", "tf_keras", "ours_sync", "ours_async"]
        results = {}
        for rep in range(_REPEATS.value):
            for freq_name, save_freq in (
                ("1/epoch", "epoch"),
                (f"{steps // frequent}/epoch", frequent),
            ):
                order = configs[rep % len(configs) :] + configs[: rep % 4]
                for config in order:
                    key = (config, freq_name)
                    directory = os.path.join(root, f"{size}-{config}-{rep}")
                    shutil.rmtree(directory, ignore_errors=True)
                    callback = None
                    if config == "tf_keras":
                        callback = tf_keras.callbacks.BackupAndRestore(
                            directory, save_freq=save_freq
                        )
                    elif config.startswith("ours"):
                        callback = backup_restore.BackupAndRestore(
                            directory,
                            save_freq=save_freq,
                            async_backup=config == "ours_async",
                        )
                        written = _count_writes(callback._engine.store)
                    timed = _timed(tf_keras, callback) if callback else None
                    os.makedirs(directory, exist_ok=True)
                    # Every run starts with nothing dirty in the page cache:
                    # tf-keras never fsyncs, and the kernel writing its
                    # backups back later would slow whichever run came next.
                    os.sync()
                    with _PeakSampler(directory) as sampler:
                        start = time.perf_counter()
                        model.fit(
                            x,
                            y,
                            batch_size=_BATCH,
                            epochs=epochs,
                            verbose=0,
                            callbacks=[timed] if timed else [],
                        )
                        seconds = time.perf_counter() - start
                    # tf-keras writes every scheduled backup; ours skips the
                    # one at the very end, which fit() would delete at once.
                    backups = epochs * (
                        1 if save_freq == "epoch" else steps // frequent
                    )
                    if config.startswith("ours"):
                        backups = max(1, written[0])
                    r = results.setdefault(key, {})
                    r.setdefault("fit_s", []).append(seconds)
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
                        store = callback._engine.store
                        if store.last_persist_seconds is not None:
                            r.setdefault("persist_s", []).append(
                                store.last_persist_seconds
                            )
                    shutil.rmtree(directory, ignore_errors=True)
                    # tf-keras's callback deletes this attribute at the end
                    # of fit(), which breaks the next fit() of the model.
                    model._training_state = None

        # Restore: ours (through fit's on_train_begin), tf-keras's, and
        # tf.train.Checkpoint.read of our backup; each with the files cold
        # (evicted from the page cache first, as after a reboot or on a new
        # machine) and warm (just read, as after a restart in place).
        def restore_seconds(cls, directory, prefix, *, model=model, x=x, y=y):
            """One restore: Checkpoint.read of `prefix`, or (no prefix) the
            callback `cls` in a fit()."""
            if prefix is not None:
                ckpt = tf.train.Checkpoint(
                    model=model, optimizer=model.optimizer
                )
                start = time.perf_counter()
                ckpt.read(prefix).expect_partial()
                return time.perf_counter() - start
            timed = _timed(tf_keras, cls(directory, delete_checkpoint=False))
            model.fit(
                x, y, batch_size=_BATCH, epochs=1, verbose=0, callbacks=[timed]
            )
            model._training_state = None  # see above
            return timed.calls[0]  # on_train_begin: the restore

        restore = {}
        for config in ("tf_keras", "ours_async"):
            directory = os.path.join(root, f"{size}-restore-{config}")
            shutil.rmtree(directory, ignore_errors=True)
            cls = (
                tf_keras.callbacks.BackupAndRestore
                if config == "tf_keras"
                else backup_restore.BackupAndRestore
            )
            model.fit(
                x,
                y,
                batch_size=_BATCH,
                epochs=1,
                verbose=0,
                callbacks=[cls(directory, delete_checkpoint=False)],
            )
            readers = {config: None}
            if config == "ours_async":
                prefix = os.path.join(
                    directory,
                    sorted(
                        d
                        for d in os.listdir(directory)
                        if d.startswith("backup-")
                    )[-1],
                    "ckpt",
                )
                readers["checkpoint_read"] = prefix
            times = {}
            for prefix in readers.values():  # first runs, not counted
                restore_seconds(cls, directory, prefix)
            # Interleaved, so that a slow spell of the disk hits both.
            for cache in ("cold", "warm"):
                for _ in range(5):
                    for name, prefix in readers.items():
                        if cache == "cold":
                            _drop_from_page_cache(directory)
                        times.setdefault((name, cache), []).append(
                            restore_seconds(cls, directory, prefix)
                        )
            for key, values in times.items():
                restore[key] = statistics.median(values)
            if config == "ours_async":
                backup_bytes = _dir_bytes(directory)
            shutil.rmtree(directory, ignore_errors=True)

        # The engine's persist alone (snapshot, write + fsync + commit in the
        # background as during training), with training not competing for
        # the cores: what the store costs by itself.
        directory = os.path.join(root, f"{size}-engine")
        engine_store = store_lib.BackupStore(directory)
        engine_ckpt = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer
        )
        engine_writes = []
        for _ in range(3):
            start = time.perf_counter()
            engine_store.write_async(engine_ckpt, {})
            engine_store.wait()
            engine_writes.append(time.perf_counter() - start)
        engine_store.delete_all()
        engine_s = statistics.median(engine_writes)
        # TensorFlow's own writer, no fsync, no commit: the floor under the
        # engine's persist (it serializes with this).
        tf_writes = []
        for i in range(3):
            start = time.perf_counter()
            engine_ckpt.write(os.path.join(directory, f"tf{i}", "ckpt"))
            tf_writes.append(time.perf_counter() - start)
        shutil.rmtree(directory, ignore_errors=True)
        tf_write_s = statistics.median(tf_writes)

        base = {
            f: statistics.median(results[("none", f)]["fit_s"])
            for _, f in results
        }
        for (config, freq), r in results.items():
            if config == "none":
                continue
            # Each fit against the no-callback fit of the same repetition
            # (run next to it): the machine's slow spells hit both.
            paired = [
                100 * (fit / none - 1)
                for fit, none in zip(
                    r["fit_s"], results[("none", freq)]["fit_s"], strict=True
                )
            ]
            row = {
                "model": f"{size} ({state_bytes / 1e6:.0f} MB state)",
                "config": config,
                "backups": freq,
                "overhead_%": statistics.median(paired),
                "paired": paired,
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
        restore_ratios = {
            cache: restore[("ours_async", cache)]
            / restore[("checkpoint_read", cache)]
            for cache in ("cold", "warm")
        }
        print(
            f"\n{size}: {steps} batches per epoch; state "
            f"{state_bytes / 1e6:.1f} MB, backup "
            f"{backup_bytes / 1e6:.1f} MB; plain copy {copy_s * 1e3:.1f} ms; "
            f"raw write+fsync {raw_s * 1e3:.0f} ms "
            f"({state_bytes / raw_s / 1e6:.0f} MB/s); "
            + "; ".join(
                f"restore {cache}: tf-keras "
                f"{restore[('tf_keras', cache)] * 1e3:.0f} ms, ours "
                f"{restore[('ours_async', cache)] * 1e3:.0f} ms "
                "(on_train_begin), Checkpoint.read "
                f"{restore[('checkpoint_read', cache)] * 1e3:.0f} ms -> "
                f"ours/read = {ratio:.2f}"
                for cache, ratio in restore_ratios.items()
            )
            + "; "
            f"engine persist alone (write+fsync+commit, no training) "
            f"{engine_s * 1e3:.0f} ms -> raw/engine = {raw_s / engine_s:.2f}; "
            f"Checkpoint.write alone (no fsync) {tf_write_s * 1e3:.0f} ms"
        )
        # The spread of the baseline: overheads smaller than it are noise.
        for freq in sorted(base):
            fits = results[("none", freq)]["fit_s"]
            print(
                f"  no-callback fit ({freq} runs): median {base[freq]:.2f} s, "
                f"min {min(fits):.2f} s, max {max(fits):.2f} s"
            )
        for row in rows:
            if row["model"].startswith(size):
                print(
                    f"  {row['config']} {row['backups']}: overhead per "
                    "repetition "
                    + ", ".join(f"{p:+.0f}%" for p in row["paired"])
                )

    print(
        "\n| model | callback | backups | overhead | blocking ms/backup "
        "| all hook ms / backup | peak MB in dir | blocking / plain copy "
        "| persist speed / raw write+fsync |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['config']} | {row['backups']} | "
            f"{row['overhead_%']:+.1f}% | {row['block_ms']:.1f} | "
            f"{row['hooks_ms']:.1f} | {row['peak_MB']:.0f} | "
            + (f"{row['vs_copy']:.1f}x | " if "vs_copy" in row else "- | ")
            + (
                f"{row['persist_vs_raw']:.2f} |"
                if "persist_vs_raw" in row
                else "- |"
            )
        )
    ratio_rows = {(r["model"], r["config"], r["backups"]): r for r in rows}
    print("\nours_async vs tf_keras (same run):")
    for (model_name, config, freq), row in ratio_rows.items():
        if config != "ours_async":
            continue
        theirs = ratio_rows[(model_name, "tf_keras", freq)]
        print(
            f"  {model_name}, {freq}: blocking "
            f"{row['block_ms'] / theirs['block_ms']:.2f}x of tf-keras's "
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
    return 0


if __name__ == "__main__":
    app.run(main)
