"""Fails when a Python file is not ruff-formatted or not lint-clean.

Run by //:lint_test with every Python file of the tree as arguments. To fix the
tree: `$VENV/bin/python -m ruff format .` then `... -m ruff check --fix .`
(the venv is the one tools/bazel prints on first use).
"""

import os
import subprocess
import sys


def _ruff(*args):
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def main(argv):
    files = argv[1:]
    if not files:
        print("lint_test: no files given", file=sys.stderr)
        return 2
    # Bazel runs the test from the runfiles root, where //:pyproject.toml is.
    config = "pyproject.toml"
    if not os.path.exists(config):
        print(
            "lint_test: pyproject.toml not found in runfiles", file=sys.stderr
        )
        return 2
    failures = 0
    for what, args in (
        ("format", ["format", "--check", "--diff", "--no-cache"]),
        ("check", ["check", "--no-cache", "--output-format=concise"]),
    ):
        result = _ruff(*args, "--config", config, *files)
        if result.returncode != 0:
            failures += 1
            print(
                f"ruff {what} found problems:\n{result.stdout}{result.stderr}"
            )
    print(f"lint_test: {len(files)} files, {failures} failing checks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
