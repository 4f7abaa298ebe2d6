"""Points Bazel's native py_* rules at the project's Python interpreter.

A python_configure-style repository rule (after TensorFlow's
third_party/py/python_configure.bzl). It reads PYTHON_BIN_PATH (set by
tools/bazel to the venv built from requirements.txt), checks that the
interpreter imports the pip packages this project depends on, and generates a
py_runtime + toolchain for it.
"""

_PYTHON_BIN_PATH = "PYTHON_BIN_PATH"

# import name -> distribution name as written in requirements.txt
_REQUIRED = {
    "absl": "absl-py",
    "numpy": "numpy",
    "tensorflow": "tensorflow",
    "tf_keras": "tf-keras",
}

_CHECK = """
import importlib, importlib.metadata, sys
required = {required}
missing = []
for module, dist in sorted(required.items()):
    try:
        importlib.import_module(module)
    except Exception as e:  # report every failure, not just the first
        missing.append("%s (%s): %s: %s" % (module, dist, type(e).__name__, e))
if missing:
    sys.exit("cannot import:\\n  " + "\\n  ".join(missing))
print(sys.version.split()[0])
"""

def _fail(msg):
    fail("\n%sPython configuration error:%s %s\n" % ("\033[0;31m", "\033[0m", msg))

def _python_configure_impl(rctx):
    python = rctx.os.environ.get(_PYTHON_BIN_PATH, "").strip()
    if not python:
        _fail(
            "%s is not set. Run Bazel through ./tools/bazel (it creates the " % _PYTHON_BIN_PATH +
            "project's venv from requirements.txt and sets %s), or " % _PYTHON_BIN_PATH +
            "export %s=/path/to/python with %s installed." %
            (_PYTHON_BIN_PATH, ", ".join(sorted(_REQUIRED.values()))),
        )
    if not rctx.path(python).exists:
        _fail("%s=%s does not exist." % (_PYTHON_BIN_PATH, python))
    result = rctx.execute(
        [python, "-c", _CHECK.format(required = repr(_REQUIRED))],
        environment = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        timeout = 300,
    )
    if result.return_code != 0:
        _fail(
            ("the interpreter %s=%s cannot import the project's dependencies.\n%s%s\n" +
             "Install them with: %s -m pip install -r requirements.txt " +
             "(or use ./tools/bazel, which does it).") %
            (_PYTHON_BIN_PATH, python, result.stdout, result.stderr, python),
        )
    rctx.template(
        "BUILD",
        Label("//third_party/py:BUILD.tpl"),
        {
            "%{PYTHON_BIN_PATH}": python,
            "%{PYTHON_VERSION}": result.stdout.strip(),
        },
    )

python_configure = repository_rule(
    implementation = _python_configure_impl,
    environ = [_PYTHON_BIN_PATH],
    configure = True,
    doc = "Generates a Python toolchain for the interpreter in PYTHON_BIN_PATH.",
)
