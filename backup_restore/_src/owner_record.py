"""The owner's record of a backup_dir, and the errors that name an owner.

The process that owns a backup_dir writes its record (host, pid, since
when, command, boot id, a random token, the mechanism) into its lock file
or lease; `ownership.py` describes both. Every record read back from the
directory is checked field by field (`invalid_fields`) before use: of a
lock file's record only the valid fields (`valid_part`) name the owner in a
refusal (`in_use_error`); a lease adds its TTL and the times of its renewal
and expiry.
"""

import datetime
import math
import os
import socket
import sys
import time
import uuid

from backup_restore._src import errors


def now_record(mechanism: str) -> dict:
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.fromtimestamp(now)
        .astimezone()
        .isoformat(timespec="seconds"),
        "since_epoch": now,
        "command": " ".join(sys.argv)[:300],
        "boot_id": boot_id(),
        "token": uuid.uuid4().hex,
        "mechanism": mechanism,
    }


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def _is_number(value) -> bool:
    # bool is an int in Python, but true is no time and no pid.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value)
    )


# The fields of an owner record (flock and lease), each with what it must
# be; a lease adds _LEASE_FIELDS.
_FIELDS = {
    "host": ("a string", lambda v: isinstance(v, str)),
    # Up to the largest pid_t: os.kill overflows beyond.
    "pid": (
        "a positive integer",
        lambda v: _is_number(v) and isinstance(v, int) and 0 < v < 2**31,
    ),
    "since": ("a string", lambda v: isinstance(v, str)),
    "since_epoch": ("a finite number", _is_number),
    "command": ("a string", lambda v: isinstance(v, str)),
    "boot_id": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "token": ("a non-empty string", lambda v: isinstance(v, str) and v != ""),
    "mechanism": ("a string", lambda v: isinstance(v, str)),
}
_LEASE_FIELDS = {
    "ttl": ("a positive finite number", lambda v: _is_number(v) and v > 0),
    "renewed_epoch": ("a finite number", _is_number),
    "expires_epoch": ("a finite number", _is_number),
}


def invalid_fields(record, lease: bool) -> dict:
    """What is wrong with an owner record read from backup_dir, by field.

    Args:
      record: the record as parsed from JSON (anything JSON holds).
      lease: check the fields of a lease too.

    Returns:
      {field: what it should be} for each field that is missing or of the
      wrong type or range; {} for a valid record. A record that is not a
      JSON object gives {"record": ...}. Fields this release does not know
      are allowed (a later release may add some).
    """
    if not isinstance(record, dict):
        return {"record": f"a JSON object, not {type(record).__name__}"}
    fields = dict(_FIELDS, **_LEASE_FIELDS) if lease else _FIELDS
    invalid = {}
    for name, (want, check) in fields.items():
        if name not in record:
            invalid[name] = f"missing (should be {want})"
        elif not check(record[name]):
            invalid[name] = f"{repr(record[name])[:40]} (should be {want})"
    return invalid


def describe(invalid: dict) -> str:
    return "; ".join(f"{name}: {what}" for name, what in invalid.items())


def valid_part(record) -> dict | None:
    """The valid fields of `record` (a flock record, read only to name its
    owner); None when none is."""
    invalid = invalid_fields(record, lease=False)
    if "record" in invalid:
        return None
    return {
        k: v for k, v in record.items() if k in _FIELDS and k not in invalid
    } or None


def in_use_error(directory: str, owner: dict | None, extra: str = ""):
    """The refusal naming `owner`, a record whose fields are all valid (or
    only the valid ones of it).

    Args:
      directory: the backup_dir.
      owner: the other owner's record.
      extra: sentences to add after the owner's name.
    """
    owner = owner or {}
    pid, host, since, command = (
        owner.get(k) for k in ("pid", "host", "since", "command")
    )
    if any(v is not None for v in (pid, host, since, command)):
        who = "a process" if pid is None else f"pid {pid}"
        if host is not None:
            who += f" on host {host!r}"
        if since is not None:
            who += f", which has owned it since {since}"
        if command:
            who += f" (command: {command})"
        kill = "stop it"
        if pid is not None and host is not None:
            kill += f" (kill {pid} on {host})"
    else:
        who = (
            "a process that has not written its record yet (or whose record "
            "is invalid)"
        )
        kill = "stop it"
        owner = None
    error = errors.BackupDirInUseError(
        f"backup_dir {directory!r} is in use by another training job: "
        f"{who}.{extra} Nothing in the directory was changed. Wait for that "
        f"job to finish, {kill}, or give this job another backup_dir."
    )
    error.owner = owner
    return error


def unsafe_entry_error(path: str, found: str) -> errors.BackupDirUnsafeError:
    return errors.BackupDirUnsafeError(
        f"{path} is a {found}, not the file backup_restore keeps there: it "
        "was not followed, read, written or deleted. Remove it (or give "
        "this job another backup_dir); nothing else in the directory was "
        "changed."
    )


def record_write_error(directory, path, error) -> errors.BackupWriteError:
    return errors.BackupWriteError(
        f"Could not write the owner's record {path} into backup_dir "
        f"{directory!r} ({error.strerror or error}): training cannot start "
        "backing up there. Nothing else in the directory was changed. Free "
        "space there (or fix its permissions), or pass another backup_dir."
    )
