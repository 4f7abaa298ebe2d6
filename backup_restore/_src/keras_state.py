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

import collections
import dataclasses
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
    }


@dataclasses.dataclass
class HeldState:
    """The trackable state a model holds beyond its weights and its
    compiled optimizer, found through the attributes tf.train.Checkpoint
    follows (nested in sub-layers, lists and dicts).

    Attributes:
      optimizers: (attribute path, optimizer) of every optimizer the model
        holds, `model.optimizer` first (path "optimizer"), then the others
        breadth-first by attribute path; each once.
      variables: what an optimizer may be built on: the model's variables,
        then `extra_variables`.
      extra_variables: (attribute path, variable) of the variables the
        model holds outside `model.variables`: raw tf.Variables, the Keras
        variables of layers it does not list.
      unsaved: "path (type)" of the objects with checkpointable state of
        their own that a backup of this flavour does not hold (a Keras 3
        model holding a MutableHashTable).
    """

    optimizers: list
    variables: list
    extra_variables: list
    unsaved: list = dataclasses.field(default_factory=list)


def held_state(model, adapter: Adapter) -> HeldState:
    """Walks the model's trackable attributes breadth-first (children in
    their tracked order, so paths and order are the same in every run of
    the same code); an optimizer's own state is its own (not walked)."""
    try:
        model_variables = list(model.variables)
    except ValueError:
        # An unbuilt tf-keras Sequential has no weights to list yet.
        model_variables = []
    known = set()
    for variable in model_variables:
        known.add(id(variable))
        known.add(id(adapter.tf_variable(variable)))
    optimizers = []
    if getattr(model, "optimizer", None) is not None:
        optimizers.append(("optimizer", model.optimizer))
    extra = []
    unsaved = []
    visited = {id(model)} | {id(o) for _, o in optimizers}
    queue = collections.deque([("", model)])
    while queue:
        path, obj = queue.popleft()
        children = tf.train.TrackableView(obj).children(obj)
        for name, child in children.items():
            if id(child) in visited:
                continue
            visited.add(id(child))
            child_path = f"{path}.{name}" if path else name
            if adapter.is_optimizer(child):
                optimizers.append((child_path, child))
                continue
            if adapter.is_variable(child) or isinstance(child, tf.Variable):
                if id(child) not in known and (
                    id(adapter.tf_variable(child)) not in known
                ):
                    extra.append((child_path, child))
                continue
            if adapter.state_not_backed_up(child):
                unsaved.append(f"{child_path} ({type(child).__name__})")
            queue.append((child_path, child))
    return HeldState(
        optimizers=optimizers,
        variables=model_variables + [v for _, v in extra],
        extra_variables=extra,
        unsaved=unsaved,
    )


def held_signature(held: HeldState, adapter: Adapter) -> tuple:
    """Changes when an optimizer makes its state (a backup must then hold
    it too)."""
    return tuple(
        len(adapter.optimizer_variables(o)) for _, o in held.optimizers
    )


def _variable_entry(variable) -> str:
    shape = [int(d) if d is not None else None for d in variable.shape]
    return f"{tf.as_dtype(variable.dtype).name}{shape}"


def held_fingerprint(held: HeldState, adapter: Adapter, configs) -> dict:
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


def unsaved_optimizers(held: HeldState, adapter: Adapter) -> list[str]:
    """Paths of the built optimizers whose variables are not all the
    model's: a restore could not build them again on the same ones."""
    return [
        path
        for path, optimizer in held.optimizers
        if adapter.optimizer_built_on(optimizer, held.variables) == (True, None)
    ]


def build_held_optimizers(backup: dict, held: HeldState, adapter) -> list:
    """Builds each optimizer that was built when the backup was written,
    on the same variables, so that the restore fills its state; leaves
    the others (an unused default optimizer) unbuilt, as the backup has
    them. `backup` is the backup's held_fingerprint; diff() has checked
    that it lines up with `held`.

    The slots are made unfilled (unfilled_slots.py): returns them, for
    `unfilled_slots.zero_fill` should the restore not fill them."""
    unfilled = []
    for entry, (_, optimizer) in zip(
        backup["optimizers"], held.optimizers, strict=True
    ):
        if entry["built"] and entry["built_on"] is not None:
            built, _ = adapter.optimizer_built_on(optimizer, held.variables)
            if not built:
                unfilled += adapter.build_optimizer(
                    optimizer,
                    [held.variables[i] for i in entry["built_on"]],
                    unfilled=True,
                )
    return unfilled


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
            elif b["path"] != "optimizer" and not _same(
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
