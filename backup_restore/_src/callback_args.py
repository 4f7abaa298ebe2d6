"""The callback's third and fourth positional arguments, whose meaning
depends on the Keras flavour the calling code was written for.

Keras 3's `BackupAndRestore(backup_dir, save_freq, double_checkpoint,
delete_checkpoint)` and tf-keras's `BackupAndRestore(backup_dir, save_freq,
delete_checkpoint, save_before_preemption)` differ from the third argument
on: `BackupAndRestore(d, "epoch", True)` asks Keras 3 to keep the previous
backup, tf-keras to delete the backup at the end. Code written for either
means what it means there: positional values are bound once the model's
flavour is known (the callback's `set_model`); keywords bind at once.
"""

import sys

from backup_restore._src import policy

# The names the third and fourth positional arguments bind to, per flavour
# (the adapters' FLAVOUR tags).
ORDERS = {
    "keras3": ("double_checkpoint", "delete_checkpoint"),
    "tf_keras": ("delete_checkpoint", "save_before_preemption"),
}


class Default:
    """A keyword's default value, told apart from the same value given
    (a value also given positionally is an error only when given); its repr
    is the value's, so the signature reads as usual."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return repr(self.value)


DOUBLE_CHECKPOINT = Default(False)
DELETE_CHECKPOINT = Default(True)
SAVE_BEFORE_PREEMPTION = Default(False)


class Arguments:
    """The three flavour-dependent arguments as given.

    Args:
      positional: the values given after `save_freq`, at most two.
      **keywords: `double_checkpoint`, `delete_checkpoint`,
        `save_before_preemption`, each a value or its `Default`.

    Raises:
      TypeError: more than two values after `save_freq`.
    """

    def __init__(self, positional, **keywords):
        if len(positional) > 2:
            raise TypeError(
                f"BackupAndRestore takes at most 4 positional arguments "
                f"(backup_dir, save_freq, then Keras 3's double_checkpoint, "
                f"delete_checkpoint or tf-keras's delete_checkpoint, "
                f"save_before_preemption); {2 + len(positional)} were given. "
                "Pass the others by keyword."
            )
        self.positional = tuple(positional)
        self._defaults = {
            k: v.value for k, v in keywords.items() if isinstance(v, Default)
        }
        self._given = {
            k: v for k, v in keywords.items() if not isinstance(v, Default)
        }

    @property
    def pending(self) -> bool:
        """Whether the values depend on the model's flavour."""
        return bool(self.positional)

    def bind(self, flavour) -> dict:
        """The three arguments' values in `flavour`'s positional order.

        Raises:
          TypeError: a value is given both positionally and by keyword.
        """
        values = dict(self._defaults)
        values.update(self._given)
        names = ORDERS[flavour][: len(self.positional)]
        for name, value in zip(names, self.positional, strict=True):
            if name in self._given:
                raise TypeError(
                    f"BackupAndRestore got multiple values for argument "
                    f"{name!r}: positionally (in {_NAMES[flavour]}'s order: "
                    f"backup_dir, save_freq, {', '.join(ORDERS[flavour])}) "
                    "and by keyword. Pass it once."
                )
            values[name] = value
        return values

    @staticmethod
    def likely_flavour() -> str:
        """The flavour to bind by before a model is known: tf-keras's once
        this process has imported tf-keras, else Keras 3's."""
        return "tf_keras" if sys.modules.get("tf_keras") else "keras3"


def values_and_policy(args: Arguments, flavour, save_freq, overhead_budget):
    """The three arguments' values in `flavour`'s order, and the save policy
    they make with `save_freq` and `overhead_budget`.

    Raises:
      TypeError: a value given both positionally and by keyword there.
      ValueError: `save_freq=False` without save_before_preemption there.
    """
    values = args.bind(flavour)
    return values, policy.from_arguments(
        save_freq, values["save_before_preemption"], overhead_budget
    )


def first_binding(args: Arguments, save_freq, overhead_budget):
    """`values_and_policy` in the likelier flavour's order, else the other's
    (positional values only): raises (TypeError, ValueError) only when the
    arguments are invalid in both."""
    likely = args.likely_flavour()
    order = [likely] + [f for f in ORDERS if args.pending and f != likely]
    error = None
    for flavour in order:
        try:
            return values_and_policy(args, flavour, save_freq, overhead_budget)
        except (TypeError, ValueError) as e:
            error = error or e
    raise error


_NAMES = {"keras3": "Keras 3", "tf_keras": "tf-keras"}
