"""What the benchmark learns of our backups from their log lines alone.

backup_restore logs one INFO line per backup once it is committed (durable):
"Backup <path> (<position>) committed: <n> bytes; training waited <s> s;
durable <s> s after its snapshot began." With an `overhead_budget`, it logs
each interval it chooses: "overhead_budget=<b>: backing up after <n>
batches (<s> s of training) ...". A resume that draws the batches trained
before logs how long that took. `CommitLog` collects both while installed,
so that the benchmark measures from outside (nothing of the library's
internals is read).
"""

import logging
import os
import re

from absl import logging as absl_logging

_COMMITTED = re.compile(
    r"Backup (?P<path>.+?) \((?P<label>[^()]*)\) committed: (?P<bytes>\d+) "
    r"bytes; "
    r"training waited (?P<waited>[\d.]+) s; durable (?P<durable>[\d.]+) s "
    r"after its snapshot began\."
)
_SKIPPED = re.compile(
    r"Skipped (?P<batches>\d+) already-trained batches in "
    r"(?P<seconds>[\d.]+) s\."
)
_CHOSEN = re.compile(
    r"overhead_budget=\S+: backing up after (?P<batches>\d+) batches "
    r"\((?P<seconds>[\d.]+) s of training\)"
)


class CommitLog(logging.Handler):
    """Collects the commit and budget lines logged while installed.

    `committed`: (position label, the backup's name in backup_dir, seconds
    from its snapshot's start until it was durable), in commit order.
    `chosen`: (batches, seconds) of each interval the budget chose, the
    last one last.
    `fast_forward_seconds`: the time a resume spent drawing the batches
    trained before ("Skipped <n> already-trained batches in <s> s.").

    Used as a context manager: absl's logger passes INFO records on for the
    duration (absl's own stderr handler still prints only warnings).
    """

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.committed = []
        self.chosen = []
        self.fast_forward_seconds = 0.0

    def emit(self, record):
        message = record.getMessage()
        match = _COMMITTED.search(message)
        if match:
            self.committed.append(
                (
                    match["label"],
                    os.path.basename(match["path"]),
                    float(match["durable"]),
                )
            )
            return
        match = _CHOSEN.search(message)
        if match:
            self.chosen.append((int(match["batches"]), float(match["seconds"])))
            return
        match = _SKIPPED.search(message)
        if match:
            self.fast_forward_seconds += float(match["seconds"])

    def __enter__(self):
        self._logger = absl_logging.get_absl_logger()
        self._absl = absl_logging.get_absl_handler()
        self._levels = self._logger.level, self._absl.level
        self._absl.setLevel(max(logging.WARNING, self._absl.level))
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)
        self._logger.setLevel(self._levels[0])
        self._absl.setLevel(self._levels[1])
        return False

    def kill_safe_after_hook_ms(self, hook_ends, first_seen, listed):
        """Per backup: ms from the return of the hook that started it until
        it was published (0: before the hook returned).

        Args:
          hook_ends: position label -> wall time the hook returned.
          first_seen: name in backup_dir -> wall time it was first seen
            there; a backup is published under the name its line gives.
          listed: position label -> the names in backup_dir as the hook
            returned.
        """
        out = []
        for label, name, _ in self.committed:
            if name in listed.get(label, ()):
                out.append(0.0)
            elif label in hook_ends and name in first_seen:
                out.append(1000 * max(0.0, first_seen[name] - hook_ends[label]))
        return out
