"""Which device a test variant targets, and skipping when it is absent.

testing/build_defs.bzl sets BACKUP_RESTORE_TEST_DEVICE to `cpu`, `gpu` or `tpu`
for each variant. A GPU or TPU variant on a machine without that device skips
with a stated reason; it never passes vacuously and never fails for lack of
hardware. The probes make no network call (no TPU cluster resolver, no metadata
server): a TPU is recognised by its device nodes.
"""

import glob
import os
import unittest

DEVICE_ENV = "BACKUP_RESTORE_TEST_DEVICE"


def requested_device():
    """Returns the device this test variant targets: cpu, gpu or tpu."""
    device = os.environ.get(DEVICE_ENV, "cpu")
    if device not in ("cpu", "gpu", "tpu"):
        raise ValueError(f"{DEVICE_ENV}={device!r}: expected cpu, gpu or tpu")
    return device


def _has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _has_tpu():
    # Cloud TPU VMs expose /dev/accel* (v2-v4) or /dev/vfio/* (v5+).
    return bool(glob.glob("/dev/accel*")) or bool(glob.glob("/dev/vfio/[0-9]*"))


def skip_reason():
    """Returns why this variant cannot run here, or None when it can."""
    device = requested_device()
    if device == "gpu" and not _has_gpu():
        return (
            "GPU variant: TensorFlow sees no GPU on this machine "
            "(tf.config.list_physical_devices('GPU') is empty)"
        )
    if device == "tpu" and not _has_tpu():
        return "TPU variant: this machine has no TPU (/dev/accel*, /dev/vfio)"
    return None


def skip_if_device_absent():
    """Raises unittest.SkipTest with the reason when the device is absent."""
    reason = skip_reason()
    if reason:
        raise unittest.SkipTest(reason)
