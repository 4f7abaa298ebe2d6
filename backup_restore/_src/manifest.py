"""The manifest: commit marker, metadata and integrity record of one backup.

`manifest.json` lists every file of the backup with its size and carries the
caller's JSON metadata (position in training, model fingerprint, callback
states); it protects itself with a CRC-32 of its canonical body. The bytes of
the tensors are protected by TensorFlow's own checksums, recorded when the
checkpoint is written: a CRC-32C per tensor, and block checksums in the
index. Reading the data files back to checksum them again would double the
I/O of every backup for no extra protection. The index (small: about 55
bytes per tensor) is recorded by its SHA-256, checked at every load, which
binds the tensors (through their CRC-32Cs in it) to this manifest's
metadata: the files of another backup are refused. A full verification
reads every tensor through TensorFlow's checkpoint reader, which checks
them.

Nothing in a backup is ever unpickled or executed: the manifest is plain JSON
and the tensors are read by TensorFlow's checkpoint reader.
"""

import hashlib
import json
import os
import re
import zlib

import tensorflow as tf

from backup_restore._src import atomicity
from backup_restore._src import checkpoint_format
from backup_restore._src import errors
from backup_restore._src import paths

FORMAT = "backup_restore.manifest/1"
# The most bytes a manifest may hold, written or read: about 60 bytes per
# variable of the model and its optimizers (73 KB for 1,207), so about a
# million variables fit. A reader reads no more than this (a damaged or planted
# manifest of any size costs no memory).
MAX_BYTES = 64 << 20


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(body: dict) -> bytes:
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), allow_nan=True
    ).encode()


def build(
    directory: str, files: list[str], metadata: dict, marks_durable: bool
) -> bytes:
    """Records the sizes of `files` (names in `directory`); returns bytes.

    `marks_durable`: the backup records its durability once made durable
    (atomicity.DURABLE); until then a failed check means an unfinished
    write.
    """
    entries = {}
    for name in sorted(files):
        path = os.path.join(directory, name)
        if name.endswith(".index"):
            # The index holds every tensor's CRC-32C: its digest binds the
            # data files to this manifest (and its metadata).
            index = paths.read_bytes(path)
            entries[name] = {"size": len(index), "sha256": _sha256(index)}
        else:
            entries[name] = {"size": tf.io.gfile.stat(path).length}
    body = {"format": FORMAT, "files": entries, "metadata": metadata}
    if marks_durable:
        body["marks_durable"] = True
    raw = json.dumps(
        {"body": body, "crc32": zlib.crc32(_canonical(body))},
        indent=1,
        sort_keys=True,
    ).encode()
    if len(raw) > MAX_BYTES:
        raise ValueError(
            f"The manifest of the backup in {directory} would hold "
            f"{len(raw)} bytes, more than a restore reads ({MAX_BYTES}); "
            "nothing was committed. The model and its optimizers hold too "
            "many variables for one backup_restore backup."
        )
    return raw


def read(directory: str) -> dict:
    """Reads and checks a manifest; returns its body.

    Raises:
      errors.BackupCorruptError: unreadable, not JSON, wrong format, its own
        checksum does not match, or its body breaks the manifest's schema
        (see `_body_problem`).
    """
    path = os.path.join(directory, atomicity.MANIFEST)
    try:
        raw = paths.read_bytes(path, limit=MAX_BYTES)
        doc = json.loads(raw)
        body = doc["body"]
        stored = doc["crc32"]
    except (FileNotFoundError, tf.errors.NotFoundError) as e:
        # Listed as committed without one (catalog.py): it records that it
        # was made durable.
        raise errors.BackupCorruptError(
            f"manifest {path} is missing: deleted or damaged (the backup "
            "records that it was committed and made durable)"
        ) from e
    except paths.NotOursError as e:
        raise errors.BackupCorruptError(
            f"manifest {path} is not readable as a file: {e} (not followed "
            "or read)"
        ) from e
    except paths.TooLargeError as e:
        raise errors.BackupCorruptError(
            f"manifest {path} is larger than any manifest this library "
            f"writes ({MAX_BYTES} bytes at most): damaged or not one; it "
            "was not read further"
        ) from e
    except (tf.errors.OpError, OSError, ValueError, KeyError, TypeError) as e:
        raise errors.BackupCorruptError(
            f"manifest {path} is unreadable ({type(e).__name__}: {e})"
        ) from e
    if zlib.crc32(_canonical(body)) != stored:
        raise errors.BackupCorruptError(
            f"manifest {path} fails its checksum (bit rot or a partial write)"
        )
    if not isinstance(body, dict) or not isinstance(body.get("format"), str):
        raise errors.BackupCorruptError(
            f"manifest {path} is invalid: its body is no JSON object with a "
            "format string (edited or damaged)"
        )
    if body["format"] != FORMAT:
        raise errors.BackupCorruptError(
            f"manifest {path} has format {body['format']!r}; this version "
            f"of backup_restore reads {FORMAT!r}"
        )
    problem = _body_problem(body)
    if problem:
        raise errors.BackupCorruptError(
            f"manifest {path} is invalid: {problem} (edited or damaged)"
        )
    return body


