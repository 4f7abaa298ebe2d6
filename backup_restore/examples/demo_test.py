"""The demo binary really kills a training, resumes it, and matches."""

import subprocess
import sys

from absl.testing import absltest

from testing import device
from testing import procs


class DemoTest(absltest.TestCase):
    def test_demo_resumes_and_matches(self):
        device.skip_if_device_absent()
        out = subprocess.run(
            [sys.executable, procs.runfile("backup_restore/examples/demo")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr[-4000:])
        self.assertIn("died with signal 9 (SIGKILL)", out.stdout)
        self.assertIn("resumes at epoch 2, batch 0", out.stdout)  # inspect
        self.assertIn("it resumed at epoch 2, batch 0", out.stdout)
        self.assertIn("final weights bit-identical: True", out.stdout)
        self.assertIn("History identical: True", out.stdout)


if __name__ == "__main__":
    absltest.main()
