"""Runs every example the way the README shows it, as a new user would.

Each command is read from README.md. Backups land in the temporary directory
(the examples' default); a README path under /tmp/ is read as one there. A
run is interrupted for real (SIGKILL, SIGTERM) where the README says to, and
the command is run again.
"""

import os
import re
import signal
import subprocess
import sys

from absl.testing import absltest
from absl.testing import parameterized

from testing import readme
from testing import test_case

# An absl log record (the C++ ones at start-up look alike: I0000 00:00:...).
_RECORD = re.compile(r"[IWEF]\d{4} [\d:.]+ +\d+ (\S+):\d+\] ([^\n]*)\n?")
_OURS = ("callback.py", "engine.py", "store.py", "store_write.py")


class ExamplesTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        # A user's environment: no test-only TensorFlow log settings.
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")
        }
        self.env.update(TMPDIR=self.tmp, PYTHONUNBUFFERED="1")

    def _start(self, target, args):
        return subprocess.Popen(
            [sys.executable, readme.binary(target), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )

    def _run(self, target, args, expect=0):
        proc = self._start(target, args)
        out = proc.communicate(timeout=600)[0]
        self.assertEqual(proc.returncode, expect, out[-5000:])
        return out

    def _interrupt(self, target, args, after, times=1, sig=signal.SIGKILL):
        """Starts the command; once `after` has been printed `times` times,
        freezes the process (SIGSTOP), sends `sig`, lets it go on; returns
        (exit status, output)."""
        proc = self._start(target, args)
        lines, seen = [], 0
        for line in proc.stdout:
            lines.append(line)
            seen += after in line
            if seen == times:
                proc.send_signal(signal.SIGSTOP)
                proc.send_signal(sig)
                proc.send_signal(signal.SIGCONT)
                break
        out = "".join(lines) + proc.communicate(timeout=600)[0]
        self.assertEqual(
            seen, times, f"never printed {after!r}:\n{out[-5000:]}"
        )
        return proc.returncode, out

    def assert_only_progress_and_backup_lines(self, out, epochs, backups):
        """After start-up (the first epoch), Keras's progress, our log lines
        (one per backup, one at the end) and the example's own lines."""
        after_start = out[out.index(f"Epoch 1/{epochs}") :]
        records = _RECORD.findall(after_start)
        self.assertEqual(
            [f for f, _ in records if f not in _OURS], [], after_start[-5000:]
        )
        messages = [m for _, m in records]
        self.assertLen([m for m in messages if " committed:" in m], backups)
        self.assertRegex(messages[-1], "^Training completed; deleted")
        self.assertLen(messages, backups + 1, messages)
        rest = _RECORD.sub("", after_start)
        for piece in re.split(r"[\r\n]", rest):
            # Keras 3's progress bar: ANSI colours, backspaces.
            text = re.sub(r"\x1b\[[0-9;]*m|\x08", "", piece).strip()
            if not text or re.match(r"(Epoch \d+/\d+|\d+/\d+ [\[━])", text):
                continue  # Keras's progress
            self.assertRegex(text, r"^(Trained from scratch|Final loss)")

    @parameterized.named_parameters(
        ("keras3", []),  # the README's command: TensorFlow's default
        ("tf_keras", ["--keras=tf_keras"]),
    )
    def test_fit_prints_progress_and_its_backups_and_resumes(self, flavour):
        target = "//backup_restore/examples:fit"
        args = [*readme.commands(target)[0], *flavour]
        out = self._run(target, args)
        # 5 epochs, a backup at the end of each but the last (deleted at
        # once with the others when fit() completes).
        self.assert_only_progress_and_backup_lines(out, epochs=5, backups=4)
        self.assertIn("Trained from scratch", out)

        status, out = self._interrupt(target, args, " committed:", times=2)
        self.assertEqual(status, -signal.SIGKILL, out[-3000:])
        out = self._run(target, args)
        epoch = int(re.search(r"Resumed at epoch (\d), batch 0", out)[1])
        self.assertBetween(epoch, 2, 4)
        self.assertNotIn(f"Epoch {epoch}/5", out)  # not trained again
        self.assertIn("Epoch 5/5", out)
        backup_dir = os.path.join(self.tmp, "backup_restore_fit_example")
        self.assertFalse(os.path.exists(backup_dir), "deleted at the end")

    def test_preemption_exits_42_and_the_restart_resumes(self):
        target = "//backup_restore/examples:preemption"
        (args,) = readme.commands(target)
        status, out = self._interrupt(
            target, args, "Epoch 2/20", sig=signal.SIGTERM
        )
        self.assertEqual(status, 42, out[-3000:])
        pid = re.search(r"Training as pid (\d+): `kill \1`", out)
        self.assertIsNotNone(pid, out[:3000])
        out = self._run(target, args)
        self.assertRegex(out, r"Completed after resuming at epoch 1, batch \d+")

    def test_custom_loop_resumes_after_a_kill(self):
        target = "//backup_restore/examples:custom_loop"
        (args,) = readme.commands(target)
        status, out = self._interrupt(target, args, " committed:", times=2)
        self.assertEqual(status, -signal.SIGKILL, out[-3000:])
        out = self._run(target, args)
        step = int(re.search(r"Resumed at step (\d+) from a backup", out)[1])
        self.assertIn(step, (1000, 1500, 2000, 2500))
        self.assertNotIn(f"step {step}: loss", out)
        self.assertIn("Done: 3000 steps.", out)

    def test_inspect_a_kept_backup(self):
        fit = next(
            c
            for c in readme.commands("//backup_restore/examples:fit")
            if "--nodelete_checkpoint" in c
        )
        inspect = next(
            c
            for c in readme.commands("//backup_restore:inspect")
            if c[-1] == "/tmp/backup_restore_fit_example"
        )
        self._run("//backup_restore/examples:fit", fit)
        inspect[-1] = os.path.join(self.tmp, "backup_restore_fit_example")
        out = self._run("//backup_restore:inspect", inspect)
        self.assertIn("resumes at epoch 2, batch 0", out)
        self.assertIn("OK", out)

    def test_multi_worker_group_restarted_after_a_worker_is_killed(self):
        (args,) = readme.commands("//testing:launcher")[:1]
        proc = self._start("//testing:launcher", args)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Epoch 3/10"):
                pids = re.findall(r"worker 1 pid (\d+)", "".join(lines))
                os.kill(int(pids[0]), signal.SIGKILL)
                break
        out = "".join(lines) + proc.communicate(timeout=900)[0]
        self.assertEqual(proc.returncode, 0, out[-5000:])
        self.assertIn("WORKER 1 died (signal 9)", out)
        self.assertIn("DONE after 1 restart(s)", out)
        self.assertRegex(out, r"Resumed at epoch [2-9], batch 0")
        # One line per backup, the chief's: a worker's scratch write is
        # not a backup of the job.
        commits = [m for _, m in _RECORD.findall(out) if " committed:" in m]
        self.assertNotEmpty(commits)
        for message in commits:
            self.assertIn(
                "backup_restore_multi_worker_example/backup-", message
            )


if __name__ == "__main__":
    absltest.main()
