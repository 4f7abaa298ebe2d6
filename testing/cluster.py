"""A training cluster as local processes with TF_CONFIG on loopback.

The one way this project starts a cluster: the launcher (which restarts what
dies) and the multi-worker tests (which watch each task) both use it. Only
127.0.0.1 is used.
"""

import os
import signal
import subprocess
import sys

from testing import ports


class Task:
    """One process of the cluster, restartable with the same TF_CONFIG."""

    def __init__(self, index, job, job_index, tf_config):
        self.index, self.job, self.job_index = index, job, job_index
        self.tf_config = tf_config
        self.process = None
        self.starts = 0

    @property
    def name(self):
        return f"{self.job} {self.job_index}"

    def start(self, binary, args, stdout=None, env=None):
        """Starts (or restarts) `binary args` with this task's TF_CONFIG and
        this interpreter; stderr goes to `stdout` (None: this process's)."""
        self.process = subprocess.Popen(
            [sys.executable, binary, *args],
            env=dict(
                os.environ if env is None else env, TF_CONFIG=self.tf_config
            ),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.starts += 1


def make(num_workers, num_ps=0):
    """The tasks of a cluster on fresh loopback ports, not started.

    Without parameter servers: `num_workers` workers
    (MultiWorkerMirroredStrategy). With `num_ps` >= 1: a chief, the workers
    and the parameter servers (ParameterServerStrategy), in that order.
    """
    jobs = {}
    if num_ps:
        jobs["chief"] = 1
    jobs["worker"] = num_workers
    if num_ps:
        jobs["ps"] = num_ps
    free = iter(ports.pick_unused_ports(sum(jobs.values())))
    addresses = {job: [next(free) for _ in range(n)] for job, n in jobs.items()}
    tasks = []
    for job, n in jobs.items():
        for job_index in range(n):
            config = ports.cluster_tf_config(addresses, job, job_index)
            tasks.append(Task(len(tasks), job, job_index, config))
    return tasks


def stop(tasks, sig=signal.SIGKILL):
    """Sends `sig` to the tasks still running, then reaps them all."""
    for task in tasks:
        if task.process.poll() is None:
            task.process.send_signal(sig)
    for task in tasks:
        task.process.wait()
