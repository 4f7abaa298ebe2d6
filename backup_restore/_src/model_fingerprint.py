"""The model's fingerprint: what a backup records of the model it was
written from, and the differences that make a restore refuse it.

The fingerprint describes the model's variables (order, shapes, dtypes),
the optimizer's class and initial configuration, the loss it was compiled
with (`loss_fingerprint`), and what the model holds
beyond its weights (keras_state.HeldState: optimizers held as attributes,
variables outside `model.variables`). It is stored with every backup and
compared before a restore, so that a backup written by a different model is
refused with an error naming what differs instead of an obscure TensorFlow
error or a partial restore.

Variable and layer names are reported but not compared: Keras numbers
auto-generated names per process (`dense`, then `dense_1` when the same code
builds the model again, e.g. after Ctrl-C in a notebook), and restoring does
not depend on them.
"""

import json
import re

import numpy as np
import tensorflow as tf

from backup_restore._src import keras_state

Adapter = object  # an adapter module (flavours.py)


# A default repr (`<f.Class object at 0x7f...>`, `<function f at 0x...>`)
# names the object's address, different in every process.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "numpy"):
        return _jsonable(value.numpy())
    text = repr(value)
    if isinstance(value, set | frozenset) or _ADDRESS.search(text):
        return _stable(value)
    return text


def to_json_value(value):
    """A JSON round-trip of `value` (numpy scalars become Python numbers)."""
    return json.loads(json.dumps(value, default=_jsonable))


def optimizer_fingerprint(optimizer, adapter: Adapter) -> dict:
    """The optimizer's class and configuration, without its name.

    Keras cannot give the configuration of an optimizer driven by a
    learning-rate schedule without `get_config()`, or with one that returns
    what Keras cannot serialize (allowed for training, needed only for
    serialization). It is then taken with the schedule set aside, and the
    schedule recorded as a loss is (`_stable`: its class and what its own
    `get_config()` gives). Where that fails too, the record is the class
    of the learning rate's owner (the schedule, else the optimizer) alone.
    """
    if optimizer is None:
        return {"class": None, "config": None}
    try:
        config = dict(optimizer.get_config())
    except Exception:  # pylint: disable=broad-except
        config = _config_beside_schedule(optimizer, adapter)
    config.pop("name", None)
    return {
        "class": _class_name(optimizer),
        "config": to_json_value(config),
    }


def _config_beside_schedule(optimizer, adapter) -> dict:
    """The optimizer's configuration with its schedule set aside, the
    schedule in its place as `_stable` records it; or the learning rate
    owner's class alone (see `_fallback_class`)."""
    owner = _lr_owner(optimizer, adapter)
    if owner is not optimizer:
        try:
            with adapter.learning_rate_schedule_set_aside(optimizer):
                config = dict(optimizer.get_config())
        except Exception:  # pylint: disable=broad-except
            pass
        else:
            config["learning_rate"] = _stable(owner)
            return config
    return {"learning_rate": _class_name(owner)}


def _fallback_class(config):
    """The class recorded where no configuration could be had (a record of
    the single key `learning_rate` naming a class), else None."""
    if (
        isinstance(config, dict)
        and list(config) == ["learning_rate"]
        and isinstance(config["learning_rate"], str)
    ):
        return config["learning_rate"]
    return None


def _recorded_class_alone(backup, current):
    """(backup's class, current learning rate's class) when the backup
    recorded the class alone and the current record is a configuration
    (taken beside the schedule since): only those can be compared; else
    None."""
    was = _fallback_class(backup)
    if was is None or _fallback_class(current) is not None:
        return None
    rate = (current or {}).get("learning_rate")
    return was, rate.get("class") if isinstance(rate, dict) else rate


def _same_config(backup, current) -> bool:
    """Whether two optimizer configurations match (`_same`), a backup that
    recorded its schedule's class alone by that class."""
    alone = _recorded_class_alone(backup, current)
    if alone is not None:
        return alone[0] == alone[1]
    return _same(backup, current)


def _class_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _lr_owner(optimizer, adapter):
    schedule = adapter.learning_rate_schedule(optimizer)
    return optimizer if schedule is None else schedule


