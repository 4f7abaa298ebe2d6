"""The benchmark's restore timing: every restore in a fresh process.

What a preempted job pays to resume: from the start of the restarted
process's `fit()` to the end of its first training step (so work a restore
defers to the first step counts wherever it happens), from a backup taken
at an epoch boundary, with the files warm (just copied and written back:
in the page cache, as after a crash on the same machine) and cold (written
back and evicted, as after a reboot or on a new machine). Per repetition,
interleaved:

- ours: backup_restore's `BackupAndRestore`;
- the flavour's own `BackupAndRestore` (tf-keras's or Keras 3's);
- the floor: a no-callback `fit()`'s time from its start to the end of its
  first step (tracing and the optimizer's build included) plus
  `tf.train.Checkpoint.read` of the same state into the built model and
  optimizer, each in a fresh process.

The parent runs the benchmark binary again with `--restore_child` for each
measurement; the child prints one line starting with MARK. The children load
the library byte-compiled, as an installed package is (pip compiles it),
whatever PYTHONDONTWRITEBYTECODE says: the parent compiles it once
(`_compile_library`), so no restore pays for compiling a module it imports.
"""

import compileall
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

from backup_restore.benchmarks import commit_log

MARK = "RESTORE_TIMING "
PEERS = ("ours", "theirs", "read")

# Student's t, two-sided 95% (the 0.975 quantile), by degrees of freedom;
# beyond the table its last value, which makes the interval a little wide.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def paired_ratio(ours, theirs):
    """Ours against theirs, repetition by repetition (each repetition runs
    both, one after the other): the geometric mean of the ratios and its
    95% interval (Student's t on the logarithms), or None for the interval
    of a single repetition.

    A median of five per peer says which peer was quicker in that run; for
    peers within a few percent of each other it changes sign from run to
    run. The interval says how far apart the two are: below 1.0 ours is
    the quicker, above 1.0 theirs, and one that holds 1.0 does not tell
    them apart at this many repetitions.
    """
    logs = [math.log(a / b) for a, b in zip(ours, theirs, strict=True)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), None
    df = len(logs) - 1
    t = _T_975[min(df, len(_T_975)) - 1]
    half = t * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), (math.exp(mean - half), math.exp(mean + half))


def describe_ratio(ratio) -> str:
    """`paired_ratio`'s result as the table prints it."""
    mean, interval = ratio
    if interval is None:
        return f"{mean:.3f}x"
    low, high = interval
    verdict = (
        "ours quicker"
        if high < 1
        else "theirs quicker"
        if low > 1
        else "not told apart"
    )
    return f"{mean:.3f}x ({low:.3f}-{high:.3f}: {verdict})"


def child(mode, path, keras_module, model, data, *, ours_cls):
    """In the fresh process: one measurement; returns {name: seconds}.

    `data`: (x, y, batch size) of the fit().
    """
    x, y, batch = data
    import tensorflow as tf

    if mode == "read":
        model.optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        start = time.perf_counter()
        checkpoint.read(path).expect_partial()
        return {"read": time.perf_counter() - start}

    class FirstStep(keras_module.callbacks.Callback):
        hook_began = hook_ended = ended = None

        def on_train_begin(self, logs=None):
            self.hook_ended = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if self.ended is None:
                self.ended = time.perf_counter()
            self.model.stop_training = True

    callbacks = []
    if mode == "ours":
        callbacks.append(ours_cls(path, delete_checkpoint=False))
    elif mode == "theirs":
        callbacks.append(
            keras_module.callbacks.BackupAndRestore(
                path, delete_checkpoint=False
            )
        )
    first = FirstStep()
    with commit_log.CommitLog() as log:
        start = time.perf_counter()
        model.fit(
            x,
            y,
            batch_size=batch,
            epochs=2,
            verbose=0,
            callbacks=[*callbacks, first],
        )
    # The restoring callback runs first: on_train_begin of `first` ends
    # after its restore (and fit()'s own set-up before it).
    return {
        "first_step": first.ended - start,
        "to_train_begin": first.hook_ended - start,
        # Ours only: drawing the batches trained before (the originals
        # restart the data), inside first_step; a skip inside the input
        # pipeline logs no time of its own.
        "fast_forward": log.fast_forward_seconds,
    }


def _settle(directory, cold):
    """Writes a directory's files back to the disk, so that no write-back
    of the copy competes with the restore timed next (a committed backup of
    ours is synced already; the originals' are not, which this gives them),
    and, `cold`, evicts them from the page cache."""
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                if cold:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    os.sync()  # and whatever else is dirty (the previous copy's removal)


def _compile_library():
    """Writes the library's modules' bytecode beside them (__pycache__), which
    imports read even under PYTHONDONTWRITEBYTECODE; a tree that cannot be
    written is left as it is (its modules then compile as they load)."""
    library = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    compileall.compile_dir(library, quiet=2)


