"""backup_restore: crash-safe backup and exact resume for Keras training.

Public API:
  BackupAndRestore: a drop-in for tf.keras.callbacks.BackupAndRestore, for
    Keras 3 (tf.keras in TensorFlow 2.21) and tf-keras models alike.
  callback_backup_and_restore: factory for BackupAndRestore.
  BackupManager: the same engine for custom training loops.
  RESTART_EXIT_CODE: the exit status after a preemption backup (42).
  BackupError, BackupCorruptError, BackupDirInUseError, BackupDirUnsafeError,
  BackupMismatchError, BackupWriteError.

Everything under backup_restore._src is private.
"""

from backup_restore._src.callback import BackupAndRestore
from backup_restore._src.callback import callback_backup_and_restore
from backup_restore._src.errors import BackupCorruptError
from backup_restore._src.errors import BackupDirInUseError
from backup_restore._src.errors import BackupDirUnsafeError
from backup_restore._src.errors import BackupError
from backup_restore._src.errors import BackupMismatchError
from backup_restore._src.errors import BackupWriteError
from backup_restore._src.manager import BackupManager
from backup_restore._src.preemption import RESTART_EXIT_CODE

__all__ = [
    "RESTART_EXIT_CODE",
    "BackupAndRestore",
    "BackupCorruptError",
    "BackupDirInUseError",
    "BackupDirUnsafeError",
    "BackupError",
    "BackupManager",
    "BackupMismatchError",
    "BackupWriteError",
    "callback_backup_and_restore",
]
