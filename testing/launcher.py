r"""Starts a local training cluster on loopback; restarts what dies.

Multi-worker training needs its tasks: when one dies (preempted, OOM,
killed), the job stalls or fails. This launcher runs the tasks of a cluster
as local processes with TF_CONFIG on 127.0.0.1 and restarts what died; the
trainer resumes from the last committed backup.

MultiWorkerMirroredStrategy (--num_ps=0, the default): N workers. When any
worker exits abnormally the others cannot go on: the launcher stops them and
starts the whole group again (new ports). It succeeds when every worker
exits 0.

  ./tools/bazel run //testing:launcher -- --num_workers=2 \
      --trainer=backup_restore/examples/multi_worker

ParameterServerStrategy (--num_ps >= 1): a chief (runs fit()), N workers and
the parameter servers. A dead worker is restarted alone, on the same port:
tf.distribute's ClusterCoordinator reschedules its steps and goes on. When the
chief or a parameter server dies, the whole group is restarted. It succeeds
when the chief exits 0; the servers are then stopped.

  ./tools/bazel run //testing:launcher -- \
      --num_workers=2 --num_ps=1 -- --strategy=parameter_server \
      --steps_per_epoch=20 --save_freq=5 --backup_dir=/tmp/ps_backup

Arguments after `--` go to every task (the test trainer
testing/fit_trainer by default). The tasks' output goes to the
launcher's own, or with --worker_log_dir to one file per task and start. SIGTERM
or SIGINT to the launcher is passed on to the tasks (a trainer with
--save_before_preemption then backs up and exits), and nothing is restarted.
"""

import os
import signal
import sys
import time

from absl import app
from absl import flags

from testing import cluster
from testing import procs

_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 2, "Workers to start.", lower_bound=1
)
_NUM_PS = flags.DEFINE_integer(
    "num_ps",
    0,
    "Parameter servers. With >= 1 the cluster also has a chief: "
    "ParameterServerStrategy.",
    lower_bound=0,
)
_MAX_RESTARTS = flags.DEFINE_integer(
    "max_restarts", 3, "Restarts before giving up.", lower_bound=0
)
_TRAINER = flags.DEFINE_string(
    "trainer",
    "testing/fit_trainer",
    "The task binary (a runfiles path, or an absolute path).",
)
_LOG_DIR = flags.DEFINE_string(
    "worker_log_dir", None, "Write each task's output to files here."
)
_WORKER_ARGS_FLAG = flags.DEFINE_multi_string(
    "worker_arg",
    [],
    "Extra argument for one task as INDEX:ARG. INDEX counts the tasks in "
    "the order chief, workers, parameter servers (so without --num_ps it is "
    "the worker index).",
)


def _start(task, group, binary, args):
    """Starts `task` with its --worker_arg extras; its output goes to the
    launcher's, or to a file of --worker_log_dir per task and start."""
    extra = [
        a.split(":", 1)[1]
        for a in _WORKER_ARGS_FLAG.value
        if a.split(":", 1)[0] == str(task.index)
    ]
    out = None
    if _LOG_DIR.value:
        os.makedirs(_LOG_DIR.value, exist_ok=True)
        path = os.path.join(
            _LOG_DIR.value,
            f"group{group}-{task.job}{task.job_index}-start{task.starts}.log",
        )
        out = open(path, "w")
    task.start(binary, [*args, *extra], stdout=out)
    if out is not None:
        out.close()  # the child has its own copy


def _describe(code):
    return f"signal {-code}" if code < 0 else f"exit status {code}"


def main(argv):
    args = argv[1:]
    binary = _TRAINER.value
    if not os.path.isabs(binary):
        binary = procs.runfile(binary)
    parameter_server = _NUM_PS.value > 0
    signals = []
    signal.signal(signal.SIGTERM, lambda signum, frame: signals.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: signals.append(signum))
    restarts, group, tasks = 0, -1, None
    while True:
        if tasks is None:
            tasks = cluster.make(_NUM_WORKERS.value, _NUM_PS.value)
            group += 1
            for task in tasks:
                _start(task, group, binary, args)
            print(
                f"LAUNCHED {len(tasks)} tasks (restarts so far: {restarts}): "
                + ", ".join(f"{t.name} pid {t.process.pid}" for t in tasks),
                flush=True,
            )
            # The tasks whose exit ends the job: the chief under
            # ParameterServerStrategy (servers never exit), else all.
            finishers = tasks[:1] if parameter_server else tasks
        if signals:
            print("SIGNALLED: passing it on to the tasks", flush=True)
            cluster.stop(tasks, signals[0])
            ok = all(t.process.returncode == 0 for t in finishers)
            return 0 if ok else 1
        if all(t.process.poll() == 0 for t in finishers):
            cluster.stop(tasks)
            print(f"DONE after {restarts} restart(s)", flush=True)
            return 0
        dead = next(
            (t for t in tasks if t.process.poll() not in (None, 0)), None
        )
        if dead is None:
            time.sleep(0.2)
            continue
        died = (
            f"WORKER {dead.index} died "
            f"({_describe(dead.process.returncode)}) [{dead.name}]"
        )
        if restarts >= _MAX_RESTARTS.value:
            print(f"{died}: stopping the group", flush=True)
            cluster.stop(tasks)
            print(
                f"GAVE UP after {restarts} restarts",
                file=sys.stderr,
                flush=True,
            )
            return 1
        restarts += 1
        if parameter_server and dead.job == "worker":
            print(f"{died}: restarting it alone", flush=True)
            _start(dead, group, binary, args)
            continue
        print(f"{died}: stopping the group and restarting it", flush=True)
        cluster.stop(tasks)
        tasks = None


if __name__ == "__main__":
    app.run(main)
