"""fit()'s callback list, as the backup callback needs it to behave.

Both flavours' fit() call each hook through its `CallbackList`, which calls
the callbacks in list order. The backup callback runs last (so a backup holds
the other callbacks' state after the batch or epoch), and `Guard` wraps the
list's hooks for the run of one fit() call:

- The step a resumed run replays for its logs (the epoch's last batch, trained
  before the backup; see fit_resume.py) is hidden from every callback's batch
  hooks: TensorBoard's step counter, ModelCheckpoint's batch count and the
  progress bar see each batch once, as in an uninterrupted run.
- When another callback raises in `on_train_batch_end` or `on_epoch_end`
  before the backup callback ran there, the backup due at that point is taken
  anyway, then the exception goes on. It holds the other callbacks' state as
  the raise left it: those before the raising one in the list saw the batch
  or epoch end, the raising one stopped part-way, those after it did not see
  it (but History, fit()'s record of the epochs trained, gets the epoch).
- When any hook raises, fit() is ending: the backup in flight is committed
  (its error logged) before the exception leaves the hook, so no write of
  ours runs after fit() is gone.
"""

from absl import logging

_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end")
_HOOKS = (
    *_BATCH_HOOKS,
    "on_epoch_begin",
    "on_epoch_end",
    "on_test_begin",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_test_end",
)
_MARK = "_backup_restore_hook"


class Guard:
    """The hooks of `callback_list` wrapped for `run` (a fit_run.FitRun).

    `run` provides: `replay_last_step` (True while the replayed step runs),
    `hook_calls` (counts the backup callback's own batch and epoch ends),
    `backup_after_raise(hook, args)` and `settle()`.
    """

    def __init__(self, callback_list, run):
        self._list = callback_list
        self._run = run
        self.active = True
        for name in _HOOKS:
            original = _unwrapped(callback_list, name)
            setattr(callback_list, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def hook(*args, **kwargs):
            if not self.active:
                return original(*args, **kwargs)
            run = self._run
            if name in _BATCH_HOOKS and run.replay_last_step:
                if name == "on_train_batch_end":
                    run.replay_last_step = False
                return None
            calls = run.hook_calls
            try:
                return original(*args, **kwargs)
            except BaseException:
                self._after_raise(name, args, ours_ran=run.hook_calls != calls)
                raise

        setattr(hook, _MARK, original)
        return hook

    def _after_raise(self, name, args, ours_ran) -> None:
        run = self._run
        self.remove()
        try:
            if not ours_ran and name in ("on_train_batch_end", "on_epoch_end"):
                run.backup_after_raise(name, args)
        except Exception as e:
            logging.warning(
                "A callback raised in %s; the backup due there could not be "
                "taken: %s",
                name,
                e,
            )
        finally:
            run.settle()

    def remove(self) -> None:
        """Puts the list's own hooks back (fit() ends, or is raising)."""
        self.active = False
        for name in _HOOKS:
            if hasattr(self._list.__dict__.get(name), _MARK):
                del self._list.__dict__[name]


def _unwrapped(callback_list, name):
    """The list's hook `name`, without the wrapper of an earlier fit() that
    raised (a CallbackList passed to fit() is reused)."""
    hook = getattr(callback_list, name)
    return getattr(hook, _MARK, hook)
