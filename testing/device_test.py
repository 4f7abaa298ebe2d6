"""Tests of testing/device.py: variants skip only for a stated reason."""

import contextlib
import os
import unittest
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized

from testing import device
from testing import test_case

# Each device variant, with the probe that finds its device.
_DEVICES = (("gpu", "gpu", "_has_gpu"), ("tpu", "tpu", "_has_tpu"))


@contextlib.contextmanager
def _variant(name, probe, present):
    """This process as variant `name`, on a machine where `probe` finds
    the device (`present`) or not."""
    with (
        mock.patch.dict(os.environ, {device.DEVICE_ENV: name}),
        mock.patch.object(device, probe, return_value=present),
    ):
        yield


class DeviceTest(test_case.TestCase):
    def test_cpu_variant_never_skips(self):
        with mock.patch.dict(os.environ, {device.DEVICE_ENV: "cpu"}):
            self.assertIsNone(device.skip_reason())
            device.skip_if_device_absent()

    @parameterized.named_parameters(*_DEVICES)
    def test_variant_skips_with_reason_without_its_device(self, name, probe):
        with _variant(name, probe, present=False):
            self.assertIn(f"no {name.upper()}", device.skip_reason())
            with self.assertRaisesRegex(
                unittest.SkipTest, f"no {name.upper()}"
            ):
                device.skip_if_device_absent()

    @parameterized.named_parameters(*_DEVICES)
    def test_variant_runs_with_its_device(self, name, probe):
        with _variant(name, probe, present=True):
            self.assertIsNone(device.skip_reason())
            device.skip_if_device_absent()

    def test_unknown_device_is_an_error(self):
        with mock.patch.dict(os.environ, {device.DEVICE_ENV: "fpga"}):
            with self.assertRaisesRegex(ValueError, "cpu, gpu or tpu"):
                device.requested_device()


if __name__ == "__main__":
    absltest.main()
