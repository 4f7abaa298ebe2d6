"""The background writer: what finishes a backup after write_async returns.

One thread per store, kept between backups (starting a thread while
training keeps the cores busy costs milliseconds), at a priority decided
when it starts (the rule below); the backup in flight (`InFlight`), which
makes training wait when it is late to become kill-safe; and the registry of
stores with a backup possibly in flight, which interpreter exit and a second
store on the same directory wait for.

Concurrency contract: a Writer is used by its store's (serialised) callers;
the thread runs one task at a time, in order.
"""

import atexit
import concurrent.futures
import os
import threading
import time
import weakref

from absl import logging

# How much lower than training the background writes run when backups are
# far apart (Linux nice increment, per thread). On a machine whose cores
# training keeps busy, a write at equal priority takes cores from the
# training step; at lower priority it uses what training leaves idle.
# Measured on 2 cores (the benchmark, backup_restore/benchmarks): at one
# backup per epoch this removes the training slowdown; with backups every
# few steps it is the wrong choice (the write then mostly runs while
# training waits for it, on one core), so it is only taken when the next
# backup is expected at least LOW_PRIORITY_SLACK times later than a persist
# of this size takes alone.
BACKGROUND_NICE_INCREMENT = 10
LOW_PRIORITY_SLACK = 4
# A persist's cost when it has the machine to itself: a fixed part (fsyncs,
# manifest, rename) plus the bytes at a write+fsync speed. Both are what the
# benchmark's machine measured (a 2-core Firecracker VM, virtio disk,
# Nov 26): the store's persist alone took 60 ms for 12.6 MB and 450 ms for
# 604 MB (raw write+fsync 1.5-2.3 GB/s). Only the priority rule uses them,
# once per run, and only by their order of magnitude.
_PERSIST_FIXED_SECONDS_MEASURED = 0.05
_PERSIST_BYTES_PER_SECOND_MEASURED = 1e9


# What a backup costs per variable beyond its bytes (TensorFlow's
# object-graph work in Python, a read and a CRC per tensor): in a benchmark
# run on 2 cores (docs/benchmark.md, Targets) a backup of the 1207 tensors
# (0.3 MB) of its `small` model blocked training 253-311 ms (medians per
# configuration) with the single-shard writer
# (tf_checkpoint.write_single_shard), about 0.25 ms each; TensorFlow's own
# Checkpoint.write took 471 ms there. Used only for a first estimate.
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
    """Runs a store's background work, one task at a time, each on a
    thread of its own that ends with it: a store that is never closed (a
    fit() that raised) leaves no idle thread behind. The priority of those
    threads is fixed at the first `start`."""

    def __init__(self):
        self._started = False
        self._thread = None
        self.low_priority = False

    @property
    def started(self) -> bool:
        return self._started

    def start(self, low_priority: bool) -> None:
        """Fixes the threads' priority (if not fixed yet)."""
        if not self._started:
            self._started = True
            self.low_priority = low_priority

    def submit(self, fn) -> concurrent.futures.Future:
        """Runs `fn` on a new thread once the previous task has ended."""
        self.start(self.low_priority)
        future = concurrent.futures.Future()
        previous = self._thread
        low_priority = self.low_priority

        def run():
            if previous is not None:
                previous.join()
            if low_priority:
                _lower_this_threads_priority()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(fn())
            except BaseException as e:  # the caller's to see, at wait()
                future.set_exception(e)

        # A daemon: the atexit hook below finishes a backup in flight.
        self._thread = threading.Thread(
            target=run, name="backup_restore-persist", daemon=True
        )
        self._thread.start()
        return future

    def shutdown(self) -> None:
        """Waits for the last task; a later `start` decides the priority
        anew."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._started = False


class InFlight:
    """A backup write_async returned from.

    Attributes:
      future: done once the backup is durable, or its write failed.
      published: set once it is published (kill-safe).
      returned_at: `time.monotonic()` when write_async returned.
    """

    def __init__(
        self,
        future: concurrent.futures.Future,
        published: threading.Event,
        returned_at: float,
    ):
        self.future = future
        self.published = published
        self.returned_at = returned_at

    def wait_if_late(self, deadline_seconds: float) -> float:
        """Returns the seconds it waited for the backup to be published.

        When it is still not published `deadline_seconds` after write_async
        returned, waits until it is (or its write fails): with training
        paused the background writer gets the cores. Costs a clock read
        otherwise.
        """
        if self.published.is_set():
            return 0.0
        late = time.monotonic() - self.returned_at
        if late < deadline_seconds:
            return 0.0
        started = time.monotonic()
        while not self.published.wait(0.05) and not self.future.done():
            pass
        waited = time.monotonic() - started
        logging.info(
            "The backup in flight was still not kill-safe %.1f s after "
            "training resumed: training waited %.3f s until it was "
            "published.",
            late,
            waited,
        )
        return waited


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