def loss_fingerprint(model):
    """The loss the model was compiled with (`model.loss`), as the same
    value in every process that runs the same code: a name as given, a
    function by its qualified name, a Loss object by its class and
    configuration without its name (which only labels the logs), lists and
    mappings of them as given; None (tf-keras: {}) when compiled without.
    """
    return _stable(getattr(model, "loss", None))


def _stable(value):
    """`value` as JSON whose text is the same in every process: an object
    with a configuration (a Loss) by its class and `get_config()` without
    its name, anything else that is not a JSON value by its qualified name
    or class (never by a repr, which may hold a memory address)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_stable(v) for v in value]
    if isinstance(value, set | frozenset):
        # Sorted: a set's repr follows its elements' hashes, which differ
        # between processes for strings (PYTHONHASHSEED).
        items = [_stable(v) for v in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, tf.Tensor | tf.Variable):
        return _stable(value.numpy())
    get_config = getattr(value, "get_config", None)
    if get_config is not None and not isinstance(value, type):
        try:
            config = dict(get_config())
        except Exception:  # pylint: disable=broad-except
            # No usable configuration: its class alone.
            return {"class": _class_name(value), "config": None}
        config.pop("name", None)
        return {"class": _class_name(value), "config": _stable(config)}
    qualname = getattr(value, "__qualname__", None)
    if callable(value) and isinstance(qualname, str):
        return f"{getattr(value, '__module__', None)}.{qualname}"
    return _class_name(value)


def variables_fingerprint(model, adapter: Adapter) -> list:
    # model.weights also lists non-variable state holders (the vocabulary
    # handle of a StringLookup): only variables have a shape and a dtype.
    return [
        {
            "name": v.name,
            "shape": [int(d) if d is not None else None for d in v.shape],
            "dtype": tf.as_dtype(v.dtype).name,
        }
        for v in model.weights
        if adapter.is_variable(v)
    ]


def build_config(model):
    """What `build_from_config` needs to rebuild an unbuilt model, or None."""
    try:
        return to_json_value(model.get_build_config())
    except (NotImplementedError, TypeError, ValueError):
        return None


def _describe(entry: dict) -> str:
    return f"{entry['name']} {entry['dtype']}{entry['shape']}"


def _same(a, b) -> bool:
    """Whether two JSON values of a config mean the same: numbers are equal
    as float32 too (an optimizer's config gives its learning rate as the
    Python float it was given before its first step, as the float32 its
    variable holds after), mappings regardless of key order."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a == b or np.float32(a) == np.float32(b)
    return a == b


def diff(backup: dict, current: dict, structure_only=False) -> list[str]:
    """Human-readable differences between two fingerprints (empty: equal).

    A backup written before fingerprints recorded what the model holds
    beyond its weights (`held`) is compared without it: it holds the
    model's weights and compiled optimizer only.
    """
    problems = []
    if "held" in backup:
        problems += held_diff(backup["held"], current["held"], structure_only)
    if backup["model_class"] != current["model_class"]:
        problems.append(
            f"model class: backup {backup['model_class']}, "
            f"model {current['model_class']}"
        )
    bv, cv = backup["variables"], current["variables"]
    if len(bv) != len(cv):
        problems.append(f"number of weights: backup {len(bv)}, model {len(cv)}")
    for i, (b, c) in enumerate(zip(bv, cv, strict=False)):
        if (b["shape"], b["dtype"]) != (c["shape"], c["dtype"]):
            problems.append(
                f"weight #{i}: backup {_describe(b)}, model {_describe(c)}"
            )
    if backup["random_generators"] != current["random_generators"]:
        problems.append(
            f"layer random generators (Dropout, ...): backup "
            f"{backup['random_generators']}, model "
            f"{current['random_generators']} (was enable_tf_random_generator() "
            "called in one run and not the other?)"
        )
    # Backups of earlier versions do not record the loss.
    if "loss" in backup and not _same(backup["loss"], current.get("loss")):
        problems.append(
            f"loss: backup {backup['loss']!r}, model {current.get('loss')!r}"
        )
    bo, co = backup["optimizer"], current["optimizer"]
    if bo["class"] != co["class"]:
        problems.append(
            f"optimizer class: backup {bo['class']}, model {co['class']}"
        )
    elif alone := _recorded_class_alone(bo["config"], co["config"]):
        if alone[0] != alone[1]:
            problems.append(
                f"optimizer learning rate: backup {alone[0]}, model {alone[1]}"
            )
    elif not _same(bo["config"], co["config"]):
        keys = sorted(set(bo["config"] or {}) | set(co["config"] or {}))
        for key in keys:
            b = (bo["config"] or {}).get(key)
            c = (co["config"] or {}).get(key)
            if not _same(b, c):
                problems.append(
                    f"optimizer config {key!r}: backup {b!r}, model {c!r}"
                )
    return problems


