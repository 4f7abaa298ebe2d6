"""What the callback records about a Keras model, through public APIs only.

The fingerprint describes the model's variables (order, shapes, dtypes) and
the optimizer's class and initial configuration. It is stored with every
backup and compared before a restore, so that a backup written by a different
model is refused with an error naming what differs instead of an obscure
TensorFlow error or a partial restore.

Variable and layer names are reported but not compared: Keras numbers
auto-generated names per process (`dense`, then `dense_1` when the same code
builds the model again, e.g. after Ctrl-C in a notebook), and restoring does
not depend on them.
"""

import json

import numpy as np
import tensorflow as tf

Adapter = object  # an adapter module (flavours.py)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "numpy"):
        return _jsonable(value.numpy())
    return repr(value)


def to_json_value(value):
    """A JSON round-trip of `value` (numpy scalars become Python numbers)."""
    return json.loads(json.dumps(value, default=_jsonable))


def optimizer_fingerprint(optimizer, adapter: Adapter) -> dict:
    """The optimizer's class and configuration, without its name.

    A learning-rate schedule without `get_config()` (allowed for training,
    needed only for serialization) is recorded by its class.
    """
    if optimizer is None:
        return {"class": None, "config": None}
    try:
        config = dict(optimizer.get_config())
    except NotImplementedError:
        config = {"learning_rate": _class_name(_lr_owner(optimizer, adapter))}
    config.pop("name", None)
    return {
        "class": _class_name(optimizer),
        "config": to_json_value(config),
    }


def _class_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _lr_owner(optimizer, adapter):
    schedule = adapter.learning_rate_schedule(optimizer)
    return optimizer if schedule is None else schedule


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


def diff(backup: dict, current: dict) -> list[str]:
    """Human-readable differences between two fingerprints (empty: equal)."""
    problems = []
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
    bo, co = backup["optimizer"], current["optimizer"]
    if bo["class"] != co["class"]:
        problems.append(
            f"optimizer class: backup {bo['class']}, model {co['class']}"
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
    model, adapter: Adapter, optimizer_part: dict, random_generators: int
) -> dict:
    return {
        "model_class": type(model).__name__,
        "variables": variables_fingerprint(model, adapter),
        "optimizer": optimizer_part,
        "random_generators": random_generators,
    }


def metric_states(model, adapter: Adapter) -> list:
    """The variables of every metric of the model, as JSON lists.

    Under a distribution strategy, metric variables are SyncOnRead: each
    replica holds its own partial value. They are saved per replica, so that
    a resumed epoch sums the same partial values in the same order.
    """
    local = model.distribute_strategy.experimental_local_results
    return [
        {
            "name": metric.name,
            "variables": [
                [c.numpy().tolist() for c in local(adapter.tf_variable(v))]
                for v in metric.variables
            ],
        }
        for metric in model.metrics
    ]


def restore_metric_states(model, adapter: Adapter, states: list) -> list[str]:
    """Assigns saved metric variables by metric name; returns unknown names."""
    local = model.distribute_strategy.experimental_local_results
    by_name = {m.name: m for m in model.metrics}
    missing = []
    for state in states:
        metric = by_name.get(state["name"])
        if metric is None or len(metric.variables) != len(state["variables"]):
            missing.append(state["name"])
            continue
        for variable, replicas in zip(
            metric.variables, state["variables"], strict=True
        ):
            tf_variable = adapter.tf_variable(variable)
            dtype = tf_variable.dtype.name
            components = local(tf_variable)
            if len(components) == len(replicas):
                for component, value in zip(components, replicas, strict=True):
                    component.assign(np.asarray(value, dtype=dtype))
            else:
                # A different number of replicas than at backup time: keep
                # the total (metric variables are SUM-aggregated).
                total = np.sum(np.asarray(replicas, dtype=dtype), axis=0)
                variable.assign(total)
    return missing


def learning_rate(optimizer, adapter: Adapter):
    """The optimizer's learning rate if it is a number (not a schedule)."""
    if adapter.learning_rate_schedule(optimizer) is not None:
        return None
    value = getattr(optimizer, "learning_rate", None)
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None
