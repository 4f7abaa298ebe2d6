"""`pip install .`: the configuration is in pyproject.toml; this file only
keeps the tests (`*_test.py`) out of the installed package."""

import setuptools
from setuptools.command import build_py


class _BuildPyWithoutTests(build_py.build_py):
    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if not m[1].endswith("_test")]


setuptools.setup(cmdclass={"build_py": _BuildPyWithoutTests})
