"""The backup_dirs this process owns: the in-process registry.

One `Held` per directory, keyed by its real path (`paths.key`) and shared
by every `ownership.Ownership` handle on it. `Held` alone is the ownership
of a ram:// directory (private to the process); `lock_file.Flock` and
`lease.Lease` extend it with the claim that other processes see.
"""

import threading

from backup_restore._src import owner_record

LOCK = threading.Lock()
HELD = {}  # key -> Held


class Held:
    """What one process holds for one directory (ram://: only this)."""

    record = None

    def __init__(self, directory, key):
        self.directory = directory
        self.key = key
        self.holder = None
        # (owner record, what happened) once another process took the
        # directory over: this process then no longer holds it.
        self.lost = None
        # Serializes checking, re-establishing and renewing.
        self._guard = threading.Lock()

    def ensure(self):
        if self.lost is not None:
            raise owner_record.in_use_error(self.directory, *self.lost)

    def _lose(self, owner, what):
        """Records that `owner` took the directory; forgets it here."""
        self.lost = (owner, _lost_text(what))
        with LOCK:
            if HELD.get(self.key) is self:
                del HELD[self.key]

    def close(self, remove_empty_dir):
        pass


def _lost_text(what: str) -> str:
    return (
        f" This job owned it until {what}; that process has taken it since, "
        "so this job no longer owns it and writes no more backups there."
    )
