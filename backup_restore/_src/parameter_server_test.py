"""ParameterServerStrategy: chief, 2 workers and 1 PS as processes on loopback.

testing/launcher starts the cluster (TF_CONFIG on 127.0.0.1 ports); the
chief runs Model.fit(steps_per_epoch=...) with the callback through
tf.distribute's ClusterCoordinator. Tasks are SIGKILLed: the chief right
after a step-level backup, a parameter server and a worker from outside.

Training under ParameterServerStrategy is asynchronous (which worker runs
which step is not deterministic), so the weights cannot be compared with an
uninterrupted run bit for bit. What is asserted is what a resume promises:
training restarts at the backed-up step, the optimizer's step counter (saved
with the variables on the parameter servers) carries on from the backup, so
the finished run has taken exactly epochs * steps_per_epoch steps, and the
History covers every epoch.
"""

import json
import os
import signal
import subprocess
import sys
import time

from absl.testing import absltest

from testing import procs
from testing import test_case

_EPOCHS, _STEPS = 3, 5
# tf-keras: Keras 3's fit() has no ParameterServerStrategy support.
_ARGS = [
    "--keras=tf_keras",
    "--strategy=parameter_server",
    f"--epochs={_EPOCHS}",
    f"--steps_per_epoch={_STEPS}",
    "--batch_size=16",
    "--num_samples=64",
    "--model_size=tiny",
]


class ParameterServerTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        self.backup_dir = os.path.join(self.tmp, "backup")
        self.result_file = os.path.join(self.tmp, "result.json")

    def _launcher(self, trainer_args, launcher_args=()):
        return subprocess.Popen(
            [
                sys.executable,
                procs.runfile("testing/launcher"),
                "--num_workers=2",
                "--num_ps=1",
                "--max_restarts=3",
                f"--worker_log_dir={self.tmp}/logs",
                f"--worker_arg=0:--result_file={self.result_file}",
                *launcher_args,
                "--",
                *_ARGS,
                f"--backup_dir={self.backup_dir}",
                *trainer_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def _finish(self, launcher, steps_run_twice=0):
        """Waits for the launcher; checks the run ended complete.

        steps_run_twice: how many steps may have been applied twice. A worker
        killed in the middle of a step may have updated the variables on the
        parameter servers already; ClusterCoordinator runs that step again on
        another worker (at-least-once), which no backup can undo.
        """
        output = launcher.communicate(timeout=600)[0]
        self.assertEqual(launcher.returncode, 0, output[-4000:])
        with open(self.result_file) as f:
            result = json.load(f)
        self.assertBetween(
            result["optimizer_iterations"],
            _EPOCHS * _STEPS,
            _EPOCHS * _STEPS + steps_run_twice,
            "steps taken",
        )
        self.assertEqual(result["history_epochs"], list(range(_EPOCHS)))
        self.assertFalse(os.path.exists(self.backup_dir), "deleted at the end")
        return output, result

    def test_chief_killed_after_step_backups_resumes_at_that_step(self):
        # Backups every 3 steps. Attempt 1: killed after step 8, last backup
        # at step 6 = (epoch 1, batch 1). Attempt 2 resumes there and is
        # killed 8 steps later, at step 14; last backup at 12 = (2, 2).
        launcher = self._launcher(
            ["--save_freq=3"], ["--worker_arg=0:--fail_at_step=8"]
        )
        output, result = self._finish(launcher)
        self.assertIn("WORKER 0 died (signal 9) [chief 0]", output)
        self.assertIn("DONE after 2 restart(s)", output)
        self.assertEqual(result["resumed_from"], [2, 2])
        logs = os.path.join(self.tmp, "logs")
        with open(os.path.join(logs, "group1-chief0-start0.log")) as f:
            self.assertIn("resuming at epoch 1, batch 1", f.read())

    def test_sigterm_to_the_chief_backs_up_at_that_step(self):
        # No periodic backups. Every start of the chief gets SIGTERM after
        # its 7th step, backs up there and exits 42, which the launcher
        # treats as a death: the group restarts and resumes. Steps 7 =
        # (epoch 1, batch 2), then 7 + 7 = 14 = (2, 4), then the last one.
        launcher = self._launcher(
            ["--save_freq=false", "--save_before_preemption"],
            [
                "--worker_arg=0:--fail_at_step=7",
                "--worker_arg=0:--fail_with=sigterm",
            ],
        )
        output, result = self._finish(launcher)
        self.assertIn("WORKER 0 died (exit status 42) [chief 0]", output)
        self.assertIn("DONE after 2 restart(s)", output)
        logs = os.path.join(self.tmp, "logs")
        with open(os.path.join(logs, "group0-chief0-start0.log")) as f:
            first = f.read()
        with open(os.path.join(logs, "group1-chief0-start0.log")) as f:
            second = f.read()
        self.assertIn("Preemption (SIGTERM): backed up epoch 1, batch 2", first)
        self.assertIn("resuming at epoch 1, batch 2", second)
        self.assertIn(
            "Preemption (SIGTERM): backed up epoch 2, batch 4", second
        )
        self.assertEqual(result["resumed_from"], [2, 4])

    def _kill_task_after_first_backup(self, task):
        # Backups every 2 steps, each held 0.5 s before it commits: the
        # run lasts long enough to lose a task in the middle of it.
        launcher = self._launcher(
            ["--save_freq=2", "--persist_delay_seconds=0.5"]
        )
        # The launcher's first line names every task's pid.
        first = launcher.stdout.readline()
        self.assertTrue(first.startswith("LAUNCHED"), first)
        pids = dict(
            part.rsplit(" pid ", 1)
            for part in first.split(": ", 1)[1].split(", ")
        )
        deadline = time.monotonic() + 300
        while not (
            os.path.isdir(self.backup_dir)
            and any(
                n.startswith("backup-") for n in os.listdir(self.backup_dir)
            )
        ):
            self.assertLess(time.monotonic(), deadline, "no backup written")
            self.assertIsNone(launcher.poll(), "finished too early")
            time.sleep(0.1)
        os.kill(int(pids[task]), signal.SIGKILL)
        return launcher

    def test_worker_killed_is_restarted_alone_and_training_goes_on(self):
        launcher = self._kill_task_after_first_backup("worker 1")
        output, result = self._finish(launcher, steps_run_twice=1)
        self.assertIn("[worker 1]: restarting it alone", output)
        self.assertIsNone(result["resumed_from"], "the chief never restarted")

    def test_parameter_server_killed_restarts_the_group_which_resumes(self):
        launcher = self._kill_task_after_first_backup("ps 0")
        output, result = self._finish(launcher)
        self.assertIn("[ps 0]: stopping the group and restarting it", output)
        epoch, batch = result["resumed_from"]
        self.assertEqual((epoch * _STEPS + batch) % 2, 0, "a backed-up step")


if __name__ == "__main__":
    absltest.main()
