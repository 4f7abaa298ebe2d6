"""Backup directories for tests: fresh ones, on the local disk or in
ram://, and damaging a backup in one."""

import os
import uuid

import tensorflow as tf

from backup_restore._src import atomicity


def backup_dir(test, fs="local"):
    """A fresh, not yet created backup_dir for `test` (an absltest case) on
    the local disk or on TensorFlow's in-memory ram:// filesystem (which
    renames only files, so it takes the commit-marker protocol)."""
    if fs == "local":
        return os.path.join(test.create_tempdir().full_path, "backups")
    path = f"ram://{type(test).__name__}/{uuid.uuid4().hex}/backups"
    test.addCleanup(
        lambda: tf.io.gfile.exists(path) and tf.io.gfile.rmtree(path)
    )
    return path


def entries(directory):
    """The names in local `directory`, sorted, but the record that a run of
    the job created it (atomicity.CREATED; store_test checks that one)."""
    return sorted(n for n in os.listdir(directory) if n != atomicity.CREATED)


def corrupt_data(backup, offset):
    """Inverts byte `offset` of the first data shard of `backup` (a
    committed backup's local directory), as a bad disk would; returns the
    shard's path. The sizes stay; TensorFlow's checksum no longer matches."""
    data = next(n for n in sorted(os.listdir(backup)) if ".data-" in n)
    path = os.path.join(backup, data)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    return path
