"""The base of this project's tests: the device skip and a fresh temp dir."""

import os

from absl.testing import parameterized

from testing import device


class TestCase(parameterized.TestCase):
    """Skips every case without this variant's device (testing/device.py).

    Each case gets `self.tmp`, a fresh temporary directory, and `self.dir`,
    a backup_dir in it that does not exist yet: each test is a job of its
    own.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        device.skip_if_device_absent()

    def setUp(self):
        super().setUp()
        self.tmp = self.create_tempdir().full_path
        self.dir = os.path.join(self.tmp, "backup")
