"""Turns a preemption notice (SIGTERM, ...) into "back up now, then stop".

Cloud VMs and schedulers (Kubernetes, GCE, SLURM) announce a kill with SIGTERM
and a grace period. The handler only sets a flag (all that is safe inside a
signal handler); the training loop checks it after each step, writes a backup
at that exact step, waits until it is committed, and stops. No network probe.
With several workers, engine.py makes them agree on that step.

Thread-safety: signal handlers can only be installed from the main thread;
`install` raises elsewhere. The flag may be read from any thread.
"""

import signal
import sys
import threading

from absl import logging

# The exit status after a preemption backup: TensorFlow's failure handling
# default (tf.distribute.experimental.TerminationConfig), which schedulers
# can be told to treat as "restart me".
RESTART_EXIT_CODE = 42
DEFAULT_SIGNALS = (signal.SIGTERM,)


class PreemptionWatcher:
    """Records that a preemption signal arrived; chains earlier handlers."""

    def __init__(self, signals=DEFAULT_SIGNALS, exit_code=RESTART_EXIT_CODE):
        self._signals = tuple(signals)
        # Until training starts (armed), a signal has nothing to back up:
        # the process exits with this status at once (None: the flag is set,
        # and training stops after its first step's backup).
        self._exit_code = exit_code
        self.armed = False
        for sig in self._signals:
            if not isinstance(sig, (int, signal.Signals)):
                raise TypeError(f"not a signal number: {sig!r}")
        self._previous = {}
        self._event = threading.Event()
        self.received = None  # the first signal received

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, sig=signal.SIGTERM) -> None:
        """Marks a preemption as requested (what the handler does)."""
        if not self._event.is_set():
            self.received = sig
        self._event.set()

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def _handle(self, signum, frame):
        if not self.armed and self._exit_code is not None:
            # fit() is still setting up: nothing was trained since the last
            # backup, so the restart resumes exactly from it.
            logging.warning(
                "Preemption (%s) before training started: nothing new to "
                "back up; exiting with status %d.",
                signal.Signals(signum).name,
                self._exit_code,
            )
            self.uninstall()
            sys.exit(self._exit_code)
        first = not self._event.is_set()
        self.request(signum)
        if not first:
            return  # a second notice while saving: the save goes on
        previous = self._previous.get(signum)
        # Chain a Python handler installed before ours (not SIG_DFL, which
        # would kill the process before the backup is written).
        if callable(previous):
            previous(signum, frame)

    def install(self) -> None:
        """Installs the handlers (unarmed: see `armed`); a no-op if they
        are installed already."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "save_before_preemption installs signal handlers, which is "
                "only possible in the main thread; run training there."
            )
        if self.installed:
            return
        # A new run: a signal acted on in an earlier one is done with.
        self._event.clear()
        self.received = None
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        logging.info(
            "Backing up on %s before exiting.",
            ", ".join(signal.Signals(s).name for s in self._signals),
        )

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        self.armed = False
