"""`pip install .` from a clone: the wheel builds offline, installs the
library (the public facade and its _src, no tests) and imports from there."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

from absl.testing import absltest

from testing import procs
from testing import test_case

_SOURCES = ("pyproject.toml", "setup.py", "README.md", "backup_restore")


class PipInstallTest(test_case.TestCase):
    def setUp(self):
        super().setUp()
        # No index, no cache, not this machine's pip configuration.
        self.env = dict(
            os.environ,
            HOME=self.tmp,
            PIP_CONFIG_FILE=os.devnull,
            PIP_NO_CACHE_DIR="1",
            PIP_DISABLE_PIP_VERSION_CHECK="1",
        )

    def _pip(self, *args):
        out = subprocess.run(
            [sys.executable, "-m", "pip", *args, "--no-deps", "--no-index"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=600,
            check=False,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_wheel_builds_installs_and_imports(self):
        # A clone's files (the runfiles are symlinks into the workspace).
        clone = os.path.join(self.tmp, "clone")
        for name in _SOURCES:
            source = procs.runfile(name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(clone, name))
            else:
                os.makedirs(clone, exist_ok=True)
                shutil.copy(source, clone)
        wheels = os.path.join(self.tmp, "wheels")
        self._pip("wheel", "--no-build-isolation", "-w", wheels, clone)
        (wheel,) = glob.glob(os.path.join(wheels, "backup_restore-*.whl"))
        site = os.path.join(self.tmp, "site")
        self._pip("install", "--target", site, wheel)

        installed = sorted(
            os.path.relpath(p, site)
            for p in glob.glob(os.path.join(site, "backup_restore", "**"))
            + glob.glob(os.path.join(site, "backup_restore", "**", "*.py"))
            if p.endswith(".py")
        )
        self.assertIn("backup_restore/__init__.py", installed)
        self.assertIn("backup_restore/_src/store.py", installed)
        self.assertEqual([p for p in installed if p.endswith("_test.py")], [])
        self.assertFalse(os.path.exists(os.path.join(site, "testing")))
        self.assertFalse(
            os.path.exists(os.path.join(site, "backup_restore", "examples"))
        )

        # A fresh interpreter of the venv (-I: no PYTHONPATH, so not the
        # Bazel runfiles), the installed package first on its path.
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); "
            "import backup_restore; print(json.dumps({"
            "'file': backup_restore.__file__, "
            "'api': sorted(backup_restore.__all__)}))"
        )
        out = subprocess.run(
            [sys.executable, "-I", "-c", code, site],
            capture_output=True,
            text=True,
            cwd=self.tmp,
            env=dict(self.env, TF_CPP_MIN_LOG_LEVEL="2"),
            timeout=300,
            check=False,
        )
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        got = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(
            got["file"], os.path.join(site, "backup_restore", "__init__.py")
        )
        self.assertIn("BackupAndRestore", got["api"])
        self.assertIn("BackupManager", got["api"])

    def test_dependencies_pinned_as_in_requirements_txt(self):
        with open(procs.runfile("pyproject.toml"), "rb") as f:
            dependencies = tomllib.load(f)["project"]["dependencies"]
        with open(procs.runfile("requirements.txt")) as f:
            pins = dict(
                re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
                for line in f
                if re.match(r"[A-Za-z0-9_.-]+==", line)
            )
        self.assertNotEmpty(dependencies)
        for requirement in dependencies:
            name, version = requirement.split("==")
            self.assertEqual(pins.get(name), version, requirement)


if __name__ == "__main__":
    absltest.main()
