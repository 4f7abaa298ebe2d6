"""The field-by-field checks of a fit() backup's metadata (the schema:
backup_metadata.py): each field's type and range, and that the position
lies within its fit() call and the data it records.

Each check raises schema_fields.Invalid naming the field, its value and
what is wrong; `check_fields` runs them all.
"""

from backup_restore._src import schema_fields as fields


def check_fields(metadata, geometry) -> None:
    """Checks every field after the header (backup_metadata.problem).

    Raises:
      schema_fields.Invalid: the first field found invalid.
    """
    _position(metadata)
    _fit_call(metadata)
    _data(metadata)
    _fingerprint(metadata)
    build_config = fields.get(metadata, "build_config", "build_config")
    if build_config is not None:
        # Keras's own build configuration, handed to build_from_config.
        fields.as_dict(build_config, "build_config")
    _history(metadata)
    _metrics(metadata)
    _callbacks(metadata)
    _callback_tensors(metadata)
    fields.member(metadata, "written_at", fields.time)
    fields.member(metadata, "scope", fields.as_str)
    _position_in_data(metadata, geometry)


def _position(metadata) -> dict:
    position = fields.member(metadata, "position", fields.as_dict)
    for key in ("epoch", "step", "iterators_done", "drawn"):
        fields.member(position, key, fields.as_int, "position")
    for key in ("stop_training", "epoch_trained"):
        fields.member(position, key, fields.as_bool, "position")
    fields.member(
        position,
        "counted_steps_per_epoch",
        fields.optional_int,
        parent="position",
        minimum=1,
    )
    if "train_counter" in position:  # not in backups of older releases
        fields.member(
            position, "train_counter", fields.optional_int, parent="position"
        )
    return position


def _fit_call(metadata) -> dict:
    fit_call = fields.member(metadata, "fit_call", fields.as_dict)
    for key in ("index", "epochs", "initial_epoch"):
        fields.member(fit_call, key, fields.as_int, "fit_call")
    if "arguments" in fit_call:  # not in backups of earlier releases
        _arguments(fit_call["arguments"], "fit_call.arguments")
    return fit_call


def _arguments(arguments, field: str) -> None:
    fields.as_dict(arguments, field)
    shuffle = fields.member(arguments, "shuffle", parent=field)
    if shuffle is not None and not isinstance(shuffle, str):
        fields.as_bool(shuffle, f"{field}.shuffle")
    for key in ("class_weight", "sample_weight", "validation"):
        fields.member(arguments, key, fields.as_bool, field)
    for key in ("steps_per_epoch", "validation_steps"):
        fields.member(arguments, key, fields.optional_int, field)
    freq = fields.member(arguments, "validation_freq", parent=field)
    if isinstance(freq, list):
        for i, epoch in enumerate(freq):
            fields.as_int(epoch, f"{field}.validation_freq[{i}]")
    else:
        fields.optional_int(freq, f"{field}.validation_freq")


def _data(metadata) -> dict:
    data = fields.member(metadata, "data", fields.as_dict)
    for key in ("steps_per_epoch", "batch_size", "num_samples"):
        fields.member(data, key, fields.optional_int, "data")
    spec = fields.get(data, "element_spec", "data.element_spec")
    if spec is not None:
        for i, component in enumerate(
            fields.as_list(spec, "data.element_spec")
        ):
            fields.shape_and_dtype(
                component, f"data.element_spec[{i}]", unknown_dims=True
            )
    return data


def _fingerprint(metadata) -> None:
    fp = fields.member(metadata, "fingerprint", fields.as_dict)
    fields.member(fp, "model_class", fields.as_str, "fingerprint")
    variables = fields.member(fp, "variables", fields.as_list, "fingerprint")
    for i, variable in enumerate(variables):
        field = f"fingerprint.variables[{i}]"
        fields.as_dict(variable, field)
        fields.member(variable, "name", fields.as_str, field)
        fields.member(
            variable,
            "shape",
            fields.shape,
            parent=field,
            unknown_dims=True,
        )
        fields.member(variable, "dtype", fields.as_str, field)
    optimizer = fields.member(fp, "optimizer", fields.as_dict, "fingerprint")
    cls = fields.get(optimizer, "class", "fingerprint.optimizer.class")
    if cls is not None:
        fields.as_str(cls, "fingerprint.optimizer.class")
    config = fields.get(optimizer, "config", "fingerprint.optimizer.config")
    if config is not None:
        # Opaque beyond its keys: compared, never used.
        fields.as_dict(config, "fingerprint.optimizer.config")
    fields.member(fp, "random_generators", fields.as_int, "fingerprint")
    # "loss" (absent in backups of earlier versions) is any JSON value:
    # compared, never used.
    if "held" in fp:  # absent in backups of earlier versions
        _held(fields.member(fp, "held", fields.as_dict, "fingerprint"))


