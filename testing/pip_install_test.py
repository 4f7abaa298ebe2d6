"""`pip install .` from a clone: the wheel builds offline, installs the
library (the public facade and its _src, no tests) and imports from there;
its metadata lists tf-keras only under the `tf_keras` extra, and the ranges
it states hold the versions requirements.txt pins."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

from absl.testing import absltest
from packaging import requirements
from packaging import utils

from testing import procs
from testing import test_case

_SOURCES = ("pyproject.toml", "setup.py", "README.md", "backup_restore")


def _pins() -> dict:
    """requirements.txt's exact pins, by canonical name."""
    with open(procs.runfile("requirements.txt")) as f:
        return {
            utils.canonicalize_name(name): version
            for name, version in (
                re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
                for line in f
                if re.match(r"[A-Za-z0-9_.-]+==", line)
            )
        }


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

    def _check_metadata(self, wheel):
        """tf-keras only under the `tf_keras` extra; the rest always."""
        with zipfile.ZipFile(wheel) as archive:
            (name,) = [
                n
                for n in archive.namelist()
                if n.endswith(".dist-info/METADATA")
            ]
            metadata = archive.read(name).decode()
        lines = metadata.splitlines()
        extras = [
            utils.canonicalize_name(line.split(":", 1)[1].strip())
            for line in lines
            if line.startswith("Provides-Extra:")
        ]
        self.assertEqual(extras, ["tf-keras"])
        always, with_extra = set(), set()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = requirements.Requirement(line.split(":", 1)[1])
            name = utils.canonicalize_name(requirement.name)
            marker = requirement.marker
            if marker is None:
                always.add(name)
                continue
            self.assertTrue(marker.evaluate({"extra": "tf_keras"}), line)
            self.assertFalse(marker.evaluate({"extra": ""}), line)
            with_extra.add(name)
        self.assertEqual(always, {"tensorflow", "keras", "absl-py", "numpy"})
        self.assertEqual(with_extra, {"tf-keras"})

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
        self._check_metadata(wheel)
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

    def test_ranges_hold_the_pins_of_requirements_txt(self):
        with open(procs.runfile("pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        extras = project["optional-dependencies"]
        self.assertEqual(list(extras), ["tf_keras"])
        pins = _pins()
        stated = {}
        for line in project["dependencies"] + extras["tf_keras"]:
            requirement = requirements.Requirement(line)
            name = utils.canonicalize_name(requirement.name)
            stated[name] = requirement.specifier
            self.assertIn(name, pins, f"{line}: not pinned in requirements.txt")
            # A range, not a pin: a user on the next patch release installs.
            self.assertFalse(
                any(s.operator == "==" for s in requirement.specifier), line
            )
            self.assertIn(pins[name], requirement.specifier, line)
        self.assertEqual(
            set(stated), {"tensorflow", "keras", "absl-py", "numpy", "tf-keras"}
        )
        # The verified minor releases: the adapters' contract tests pin them.
        for name, inside, outside in (
            ("tensorflow", "2.21.9", "2.22.0"),
            ("keras", "3.15.9", "3.16.0"),
            ("tf-keras", "2.21.9", "2.22.0"),
        ):
            self.assertIn(inside, stated[name], name)
            self.assertNotIn(outside, stated[name], name)
        # tf-keras is the extra's only, never a requirement of every install.
        self.assertEqual(
            [requirements.Requirement(r).name for r in extras["tf_keras"]],
            ["tf-keras"],
        )
        self.assertNotIn(
            "tf-keras",
            {
                utils.canonicalize_name(requirements.Requirement(r).name)
                for r in project["dependencies"]
            },
        )


if __name__ == "__main__":
    absltest.main()
