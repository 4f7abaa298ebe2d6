"""Helpers shared by the command-line binaries."""

import os


def user_path(path: str) -> str:
    """Resolves a user-given relative path against the user's directory.

    Under `bazel run` the working directory is the runfiles tree; Bazel puts
    the directory the user ran it from in BUILD_WORKING_DIRECTORY.
    """
    base = os.environ.get("BUILD_WORKING_DIRECTORY", "")
    if "://" in path or os.path.isabs(path) or not base:
        return path
    return os.path.join(base, path)
