"""Checks of one JSON field each, for the schemas of backup metadata
(backup_metadata.py): a field that breaks its schema raises `Invalid`, whose
message names the field and the value found."""

import math

# Counts, sizes and dimensions beyond an int64 are no real backup's.
MAX_INT = 2**63 - 1
# The last second of year 9999: later times are not real, and not every
# platform's time functions accept them.
MAX_TIME = 253402300799


class Invalid(Exception):
    """A field breaks the schema; its message names the field."""


def show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(field: str, value, what: str):
    raise Invalid(f"{field} is {show(value)}, {what}")


def get(mapping: dict, key: str, field: str):
    if key not in mapping:
        raise Invalid(f"{field} is missing")
    return mapping[key]


def as_dict(value, field: str) -> dict:
    if not isinstance(value, dict):
        fail(field, value, "not a JSON object")
    return value


def as_list(value, field: str) -> list:
    if not isinstance(value, list):
        fail(field, value, "not a list")
    return value


def as_str(value, field: str) -> str:
    if not isinstance(value, str):
        fail(field, value, "not a string")
    return value


def as_bool(value, field: str) -> bool:
    if not isinstance(value, bool):
        fail(field, value, "not true or false")
    return value


def as_int(value, field: str, minimum: int = 0) -> int:
    # bool is an int in Python, never a count in a backup.
    if isinstance(value, bool) or not isinstance(value, int):
        fail(field, value, "not an integer")
    if value < minimum:
        fail(field, value, f"below {minimum}")
    if value > MAX_INT:
        fail(field, value, "beyond any real count (2**63 - 1)")
    return value


def optional_int(value, field: str, minimum: int = 0):
    return None if value is None else as_int(value, field, minimum)


def number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(field, value, "not a number")
    return value


def time(value, field: str) -> float:
    number(value, field)
    if not (math.isfinite(value) and 0 <= value <= MAX_TIME):
        fail(field, value, "not a time between 1970 and 9999")
    return value


def shape(value, field: str, unknown_dims: bool = False) -> list:
    for i, dim in enumerate(as_list(value, field)):
        if not (unknown_dims and dim is None):
            as_int(dim, f"{field}[{i}]")
    return value


def shape_and_dtype(value, field: str, unknown_dims: bool = False):
    """[shape, dtype name], as variables and tensors are recorded."""
    if not isinstance(value, list) or len(value) != 2:
        fail(field, value, "not a [shape, dtype] pair")
    shape(value[0], f"{field}[0]", unknown_dims)
    as_str(value[1], f"{field}[1]")
    return value


def numbers(value, field: str) -> None:
    """A number or nested lists of numbers (a metric variable's value)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            numbers(item, f"{field}[{i}]")
    else:
        number(value, field)


def member(mapping: dict, key: str, check=None, parent: str = "", **kwargs):
    """`mapping[key]`, checked by `check(value, field, **kwargs)` if given;
    the field is named `parent.key`."""
    field = f"{parent}.{key}" if parent else key
    value = get(mapping, key, field)
    return value if check is None else check(value, field, **kwargs)