def _body_problem(body: dict) -> str | None:
    """What breaks the schema of a manifest's body, or None.

    Its checksum only detects accidents (anyone can compute a CRC-32
    again), so its structure is checked before the store indexes it:
    `files` maps names to {"size": bytes}, with "sha256" (64 lower-case hex
    digits, as written) beside the size for an index; `metadata` is a JSON
    object. What the files are is checked by `verify`
    (checkpoint_format.checkpoint_problem).
    """
    files = body.get("files")
    if not isinstance(files, dict):
        return f"files is {_show(files)}, not a JSON object"
    for name, entry in files.items():
        if not isinstance(entry, dict) or set(entry) - {"sha256"} != {"size"}:
            return f'files[{name!r}] is {_show(entry)}, not {{"size": bytes}}'
        digest = entry.get("sha256", "0" * 64)
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            return (
                f"files[{name!r}].sha256 is {_show(digest)}, not 64 "
                "lower-case hex digits"
            )
        size = entry["size"]
        # bool is an int in Python, never a size.
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return (
                f"files[{name!r}].size is {_show(size)}, not a non-negative "
                "integer"
            )
    if not isinstance(body.get("metadata"), dict):
        return f"metadata is {_show(body.get('metadata'))}, not a JSON object"
    return None


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def verify(directory: str, body: dict, full: bool = True) -> None:
    """Checks that the files listed in `body` are present and intact.

    Args:
      directory: the backup directory.
      body: the manifest body, from `read`.
      full: also read every tensor through TensorFlow's checkpoint reader,
        which verifies its CRC-32C (reads all bytes); otherwise check presence
        and sizes (and the index's digest) only.

    Raises:
      errors.BackupCorruptError: the checkpoint it lists is incomplete (see
        checkpoint_format.checkpoint_problem), or naming the first file that is
        missing, truncated or extended, the index whose digest differs, or
        the tensor whose checksum fails.
    """
    sizes = {name: entry.get("size") for name, entry in body["files"].items()}
    problem = checkpoint_format.checkpoint_problem(
        directory, body["files"], sizes=sizes
    )
    if problem is not None:
        raise errors.BackupCorruptError(
            f"{directory} holds an incomplete checkpoint: {problem} (a "
            "failed write was committed: older releases of backup_restore "
            "did so when TensorFlow's asynchronous write failed)"
        )
    for name, entry in sorted(body["files"].items()):
        path = os.path.join(directory, name)
        found = paths.kind(path)
        if found is None:
            raise errors.BackupCorruptError(f"{path} is missing")
        if found != paths.FILE:
            # Never read through: a link may point anywhere.
            raise errors.BackupCorruptError(
                f"{path} is a {found}, not a file of its own (not read)"
            )
        size = (
            os.lstat(paths.local(path)).st_size
            if paths.is_local(path)
            else tf.io.gfile.stat(path).length
        )
        if size != entry["size"]:
            raise errors.BackupCorruptError(
                f"{path} has {size} bytes, the manifest recorded "
                f"{entry['size']} (truncated or partially written)"
            )
        if "sha256" in entry:
            try:
                digest = _sha256(paths.read_bytes(path, limit=size))
            except (paths.NotOursError, paths.TooLargeError) as e:
                raise errors.BackupCorruptError(f"{path}: {e}") from e
            if digest != entry["sha256"]:
                raise errors.BackupCorruptError(
                    f"{path} is not the file its manifest recorded (its "
                    "SHA-256 differs): a file of another backup, or edited"
                )
    if not full:
        return
    problem = checkpoint_format.checkpoint_problem(
        directory, body["files"], read_index=True
    )
    if problem is not None:
        raise errors.BackupCorruptError(
            f"{directory} holds an incomplete checkpoint: {problem}"
        )
    for name in body["files"]:
        if not name.endswith(".index"):
            continue
        prefix = os.path.join(directory, name[: -len(".index")])
        try:
            # Not tf.train.load_checkpoint: on ram:// it takes the prefix
            # for a directory.
            reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        except (tf.errors.OpError, ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e) else ""
            raise errors.BackupCorruptError(
                f"{prefix}: its index cannot be read ({type(e).__name__}: "
                f"{first})"
            ) from e
        problem = checkpoint_format.claims_problem(reader, sizes)
        if problem is not None:
            raise errors.BackupCorruptError(f"{directory}: {problem}")
        try:
            for key, dtype in sorted(
                reader.get_variable_to_dtype_map().items()
            ):
                if dtype == tf.variant:
                    # A tf.data iterator's state has no numpy value: read
                    # (and checksummed) by TensorFlow's restore op instead.
                    tf.raw_ops.RestoreV2(
                        prefix=prefix,
                        tensor_names=[key],
                        shape_and_slices=[""],
                        dtypes=[tf.variant],
                    )
                else:
                    reader.get_tensor(key)
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e) else ""
            raise errors.BackupCorruptError(
                f"{prefix}: a tensor cannot be read or fails TensorFlow's "
                "checksum "
                f"({type(e).__name__}: {first})"
            ) from e
