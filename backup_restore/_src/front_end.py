"""What both front ends (BackupAndRestore, BackupManager) share beyond
the engine: the methods they expose of it under the same names, and the
argument checks they make alike (a keyword close to a known argument, a
TF1 graph-mode program)."""

import difflib

import tensorflow as tf


def reject_near_misses(front_end: str, names, known) -> None:
    """A keyword close to an argument of the front end is a typo: raises
    the TypeError that names the argument meant."""
    for name in sorted(names):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            raise TypeError(
                f"{front_end} got an unexpected keyword argument {name!r}; "
                f"did you mean {close[0]!r}?"
            )


def check_eager(front_end: str, what: str) -> None:
    """Raises the ValueError of a front end built in TF1 graph mode."""
    if not tf.executing_eagerly():
        raise ValueError(
            f"backup_restore.{front_end} needs eager execution (TF2), but "
            "eager execution is disabled (tf.compat.v1."
            "disable_eager_execution() was called). Remove that call and "
            f"{what} in TF2 mode; legacy graph-mode (TF1) training has no "
            "backup support."
        )


class FrontEnd:
    """What both front ends (BackupAndRestore, BackupManager) expose of
    their `self._engine`, under the same names."""

    def wait_for_backup(self) -> None:
        """Blocks until the last backup is committed (async_backup=True).

        Raises:
          BackupWriteError: writing it failed; the previous one is intact.
        """
        self._engine.wait()

    @property
    def preemption_requested(self) -> bool:
        """Whether a preemption signal reached this process."""
        return self._engine.preemption_requested

    @property
    def preempted(self) -> bool:
        """Whether training stopped for a preemption (after its backup)."""
        return self._engine.preempted
