"""The metadata of a fit() backup: one schema, tagged with its format and
the Keras flavour that wrote it; read by the callback and the inspect CLI.

A backup holds JSON metadata beside its checkpoint (see manifest.py):

- `format`, `format_version`, `keras` (the flavour: "keras3", "tf_keras")
  and `versions`: what wrote it. A backup of another format or flavour is
  refused before anything is read into the model.
- `position`: epoch and step to resume at, the data position (`iterators_done`
  and `drawn`, see position.py), `stop_training`, `epoch_trained`,
  `counted_steps_per_epoch`.
- `fit_call`, `data`: which fit() call of the job, and what its positions
  mean (checked on resume).
- `fingerprint`, `build_config`: the model and optimizer (keras_state.py).
- `history`, `metrics`, `callbacks`, `callback_tensors`: the rest of the
  training state.
- `written_at` (seconds since the epoch) and `scope` (which run of the job
  wrote it, added by the store).

The manifest's checksum only detects accidents: anyone can edit a manifest
and compute its CRC-32 again. So every field is checked against the schema
(`problem`) before any of it is used: its type, its range, and that the
position lies within the data it describes. BackupManager's metadata has a
schema of its own here too (`manager_problem`), so that the inspect CLI
checks both without importing Keras.
"""

import math

FORMAT = "backup_restore.fit"
FORMAT_VERSION = 2

# The format tag of BackupManager's backups (manager.py).
MANAGER_FORMAT = "backup_restore.manager/1"

# Counts, sizes and dimensions beyond an int64 are no real backup's.
_MAX_INT = 2**63 - 1
# The last second of year 9999: later times are not real, and not every
# platform's time functions accept them.
_MAX_TIME = 253402300799


def header(flavour: str, versions: dict) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "keras": flavour,
        "versions": versions,
    }


def is_fit_backup(metadata: dict) -> bool:
    return metadata.get("format") == FORMAT