def _run_child(args, mode, path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [
            sys.executable,
            os.path.abspath(sys.argv[0]),
            *args,
            f"--restore_child={mode}",
            f"--child_path={path or ''}",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise RuntimeError(
        f"restore child {mode} failed ({proc.returncode}):\n"
        + proc.stderr[-3000:]
    )


def measure(args, backups, repeats):
    """Fresh-process restores of `backups` ({"ours": backup_dir, "theirs":
    backup_dir, "read": checkpoint prefix}); `args` the flags that make the
    child build the same model. Returns {(name, cache): [seconds, ...]}
    (name: ours, theirs, ours_hook, theirs_hook, read, none; cache: cold,
    warm, or "-" for the no-callback fit)."""
    _compile_library()
    samples = {}
    for rep in range(repeats):
        first = _run_child(args, "none", None)["first_step"]
        samples.setdefault(("none", "-"), []).append(first)
        for cache in ("cold", "warm"):
            order = PEERS[rep % 3 :] + PEERS[: rep % 3]
            for name in order:
                source = backups[name]
                if name == "read":
                    source = os.path.dirname(source)
                work = source.rstrip("/") + "-run"
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(source, work)
                _settle(work, cold=cache == "cold")
                path = work
                if name == "read":
                    path = os.path.join(work, os.path.basename(backups[name]))
                result = _run_child(args, name, path)
                shutil.rmtree(work, ignore_errors=True)
                if name == "read":
                    samples.setdefault(("read", cache), []).append(
                        result["read"]
                    )
                    continue
                samples.setdefault((name, cache), []).append(
                    result["first_step"]
                )
                samples.setdefault((f"{name}_hook", cache), []).append(
                    result["to_train_begin"]
                )
                if name == "ours":
                    samples.setdefault(("ours_ff", cache), []).append(
                        result["fast_forward"]
                    )
    return samples


def rows(model_name, samples):
    """Per cache: the medians and every repetition's value, in ms."""

    def ms(values):
        return ", ".join(f"{1000 * v:.0f}" for v in values)

    out = []
    none = samples[("none", "-")]
    for cache in ("warm", "cold"):
        reads = samples[("read", cache)]
        floors = [a + b for a, b in zip(none, reads, strict=True)]
        ours, theirs = samples[("ours", cache)], samples[("theirs", cache)]
        out.append(
            {
                "model": model_name,
                "cache": cache,
                "ours": statistics.median(ours),
                "theirs": statistics.median(theirs),
                "floor": statistics.median(floors),
                "none": statistics.median(none),
                "read": statistics.median(reads),
                "ours_hook": statistics.median(samples[("ours_hook", cache)]),
                "theirs_hook": statistics.median(
                    samples[("theirs_hook", cache)]
                ),
                "ours_ff": statistics.median(samples[("ours_ff", cache)]),
                # Each repetition runs ours and theirs one after the other:
                # a paired count, beside the medians.
                "quicker": sum(
                    a < b for a, b in zip(ours, theirs, strict=True)
                ),
                "hook_quicker": sum(
                    a < b
                    for a, b in zip(
                        samples[("ours_hook", cache)],
                        samples[("theirs_hook", cache)],
                        strict=True,
                    )
                ),
                "repeats": len(ours),
                "paired": paired_ratio(ours, theirs),
                "detail": f"ours {ms(ours)} (input fast-forward "
                f"{ms(samples[('ours_ff', cache)])}); theirs {ms(theirs)}; "
                f"no-callback first step {ms(none)}; "
                f"Checkpoint.read {ms(reads)}",
            }
        )
    return out


def print_table(ref, all_rows):
    print(
        "\nRestore, fresh process, fit() start to the end of the first "
        f"resumed step (medians, ms); theirs = {ref}'s BackupAndRestore; "
        "floor = no-callback fit()'s first step + Checkpoint.read, per "
        "repetition:"
    )
    print(
        "| model | files | ours | theirs | ours / theirs | floor "
        "(first step + read) | ours / floor | fit() start to the end of "
        "on_train_begin: ours / theirs | ours: input fast-forward (in ours; "
        "the originals restart the data; batches drawn in Python only: a "
        "skip inside tf-keras's array pipeline is in the first step) | "
        "repetitions where ours was quicker: to the first step, to the end "
        "of on_train_begin | ours / theirs per repetition, to the first "
        "step: geometric mean (95% interval) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in all_rows:
        print(
            f"| {r['model']} | {r['cache']} | {1000 * r['ours']:.0f} | "
            f"{1000 * r['theirs']:.0f} | {r['ours'] / r['theirs']:.3f}x | "
            f"{1000 * r['floor']:.0f} ({1000 * r['none']:.0f} + "
            f"{1000 * r['read']:.0f}) | {r['ours'] / r['floor']:.2f}x | "
            f"{1000 * r['ours_hook']:.0f} / {1000 * r['theirs_hook']:.0f} | "
            f"{1000 * r['ours_ff']:.0f} | {r['quicker']} of {r['repeats']}, "
            f"{r['hook_quicker']} of {r['repeats']} | "
            f"{describe_ratio(r['paired'])} |"
        )
    for r in all_rows:
        print(f"  {r['model']} {r['cache']}, per repetition: {r['detail']}")
