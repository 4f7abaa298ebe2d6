"""Runs training binaries in child processes and kills them with real signals.

Tests put the binary in their `data` and run it as a subprocess, asserting on
its exit status and its JSON result file (which the trainers write with
`report`).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile

_WORKSPACE = "backup_restore_ws"


def report(result_file: str | None, result: dict, summary: str) -> None:
    """A trainer's last words: writes `result` as JSON to its --result_file
    (when given; the file run() reads) and prints `RESULT <summary>`."""
    # Imported here: the launcher imports this module, and must not import
    # TensorFlow (whose start-up lines would precede its LAUNCHED line).
    from backup_restore._src import cli

    if result_file:
        with open(cli.user_path(result_file), "w") as f:
            json.dump(result, f)
    print(f"RESULT {summary}", flush=True)


def runfile(path: str) -> str:
    """Absolute path of a workspace-relative runfile, e.g. a py_binary."""
    manifest = os.environ.get("RUNFILES_MANIFEST_FILE", "")
    here = os.path.abspath(__file__)
    roots = (
        os.environ.get("TEST_SRCDIR"),  # bazel test
        os.environ.get("RUNFILES_DIR"),
        os.environ.get("PYTHON_RUNFILES"),  # bazel run
        # bazel-bin/<binary>: the stub sets the manifest's path only.
        manifest.removesuffix("_manifest") if manifest else None,
        # This file inside some binary's runfiles tree.
        here[: here.find(".runfiles/") + 9] if ".runfiles/" in here else None,
        os.path.abspath(sys.argv[0]) + ".runfiles",
    )
    for root in roots:
        if root:
            candidate = os.path.join(root, _WORKSPACE, path)
            if os.path.exists(candidate):
                return candidate
    raise FileNotFoundError(
        f"runfile {path!r} not found; add its target to the test's data"
    )


@dataclasses.dataclass
class Run:
    """The outcome of one child run."""

    returncode: int
    stdout: str
    stderr: str
    result: dict | None  # the --result_file JSON, if the run wrote it

    @property
    def killed_by(self) -> int | None:
        """The signal that ended the process, or None if it exited."""
        return -self.returncode if self.returncode < 0 else None

    def describe(self) -> str:
        return (
            f"exit status {self.returncode}\n--- stdout ---\n"
            f"{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def _env():
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command(binary: str, args: list[str]) -> list[str]:
    # Start children with this interpreter: the test PATH may lack the venv.
    return [sys.executable, binary, *args]


def run(
    binary: str,
    args: list[str] = (),
    timeout: float = 300,
    result_file: bool = True,
) -> Run:
    """Runs `binary args --result_file=...` to the end (without
    `result_file`: a binary that takes no such flag, `binary args`)."""
    path = None
    if result_file:
        fd, path = tempfile.mkstemp(
            suffix=".json", dir=os.environ.get("TEST_TMPDIR")
        )
        os.close(fd)
        os.remove(path)
        args = [*args, f"--result_file={path}"]
    proc = subprocess.run(
        _command(binary, args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )
    result = None
    if path and os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    return Run(proc.returncode, proc.stdout, proc.stderr, result)


def run_and_signal_at_pause(
    binary: str,
    args: list[str],
    sig=signal.SIGKILL,
    timeout: float = 300,
) -> Run:
    """Runs a binary that prints PAUSED and waits, then sends it `sig`.

    The binary must pause at a deterministic point (the trainers'
    --fail_at_step=N --fail_with=pause), so the signal lands at a chosen step
    and not at a point chosen by timing. `sig` may be a tuple: the signals
    are sent one after the other.
    """
    signals = sig if isinstance(sig, tuple) else (sig,)
    proc = subprocess.Popen(
        _command(binary, args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "PAUSED":
                for one in signals:
                    proc.send_signal(one)
                break
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Run(proc.returncode, "".join(lines) + stdout, stderr, None)


class Started:
    """A binary running in a child process, driven line by line.

    For tests that act while the child runs (start a second job, freeze it
    with SIGSTOP at a line it printed), then let it finish.
    """

    def __init__(self, binary: str, args: list[str]):
        fd, self._result_file = tempfile.mkstemp(
            suffix=".json", dir=os.environ.get("TEST_TMPDIR")
        )
        os.close(fd)
        os.remove(self._result_file)
        self.proc = subprocess.Popen(
            _command(binary, [*args, f"--result_file={self._result_file}"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self._lines = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, prefix: str) -> str:
        """Reads stdout up to the first line starting with `prefix`."""
        for line in self.proc.stdout:
            self._lines.append(line)
            if line.startswith(prefix):
                return line.rstrip("\n")
        self.proc.wait()
        raise AssertionError(
            f"the child ended (status {self.proc.returncode}) before printing "
            f"{prefix!r}:\n{''.join(self._lines)[-3000:]}\n"
            f"{self.proc.stderr.read()[-6000:]}"
        )

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 300) -> Run:
        """Waits for the child to end; returns its Run."""
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except BaseException:
            self.kill()
            raise
        result = None
        if os.path.exists(self._result_file):
            with open(self._result_file) as f:
                result = json.load(f)
        return Run(
            self.proc.returncode, "".join(self._lines) + stdout, stderr, result
        )

    def kill(self) -> None:
        """SIGKILLs the child (if still running) and reaps it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def start(binary: str, args: list[str]) -> Started:
    """Starts `binary args --result_file=...` without waiting for it."""
    return Started(binary, args)


class FlavouredRuns:
    """For a test_case.TestCase whose child trainers take `--keras`: runs
    them with the class's `FLAVOUR` (test_case.tf_keras_variant makes the
    tf-keras class)."""

    FLAVOUR = "keras3"  # test_case.TestCase's, for a class without it

    def run_child(self, binary, args, **kwargs):
        return run(binary, [*args, f"--keras={self.FLAVOUR}"], **kwargs)

    def run_child_and_signal(self, binary, args, **kwargs):
        return run_and_signal_at_pause(
            binary, [*args, f"--keras={self.FLAVOUR}"], **kwargs
        )
