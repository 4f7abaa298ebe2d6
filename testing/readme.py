"""The commands README.md shows, for the tests that run them as shown."""

import re
import shlex

from testing import procs

_RUN = re.compile(r"\./tools/bazel run (//\S+?)(?=;|\s|$)(?: -- ([^;\n]*))?")


def commands(target: str) -> list[list[str]]:
    """The arguments of every `./tools/bazel run TARGET -- ARGS` in the
    README (continued lines joined), in order; [] for no arguments."""
    with open(procs.runfile("README.md")) as f:
        text = f.read().replace("\\\n", " ")
    found = [
        shlex.split(match.group(2) or "")
        for match in _RUN.finditer(text)
        if match.group(1) == target
    ]
    if not found:
        raise AssertionError(f"README.md shows no `bazel run {target}`")
    return found


def binary(target: str) -> str:
    """The runfile of a py_binary label such as //backup_restore:inspect."""
    package, name = target.removeprefix("//").split(":")
    return procs.runfile(f"{package}/{name}")
