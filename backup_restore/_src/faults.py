"""Deterministic fault-injection points in the backup write path.

The engine calls `point(name)` at each stage of writing a backup. Production
code installs no hook, so a point is one global lookup. Tests install a hook
(for example one that SIGKILLs the process at a chosen stage) to prove that a
kill at that instant leaves a restorable backup directory, without relying on
timing luck.

Thread-safety: the hook is process-global; install it before training starts.
"""

from collections.abc import Callable

# Stages of BackupStore.write, in order.
BEFORE_DATA = "before_data"  # work directory created, nothing written yet
DATA_WRITTEN = "data_written"  # tensors written, not yet fsync'd or checksummed
BEFORE_COMMIT = "before_commit"  # data durable, manifest built, not committed
COMMITTED = "committed"  # committed; older backups not yet deleted
STAGES = (BEFORE_DATA, DATA_WRITTEN, BEFORE_COMMIT, COMMITTED)
# Stages of the end of a run (Engine.finish), in order.
FINISH_WAITED = "finish_waited"  # last backup committed; nothing deleted
DELETING = "deleting"  # training complete; about to delete the backups
FINISH_STAGES = (FINISH_WAITED, DELETING)

_hook: Callable[[str, str], None] | None = None


def set_hook(hook: Callable[[str, str], None] | None) -> None:
    """Installs `hook(stage, path)`, called at every stage; None removes it."""
    global _hook
    _hook = hook


def point(stage: str, path: str) -> None:
    """Marks that the writer reached `stage` while writing into `path`."""
    if _hook is not None:
        _hook(stage, path)