def _held(held) -> None:
    """model_fingerprint.held_fingerprint: what the model holds beyond its
    weights (the built_on positions index the model's variables)."""
    parent = "fingerprint.held"
    count = fields.member(held, "variable_count", fields.as_int, parent)
    optimizers = fields.member(held, "optimizers", fields.as_list, parent)
    for i, optimizer in enumerate(optimizers):
        field = f"{parent}.optimizers[{i}]"
        fields.as_dict(optimizer, field)
        fields.member(optimizer, "path", fields.as_str, field)
        cls = fields.member(optimizer, "class", parent=field)
        if cls is not None:
            fields.as_str(cls, f"{field}.class")
        config = fields.member(optimizer, "config", parent=field)
        if config is not None:
            fields.as_dict(config, f"{field}.config")  # compared, never used
        built = fields.member(optimizer, "built", parent=field)
        if built is not None:
            fields.as_bool(built, f"{field}.built")
        built_on = fields.member(optimizer, "built_on", parent=field)
        if built_on is not None:
            for j, item in enumerate(
                fields.as_list(built_on, f"{field}.built_on")
            ):
                position = fields.as_int(item, f"{field}.built_on[{j}]")
                if position >= count:
                    fields.fail(
                        f"{field}.built_on[{j}]",
                        position,
                        f"not below variable_count {count}",
                    )
        variables = fields.member(optimizer, "variables", parent=field)
        if variables is not None:
            for j, entry in enumerate(
                fields.as_list(variables, f"{field}.variables")
            ):
                fields.as_str(entry, f"{field}.variables[{j}]")
    extra = fields.member(held, "extra_variables", fields.as_list, parent)
    for i, entry in enumerate(extra):
        field = f"{parent}.extra_variables[{i}]"
        fields.as_dict(entry, field)
        fields.member(entry, "path", fields.as_str, field)
        fields.member(entry, "variable", fields.as_str, field)


def _history(metadata) -> None:
    history = fields.member(metadata, "history", fields.as_dict)
    for i, epoch in enumerate(
        fields.member(history, "epoch", fields.as_list, "history")
    ):
        fields.as_int(epoch, f"history.epoch[{i}]")
    logs = fields.member(history, "history", fields.as_dict, "history")
    for key, values in logs.items():
        # The logged values are passed through to History as they are.
        fields.as_list(values, f"history.history.{key}")
    keys = fields.member(history, "keys", fields.as_list, "history")
    for i, key in enumerate(keys):
        fields.as_str(key, f"history.keys[{i}]")
    if sorted(keys) != sorted(logs):
        fields.fail(
            "history.keys",
            keys,
            f"not the keys of history.history ({sorted(logs)})",
        )


def _metrics(metadata) -> None:
    metrics = fields.member(metadata, "metrics", fields.as_list)
    for i, metric in enumerate(metrics):
        field = f"metrics[{i}]"
        fields.as_dict(metric, field)
        fields.member(metric, "name", fields.as_str, field)
        variables = fields.member(metric, "variables", fields.as_list, field)
        for j, replicas in enumerate(variables):
            # One value per replica.
            for k, value in enumerate(
                fields.as_list(replicas, f"{field}.variables[{j}]")
            ):
                fields.numbers(value, f"{field}.variables[{j}][{k}]")


def _callbacks(metadata) -> None:
    callbacks = fields.member(metadata, "callbacks", fields.as_dict)
    for key, state in callbacks.items():
        field = f"callbacks[{key!r}]"
        fields.as_dict(state, field)
        if "user" in state:
            continue  # a user callback's own JSON, given back to it
        if "attrs" in state:
            fields.as_dict(state["attrs"], f"{field}.attrs")
        elif "csv_append" in state:
            fields.as_bool(state["csv_append"], f"{field}.csv_append")
            fields.member(state, "csv_size", fields.as_int, field)
            # Absent from backups of earlier releases of this format.
            keys = state.get("csv_keys")
            if keys is not None:
                for i, name in enumerate(
                    fields.as_list(keys, f"{field}.csv_keys")
                ):
                    fields.as_str(name, f"{field}.csv_keys[{i}]")
        else:
            fields.fail(
                field, state, "no state of a known kind (user, attrs, csv)"
            )


def _callback_tensors(metadata) -> None:
    tensors = fields.member(metadata, "callback_tensors", fields.as_dict)
    for key, arrays in tensors.items():
        field = f"callback_tensors[{key!r}]"
        for i, array in enumerate(fields.as_list(arrays, field)):
            fields.shape_and_dtype(array, f"{field}[{i}]")


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
        fields.fail(
            "position.epoch",
            epoch,
            f"before the first epoch of its fit() call (initial_epoch={first})",
        )
    if epoch > epochs or (epoch == epochs and step > 0):
        fields.fail(
            "position",
            {"epoch": epoch, "step": step},
            f"past the end of its fit() call (epochs={epochs})",
        )
    if position["epoch_trained"] and step == 0:
        fields.fail(
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
        fields.fail(
            "position.step", step, f"past the {steps} batches of an epoch"
        )
    if steps is None and epoch > first:
        return  # how many batches were trained is not known
    # Batches trained in this fit() call up to the position; `drawn` counts
    # those drawn from the current iterator, so it cannot be more.
    trained = (epoch - first) * (steps or 0) + step
    if position["drawn"] > trained:
        fields.fail(
            "position.drawn",
            position["drawn"],
            f"more batches than the {trained} trained up to epoch {epoch}, "
            f"batch {step}",
        )
    # Each iterator used up gave a batch or ended an epoch.
    most = trained + (epoch - first) + 1
    if position["iterators_done"] > most:
        fields.fail(
            "position.iterators_done",
            position["iterators_done"],
            f"more iterators than the {trained} batches trained up to epoch "
            f"{epoch}, batch {step} can have used up",
        )
