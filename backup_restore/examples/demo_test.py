"""The demo binary really kills a training, resumes it, and matches."""

from absl.testing import absltest

from testing import procs
from testing import test_case


class DemoTest(test_case.TestCase):
    def test_demo_resumes_and_matches(self):
        out = procs.run(
            procs.runfile("backup_restore/examples/demo"),
            timeout=600,
            result_file=False,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr[-4000:])
        self.assertIn("died with signal 9 (SIGKILL)", out.stdout)
        self.assertIn("resumes at epoch 2, batch 0", out.stdout)  # inspect
        self.assertIn("it resumed at epoch 2, batch 0", out.stdout)
        self.assertIn("final weights bit-identical: True", out.stdout)
        self.assertIn("History identical: True", out.stdout)


if __name__ == "__main__":
    absltest.main()
