"""Owner records of another job, as the ownership tests plant them."""

import time


def foreign_lease(ttl: float = 60.0, expires_in: float = 3600.0, **changes):
    """A valid lease record of a job on another host, renewed just now and
    expiring `expires_in` seconds from now; `changes` replace fields."""
    now = time.time()
    record = {
        "host": "another-host",
        "pid": 4242,
        "since": "then",
        "since_epoch": now,
        "command": "train.py",
        "boot_id": None,
        "token": "theirs",
        "mechanism": "lease",
        "ttl": ttl,
        "renewed_epoch": now,
        "expires_epoch": now + expires_in,
    }
    record.update(changes)
    return record