def fingerprint(
    model,
    adapter: Adapter,
    optimizer_part: dict,
    random_generators: int,
    held: dict,
) -> dict:
    return {
        "model_class": type(model).__name__,
        "variables": variables_fingerprint(model, adapter),
        "optimizer": optimizer_part,
        "random_generators": random_generators,
        "held": held,
        "loss": loss_fingerprint(model),
    }


def _variable_entry(variable) -> str:
    shape = [int(d) if d is not None else None for d in variable.shape]
    return f"{tf.as_dtype(variable.dtype).name}{shape}"


def held_fingerprint(
    held: keras_state.HeldState, adapter: Adapter, configs
) -> dict:
    """What a backup records of `held`: each optimizer's path, class,
    configuration (from `configs`, path -> optimizer_fingerprint, taken
    before training), whether it was built and on which of
    `held.variables` (positions), and its variables; each extra variable's
    path, dtype and shape."""
    optimizers = []
    for path, optimizer in held.optimizers:
        built, built_on = adapter.optimizer_built_on(optimizer, held.variables)
        entry = configs.get(path) or optimizer_fingerprint(optimizer, adapter)
        optimizers.append(
            {
                "path": path,
                "class": entry["class"],
                "config": entry["config"],
                "built": built,
                "built_on": built_on,
                # A lazily built (legacy) optimizer has its slots restored
                # when it makes them: they are not compared. Nor are those
                # of one built on variables the model does not hold: a
                # backup cannot hold them (unsaved_optimizers).
                "variables": None
                if built is None or (built and built_on is None)
                else [
                    _variable_entry(v)
                    for v in adapter.optimizer_variables(optimizer)
                ],
            }
        )
    return {
        "optimizers": optimizers,
        "variable_count": len(held.variables),
        "extra_variables": [
            {"path": path, "variable": _variable_entry(variable)}
            for path, variable in held.extra_variables
        ],
    }


def held_diff(backup: dict, current: dict, structure_only: bool) -> list:
    """Differences between two held_fingerprints. With `structure_only`,
    what an optimizer's build changes (built, its variables) is left out:
    they are compared once the optimizers are built as the backup's were."""
    problems = []
    bo, co = backup["optimizers"], current["optimizers"]
    if [o["path"] for o in bo] != [o["path"] for o in co]:
        problems.append(
            "optimizers held: backup "
            f"{[o['path'] for o in bo] or 'none'}, model "
            f"{[o['path'] for o in co] or 'none'}"
        )
    else:
        for b, c in zip(bo, co, strict=True):
            where = f"optimizer {b['path']!r}"
            if b["class"] != c["class"]:
                problems.append(
                    f"{where} class: backup {b['class']}, model {c['class']}"
                )
            elif b["path"] != "optimizer" and not _same_config(
                b["config"], c["config"]
            ):
                problems.append(
                    f"{where} config: backup {b['config']}, model {c['config']}"
                )
            if b["built"] and b["built_on"] is not None:
                if max(b["built_on"], default=-1) >= current["variable_count"]:
                    problems.append(
                        f"{where} was built on variables #{b['built_on']}: "
                        f"the model holds {current['variable_count']}"
                    )
                    continue
            if structure_only:
                continue
            if b["built"] != c["built"] or b["built_on"] != c["built_on"]:
                problems.append(
                    f"{where}: backup built on variables #{b['built_on']}, "
                    f"model #{c['built_on']}"
                )
            elif b["variables"] != c["variables"]:
                problems.append(
                    f"{where} variables: backup {b['variables']}, model "
                    f"{c['variables']}"
                )
    be, ce = backup["extra_variables"], current["extra_variables"]
    if be != ce:
        problems.append(
            "variables held outside model.variables: backup "
            f"{[e['path'] + ' ' + e['variable'] for e in be] or 'none'}, "
            f"model {[e['path'] + ' ' + e['variable'] for e in ce] or 'none'}"
        )
    return problems
