"""A backup against the fit() call resuming from it: what refuses the resume
(the data position would mean something else) and what only warns (the
validation changed; training is the same).

The backup's metadata has passed its schema (backup_metadata.problem). A
field an earlier release did not record is not compared.
"""

from backup_restore._src import flavours

# What a data position depends on, and how a message names it.
_GEOMETRY = (
    ("steps_per_epoch", "batches per epoch"),
    ("batch_size", "batch size"),
    ("num_samples", "number of training samples"),
    ("element_spec", "input batches ([shape, dtype] per component)"),
)

# fit() arguments under which the same position trains other examples or
# computes another loss, and how a message names them.
_ARGUMENTS_THAT_CHANGE_TRAINING = (
    ("shuffle", "fit(shuffle=...)"),
    ("steps_per_epoch", "fit(steps_per_epoch=...)"),
    ("class_weight", "fit(class_weight=...) given"),
    ("sample_weight", "fit(sample_weight=...) given"),
)
# fit() arguments that change validation only.
_VALIDATION_ARGUMENTS = (
    ("validation", "validation data given"),
    ("validation_freq", "fit(validation_freq=...)"),
    ("validation_steps", "fit(validation_steps=...)"),
)


# Arguments recorded as None where the input ignores them (fit_frames).
_NONE_IF_IGNORED = ("shuffle",)


def _argument_differences(metadata: dict, fit_call: dict, names) -> list:
    backup_arguments = metadata.get("fit_call", {}).get("arguments", {})
    arguments = fit_call.get("arguments", {})
    return [
        f"{what}: backup {backup_arguments[key]!r}, now {arguments[key]!r}"
        for key, what in names
        if key in backup_arguments
        and key in arguments
        and backup_arguments[key] != arguments[key]
        and not (
            key in _NONE_IF_IGNORED
            and None in (backup_arguments[key], arguments[key])
        )
    ]


def changes(metadata: dict, fit_call: dict) -> list:
    """How this fit()'s validation differs from the backup's: one line per
    argument, naming both values (training is the same)."""
    return _argument_differences(metadata, fit_call, _VALIDATION_ARGUMENTS)


def problems(metadata: dict, fit_call: dict, geometry: dict) -> list:
    """Why the backup's data position means something else in this fit()
    (`fit_call`: index, epochs, initial_epoch, arguments; `geometry`: the
    adapter's data_geometry): one line per difference, naming both values."""
    found = []
    backup_call = metadata.get("fit_call", {})
    if backup_call.get("initial_epoch") != fit_call["initial_epoch"]:
        found.append(
            f"fit(initial_epoch=...): backup "
            f"{backup_call.get('initial_epoch')}, now "
            f"{fit_call['initial_epoch']}"
        )
    found += _argument_differences(
        metadata, fit_call, _ARGUMENTS_THAT_CHANGE_TRAINING
    )
    for key, what in _GEOMETRY:
        backup_value = metadata.get("data", {}).get(key)
        value = geometry.get(key)
        if None not in (backup_value, value) and backup_value != value:
            found.append(f"{what}: backup {backup_value}, now {value}")
    position = metadata["position"]
    epochs = fit_call["epochs"]
    if (
        position["epoch"] > epochs
        or (position["epoch"] == epochs and position["step"] > 0)
    ) and not position["stop_training"]:
        found.append(
            f"fit(epochs=...): the backup is at epoch {position['epoch']}, "
            f"batch {position['step']}, past the end of this fit() "
            f"(epochs={epochs})"
        )
    return found


def refuse_other_backup_callbacks(callback, callbacks, ours: type) -> None:
    """Raises ValueError when `callbacks` (fit()'s list) holds a backup
    callback besides `callback`: another of `ours`, or a Keras flavour's own
    BackupAndRestore. Each would restore and skip the trained batches again.
    """
    others = [
        c
        for c in callbacks
        if c is not callback
        and (
            isinstance(c, ours)
            or any(a.is_builtin_backup_callback(c) for a in flavours.loaded())
        )
    ]
    if others:
        names = ", ".join(
            f"{type(c).__module__}.{type(c).__name__}"
            f"({getattr(c, 'backup_dir', '?')!r})"
            for c in others
        )
        raise ValueError(
            f"This fit() has more than one backup callback: "
            f"BackupAndRestore({callback.backup_dir!r}) and {names}. Each "
            "would restore and skip the trained batches again, so "
            "resuming would go wrong. Pass one BackupAndRestore; to keep "
            "a second copy of the backups, copy its backup_dir (e.g. "
            "after each epoch, or with your storage's replication). "
            "Nothing was restored, written or deleted."
        )
