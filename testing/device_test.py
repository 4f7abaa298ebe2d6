"""Tests of testing/device.py: variants skip only for a stated reason."""

import os
from unittest import mock

from absl.testing import absltest

from testing import device


class DeviceTest(absltest.TestCase):
    def test_cpu_variant_never_skips(self):
        with mock.patch.dict(os.environ, {device.DEVICE_ENV: "cpu"}):
            self.assertIsNone(device.skip_reason())

    def test_gpu_variant_skips_with_reason_without_gpu(self):
        with (
            mock.patch.dict(os.environ, {device.DEVICE_ENV: "gpu"}),
            mock.patch.object(device, "_has_gpu", return_value=False),
        ):
            self.assertIn("no GPU", device.skip_reason())
            with self.assertRaisesRegex(Exception, "no GPU"):
                device.skip_if_device_absent()

    def test_gpu_variant_runs_with_gpu(self):
        with (
            mock.patch.dict(os.environ, {device.DEVICE_ENV: "gpu"}),
            mock.patch.object(device, "_has_gpu", return_value=True),
        ):
            self.assertIsNone(device.skip_reason())

    def test_tpu_variant_skips_with_reason_without_tpu(self):
        with (
            mock.patch.dict(os.environ, {device.DEVICE_ENV: "tpu"}),
            mock.patch.object(device, "_has_tpu", return_value=False),
        ):
            self.assertIn("no TPU", device.skip_reason())

    def test_unknown_device_is_an_error(self):
        with mock.patch.dict(os.environ, {device.DEVICE_ENV: "fpga"}):
            with self.assertRaisesRegex(ValueError, "cpu, gpu or tpu"):
                device.requested_device()


if __name__ == "__main__":
    absltest.main()
