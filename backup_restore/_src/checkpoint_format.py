"""TensorFlow's checkpoint format, as far as deciding that one is complete.

A backup's checkpoint is `ckpt.index` plus the data shards
`ckpt.data-K-of-N` (K < N) it implies. `checkpoint_problem` is the one
place that decides whether the files of a backup (a listing after a write,
or what a manifest records) make such a checkpoint; the writer
(store_write.py) checks before publishing, readers (manifest.verify) before
restoring. `claims_problem` bounds what an index may claim by what its
data files hold, before anything is allocated for it.
"""

import os
import re

import tensorflow as tf
from tensorflow.core.protobuf import tensor_bundle_pb2

# The checkpoint of a backup: `ckpt.index` and `ckpt.data-K-of-N`, K < N.
CHECKPOINT_PREFIX = "ckpt"
INDEX = f"{CHECKPOINT_PREFIX}.index"
# The backup's manifest (atomicity.MANIFEST) sits beside the checkpoint.
_MANIFEST = "manifest.json"
_DATA_RE = re.compile(
    rf"^{re.escape(CHECKPOINT_PREFIX)}\.data-(\d{{5}})-of-(\d{{5}})$"
)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf):
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def _index_num_shards(index_path: str) -> int | None:
    """The number of data shards TensorFlow's index declares, if readable.

    The index is a table whose first entry (key "") is a BundleHeaderProto,
    stored uncompressed at the file's start: reading 64 bytes is enough.
    None when that entry is not where expected (then the file names decide).
    """
    with tf.io.gfile.GFile(index_path, "rb") as f:
        head = f.read(64)
    try:
        shared, pos = _varint(head, 0)
        key_length, pos = _varint(head, pos)
        length, pos = _varint(head, pos)
        if shared or key_length or pos + length > len(head):
            return None
        header = tensor_bundle_pb2.BundleHeaderProto.FromString(
            head[pos : pos + length]
        )
    except Exception:  # not a header we know: no opinion
        return None
    return header.num_shards or None


def checkpoint_problem(
    directory: str, names, read_index: bool = False, sizes=None
) -> str | None:
    """The one place that decides whether a backup's checkpoint is complete.

    A complete checkpoint is exactly `ckpt.index` plus every data shard
    `ckpt.data-K-of-N` (K < N) it implies, and nothing else (besides the
    manifest): no leftover of an unfinished TensorFlow write (`ckpt_temp/`,
    `*.tempstate*`), no directory, no other file.

    Args:
      directory: the backup (or work) directory.
      names: the entries of it to judge (a listing, or a manifest's files).
      read_index: also check the index itself: open it with TensorFlow's
        checkpoint reader (it parses the small index only, no tensor bytes;
        about 1 ms for 2,000 variables) and take N from its header.
      sizes: name -> bytes, if known (a manifest's record): an empty index,
        or data files that are all empty, cannot be a checkpoint.

    Returns:
      None if complete, else what is wrong, for an error message.
    """
    names = sorted({n.rstrip("/") for n in names} - {_MANIFEST})
    shards, foreign = {}, []
    for name in names:
        m = _DATA_RE.match(name)
        if m:
            shards[name] = (int(m.group(1)), int(m.group(2)))
        elif name != INDEX:
            foreign.append(name)
    if foreign:
        return (
            f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} "
            "not part of a complete checkpoint (left by an unfinished "
            "TensorFlow write)"
        )
    if INDEX not in names:
        return f"{INDEX} is missing"
    if sizes is not None:
        if not sizes.get(INDEX):
            return f"{INDEX} is empty"
        if shards and not any(sizes.get(name) for name in shards):
            return "its data files are empty"
    declared = {n for _, n in shards.values()}
    if read_index:
        prefix = os.path.join(directory, CHECKPOINT_PREFIX)
        try:
            # Not tf.train.load_checkpoint: on ram:// it takes the prefix for
            # a directory. Data shards are opened lazily, not here.
            tf.compat.v1.train.NewCheckpointReader(prefix)
            num_shards = _index_num_shards(os.path.join(directory, INDEX))
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e) else ""
            return f"{INDEX} is not readable ({type(e).__name__}: {first})"
        if num_shards is not None:
            declared.add(num_shards)
    if not declared:
        return f"no data file ({CHECKPOINT_PREFIX}.data-*) exists"
    if len(declared) > 1:
        return (
            "its data files and index disagree on the number of shards "
            f"({sorted(declared)})"
        )
    (num_shards,) = declared
    want = {
        f"{CHECKPOINT_PREFIX}.data-{k:05d}-of-{num_shards:05d}"
        for k in range(num_shards)
    }
    missing = sorted(want - set(shards))
    if missing:
        return f"data file(s) {', '.join(missing)} missing"
    extra = sorted(set(shards) - want)
    if extra:
        return f"{', '.join(extra)} not part of a {num_shards}-shard checkpoint"
    return None


def claims_problem(reader, sizes) -> str | None:
    """What is wrong with an index that claims more tensor bytes than the
    backup's data files hold, else None.

    TensorFlow's restore op makes each tensor at the shape its index entry
    gives before it reads a byte of it (a string tensor's elements are
    constructed then, touching that memory): an edited index could make a
    restore allocate far more than the backup holds. A genuine index claims
    at most what its data files hold: a numeric tensor's elements' bytes,
    and at least one byte (a length) per element of a string or variant
    tensor.

    Args:
      reader: the index (`tf.compat.v1.train.NewCheckpointReader`).
      sizes: name -> bytes of the backup's files (the manifest's record,
        which `manifest.verify` checks against the files).
    """
    held = sum(size for name, size in sizes.items() if _DATA_RE.match(name))
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    claimed = 0
    for key, shape in shapes.items():
        count = 1
        for dim in shape:
            count *= dim
        dtype = tf.as_dtype(dtypes[key])
        claimed += count * (
            1 if dtype in (tf.string, tf.variant) else dtype.size
        )
    if claimed <= held:
        return None
    return (
        f"{INDEX} claims {claimed} bytes of tensors, more than its data "
        f"files hold ({held} bytes): edited or damaged"
    )
