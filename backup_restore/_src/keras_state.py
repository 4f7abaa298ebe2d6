"""What a Keras model holds for a backup, through public APIs only.

The trackable state beyond the model's weights and compiled optimizer
(optimizers held as attributes, variables outside `model.variables`: found
by `held_state`), the optimizers built again as the backup's were before a
restore, the metrics' variables of a mid-epoch backup, and the learning rate
a resume compares. What a backup records of the model to check it against
another is its fingerprint (model_fingerprint.py).
"""

import collections
import dataclasses

import numpy as np
import tensorflow as tf

Adapter = object  # an adapter module (flavours.py)


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
