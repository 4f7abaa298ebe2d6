"""The test trainers: binaries with fault-injection flags, run by the tests
as child processes (put the target in the test's `data`)."""

from testing import procs


def fit_trainer() -> str:
    """Model.fit() with BackupAndRestore; kill, signal and fault flags."""
    return procs.runfile("testing/fit_trainer")


def custom_loop_trainer() -> str:
    """A custom loop with BackupManager; kill and signal flags."""
    return procs.runfile("testing/custom_loop_trainer")


def scenario_trainer() -> str:
    """fit() variations (schedules, preprocessing, several fit() calls)."""
    return procs.runfile("testing/scenario_trainer")
