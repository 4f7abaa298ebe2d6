"""MultiWorkerMirroredStrategy: real worker processes on 127.0.0.1.

Workers are separate processes with TF_CONFIG on loopback ports. One is
SIGKILLed mid-epoch (or the chief during a backup write); the survivors are
stopped (they cannot go on without it), the whole group is restarted, and
training resumes from the chief's last committed backup, ending with the
weights of an uninterrupted run of the same cluster.
"""

import json
import os
import signal
import subprocess
import time

from absl.testing import absltest

from testing import cluster
from testing import dirs
from testing import procs
from testing import test_case
from testing import trainers

# tf-keras: Keras 3's fit() does not train under MultiWorkerMirroredStrategy
# (keras3_adapter.check_strategy).
_ARGS = [
    "--keras=tf_keras",
    "--strategy=multi_worker",
    "--epochs=3",
    "--num_samples=64",
    "--batch_size=16",
    "--seed=3",
]


class MultiWorkerTest(test_case.TestCase):
    def _cluster(self, n, args, per_worker=None, wait_for_death=None):
        """Runs n workers; returns their exit codes and chief's result.

        wait_for_death: the index of a worker expected to die; once it has,
        the others get up to 60 s to notice, then are SIGKILLed.
        """
        result_file = os.path.join(self.tmp, f"result-{time.time_ns()}.json")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        tasks = cluster.make(n)
        for task in tasks:
            extra = (per_worker or {}).get(task.index, [])
            if task.index == 0:
                extra = [*extra, f"--result_file={result_file}"]
            task.start(
                trainers.fit_trainer(),
                [*args, *extra],
                stdout=subprocess.PIPE,
                env=env,
            )
        workers = [task.process for task in tasks]
        if wait_for_death is not None:
            workers[wait_for_death].wait(timeout=300)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(
                w.poll() is None for w in workers
            ):
                time.sleep(0.5)
            cluster.stop(tasks)
        outputs = [w.communicate(timeout=600)[0] for w in workers]
        codes = [w.returncode for w in workers]
        result = None
        if os.path.exists(result_file):
            with open(result_file) as f:
                result = json.load(f)
        return codes, result, outputs

    def _reference(self, n):
        codes, result, outputs = self._cluster(
            n, [*_ARGS, f"--backup_dir={self.tmp}/ref{n}"]
        )
        self.assertEqual(codes, [0] * n, outputs[-1][-3000:])
        return result

    def _finish(self, n, args, reference, expected):
        codes, result, outputs = self._cluster(n, args)
        self.assertEqual(codes, [0] * n, outputs[0][-3000:])
        self.assertEqual(result["resumed_from"], expected)
        self.assertEqual(result["weights_sha256"], reference["weights_sha256"])
        self.assertEqual(result["history_epochs"], [0, 1, 2])
        self.assertFalse(
            os.path.exists(args[-1].split("=", 1)[1]), "deleted at the end"
        )

    def _kill(self, n, task, save_freq, fault, expected, *, check=None):
        """Worker `task` SIGKILLs itself at `fault` (trainer flags); the
        restarted cluster resumes at `expected` and ends like the reference.
        `check(codes, backup_dir)` runs between the two."""
        reference = self._reference(n)
        backup_dir = f"{self.tmp}/b"
        args = [
            *_ARGS,
            f"--save_freq={save_freq}",
            f"--backup_dir={backup_dir}",
        ]
        codes, _, outputs = self._cluster(
            n,
            args,
            per_worker={task: [*fault, f"--fail_on_task={task}"]},
            wait_for_death=task,
        )
        self.assertEqual(codes[task], -signal.SIGKILL, outputs[task][-2000:])
        if check:
            check(codes, backup_dir)
        self._finish(n, args, reference, expected)

    def test_two_workers_one_sigkilled_mid_epoch(self):
        def check(codes, backup_dir):
            self.assertNotEqual(codes[0], 0, "the survivor cannot finish alone")
            # Only the chief writes into backup_dir (and its lock file, which
            # its death left behind).
            self.assertEqual(
                dirs.entries(backup_dir),
                [".backup_restore.lock", "backup-00000001"],
            )

        self._kill(
            2,
            task=1,
            save_freq="epoch",
            fault=["--fail_at_step=7"],
            expected=[1, 0],
            check=check,
        )

    def test_chief_killed_during_a_backup_write(self):
        self._kill(
            2,
            task=0,
            save_freq="epoch",
            fault=[
                "--kill_at_backup_stage=before_commit",
                "--kill_at_backup_number=2",
            ],
            expected=[1, 0],
        )

    def test_three_workers(self):
        self._kill(
            3, task=2, save_freq=3, fault=["--fail_at_step=8"], expected=[1, 2]
        )

    def _preempt(self, n, task, at_step, save_freq, expected):
        """SIGTERM to one worker: every worker backs up at that batch,
        exits 42, and the restarted cluster ends like the reference."""
        reference = self._reference(n)
        backup_dir = f"{self.tmp}/b"
        args = [
            *_ARGS,
            f"--save_freq={save_freq}",
            "--save_before_preemption",
            f"--backup_dir={backup_dir}",
        ]
        codes, _, outputs = self._cluster(
            n,
            args,
            per_worker={
                task: [
                    f"--fail_at_step={at_step}",
                    f"--fail_on_task={task}",
                    "--fail_with=sigterm",
                ]
            },
        )
        self.assertEqual(codes, [42] * n, outputs[task][-3000:])
        where = f"epoch {expected[0]}, batch {expected[1]}"
        self.assertIn(f"backed up {where}", outputs[0])
        for i in range(1, n):
            self.assertIn(f"the chief backed up {where}", outputs[i])
        self.assertIn("Preemption (SIGTERM)", outputs[task])
        self.assertLen(dirs.entries(backup_dir), 1)
        self._finish(n, args, reference, expected)

    def test_sigterm_to_a_worker_backs_up_every_worker_at_that_batch(self):
        # 4 batches per epoch: the 6th is epoch 1, batch 2. No periodic
        # backups: only the one the preemption asks for.
        self._preempt(2, task=1, at_step=6, save_freq="false", expected=[1, 2])

    def test_sigterm_to_the_chief_between_periodic_backups(self):
        # Periodic backups every 3 batches (at 3 and 6); SIGTERM after the
        # 7th: the backup at batch 7 = epoch 1, batch 3 is the last.
        self._preempt(2, task=0, at_step=7, save_freq=3, expected=[1, 3])

    def test_another_callback_raises_and_fit_runs_again_in_each_worker(self):
        # tf-keras's own multi-worker BackupAndRestore test, in our words:
        # a legacy SGD(0.001), another callback raises at the beginning of
        # epoch 2 in every worker, and each worker calls fit() again in the
        # same process. The second fit() resumes at epoch 2 (the learning
        # rate is a float32 by then, no longer the float it was given) and
        # ends like an uninterrupted run.
        args = [*_ARGS, "--optimizer=legacy_sgd", "--epochs=4"]
        codes, reference, outputs = self._cluster(
            2, [*args, f"--backup_dir={self.tmp}/ref"]
        )
        self.assertEqual(codes, [0, 0], outputs[0][-3000:])
        backup_dir = f"{self.tmp}/b"
        codes, result, outputs = self._cluster(
            2, [*args, "--raise_at_epoch_begin=2", f"--backup_dir={backup_dir}"]
        )
        self.assertEqual(codes, [0, 0], outputs[0][-3000:])
        self.assertEqual(result["raised_at_epoch_begin"], 2)
        self.assertEqual(result["resumed_from"], [2, 0])
        self.assertEqual(result["epochs_begun"], [2, 3])
        self.assertEqual(result["optimizer_iterations"], 4 * 4)
        self.assertEqual(result["weights_sha256"], reference["weights_sha256"])
        for output in outputs:
            self.assertNotIn("BackupMismatchError", output)
        self.assertFalse(os.path.exists(backup_dir), "deleted at the end")

    def test_launcher_restarts_the_group_until_done(self):
        reference = self._reference(2)
        backup_dir = f"{self.tmp}/launched"
        result_file = os.path.join(self.tmp, "launched.json")
        proc = procs.run(
            procs.runfile("testing/launcher"),
            [
                "--num_workers=2",
                "--max_restarts=3",
                f"--worker_log_dir={self.tmp}/logs",
                # Worker 1 dies 6 batches into every attempt; each attempt
                # still gets further, thanks to the epoch backups.
                "--worker_arg=1:--fail_at_step=6",
                f"--worker_arg=0:--result_file={result_file}",
                "--",
                *_ARGS,
                "--save_freq=epoch",
                f"--backup_dir={backup_dir}",
            ],
            timeout=900,
            result_file=False,
        )
        self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr[-3000:])
        self.assertIn("WORKER 1 died (signal 9)", proc.stdout)
        self.assertIn("DONE after 2 restart(s)", proc.stdout)
        with open(result_file) as f:
            result = json.load(f)
        self.assertEqual(result["weights_sha256"], reference["weights_sha256"])


if __name__ == "__main__":
    absltest.main()
