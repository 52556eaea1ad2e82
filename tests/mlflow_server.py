"""A real ``mlflow server`` (sqlite backend) on 127.0.0.1 for the MLflow tests.

Used as a module-scoped fixture::

    from mlflow_server import MlflowServer, mlflow_server   # noqa: F401  (the fixture)

    def test_x(mlflow_server):
        client = mlflow.MlflowClient(mlflow_server.uri)

The server can be killed (``kill()``, SIGKILL to its whole process group, as a crash would)
and started again on the same port and database (``start()``).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=timeout) as r:
                return r.status == 200
        except Exception:
            return False

    def start(self, timeout: float = 120.0) -> "MlflowServer":
        if self.proc is not None and self.proc.poll() is None and self.healthy():
            return self
        exe = Path(sys.executable).parent / "mlflow"
        cmd = [str(exe), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--default-artifact-root", str(self.root / "art"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=self.root)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mlflow server exited:\n" + self.log_tail())
            if self.healthy():
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"mlflow server not healthy after {timeout} s:\n" + self.log_tail())

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a clean shutdown)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None
        deadline = time.monotonic() + 10
        while self.healthy(0.2) and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop for good (a test database needs no clean shutdown; uvicorn's graceful one is slow)."""
        self.kill()

    def log_tail(self, n: int = 3000) -> str:
        p = self.root / "server.log"
        return p.read_text(errors="replace")[-n:] if p.exists() else ""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    yield server
    server.stop()


class SlowServer:
    """An HTTP server that answers ``/health`` but never answers an API call (until closed):
    a tracking server that hangs, as an overloaded one does."""

    def __init__(self):
        import http.server
        import threading

        release = self.release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _reply(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/health"):
                    return self._reply(200, b"OK")
                release.wait(120)
                self._reply(503)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Gateway:
    """An HTTP front for a real tracking server that a test switches between three states:

    * ``"up"``: every request is passed to the server and its answer returned;
    * ``"hold"``: ``/health`` answers 200, but API requests wait (``held`` is set when one does),
      as on a server that is about to crash mid-request;
    * ``"down"``: every connection, held ones included, is closed without an answer, as a
      crashed server behind a proxy; MLflow's client retries such a request for minutes.

    Example::

        gw = Gateway(mlflow_server.uri, mode="hold")
        sink = MlflowSink(gw.uri, ...)         # its first request is held
        gw.held.wait(10); gw.set("down")       # ... and dies in flight
    """

    def __init__(self, target: str, mode: str = "up"):
        import http.client
        import http.server
        import threading
        from urllib.parse import urlsplit

        self.mode = mode
        self.held = threading.Event()
        self.cond = threading.Condition()
        self.requests = 0
        host = urlsplit(target).netloc
        gw = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with gw.cond:
                    gw.requests += 1
                    if gw.mode == "hold" and not self.path.startswith("/health"):
                        gw.held.set()
                        gw.cond.wait_for(lambda: gw.mode != "hold", timeout=120)
                    mode = gw.mode
                if mode == "down":
                    self.close_connection = True        # no status line: the client sees a dropped connection
                    return
                if mode == "hold":                     # /health while holding
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                    return
                conn = http.client.HTTPConnection(host, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def set(self, mode: str) -> None:
        with self.cond:
            self.mode = mode
            self.cond.notify_all()

    def close(self) -> None:
        self.set("down")
        self.httpd.shutdown()
        self.httpd.server_close()
