r"""Starts N local training workers on loopback; restarts the group on a death.

Multi-worker training needs every worker: when one dies (preempted, OOM,
killed), the survivors cannot go on. This launcher runs N copies of a trainer
with TF_CONFIG describing a cluster on 127.0.0.1, and when any worker exits
abnormally it stops the others and starts the whole group again (new ports);
the trainers resume from the last committed backup. It succeeds when every
worker exits 0.

  ./tools/bazel run //backup_restore/examples:multi_worker_launcher -- \
      --num_workers=2 -- --strategy=multi_worker --backup_dir=/tmp/mw_backup

Arguments after `--` go to every worker (the fit_trainer by default).
"""

import json
import os
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags

from testing import ports
from testing import procs

_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 2, "Workers to start.", lower_bound=1
)
_MAX_RESTARTS = flags.DEFINE_integer(
    "max_restarts", 3, "Group restarts before giving up.", lower_bound=0
)
_TRAINER = flags.DEFINE_string(
    "trainer",
    "backup_restore/examples/fit_trainer",
    "The worker binary (a runfiles path, or an absolute path).",
)
_LOG_DIR = flags.DEFINE_string(
    "worker_log_dir", None, "Write each worker's output to files here."
)
_WORKER_ARGS_FLAG = flags.DEFINE_multi_string(
    "worker_arg", [], "Extra argument for worker INDEX as INDEX:ARG."
)


def _start_group(binary, args, attempt):
    cluster = ports.pick_unused_ports(_NUM_WORKERS.value)
    workers = []
    for index in range(_NUM_WORKERS.value):
        env = dict(os.environ)
        env["TF_CONFIG"] = ports.tf_config(cluster, index)
        extra = [
            a.split(":", 1)[1]
            for a in _WORKER_ARGS_FLAG.value
            if a.split(":", 1)[0] == str(index)
        ]
        out = subprocess.DEVNULL
        if _LOG_DIR.value:
            os.makedirs(_LOG_DIR.value, exist_ok=True)
            path = os.path.join(
                _LOG_DIR.value, f"attempt{attempt}-worker{index}.log"
            )
            out = open(path, "w")  # the child writes it; closed at exit
        workers.append(
            subprocess.Popen(
                [sys.executable, binary, *args, *extra],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    return workers


def _stop(workers):
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGKILL)
    for w in workers:
        w.wait()


def main(argv):
    args = argv[1:]
    binary = _TRAINER.value
    if not os.path.isabs(binary):
        binary = procs.runfile(binary)
    for attempt in range(_MAX_RESTARTS.value + 1):
        workers = _start_group(binary, args, attempt)
        print(
            f"LAUNCHED attempt {attempt}: {len(workers)} workers "
            f"(pids {[w.pid for w in workers]})",
            flush=True,
        )
        failed = None
        while failed is None and any(w.poll() is None for w in workers):
            for index, w in enumerate(workers):
                code = w.poll()
                if code not in (None, 0):
                    failed = (index, code)
            time.sleep(0.2)
        if failed is None:
            failed = next(
                (
                    (i, w.returncode)
                    for i, w in enumerate(workers)
                    if w.returncode
                ),
                None,
            )
        if failed is None:
            print(f"DONE after {attempt} restart(s)", flush=True)
            return 0
        index, code = failed
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        print(
            f"WORKER {index} died ({how}): stopping the group and "
            f"restarting it",
            flush=True,
        )
        _stop(workers)
    print(
        f"GAVE UP after {_MAX_RESTARTS.value} restarts",
        file=sys.stderr,
        flush=True,
    )
    print(json.dumps({"restarts": _MAX_RESTARTS.value}))
    return 1


if __name__ == "__main__":
    app.run(main)
