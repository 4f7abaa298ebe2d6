"""How backups meet each tf.distribute strategy (public TensorFlow API only).

Supported, each tested (see distribution_test.py, multi_worker_test.py,
parameter_server_test.py):

- the default strategy, `OneDeviceStrategy`, `MirroredStrategy`,
  `experimental.CentralStorageStrategy`: one process holds all the state;
- `MultiWorkerMirroredStrategy`: every worker holds a copy; all restore the
  chief's backup, only the chief commits, and snapshots are synchronous
  (TensorFlow's asynchronous checkpoint issues collective ops of its own,
  which the workers would not issue in the same order);
- `ParameterServerStrategy`: the coordinator (chief) runs fit() and the
  callback; variables live on the parameter servers and steps run on the
  workers asynchronously. Before each backup the coordinator waits for the
  steps it scheduled (`ClusterCoordinator.join()`), so the backup holds
  exactly the steps counted in its position;
- `TPUStrategy`: one client process drives the TPU hosts; it is the chief.

Anything else (a TF1 `tf.compat.v1.distribute` strategy, a home-made
subclass of `tf.distribute.Strategy`) is refused with a ValueError: which
process writes, and whether saving issues collective ops, is not known.

A worker that is not the chief writes its scratch copies in a private
directory of its own (`worker_scratch_dir`), never in `backup_dir`.
"""

import dataclasses
import functools
import hashlib
import os
import stat
import tempfile
import threading

import tensorflow as tf

_SINGLE_CLIENT = (
    tf.distribute.OneDeviceStrategy,
    tf.distribute.MirroredStrategy,
    tf.distribute.experimental.CentralStorageStrategy,
    tf.distribute.TPUStrategy,
    tf.distribute.experimental.TPUStrategy,
)
_SUPPORTED_NAMES = (
    "the default strategy, OneDeviceStrategy, MirroredStrategy, "
    "MultiWorkerMirroredStrategy, ParameterServerStrategy, TPUStrategy, "
    "experimental.CentralStorageStrategy"
)


@dataclasses.dataclass(frozen=True)
class Role:
    """What this process does with backups under a strategy.

    Attributes:
      is_chief: commits backups to backup_dir. Exactly one process is.
      task_id: this process's task index (0 without a cluster).
      collective_saves: saving issues collective ops that every worker must
        issue too (MultiWorkerMirroredStrategy with several workers): every
        worker writes, synchronously, at the same steps.
      coordinator: the ClusterCoordinator under ParameterServerStrategy.
    """

    is_chief: bool
    task_id: int
    collective_saves: bool
    coordinator: object | None


@functools.cache
def _default_strategy():
    """TensorFlow's default strategy (there is no public predicate for it).

    The strategy stack is thread-local: a new thread sees the default even
    while the caller is inside some `strategy.scope()` (as under fit()).
    """
    found = []
    thread = threading.Thread(
        target=lambda: found.append(tf.distribute.get_strategy())
    )
    thread.start()
    thread.join()
    return found[0]


def _cluster(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or getattr(resolver, "task_type", None) is None:
        return None, None, {}
    jobs = resolver.cluster_spec().as_dict()
    return resolver.task_type, int(resolver.task_id or 0), jobs


def plain_variables(strategy) -> bool:
    """Whether the variables training uses are, as far as the strategies
    tell, plain resource variables of this process: no strategy given or
    the default one, and the calling thread in no strategy's scope.
    (A restore then reads ahead: store_read.read.)"""
    return (
        strategy is None or strategy is _default_strategy()
    ) and not tf.distribute.has_strategy()


def role(strategy) -> Role:
    """This process's Role under `strategy`.

    Raises:
      ValueError: the strategy is not supported.
    """
    if isinstance(strategy, tf.distribute.ParameterServerStrategy):
        return Role(
            is_chief=True,
            task_id=0,
            collective_saves=False,
            # A singleton per strategy: the one fit() uses.
            coordinator=tf.distribute.experimental.coordinator.ClusterCoordinator(
                strategy
            ),
        )
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        task_type, task_id, jobs = _cluster(strategy)
        workers = sum(len(tasks) for tasks in jobs.values())
        if task_type is None or workers <= 1:
            return Role(True, 0, False, None)
        # tf.distribute's rule: the `chief` task if any, else worker 0.
        if task_type == "chief":
            is_chief = True
        else:
            is_chief = task_type == "worker" and "chief" not in jobs
            is_chief = is_chief and task_id == 0
        return Role(is_chief, task_id, True, None)
    if isinstance(strategy, _SINGLE_CLIENT) or strategy is _default_strategy():
        return Role(True, 0, False, None)
    raise ValueError(
        f"BackupAndRestore does not support {type(strategy).__module__}."
        f"{type(strategy).__name__}. Supported: {_SUPPORTED_NAMES} (the TF2 "
        "classes in tf.distribute; for a tf.compat.v1.distribute strategy "
        "use its TF2 counterpart)."
    )


def any_worker(strategy, flag: bool) -> bool:
    """Whether `flag` is set in any worker of a multi-worker strategy.

    One all-reduce of a scalar through the strategy's own collective ops:
    every worker gets the same answer at the same step. Every worker must
    call this at the same point of training (as callbacks are), or the
    collective waits for the missing ones.
    """
    per_replica = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return bool(total.numpy() > 0)


def worker_scratch_dir(backup_dir: str, task_id: int) -> str:
    """A non-chief worker's private directory for its scratch writes.

    Outside backup_dir, which only the chief touches (else its cleanup at
    the end races with these writes); a fixed path per job, task and user,
    so that a crash's leftover goes at the next start. The shared temporary
    directory is anyone's to write in: a path that exists but is not a
    directory of this user's, closed to others (a planted link, say), is
    not used; a fresh private one is made instead.
    """
    job = hashlib.sha256(backup_dir.encode()).hexdigest()[:12]
    name = f"backup_restore-{job}-worker{task_id}-uid{os.geteuid()}"
    path = os.path.join(tempfile.gettempdir(), name)
    try:
        os.mkdir(path, 0o700)
        return path
    except FileExistsError:
        st = os.lstat(path)
        if (
            stat.S_ISDIR(st.st_mode)
            and st.st_uid == os.geteuid()
            and not st.st_mode & 0o077
        ):
            return path
    return tempfile.mkdtemp(prefix=f"{name}-")