def flavour_problem(metadata: dict, flavour: str, names) -> str | None:
    """Why a backup cannot be restored by this fit(), before any check of
    the model; None if it can. `names` maps a flavour tag to a reader's
    name."""
    if not is_fit_backup(metadata):
        return (
            f"it is no Model.fit() backup of this format (format "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        return (
            f"it has format version {metadata.get('format_version')}, this "
            f"version of backup_restore reads {FORMAT_VERSION}"
        )
    written_by = metadata.get("keras")
    if written_by != flavour:
        return (
            f"it was written by a {names(written_by)} model; this model is "
            f"a {names(flavour)} model (the two keep different state, so "
            "neither can resume the other's training)"
        )
    return None


# What a data position depends on, and how a message names it.
_GEOMETRY = (
    ("steps_per_epoch", "batches per epoch"),
    ("batch_size", "batch size"),
    ("num_samples", "number of training samples"),
    ("element_spec", "input batches ([shape, dtype] per component)"),
)


def fit_call_problems(metadata: dict, fit_call: dict, geometry: dict) -> list:
    """Why the backup's data position means something else in this fit()
    (`fit_call`: index, epochs, initial_epoch; `geometry`: the adapter's
    data_geometry): one line per difference, naming both values."""
    problems = []
    backup_call = metadata.get("fit_call", {})
    if backup_call.get("initial_epoch") != fit_call["initial_epoch"]:
        problems.append(
            f"fit(initial_epoch=...): backup "
            f"{backup_call.get('initial_epoch')}, now "
            f"{fit_call['initial_epoch']}"
        )
    for key, what in _GEOMETRY:
        backup_value = metadata.get("data", {}).get(key)
        value = geometry.get(key)
        if None not in (backup_value, value) and backup_value != value:
            problems.append(f"{what}: backup {backup_value}, now {value}")
    position = metadata["position"]
    epochs = fit_call["epochs"]
    if (
        position["epoch"] > epochs
        or (position["epoch"] == epochs and position["step"] > 0)
    ) and not position["stop_training"]:
        problems.append(
            f"fit(epochs=...): the backup is at epoch {position['epoch']}, "
            f"batch {position['step']}, past the end of this fit() "
            f"(epochs={epochs})"
        )
    return problems


class _Invalid(Exception):
    """A field breaks the schema; its message names the field."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(field: str, value, what: str):
    raise _Invalid(f"{field} is {_show(value)}, {what}")


def _get(mapping: dict, key: str, field: str):
    if key not in mapping:
        raise _Invalid(f"{field} is missing")
    return mapping[key]


def _dict(value, field: str) -> dict:
    if not isinstance(value, dict):
        _fail(field, value, "not a JSON object")
    return value


def _list(value, field: str) -> list:
    if not isinstance(value, list):
        _fail(field, value, "not a list")
    return value


def _str(value, field: str) -> str:
    if not isinstance(value, str):
        _fail(field, value, "not a string")
    return value


def _bool(value, field: str) -> bool:
    if not isinstance(value, bool):
        _fail(field, value, "not true or false")
    return value


def _int(value, field: str, minimum: int = 0) -> int:
    # bool is an int in Python, never a count in a backup.
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, value, "not an integer")
    if value < minimum:
        _fail(field, value, f"below {minimum}")
    if value > _MAX_INT:
        _fail(field, value, "beyond any real count (2**63 - 1)")
    return value


def _optional_int(value, field: str, minimum: int = 0):
    return None if value is None else _int(value, field, minimum)


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, value, "not a number")
    return value


def _time(value, field: str) -> float:
    _number(value, field)
    if not (math.isfinite(value) and 0 <= value <= _MAX_TIME):
        _fail(field, value, "not a time between 1970 and 9999")
    return value


def _shape(value, field: str, unknown_dims: bool = False) -> list:
    for i, dim in enumerate(_list(value, field)):
        if not (unknown_dims and dim is None):
            _int(dim, f"{field}[{i}]")
    return value


def _shape_and_dtype(value, field: str, unknown_dims: bool = False):
    """[shape, dtype name], as variables and tensors are recorded."""
    if not isinstance(value, list) or len(value) != 2:
        _fail(field, value, "not a [shape, dtype] pair")
    _shape(value[0], f"{field}[0]", unknown_dims)
    _str(value[1], f"{field}[1]")
    return value


def _numbers(value, field: str) -> None:
    """A number or nested lists of numbers (a metric variable's value)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            _numbers(item, f"{field}[{i}]")
    else:
        _number(value, field)


def _header(metadata) -> bool:
    """Checks the fields that say what wrote the backup; whether the rest
    has this version's fit() schema (another format or flavour is refused
    as a mismatch by `flavour_problem`, not judged here)."""
    _dict(metadata, "metadata")
    _str(_get(metadata, "format", "format"), "format")
    _int(_get(metadata, "format_version", "format_version"), "format_version")
    _str(_get(metadata, "keras", "keras"), "keras")
    versions = _dict(_get(metadata, "versions", "versions"), "versions")
    for name, version in versions.items():
        _str(version, f"versions.{name}")
    return (
        metadata["format"] == FORMAT
        and metadata["format_version"] == FORMAT_VERSION
    )


def _position(metadata) -> dict:
    position = _dict(_get(metadata, "position", "position"), "position")
    for key in ("epoch", "step", "iterators_done", "drawn"):
        _int(_get(position, key, f"position.{key}"), f"position.{key}")
    for key in ("stop_training", "epoch_trained"):
        _bool(_get(position, key, f"position.{key}"), f"position.{key}")
    _optional_int(
        _get(
            position,
            "counted_steps_per_epoch",
            "position.counted_steps_per_epoch",
        ),
        "position.counted_steps_per_epoch",
        minimum=1,
    )
    return position


def _fit_call(metadata) -> dict:
    fit_call = _dict(_get(metadata, "fit_call", "fit_call"), "fit_call")
    for key in ("index", "epochs", "initial_epoch"):
        _int(_get(fit_call, key, f"fit_call.{key}"), f"fit_call.{key}")
    return fit_call


def _data(metadata) -> dict:
    data = _dict(_get(metadata, "data", "data"), "data")
    for key in ("steps_per_epoch", "batch_size", "num_samples"):
        _optional_int(_get(data, key, f"data.{key}"), f"data.{key}")
    spec = _get(data, "element_spec", "data.element_spec")
    if spec is not None:
        for i, component in enumerate(_list(spec, "data.element_spec")):
            _shape_and_dtype(
                component, f"data.element_spec[{i}]", unknown_dims=True
            )
    return data


def _fingerprint(metadata) -> None:
    fp = _dict(_get(metadata, "fingerprint", "fingerprint"), "fingerprint")
    _str(
        _get(fp, "model_class", "fingerprint.model_class"),
        "fingerprint.model_class",
    )
    variables = _list(
        _get(fp, "variables", "fingerprint.variables"), "fingerprint.variables"
    )
    for i, variable in enumerate(variables):
        field = f"fingerprint.variables[{i}]"
        _dict(variable, field)
        _str(_get(variable, "name", f"{field}.name"), f"{field}.name")
        _shape(
            _get(variable, "shape", f"{field}.shape"),
            f"{field}.shape",
            unknown_dims=True,
        )
        _str(_get(variable, "dtype", f"{field}.dtype"), f"{field}.dtype")
    optimizer = _dict(
        _get(fp, "optimizer", "fingerprint.optimizer"), "fingerprint.optimizer"
    )
    cls = _get(optimizer, "class", "fingerprint.optimizer.class")
    if cls is not None:
        _str(cls, "fingerprint.optimizer.class")
    config = _get(optimizer, "config", "fingerprint.optimizer.config")
    if config is not None:
        # Opaque beyond its keys: compared, never used.
        _dict(config, "fingerprint.optimizer.config")
    _int(
        _get(fp, "random_generators", "fingerprint.random_generators"),
        "fingerprint.random_generators",
    )


def _history(metadata) -> None:
    history = _dict(_get(metadata, "history", "history"), "history")
    for i, epoch in enumerate(
        _list(_get(history, "epoch", "history.epoch"), "history.epoch")
    ):
        _int(epoch, f"history.epoch[{i}]")
    logs = _dict(_get(history, "history", "history.history"), "history.history")
    for key, values in logs.items():
        # The logged values are passed through to History as they are.
        _list(values, f"history.history.{key}")
    keys = _list(_get(history, "keys", "history.keys"), "history.keys")
    for i, key in enumerate(keys):
        _str(key, f"history.keys[{i}]")
    if sorted(keys) != sorted(logs):
        _fail(
            "history.keys",
            keys,
            f"not the keys of history.history ({sorted(logs)})",
        )


def _metrics(metadata) -> None:
    metrics = _list(_get(metadata, "metrics", "metrics"), "metrics")
    for i, metric in enumerate(metrics):
        field = f"metrics[{i}]"
        _dict(metric, field)
        _str(_get(metric, "name", f"{field}.name"), f"{field}.name")
        variables = _list(
            _get(metric, "variables", f"{field}.variables"),
            f"{field}.variables",
        )
        for j, replicas in enumerate(variables):
            # One value per replica.
            for k, value in enumerate(
                _list(replicas, f"{field}.variables[{j}]")
            ):
                _numbers(value, f"{field}.variables[{j}][{k}]")


def _callbacks(metadata) -> None:
    callbacks = _dict(_get(metadata, "callbacks", "callbacks"), "callbacks")
    for key, state in callbacks.items():
        field = f"callbacks[{key!r}]"
        _dict(state, field)
        if "user" in state:
            continue  # a user callback's own JSON, given back to it
        if "attrs" in state:
            _dict(state["attrs"], f"{field}.attrs")
        elif "csv_append" in state:
            _bool(state["csv_append"], f"{field}.csv_append")
            _int(
                _get(state, "csv_size", f"{field}.csv_size"),
                f"{field}.csv_size",
            )
        else:
            _fail(field, state, "no state of a known kind (user, attrs, csv)")


def _callback_tensors(metadata) -> None:
    tensors = _dict(
        _get(metadata, "callback_tensors", "callback_tensors"),
        "callback_tensors",
    )
    for key, arrays in tensors.items():
        field = f"callback_tensors[{key!r}]"
        for i, array in enumerate(_list(arrays, field)):
            _shape_and_dtype(array, f"{field}[{i}]")


def _position_in_data(metadata, geometry) -> None:
    """The position lies within the fit() call and the data it records.

    `geometry`: this fit()'s data geometry, for the batches per epoch when
    the backup does not know them.
    """
    position = metadata["position"]
    fit_call = metadata["fit_call"]
    epoch, step = position["epoch"], position["step"]
    first, epochs = fit_call["initial_epoch"], fit_call["epochs"]
    if epoch < first:
        _fail(
            "position.epoch",
            epoch,
            f"before the first epoch of its fit() call (initial_epoch={first})",
        )
    if epoch > epochs or (epoch == epochs and step > 0):
        _fail(
            "position",
            {"epoch": epoch, "step": step},
            f"past the end of its fit() call (epochs={epochs})",
        )
    if position["epoch_trained"] and step == 0:
        _fail(
            "position.step",
            step,
            "but position.epoch_trained says the epoch's batches are trained",
        )
    steps = metadata["data"]["steps_per_epoch"]
    if steps is None:
        steps = position["counted_steps_per_epoch"]
    if steps is None and geometry is not None:
        steps = geometry.get("steps_per_epoch")
    if steps is not None and step > steps:
        _fail("position.step", step, f"past the {steps} batches of an epoch")
    if steps is None and epoch > first:
        return  # how many batches were trained is not known
    # Batches trained in this fit() call up to the position; `drawn` counts
    # those drawn from the current iterator, so it cannot be more.
    trained = (epoch - first) * (steps or 0) + step
    if position["drawn"] > trained:
        _fail(
            "position.drawn",
            position["drawn"],
            f"more batches than the {trained} trained up to epoch {epoch}, "
            f"batch {step}",
        )
    # Each iterator used up gave a batch or ended an epoch.
    most = trained + (epoch - first) + 1
    if position["iterators_done"] > most:
        _fail(
            "position.iterators_done",
            position["iterators_done"],
            f"more iterators than the {trained} batches trained up to epoch "
            f"{epoch}, batch {step} can have used up",
        )


def problem(metadata, geometry: dict | None = None) -> str | None:
    """What makes a fit() backup's metadata invalid; None if it is valid.

    Checks every field the callback and the inspect CLI read: its type, its
    range, and that the position lies within its fit() call and its data.
    A backup of another format, format version or flavour is left to
    `flavour_problem` once its header is well-formed.

    Args:
      metadata: the metadata of a backup (from its manifest).
      geometry: this fit()'s data geometry (the adapter's data_geometry),
        for the batches per epoch when the backup does not record them;
        None where there is no fit() (the inspect CLI).

    Returns:
      One line naming the field, its value and what is wrong, or None.
    """
    try:
        if not _header(metadata):
            return None
        _position(metadata)
        _fit_call(metadata)
        _data(metadata)
        _fingerprint(metadata)
        build_config = _get(metadata, "build_config", "build_config")
        if build_config is not None:
            # Keras's own build configuration, handed to build_from_config.
            _dict(build_config, "build_config")
        _history(metadata)
        _metrics(metadata)
        _callbacks(metadata)
        _callback_tensors(metadata)
        _time(_get(metadata, "written_at", "written_at"), "written_at")
        _str(_get(metadata, "scope", "scope"), "scope")
        _position_in_data(metadata, geometry)
    except _Invalid as e:
        return str(e)
    return None


def manager_problem(metadata) -> str | None:
    """What makes a BackupManager backup's metadata invalid; None if valid.

    Its fields: `format`, `step` (the steps done), `variables` (checkpoint
    path -> [shape, dtype] of every variable), `user` (the caller's JSON,
    given back as it is), `written_at`, `scope`. A backup of another format
    is left to the caller to refuse once `format` is a string.
    """
    try:
        _dict(metadata, "metadata")
        if _str(_get(metadata, "format", "format"), "format") != (
            MANAGER_FORMAT
        ):
            return None
        _int(_get(metadata, "step", "step"), "step")
        variables = _dict(_get(metadata, "variables", "variables"), "variables")
        for path, spec in variables.items():
            _shape_and_dtype(spec, f"variables[{path!r}]")
        _get(metadata, "user", "user")
        _time(_get(metadata, "written_at", "written_at"), "written_at")
        _str(_get(metadata, "scope", "scope"), "scope")
    except _Invalid as e:
        return str(e)
    return None
