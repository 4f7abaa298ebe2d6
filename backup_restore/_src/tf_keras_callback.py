"""What tf-keras's fit() needs of a callback, without importing tf-keras
(private API; part of tf_keras_adapter.py).

tf-keras is an optional dependency: a process training only Keras 3 models
never imports it. tf-keras's `CallbackList` checks no callback's class: it
calls the hooks, `set_model` and `set_params` (a Keras 3 `Callback` has them
all) and reads `_supports_tf_logs` (logs as tensors; under
ParameterServerStrategy fit() refuses batch-level callbacks without it) and
`_implements_{train,test,predict}_batch_hooks()`. `Hooks` supplies those, so
that a Keras 3 callback serves tf-keras's fit() too. `with_tf_keras_base`
makes a callback made once tf-keras is imported a `tf_keras.callbacks.Callback`
as well, for code that checks.
"""

import sys


class Hooks:
    """What tf-keras's CallbackList reads of a callback beyond its hooks, for
    a callback that takes train and test batch hooks and reads no batch
    logs."""

    # Tells fit() that the callback takes logs as tensors (it never reads
    # batch logs). Under ParameterServerStrategy, fit() refuses batch-level
    # callbacks without it (their logs are RemoteValues).
    _supports_tf_logs = True
    _chief_worker_only = None
    validation_data = None

    def _implements_train_batch_hooks(self) -> bool:
        return True

    def _implements_test_batch_hooks(self) -> bool:
        return True

    def _implements_predict_batch_hooks(self) -> bool:
        return False


_WITH_BASE = {}  # class -> its subclass that is a tf_keras Callback too


def with_tf_keras_base(cls):
    """`cls`; once tf-keras is imported, a subclass of `cls` and of
    `tf_keras.callbacks.Callback` (one per class, under the same name)."""
    tf_keras = sys.modules.get("tf_keras")
    if tf_keras is None:
        return cls
    base = tf_keras.callbacks.Callback
    if issubclass(cls, base):
        return cls
    both = _WITH_BASE.get(cls)
    if both is None:
        both = type(
            cls.__name__,
            (cls, base),
            {
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
            },
        )
        _WITH_BASE[cls] = both
    return both
