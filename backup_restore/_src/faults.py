"""Deterministic fault-injection points in the backup write path.

The engine calls `point(name)` at each stage of writing a backup. Production
code installs no hook, so a point is one global lookup. Tests install a hook
(for example one that SIGKILLs the process at a chosen stage) to prove that a
kill at that instant leaves a restorable backup directory, without relying on
timing luck.

Thread-safety: the hook is process-global; install it before training starts.
"""

from collections.abc import Callable

# Stages of BackupStore.write, in order. A hook that raises OSError at any
# of them stands for a write that fails there (a full disk, an I/O error).
BEFORE_DATA = "before_data"  # work directory created, nothing written yet
# Inside TensorFlow's checkpoint write, on its writer thread when
# asynchronous: the files are written, TensorFlow has not returned yet. An
# error raised here is one of TensorFlow's own write errors.
DATA_WRITE = "data_write"
DATA_WRITTEN = "data_written"  # tensors written, not yet checked
BEFORE_COMMIT = "before_commit"  # data checked, manifest built, not committed
MANIFEST_WRITE = "manifest_write"  # manifest being written
RENAME = "rename"  # before the rename to backup-<seq> (atomic-rename only)
# Published (a process kill resumes from it), not yet durable; on the
# background thread when asynchronous (path: backup-<seq>).
PUBLISHED = "published"
FSYNC = "fsync"  # before each file of it is fsync'd (path: the file)
COMMITTED = "committed"  # durable; older backups not yet deleted
DELETE_OLDER = "delete_older"  # before each older backup is deleted (path)
STAGES = (
    BEFORE_DATA,
    DATA_WRITE,
    DATA_WRITTEN,
    BEFORE_COMMIT,
    MANIFEST_WRITE,
    RENAME,
    PUBLISHED,
    FSYNC,
    COMMITTED,
    DELETE_OLDER,
)
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
