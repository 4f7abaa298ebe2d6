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
  ours runs after fit() is gone. The same when a validation step raises:
  both flavours' evaluate() get the model's step function from
  `make_test_function()`, wrapped for the run, and call it once per step.
"""

import tensorflow as tf
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
        self._wrap_test_function(run.model)

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

    def _wrap_test_function(self, model) -> None:
        """Validation steps settle the run when they raise.

        Keras 3's evaluate() calls `make_test_function()`, then the model's
        `test_function` at each step; tf-keras's takes the function that
        `make_test_function()` returns. Both get the wrapped one.
        """
        _unwrap_test_function(model)
        make = model.make_test_function

        def make_test_function(*args, **kwargs):
            made = make(*args, **kwargs)
            current = getattr(model, "test_function", None) or made
            if current is not None and not isinstance(current, _TestStep):
                current = _TestStep(current, self)
                model.test_function = current
            return current

        make_test_function.original = make
        # Not through the model's __setattr__: a method, not state to track.
        object.__setattr__(model, _MAKE, make_test_function)
        self._model = model

    def test_step_raised(self) -> None:
        """A validation step raised: fit() is ending."""
        self._after_raise("test_function", (), ours_ran=True)

    def remove(self) -> None:
        """Puts the list's own hooks back (fit() ends, or is raising)."""
        self.active = False
        for name in _HOOKS:
            if hasattr(self._list.__dict__.get(name), _MARK):
                del self._list.__dict__[name]
        _unwrap_test_function(self._model)


_MAKE = "make_test_function"


class _TestStep:
    """The model's `test_function` for one fit() run: a raise (not the end
    of the data) settles the run before it goes on."""

    def __init__(self, original, guard):
        self.original = original
        self._guard = guard

    def __call__(self, *args, **kwargs):
        if not self._guard.active:
            return self.original(*args, **kwargs)
        try:
            return self.original(*args, **kwargs)
        except (StopIteration, tf.errors.OutOfRangeError):
            raise  # the end of the validation data
        except BaseException:
            self._guard.test_step_raised()
            raise

    def __getattr__(self, name):  # tf.function attributes, for Keras
        return getattr(self.original, name)


def _unwrap_test_function(model) -> None:
    """Puts back the model's own `make_test_function` and `test_function`
    (those of an earlier fit() that raised, too)."""
    wrapped = model.__dict__.get(_MAKE)
    if hasattr(wrapped, "original"):
        del model.__dict__[_MAKE]
    current = getattr(model, "test_function", None)
    if isinstance(current, _TestStep):
        model.test_function = current.original


def _unwrapped(callback_list, name):
    """The list's hook `name`, without the wrapper of an earlier fit() that
    raised (a CallbackList passed to fit() is reused)."""
    hook = getattr(callback_list, name)
    return getattr(hook, _MARK, hook)
