"""The background writer: what finishes a backup after write_async returns.

One thread per store, kept between backups (starting a thread while
training keeps the cores busy costs milliseconds), at a priority decided
when it starts (the rule below); and the registry of stores with a backup
possibly in flight, which interpreter exit and a second store on the same
directory wait for.

Concurrency contract: a Writer is used by its store's (serialised) callers;
the thread runs one task at a time, in order.
"""

import atexit
import concurrent.futures
import os
import threading
import weakref

from absl import logging

# How much lower than training the background writes run when backups are
# far apart (Linux nice increment, per thread). On a machine whose cores
# training keeps busy, a write at equal priority takes cores from the
# training step; at lower priority it uses what training leaves idle.
# Measured on 2 cores (README, Benchmark): at one backup per epoch this
# removes the training slowdown; with backups every few steps it is the
# wrong choice (the write then mostly runs while training waits for it, on
# one core), so it is only taken when the next backup is expected at least
# LOW_PRIORITY_SLACK times later than a persist of this size takes alone.
BACKGROUND_NICE_INCREMENT = 10
LOW_PRIORITY_SLACK = 4
# A persist's cost when it has the machine to itself: a fixed part (fsyncs,
# manifest, rename) plus the bytes at a write+fsync speed. Both are what the
# README's benchmark machine measured (a 2-core Firecracker VM, virtio disk,
# Nov 26): the store's persist alone took 60 ms for 12.6 MB and 450 ms for
# 604 MB (raw write+fsync 1.5-2.3 GB/s). Only the priority rule uses them,
# once per run, and only by their order of magnitude.
_PERSIST_FIXED_SECONDS_MEASURED = 0.05
_PERSIST_BYTES_PER_SECOND_MEASURED = 1e9


# What a backup costs per variable beyond its bytes (TensorFlow's
# object-graph work in Python, a read and a CRC per tensor): in the README's
# third benchmark run a backup of the 1207 tensors (0.3 MB) of its `small`
# model blocked training 253-311 ms (medians per configuration) with the
# single-shard writer (tf_checkpoint.write_single_shard), about 0.25 ms
# each; TensorFlow's own Checkpoint.write took 471 ms there, 1370 ms in the
# first run. Used only for a first estimate.
_WRITE_SECONDS_PER_VARIABLE_MEASURED = 0.00025


def backup_estimate_seconds(nbytes: int, variables: int) -> float:
    """About what one backup of that state costs, before one was measured."""
    return (
        persist_estimate_seconds(nbytes)
        + variables * _WRITE_SECONDS_PER_VARIABLE_MEASURED
    )


def persist_estimate_seconds(nbytes: int) -> float:
    """About how long persisting `nbytes` takes with no training running."""
    return (
        _PERSIST_FIXED_SECONDS_MEASURED
        + nbytes / _PERSIST_BYTES_PER_SECOND_MEASURED
    )


def _lower_this_threads_priority():
    """Runs once in the background thread: lowers its scheduling priority.

    On Linux, setpriority(PRIO_PROCESS, tid) applies to one thread, and
    threads it starts inherit it (TensorFlow's own async-checkpoint writer,
    started from here). Elsewhere, or if not permitted, nothing changes.
    """
    try:
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, nice + BACKGROUND_NICE_INCREMENT)
        )
    except (AttributeError, OSError):
        pass


def lower_priority_pays(expected_interval, nbytes: int) -> bool:
    """Whether to run the background writes below training's priority."""
    return (
        expected_interval is not None
        and expected_interval
        >= LOW_PRIORITY_SLACK * persist_estimate_seconds(nbytes)
    )


class Writer:
    """One background thread; its priority is fixed when it starts."""

    def __init__(self):
        self._executor = None
        self.low_priority = False

    @property
    def started(self) -> bool:
        return self._executor is not None

    def start(self, low_priority: bool) -> None:
        """Starts the thread (if not running) at that priority."""
        if self._executor is None:
            self.low_priority = low_priority
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1,
                thread_name_prefix="backup_restore-persist",
                initializer=_lower_this_threads_priority
                if low_priority
                else None,
            )

    def submit(self, fn) -> concurrent.futures.Future:
        """Runs `fn` on the thread (started at normal priority if needed)."""
        self.start(self.low_priority)
        return self._executor.submit(fn)

    def shutdown(self) -> None:
        """Ends the thread after its tasks; a later submit starts anew."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


# Every store of this process: waited for at exit and by another store on
# the same directory.
_LIVE_STORES = weakref.WeakSet()


def register(store) -> None:
    """Adds a store (anything with `wait()` and `directory`)."""
    _LIVE_STORES.add(store)


def others_on(store) -> list:
    """The other live stores of this process on `store`'s directory."""
    return [
        other
        for other in list(_LIVE_STORES)
        if other is not store and other.directory == store.directory
    ]


@atexit.register
def _finish_backups_in_flight():
    """A backup in flight at interpreter exit is finished, not abandoned."""
    for store in list(_LIVE_STORES):
        try:
            store.wait()
        except Exception as e:  # exiting: report, do not raise
            logging.error("The last backup could not be written: %s", e)
