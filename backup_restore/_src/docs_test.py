"""Every code example in the README and in public docstrings runs."""

import os
import re

import tensorflow as tf
from absl.testing import absltest
from absl.testing import parameterized

import backup_restore
from testing import procs
from testing import synthetic
from testing import test_case


def _python_blocks(text):
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    # Docstring examples are indented: dedent by the first line's indent.
    out = []
    for block in blocks:
        lines = block.splitlines()
        indent = len(lines[0]) - len(lines[0].lstrip())
        out.append("\n".join(line[indent:] for line in lines))
    return out


def _readme():
    with open(procs.runfile("README.md")) as f:
        return f.read()


class DocsTest(test_case.TestCase):
    def _run(self, code, namespace=None):
        paths = set(re.findall(r'"(/tmp/[^"]+)"', code))
        for path in paths:  # keep examples out of the real /tmp
            code = code.replace(path, os.path.join(self.tmp, path[5:]))
        exec(compile(code, "example", "exec"), dict(namespace or {}))
        for path in paths:
            self.assertFalse(
                tf.io.gfile.exists(os.path.join(self.tmp, path[5:])),
                f"the example's backup {path} was not deleted at the end",
            )

    def test_readme_has_the_examples_this_test_runs(self):
        self.assertLen(_python_blocks(_readme()), 3)

    @parameterized.named_parameters(("use", 0), ("exact", 1), ("loop", 2))
    def test_readme_example(self, index):
        code = _python_blocks(_readme())[index]
        x, y = synthetic.regression_data(64)
        # The short "Use" snippet refers to the user's own model and data.
        self._run(
            code, {"model": synthetic.regression_model("tiny"), "x": x, "y": y}
        )

    @parameterized.named_parameters(
        ("BackupAndRestore", backup_restore.BackupAndRestore),
        ("BackupManager", backup_restore.BackupManager),
    )
    def test_docstring_example(self, api):
        (code,) = _python_blocks(api.__doc__)
        self._run(code)


if __name__ == "__main__":
    absltest.main()
