"""Backup directories for store tests: on the local disk or in ram://."""

import os
import uuid

import tensorflow as tf


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
