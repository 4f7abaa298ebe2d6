"""The manifest: commit marker, metadata and checksums of one backup.

`manifest.json` lists every file of the backup with its size and CRC-32 and
carries the caller's JSON metadata (position in training, model fingerprint,
callback states). The manifest protects itself with a CRC-32 of its canonical
body. Nothing in a backup is ever unpickled or executed: the manifest is plain
JSON and the tensors are read by tf.train.Checkpoint.
"""

import json
import os
import zlib

import tensorflow as tf

from backup_restore._src import errors

FORMAT = "backup_restore.manifest/1"
_CHUNK = 8 << 20


def file_crc32(path: str) -> tuple[int, int]:
    """Returns (size, crc32) of a file, read through tf.io.gfile."""
    crc, size = 0, 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def _canonical(body: dict) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), allow_nan=True
    ).encode()


def build(directory: str, files: list[str], metadata: dict) -> bytes:
    """Checksums `files` (names inside `directory`); returns manifest bytes."""
    entries = {}
    for name in sorted(files):
        size, crc = file_crc32(os.path.join(directory, name))
        entries[name] = {"size": size, "crc32": crc}
    body = {"format": FORMAT, "files": entries, "metadata": metadata}
    return json.dumps(
        {"body": body, "crc32": zlib.crc32(_canonical(body))},
        indent=1,
        sort_keys=True,
    ).encode()


def read(directory: str) -> dict:
    """Reads and checks a manifest; returns its body.

    Raises:
      errors.BackupCorruptError: unreadable, not JSON, wrong format, or its own
        checksum does not match.
    """
    path = os.path.join(directory, "manifest.json")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            raw = f.read()
        doc = json.loads(raw)
        body = doc["body"]
        stored = doc["crc32"]
    except (tf.errors.OpError, ValueError, KeyError, TypeError) as e:
        raise errors.BackupCorruptError(
            f"manifest {path} is unreadable ({type(e).__name__}: {e})"
        ) from e
    if zlib.crc32(_canonical(body)) != stored:
        raise errors.BackupCorruptError(
            f"manifest {path} fails its checksum (bit rot or a partial write)"
        )
    if body.get("format") != FORMAT:
        raise errors.BackupCorruptError(
            f"manifest {path} has format {body.get('format')!r}; this version "
            f"of backup_restore reads {FORMAT!r}"
        )
    return body


def verify(directory: str, body: dict, full: bool = True) -> None:
    """Checks that the files listed in `body` are present and intact.

    Args:
      directory: the backup directory.
      body: the manifest body, from `read`.
      full: also recompute every CRC-32 (reads all bytes); otherwise check
        presence and sizes only.

    Raises:
      errors.BackupCorruptError: naming the first file that is missing,
        truncated, extended or whose checksum differs.
    """
    for name, entry in sorted(body["files"].items()):
        path = os.path.join(directory, name)
        if not tf.io.gfile.exists(path):
            raise errors.BackupCorruptError(f"{path} is missing")
        if full:
            size, crc = file_crc32(path)
        else:
            size, crc = tf.io.gfile.stat(path).length, entry["crc32"]
        if size != entry["size"]:
            raise errors.BackupCorruptError(
                f"{path} has {size} bytes, the manifest recorded "
                f"{entry['size']} (truncated or partially written)"
            )
        if crc != entry["crc32"]:
            raise errors.BackupCorruptError(
                f"{path} fails its CRC-32 check (stored {entry['crc32']:#010x}"
                f", computed {crc:#010x}): the file is corrupt"
            )
