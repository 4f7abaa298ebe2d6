"""Editing a committed backup's manifest as a careless hand or an attacker
would: change its JSON, then compute its CRC-32 again, so that the manifest
passes its checksum and only the schema checks can refuse it.

Self-contained on purpose: it writes the manifest as manifest.py does (the
body's canonical JSON, its CRC-32), as anyone could from the file alone.
"""

import hashlib
import json
import os
import re
import shutil
import zlib

MANIFEST = "manifest.json"
_COMMITTED = re.compile(r"^backup-(\d{8,})$")

DELETE = object()  # a value for `set_field`: remove the key instead


def committed(directory: str) -> list[str]:
    """The paths of the committed backups in `directory`, oldest first."""
    named = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(directory)
        if (m := _COMMITTED.match(name))
    )
    return [os.path.join(directory, name) for _, name in named]


def copy_as_newer(directory: str) -> str:
    """Copies the newest committed backup of `directory` under the next
    sequence number (a newer backup with the same content); returns the
    copy's path. Tampering with the copy leaves an intact older backup."""
    newest = committed(directory)[-1]
    seq = int(_COMMITTED.match(os.path.basename(newest)).group(1))
    copy = os.path.join(directory, f"backup-{seq + 1:08d}")
    shutil.copytree(newest, copy)
    return copy


def read_body(backup: str) -> dict:
    """The body of the manifest of `backup` (a committed backup's local
    directory)."""
    with open(os.path.join(backup, MANIFEST)) as f:
        return json.load(f)["body"]


def write_body(backup: str, body) -> None:
    """Replaces the manifest body of `backup` with `body` (any JSON), with a
    matching CRC-32."""
    canonical = json.dumps(
        body, sort_keys=True, separators=(",", ":"), allow_nan=True
    ).encode()
    with open(os.path.join(backup, MANIFEST), "w") as f:
        json.dump({"body": body, "crc32": zlib.crc32(canonical)}, f, indent=1)


def edit(backup: str, change) -> None:
    """Calls `change(body)` on the manifest body of `backup` (which edits
    it in place, or returns a new body), then writes it back with a
    matching CRC-32."""
    body = read_body(backup)
    changed = change(body)
    write_body(backup, body if changed is None else changed)


def set_field(backup: str, path: str, value) -> None:
    """Sets the metadata field `path` of `backup` (dotted: "position.step";
    "" for the whole metadata) to `value`, or removes it (`DELETE`), with a
    matching CRC-32."""

    def change(body):
        if not path:
            body["metadata"] = value
            return
        *parents, last = path.split(".")
        node = body["metadata"]
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    edit(backup, change)


def rebind_files(backup: str) -> None:
    """Records the files of `backup` again in its manifest as they are now
    (sizes, and the index's SHA-256), with a matching CRC-32: as anyone who
    replaced its checkpoint files could."""

    def change(body):
        files = {}
        for name in body["files"]:
            path = os.path.join(backup, name)
            files[name] = {"size": os.path.getsize(path)}
            if name.endswith(".index"):
                with open(path, "rb") as f:
                    files[name]["sha256"] = hashlib.sha256(f.read()).hexdigest()
        body["files"] = files

    edit(backup, change)
